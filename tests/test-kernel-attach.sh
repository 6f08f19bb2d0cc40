#!/usr/bin/env bash
# test-kernel-attach.sh — `vdisk-nbd -c/-d/--list-attached` against a real
# Linux nbd driver: Debian's kernel booted under qemu TCG by tests/kernel/vm.sh
# (this machine's own kernel has no nbd module).  The scenario runs in the
# VM (tests/kernel/scenarios/attach.sh); here the images are made and, after,
# the image the VM wrote through the device is checked.
. "$(dirname "$0")/lib.sh"
. "$VDISK_TOP/tests/kernel/hostlib.sh"
require qemu-system-x86_64 qemu-img sfdisk mkfs.ext4 mkfs.fat mcopy mmd debugfs e2fsck
S=$VDISK_TOP/tests/kernel/scenarios

mkdir -p "$T/src/sub" "$T/share"
printf 'hello from the host\n' >"$T/hello.txt"
head -c 300000 /dev/urandom >"$T/blob.bin"
cp "$T/hello.txt" "$T/src/"
cp "$T/blob.bin" "$T/src/sub/"
truncate -s 24M "$T/disk.raw"
mk() {
    sfdisk -q "$T/disk.raw" <<<$'label: dos\nstart=2048, size=24576, type=83\nstart=26624, size=20480, type=c\n' &&
    mkfs.ext4 -q -F -d "$T/src" "$T/p1.img" 12M &&
    mkfs.fat -C "$T/p2.img" 10240 >/dev/null &&
    MTOOLS_SKIP_CHECK=1 mmd -i "$T/p2.img" ::/sub &&
    MTOOLS_SKIP_CHECK=1 mcopy -i "$T/p2.img" "$T/hello.txt" ::/hello.txt &&
    MTOOLS_SKIP_CHECK=1 mcopy -i "$T/p2.img" "$T/blob.bin" ::/sub/blob.bin &&
    dd if="$T/p1.img" of="$T/disk.raw" bs=512 seek=2048 conv=notrunc status=none &&
    dd if="$T/p2.img" of="$T/disk.raw" bs=512 seek=26624 conv=notrunc status=none &&
    qemu-img convert -c -O qcow2 "$T/disk.raw" "$T/disk.qcow2" &&
    cp "$T/disk.raw" "$T/share/rw.raw" && cp "$T/disk.raw" "$T/share/s.raw" &&
    cp "$T/disk.raw" "$T/share/base.raw" &&
    qemu-img create -q -f qcow2 -b base.raw -F raw "$T/share/rw.qcow2" &&
    qemu-img convert -O vdi "$T/disk.raw" "$T/share/rw.vdi" &&
    qemu-img convert -O vmdk -o subformat=monolithicFlat "$T/disk.raw" "$T/share/rw.vmdk"
}
check "host: a qcow2 holding an MBR disk with ext4 and FAT partitions" mk

vm_tap "vm" --timeout 240 --mem 768 --share "$T/share" "$S/attach.sh" \
    "$T/disk.qcow2" "$T/disk.raw" "$T/hello.txt" "$T/blob.bin"

# What the VM wrote through /dev/nbd1 is in the raw image.
dd if="$T/share/rw.raw" of="$T/rw-p1.img" bs=512 skip=2048 count=24576 status=none
check "host: the written ext4 is clean (e2fsck -fn)" e2fsck -fn "$T/rw-p1.img"
out=$(debugfs -R 'cat /new.txt' "$T/rw-p1.img" 2>/dev/null)
[ "$out" = "written through nbd" ] && ok "host: the file written in the VM is in the image" ||
    not_ok "host: new.txt in the image" "$out"
debugfs -R 'dump /blob2 '"$T/blob2" "$T/rw-p1.img" >/dev/null 2>&1
same_file "host: the copied blob is intact in the image" "$T/blob2" "$T/blob.bin"
dd if="$T/share/rw.raw" of="$T/rw-p2.img" bs=512 skip=26624 count=20480 status=none
out=$(MTOOLS_SKIP_CHECK=1 mtype -i "$T/rw-p2.img" ::/NEW.TXT 2>&1)
[ "$out" = "fat through nbd" ] && ok "host: the FAT file written in the VM is in the image" ||
    not_ok "host: NEW.TXT" "$out"
same_file "host: the -s image is byte-for-byte unchanged" "$T/share/s.raw" "$T/disk.raw"

# What the VM wrote through /dev/nbd6 is in the qcow2, and only there.
check "host: qemu-img check of the qcow2 written through the kernel" qemu-img check -q "$T/share/rw.qcow2"
same_file "host: the qcow2's backing file is unchanged" "$T/share/base.raw" "$T/disk.raw"
qemu-img convert -O raw "$T/share/rw.qcow2" "$T/q.raw"
dd if="$T/q.raw" of="$T/q-p1.img" bs=512 skip=2048 count=24576 status=none
check "host: the ext4 inside the qcow2 is clean (e2fsck -fn)" e2fsck -fn "$T/q-p1.img"
out=$(debugfs -R 'cat /q.txt' "$T/q-p1.img" 2>/dev/null)
[ "$out" = "written into a qcow2" ] && ok "host: the file written in the VM is in the qcow2" ||
    not_ok "host: q.txt in the qcow2" "$out"
debugfs -R 'dump /qblob '"$T/qblob" "$T/q-p1.img" >/dev/null 2>&1
same_file "host: the copied blob is intact in the qcow2" "$T/qblob" "$T/blob.bin"

# What the VM wrote through the kernel into the VDI and the flat vmdk.
for f in vdi vmdk; do
    check "host: qemu-img reads the $f written through the kernel" \
        qemu-img convert -f $f -O raw "$T/share/rw.$f" "$T/f.raw"
    dd if="$T/f.raw" of="$T/f-p1.img" bs=512 skip=2048 count=24576 status=none
    check "host: the ext4 inside the $f is clean (e2fsck -fn)" e2fsck -fn "$T/f-p1.img"
    out=$(debugfs -R 'cat /f.txt' "$T/f-p1.img" 2>/dev/null)
    [ "$out" = "written into a $f" ] && ok "host: the file written in the VM is in the $f" ||
        not_ok "host: f.txt in the $f" "$out"
    debugfs -R 'dump /fblob '"$T/fblob" "$T/f-p1.img" >/dev/null 2>&1
    same_file "host: the copied blob is intact in the $f" "$T/fblob" "$T/blob.bin"
    rm -f "$T/f.raw" "$T/f-p1.img" "$T/fblob"
done
check "host: qemu-img check of the VDI written through the kernel" qemu-img check -q -f vdi "$T/share/rw.vdi"
done_testing
