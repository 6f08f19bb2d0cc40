# shellcheck shell=bash
# hostlib.sh — run a VM scenario from a tests/test-*.sh.  Source it after
# tests/lib.sh:
#     . "$(dirname "$0")/lib.sh"
#     . "$VDISK_TOP/tests/kernel/hostlib.sh"
#     vm_tap "attach" --timeout 90 "$VDISK_TOP/tests/kernel/scenarios/x.sh" "$T/disk.qcow2"
# See tests/kernel/vm.sh for the options and for how a scenario is written.

VM_SH=$VDISK_TOP/tests/kernel/vm.sh

# vm_tap PREFIX [vm.sh options] SCENARIO [FILE...]: boot the VM, run the
# scenario, and make each of its results one of this script's ("PREFIX: what"),
# its diagnostics following; its plan line is dropped.  A VM that timed out or
# died, or a scenario without a plan, shows as a "not ok" (vm.sh prints one).
# Returns vm.sh's exit status; sets VM_WALL to the seconds the run took.
vm_tap() {
    local prefix=$1; shift
    local out=$T/.vm.out err=$T/.vm.err rc=0 bad=0 line t0
    t0=$(date +%s.%N)
    "$VM_SH" "$@" >"$out" 2>"$err" || rc=$?
    VM_WALL=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    while IFS= read -r line; do
        if [[ $line =~ ^ok\ [0-9]+\ -\ (.*)\ \#\ SKIP\ ?(.*)$ ]]; then
            skip "$prefix: ${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
        elif [[ $line =~ ^ok\ [0-9]+(\ -)?\ ?(.*)$ ]]; then
            ok "$prefix: ${BASH_REMATCH[2]}"
        elif [[ $line =~ ^not\ ok\ [0-9]+(\ -)?\ ?(.*)$ ]]; then
            not_ok "$prefix: ${BASH_REMATCH[2]}"; bad=1
        elif [[ $line =~ ^1\.\.[0-9]+ ]]; then
            :
        elif [[ $line == \#* ]]; then
            printf '%s\n' "$line"
        else
            printf '# %s\n' "$line"
        fi
    done <"$out"
    if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then
        not_ok "$prefix: vm.sh exited with status $rc" "$(tail -n 10 "$err")"
    elif [ -s "$err" ]; then
        diag "$(tail -n 10 "$err")"
    fi
    diag "$prefix: VM wall time ${VM_WALL} s"
    return "$rc"
}
