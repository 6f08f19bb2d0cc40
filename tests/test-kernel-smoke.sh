#!/usr/bin/env bash
# test-kernel-smoke — the VM harness (tests/kernel/vm.sh) works end to end
# against a real kernel: Debian's, booted under qemu TCG.  In the VM: the nbd
# module loads and /dev/nbd* exist unattached; an MBR disk made here (ext4 and
# FAT partitions) attaches through loop and both mount read-only with the
# files written here; a --share directory is read and written; the build's
# vdisk-nbd and vdisk-mount run.  And the
# harness can fail: a scenario with a "not ok", one without a plan, and one
# that hangs each make vm.sh fail.
. "$(dirname "$0")/lib.sh"
. "$VDISK_TOP/tests/kernel/hostlib.sh"
require qemu-system-x86_64 cpio depmod sfdisk mkfs.ext4 mkfs.fat mcopy mmd
S=$VDISK_TOP/tests/kernel/scenarios
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# --- the disk: 16 MiB, MBR, p1 ext4 (8 MiB), p2 FAT (6 MiB) ---
mkdir -p "$T/src/sub"
printf 'hello from the host, %s\n' "$(date)" >"$T/hello.txt"
head -c 300000 /dev/urandom >"$T/blob.bin"
cp "$T/hello.txt" "$T/src/hello.txt"
cp "$T/blob.bin" "$T/src/sub/blob.bin"
truncate -s 16M "$T/disk.raw"
mk() {
    sfdisk -q "$T/disk.raw" <<<$'label: dos\nstart=2048, size=16384, type=83\nstart=18432, size=12288, type=c\n' &&
    mkfs.ext4 -q -F -d "$T/src" "$T/p1.img" 8M &&
    mkfs.fat -C "$T/p2.img" 6144 >/dev/null &&
    MTOOLS_SKIP_CHECK=1 mmd -i "$T/p2.img" ::/sub &&
    MTOOLS_SKIP_CHECK=1 mcopy -i "$T/p2.img" "$T/hello.txt" ::/hello.txt &&
    MTOOLS_SKIP_CHECK=1 mcopy -i "$T/p2.img" "$T/blob.bin" ::/sub/blob.bin &&
    dd if="$T/p1.img" of="$T/disk.raw" bs=512 seek=2048 conv=notrunc status=none &&
    dd if="$T/p2.img" of="$T/disk.raw" bs=512 seek=18432 conv=notrunc status=none
}
check "host: MBR disk with ext4 and FAT partitions made" mk

# --- the real scenario ---
mkdir "$T/share"
echo "from the host" >"$T/share/in.txt"
t0=$(now)
vm_tap "vm" --timeout 120 --share "$T/share" "$S/smoke.sh" "$T/disk.raw" "$T/hello.txt" "$T/blob.bin"
diag "VM boot + smoke scenario: $(since "$t0") s"
if [ "$(cat "$T/share/out.txt" 2>&1)" = $'from the host\nwritten in the VM' ]; then
    ok "the file the VM wrote to /share is in the --share directory"
else
    not_ok "the file the VM wrote to /share is in the --share directory" "$(cat "$T/share/out.txt" 2>&1)"
fi

# --- the harness fails when it must ---
# vm_fails DESC WANT-STATUS WANT-REGEX OUTPUT RC: vm.sh, whose output is in
# OUTPUT, exited WANT-STATUS and printed a line matching WANT-REGEX.
vm_fails() {
    local desc=$1 want=$2 re=$3 out=$4 rc=$5
    if [ "$rc" -eq "$want" ] && grep -qE -- "$re" "$out"; then
        ok "$desc"
    else
        not_ok "$desc" "vm.sh exited $rc (wanted $want), output:" "$(tail -n 15 "$out")"
    fi
}
# Two of these boot side by side (each vm.sh bounds its own time); the
# background one is stopped by PID if this script ends first.
t0=$(now)
"$VM_SH" --timeout 60 "$S/noplan.sh" >"$T/noplan.out" 2>&1 &
bg=$!
stop_bg() { if [ -n "$bg" ]; then kill "$bg" 2>/dev/null; fi; }
on_exit stop_bg
rc=0; "$VM_SH" --timeout 60 "$S/fail.sh" >"$T/fail.out" 2>&1 || rc=$?
vm_fails "a scenario's 'not ok' makes vm.sh fail" 1 '^not ok 2 - deliberate failure' "$T/fail.out" $rc
rc=0; wait "$bg" || rc=$?
bg=""
vm_fails "a scenario without a plan line makes vm.sh fail" 1 \
    '^not ok 2 - the scenario printed no plan line' "$T/noplan.out" $rc
diag "the two failing scenarios, side by side: $(since "$t0") s"
t0=$(now)
rc=0; "$VM_SH" --timeout 3 "$S/hang.sh" >"$T/hang.out" 2>&1 || rc=$?
vm_fails "a VM that outlives --timeout is killed and reported" 3 \
    '^not ok [0-9]+ - VM timed out after 3s' "$T/hang.out" $rc
diag "the hanging scenario: $(since "$t0") s"
qpid=$(sed -n 's/^not ok [0-9]* - VM timed out .*qemu pid \([0-9]*\) killed.*/\1/p' "$T/hang.out")
if [ -n "$qpid" ] && ! kill -0 "$qpid" 2>/dev/null; then
    ok "the timed-out qemu (pid $qpid) is gone"
else
    not_ok "the timed-out qemu (pid ${qpid:-?}) is gone"
fi
done_testing
