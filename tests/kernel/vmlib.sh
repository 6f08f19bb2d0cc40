# vmlib.sh — TAP helpers for scenarios that tests/kernel/vm.sh runs inside the
# test VM.  A scenario starts with  . /vmlib.sh  (also in $VMLIB).
#
# Busybox ash, not bash: no arrays, no [[ ]], no ${x:a:b}, no <(...).
# The same helpers as tests/lib.sh: ok, not_ok, skip, diag, check,
# check_fails, same_file, done_testing; plus wait_for_path.
#
# Inside the VM: the FILEs given to vm.sh are in /data (the working directory);
# the binaries of the build under test are on PATH (also $VDISK_NBD and
# $VDISK_MOUNT); $T is a private temp dir on tmpfs; /share is the host
# directory given with vm.sh --share (read-write, 9p), if any; the modules
# (nbd, ext4, vfat, loop, fuse, ...) load with modprobe.  Stdout is the TAP
# stream reported to the host; stderr is shown there as diagnostics.

VDISK_NBD=/usr/bin/vdisk-nbd
VDISK_MOUNT=/usr/bin/vdisk-mount
export VDISK_NBD VDISK_MOUNT
T=$(mktemp -d /tmp/vmtest.XXXXXX)
_tap_n=0
_tap_failed=0

ok() { _tap_n=$((_tap_n + 1)); echo "ok $_tap_n - $1"; }
not_ok() {
    _tap_n=$((_tap_n + 1)); _tap_failed=$((_tap_failed + 1))
    echo "not ok $_tap_n - $1"
    shift
    for _l in "$@"; do printf '%s\n' "$_l" | sed 's/^/#   /'; done
    return 0
}
skip() { _tap_n=$((_tap_n + 1)); echo "ok $_tap_n - $1 # SKIP $2"; }
diag() { for _l in "$@"; do printf '%s\n' "$_l" | sed 's/^/# /'; done; }

_sanitizer_report() { grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: UndefinedBehaviorSanitizer' "$1"; }

# check DESC CMD...: passes when CMD exits 0 without sanitizer reports.
# Its output is left in $T/.out and $T/.err.
check() {
    _desc=$1; shift
    if "$@" >"$T/.out" 2>"$T/.err" && ! _sanitizer_report "$T/.err"; then
        ok "$_desc"
    else
        not_ok "$_desc" "command: $*" "$(tail -n 20 "$T/.err")"
    fi
}

# check_fails DESC REGEX CMD...: passes when CMD exits 1, its stderr matches
# REGEX (extended) and no sanitizer complained.
check_fails() {
    _desc=$1 _re=$2; shift 2
    _rc=0
    "$@" >"$T/.out" 2>"$T/.err" || _rc=$?
    if [ "$_rc" -eq 1 ] && grep -qE -- "$_re" "$T/.err" && ! _sanitizer_report "$T/.err"; then
        ok "$_desc"
    else
        not_ok "$_desc" "command: $*" "exit status $_rc, wanted 1 with stderr matching: $_re" \
            "$(tail -n 20 "$T/.err")"
    fi
}

# same_file DESC A B: passes when the files are byte-identical.
same_file() {
    if cmp -s "$2" "$3"; then ok "$1"; else not_ok "$1" "$(cmp "$2" "$3" 2>&1 | head -n 3)"; fi
}

# wait_for_path PATH [SECS]: wait (default 5 s) until PATH exists; returns 1
# if it never does.  For the harness's own checks, not to paper over a
# command that promises the path exists when it returns.
wait_for_path() {
    _n=$(( ${2:-5} * 10 ))
    while [ ! -e "$1" ]; do
        [ "$_n" -le 0 ] && return 1
        _n=$((_n - 1)); sleep 0.1
    done
    return 0
}

done_testing() {
    echo "1..$_tap_n"
    rm -rf "$T"
    [ "$_tap_failed" -eq 0 ] && exit 0 || exit 1
}
