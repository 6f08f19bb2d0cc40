# vdisk-nbd -c / -d / --list-attached against the real nbd driver (run by
# tests/test-kernel-attach.sh), in the VM.  FILEs: disk.qcow2 (MBR: p1 ext4,
# p2 FAT, both holding hello.txt and sub/blob.bin), disk.raw (its bytes),
# hello.txt, blob.bin.  --share: rw.raw (a raw copy of the disk, written here
# and checked by the host), rw.qcow2 over base.raw (written here; base.raw
# must stay unchanged), rw.vdi, rw.vmdk (monolithicFlat) and rw.delta.vmdk
# (a sparse delta disk over sbase.vmdk), written here and checked by the
# host, and s.raw (must stay unchanged).
. /vmlib.sh

server_pid() { vdisk-nbd --list-attached | awk -v d="$1" '$1 == d { for (i = 1; i <= NF; i++) if ($i == "pid") print $(i + 1) }'; }
gone() { st=$(awk '{print $3}' /proc/$1/stat 2>/dev/null); [ -z "$st" ] || [ "$st" = Z ]; }

# --- read-only attach of a qcow2: partitions usable at once ---
if [ -e /sys/module/nbd ]; then not_ok "nbd is not loaded before the first -c"
else ok "nbd is not loaded before the first -c"; fi
check "-c /dev/nbd0 -r disk.qcow2" vdisk-nbd -c /dev/nbd0 -r /data/disk.qcow2
[ "$(cat $T/.out)" = /dev/nbd0 ] && ok "-c prints the device" || not_ok "-c prints the device" "$(cat $T/.out)"
[ -e /sys/module/nbd ] && ok "-c loaded the nbd module" || not_ok "-c loaded the nbd module"
if [ -b /dev/nbd0p1 ] && [ -b /dev/nbd0p2 ]; then ok "partition nodes exist when -c returns"
else not_ok "partition nodes exist when -c returns" "$(ls /dev | grep nbd0)"; fi
[ "$(cat /sys/block/nbd0/size)" = "$(( $(stat -c %s /data/disk.raw) / 512 ))" ] &&
    ok "device size equals the image" || not_ok "device size" "$(cat /sys/block/nbd0/size)"
same_file "whole device reads as the image" /dev/nbd0 /data/disk.raw
[ "$(cat /sys/block/nbd0/ro)" = 1 ] && ok "-r gives a read-only device" || not_ok "-r read-only"
mkdir -p /mnt/a /mnt/b
check "ext4 partition mounts" mount -t ext4 -o ro /dev/nbd0p1 /mnt/a
check "FAT partition mounts" mount -t vfat -o ro /dev/nbd0p2 /mnt/b
same_file "ext4: hello.txt" /data/hello.txt /mnt/a/hello.txt
same_file "ext4: sub/blob.bin" /data/blob.bin /mnt/a/sub/blob.bin
same_file "FAT: hello.txt" /data/hello.txt /mnt/b/hello.txt
same_file "FAT: sub/blob.bin" /data/blob.bin /mnt/b/sub/blob.bin
check "--list-attached shows it" vdisk-nbd --list-attached
grep -q '^/dev/nbd0.*pid [0-9]*.*disk.qcow2' "$T/.out" && ok "--list-attached names the image and server" ||
    not_ok "--list-attached content" "$(cat $T/.out)"
pid0=$(server_pid /dev/nbd0)
check_fails "-d refuses while a partition is mounted, naming the mount point" \
    '/dev/nbd0p1 is mounted on /mnt/a' vdisk-nbd -d /dev/nbd0
same_file "the device still works after the refused -d" /mnt/a/hello.txt /data/hello.txt
check_fails "-c on a device in use fails" 'already attached' vdisk-nbd -c /dev/nbd0 -r /data/disk.qcow2
check "unmount both" sh -c 'umount /mnt/a && umount /mnt/b'
check "-d after unmounting" vdisk-nbd -d /dev/nbd0
grep -q 'nbd0 disconnected' "$T/.out" && ok "-d says so" || not_ok "-d output" "$(cat $T/.out)"
[ -n "$pid0" ] && gone "$pid0" && ok "the server (pid $pid0) has exited when -d returns" ||
    not_ok "server exited when -d returned" "pid '$pid0'"
[ ! -e /sys/block/nbd0/pid ] && ok "the device is no longer connected" || not_ok "still connected"
check_fails "-d on a device that is not attached" 'not attached' vdisk-nbd -d /dev/nbd0
rc=0; vdisk-nbd -d /dev/sda >/dev/null 2>&1 || rc=$?
[ $rc = 2 ] && ok "-d on a non-nbd name is a usage error" || not_ok "-d /dev/sda exit $rc"
check_fails "-d on a device that does not exist" 'does not exist' vdisk-nbd -d /dev/nbd99

# --- read-write attach of a raw image: files written here reach the image ---
check "-c /dev/nbd1 rw.raw (read-write)" vdisk-nbd -c /dev/nbd1 /share/rw.raw
check "mount its ext4 read-write" mount -t ext4 /dev/nbd1p1 /mnt/a
check "write a file" sh -c 'echo "written through nbd" > /mnt/a/new.txt && cp /data/blob.bin /mnt/a/blob2 && sync'
check "mount its FAT read-write" mount -t vfat /dev/nbd1p2 /mnt/b
check "write a FAT file" sh -c 'echo "fat through nbd" > /mnt/b/NEW.TXT && sync'
check "unmount" sh -c 'umount /mnt/a && umount /mnt/b'
check "-d the read-write device" vdisk-nbd -d /dev/nbd1

