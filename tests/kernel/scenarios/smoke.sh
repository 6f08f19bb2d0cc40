# The harness's own end-to-end check (run by tests/test-kernel-smoke.sh), in
# the VM.  FILEs: disk.raw (MBR: p1 ext4, p2 FAT) and hello.txt, blob.bin,
# the files that both file systems hold (blob.bin also as sub/blob.bin).
# --share: a directory holding in.txt; out.txt is written there.
. /vmlib.sh

# --- the nbd driver, not attached ---
check "modprobe nbd nbds_max=16 max_part=16" modprobe nbd nbds_max=16 max_part=16
if [ -b /dev/nbd0 ] && [ -b /dev/nbd15 ] && [ ! -e /dev/nbd16 ]; then
    ok "devtmpfs has /dev/nbd0../dev/nbd15 block devices"
else
    not_ok "devtmpfs has /dev/nbd0../dev/nbd15 block devices" "$(ls /dev | grep nbd | tr '\n' ' ')"
fi
size=$(cat /sys/block/nbd0/size 2>&1)
if [ "$size" = 0 ]; then ok "/sys/block/nbd0/size is 0 (not attached)"
else not_ok "/sys/block/nbd0/size is 0 (not attached)" "size: $size"; fi
diag "nbd parameters: max_part=$(cat /sys/module/nbd/parameters/max_part) nbds_max=$(cat /sys/module/nbd/parameters/nbds_max); nbd0 is $(cat /sys/block/nbd0/dev), nbd1 is $(cat /sys/block/nbd1/dev)"

# --- an MBR disk through loop, partitions, ext4 and FAT read-only ---
check "losetup -P /dev/loop0 disk.raw" losetup -P /dev/loop0 /data/disk.raw
if [ -b /dev/loop0p1 ] && [ -b /dev/loop0p2 ]; then
    ok "partition nodes exist as soon as losetup returns (devtmpfs, no udev)"
elif wait_for_path /dev/loop0p2 5 && [ -b /dev/loop0p1 ]; then
    ok "partition nodes exist as soon as losetup returns (devtmpfs, no udev) # SKIP they appeared only after a wait"
else
    not_ok "partition nodes exist as soon as losetup returns (devtmpfs, no udev)" "$(ls /dev | grep loop0 | tr '\n' ' ')"
fi
mkdir -p /mnt/ext4 /mnt/fat
check "ext4 partition mounts read-only" mount -t ext4 -o ro /dev/loop0p1 /mnt/ext4
same_file "ext4: hello.txt as written on the host" /data/hello.txt /mnt/ext4/hello.txt
same_file "ext4: sub/blob.bin as written on the host" /data/blob.bin /mnt/ext4/sub/blob.bin
check "FAT partition mounts read-only" mount -t vfat -o ro /dev/loop0p2 /mnt/fat
same_file "FAT: hello.txt as written on the host" /data/hello.txt /mnt/fat/hello.txt
same_file "FAT: sub/blob.bin as written on the host" /data/blob.bin /mnt/fat/sub/blob.bin
if touch /mnt/ext4/new 2>/dev/null; then not_ok "a read-only mount refuses writes"
else ok "a read-only mount refuses writes"; fi
check "unmount both" sh -c 'umount /mnt/ext4 && umount /mnt/fat'
check "losetup -d" losetup -d /dev/loop0

# --- the host directory given with --share, read-write ---
check "the --share directory is mounted on /share (9p)" grep -q ' /share 9p ' /proc/mounts
check "a file written to /share" sh -c 'cat /share/in.txt - >/share/out.txt <<END
written in the VM
END
sync'

# --- the project's binaries and their libraries work here ---
check "vdisk-nbd --version runs in the VM" vdisk-nbd --version
if grep -q '^vdisk-nbd [0-9]' "$T/.out"; then ok "vdisk-nbd --version prints its version"
else not_ok "vdisk-nbd --version prints its version" "$(cat "$T/.out")"; fi
check "vdisk-mount --version runs in the VM" vdisk-mount --version
done_testing
