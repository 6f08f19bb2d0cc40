#!/usr/bin/env bash
# test-kernel-nbd-client.sh — vdisk-nbd as the server of Debian's nbd-client
# (the nbd project's client that attaches /dev/nbdX) against a real Linux nbd
# driver: Debian's kernel under qemu TCG (tests/kernel/vm.sh).  In the VM
# (tests/kernel/scenarios/nbd-client.sh): a read-only qcow2 over a Unix socket
# (netlink), the ioctl interface with 4096-byte blocks, a named read-write
# export over TCP written through the device.  Here: what was written is in
# the raw image, and only there.
. "$(dirname "$0")/lib.sh"
. "$VDISK_TOP/tests/kernel/hostlib.sh"
require qemu-system-x86_64 qemu-img sfdisk mkfs.ext4 nbd-client
S=$VDISK_TOP/tests/kernel/scenarios

mkdir -p "$T/src" "$T/share"
printf 'hello through nbd-client\n' >"$T/hello.txt"
cp "$T/hello.txt" "$T/src/"
head -c 1048576 /dev/urandom >"$T/pattern.bin"
truncate -s 16M "$T/disk.raw"
mk() {
    sfdisk -q "$T/disk.raw" <<<$'label: dos\nstart=2048, size=16384, type=83\n' &&
    mkfs.ext4 -q -F -d "$T/src" "$T/p1.img" 8M &&
    dd if="$T/p1.img" of="$T/disk.raw" bs=512 seek=2048 conv=notrunc status=none &&
    qemu-img convert -O qcow2 "$T/disk.raw" "$T/disk.qcow2" &&
    cp "$T/disk.raw" "$T/share/rw.raw"
}
check "host: a qcow2 holding an MBR disk with an ext4 partition" mk

vm_tap "vm" --timeout 180 --mem 512 --share "$T/share" --bin "$(command -v nbd-client)" \
    "$S/nbd-client.sh" "$T/disk.qcow2" "$T/disk.raw" "$T/hello.txt" "$T/pattern.bin"

# The image now holds the two writes and is otherwise unchanged.
python3 - "$T/share/rw.raw" "$T/disk.raw" "$T/pattern.bin" >"$T/.cmp" 2>&1 <<'PY'
import sys
got, base, pat = (open(p, "rb").read() for p in sys.argv[1:4])
want = bytearray(base)
want[5 << 20:(5 << 20) + len(pat)] = pat
want[(7 << 20) + 4096:(7 << 20) + 8192] = pat[:4096]
if len(got) != len(want):
    sys.exit("size %d, want %d" % (len(got), len(want)))
if got != bytes(want):
    first = next(i for i in range(len(got)) if got[i] != want[i])
    sys.exit("first difference at byte %d" % first)
PY
[ $? -eq 0 ] && ok "host: rw.raw holds exactly the writes made through nbd-client" ||
    not_ok "host: rw.raw holds exactly the writes made through nbd-client" "$(cat "$T/.cmp")"
done_testing