# --- read-write attach of a qcow2 over a raw backing file: the overlay takes the writes ---
check "-c /dev/nbd6 rw.qcow2 (read-write, backing file base.raw)" vdisk-nbd -c /dev/nbd6 /share/rw.qcow2
check "mount its ext4 read-write" mount -t ext4 /dev/nbd6p1 /mnt/a
check "write files into the qcow2" sh -c 'echo "written into a qcow2" > /mnt/a/q.txt && cp /data/blob.bin /mnt/a/qblob && sync'
check "unmount" umount /mnt/a
check "-d the qcow2 device" vdisk-nbd -d /dev/nbd6

# --- read-write attach of a VDI, a flat vmdk and a sparse delta vmdk: the kernel writes through ---
for f in vdi vmdk delta.vmdk; do
    check "-c /dev/nbd7 rw.$f (read-write)" vdisk-nbd -c /dev/nbd7 /share/rw.$f
    check "$f: mount its ext4 read-write" mount -t ext4 /dev/nbd7p1 /mnt/a
    check "$f: write files" sh -c "echo 'written into a $f' > /mnt/a/f.txt && cp /data/blob.bin /mnt/a/fblob && sync"
    check "$f: unmount and detach" sh -c 'umount /mnt/a && vdisk-nbd -d /dev/nbd7'
done

# --- -s: writes visible while attached, the image untouched ---
sum_before=$(sha256sum /share/s.raw | cut -d' ' -f1)
check "-c -s" vdisk-nbd -c /dev/nbd2 -s /share/s.raw
check "mount the overlay's ext4 read-write" mount -t ext4 /dev/nbd2p1 /mnt/a
check "write through the overlay" sh -c 'echo overlay > /mnt/a/o.txt && sync'
check "unmount and remount" sh -c 'umount /mnt/a && mount -t ext4 -o ro /dev/nbd2p1 /mnt/a'
[ "$(cat /mnt/a/o.txt 2>&1)" = overlay ] && ok "-s writes are visible while attached" || not_ok "-s write visible"
check "unmount, detach" sh -c 'umount /mnt/a && vdisk-nbd -d /dev/nbd2'
[ "$(sha256sum /share/s.raw | cut -d' ' -f1)" = "$sum_before" ] && ok "-s left the image unchanged" ||
    not_ok "-s changed the image"

# --- auto, twice; several connections ---
check "-c auto" vdisk-nbd -c auto -r /data/disk.qcow2
a1=$(cat $T/.out)
check "-c auto again" vdisk-nbd -c auto -r /data/disk.qcow2
a2=$(cat $T/.out)
case "$a1$a2" in /dev/nbd*/dev/nbd*) ok "auto printed devices ($a1, $a2)" ;; *) not_ok "auto output '$a1' '$a2'" ;; esac
[ "$a1" != "$a2" ] && ok "-c auto twice gives two different devices" || not_ok "same device twice: $a1"
same_file "the second auto device reads the image" "$a2" /data/disk.raw
check "detach both" sh -c "vdisk-nbd -d $a1 && vdisk-nbd -d $a2"
check "--connections 4" vdisk-nbd -c /dev/nbd3 -r --connections 4 /data/disk.qcow2
same_file "4 connections: the device reads the image" /dev/nbd3 /data/disk.raw
check "detach" vdisk-nbd -d /dev/nbd3

# --- the old ioctl interface, where netlink is not there ---
check "-c through the ioctl interface" env VDISK_NBD_NO_NETLINK=1 vdisk-nbd -c /dev/nbd4 -r /data/disk.qcow2
[ -b /dev/nbd4p2 ] && ok "ioctl path: partitions exist when -c returns" || not_ok "ioctl partitions"
same_file "ioctl path: device reads the image" /dev/nbd4 /data/disk.raw
check "ioctl path: detach" env VDISK_NBD_NO_NETLINK=1 vdisk-nbd -d /dev/nbd4

# --- the server killed: I/O fails within the timeout; -d cleans up ---
check "-c with --timeout 5" vdisk-nbd -c /dev/nbd5 -r --timeout 5 /data/disk.qcow2
pid5=$(server_pid /dev/nbd5)
kill -9 "$pid5"
start=$(cut -d. -f1 /proc/uptime)
rc=0; timeout 60 dd if=/dev/nbd5 of=/dev/null bs=1M iflag=direct 2>/dev/null || rc=$?
took=$(( $(cut -d. -f1 /proc/uptime) - start ))
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ $took -lt 30 ]; then ok "reads fail (not hang) once the server is killed (${took}s)"
else not_ok "reads fail once the server is killed" "dd exit $rc after ${took}s"; fi
check "-d cleans up after a killed server" vdisk-nbd -d /dev/nbd5
[ ! -e /sys/block/nbd5/pid ] && ok "the dead device is disconnected" || not_ok "nbd5 still connected"
done_testing
