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
    qemu-img convert -O vmdk -o subformat=monolithicFlat "$T/disk.raw" "$T/share/rw.vmdk" &&
    qemu-img convert -O vmdk "$T/disk.raw" "$T/share/sbase.vmdk" &&
    cp "$T/share/sbase.vmdk" "$T/sbase.before" &&
    qemu-img create -q -f vmdk -b sbase.vmdk -F vmdk "$T/share/rw.delta.vmdk"
}
check "host: a qcow2 holding an MBR disk with ext4 and FAT partitions" mk

vm_tap "vm" --timeout 240 --mem 768 --share "$T/share" "$S/attach.sh" \
    "$T/disk.qcow2" "$T/disk.raw" "$T/hello.txt" "$T/blob.bin"

# ext4_written WHERE RAW FILE TEXT BLOB: partition 1 of the raw disk RAW is a
# clean ext4 whose /FILE holds TEXT and whose /BLOB is blob.bin, as the VM
# wrote them (WHERE names the image in the test descriptions).
ext4_written() {
    local where=$1 raw=$2 file=$3 text=$4 blob=$5 out
    dd if="$raw" of="$T/p1.img" bs=512 skip=2048 count=24576 status=none
    check "host: the ext4 inside $where is clean (e2fsck -fn)" e2fsck -fn "$T/p1.img"
    out=$(debugfs -R "cat /$file" "$T/p1.img" 2>/dev/null)
    [ "$out" = "$text" ] && ok "host: the file written in the VM is in $where" ||
        not_ok "host: $file in $where" "$out"
    debugfs -R "dump /$blob $T/blob.out" "$T/p1.img" >/dev/null 2>&1
    same_file "host: the copied blob is intact in $where" "$T/blob.out" "$T/blob.bin"
    rm -f "$T/p1.img" "$T/blob.out"
}

# What the VM wrote through /dev/nbd1 is in the raw image.
ext4_written "the image" "$T/share/rw.raw" new.txt "written through nbd" blob2
dd if="$T/share/rw.raw" of="$T/rw-p2.img" bs=512 skip=26624 count=20480 status=none
out=$(MTOOLS_SKIP_CHECK=1 mtype -i "$T/rw-p2.img" ::/NEW.TXT 2>&1)
[ "$out" = "fat through nbd" ] && ok "host: the FAT file written in the VM is in the image" ||
    not_ok "host: NEW.TXT" "$out"
same_file "host: the -s image is byte-for-byte unchanged" "$T/share/s.raw" "$T/disk.raw"

# What the VM wrote through /dev/nbd6 is in the qcow2, and only there.
check "host: qemu-img check of the qcow2 written through the kernel" qemu-img check -q "$T/share/rw.qcow2"
same_file "host: the qcow2's backing file is unchanged" "$T/share/base.raw" "$T/disk.raw"
qemu-img convert -O raw "$T/share/rw.qcow2" "$T/q.raw"
ext4_written "the qcow2" "$T/q.raw" q.txt "written into a qcow2" qblob

# What the VM wrote through the kernel into the VDI, the flat vmdk and the
# sparse delta vmdk (over sbase.vmdk, which must be unchanged).
for f in vdi vmdk delta.vmdk; do
    check "host: qemu-img reads the $f written through the kernel" \
        qemu-img convert -f "${f##*.}" -O raw "$T/share/rw.$f" "$T/f.raw"
    ext4_written "the $f" "$T/f.raw" f.txt "written into a $f" fblob
    rm -f "$T/f.raw"
done
check "host: qemu-img check of the VDI written through the kernel" qemu-img check -q -f vdi "$T/share/rw.vdi"
check "host: qemu-img check of the delta vmdk written through the kernel" \
    qemu-img check -q -f vmdk "$T/share/rw.delta.vmdk"
same_file "host: the delta vmdk's sparse parent is unchanged" "$T/share/sbase.vmdk" "$T/sbase.before"
done_testing
