# vdisk-nbd serving Debian's own nbd-client (the nbd project's kernel client),
# in the VM (run by tests/test-kernel-nbd-client.sh).  FILEs: disk.qcow2 (MBR:
# p1 ext4 holding hello.txt), disk.raw (its bytes), hello.txt, pattern.bin
# (1 MiB).  --share: rw.raw (a raw copy of the disk; the host checks what was
# written into it here).  nbd-client is on PATH (vm.sh --bin).
. /vmlib.sh

stop_server() {   # stop_server PIDFILE: SIGTERM, and wait until it has gone
    _p=$(cat "$1" 2>/dev/null)
    [ -n "$_p" ] || return 1
    kill "$_p" 2>/dev/null
    for _i in $(seq 100); do [ -d "/proc/$_p" ] || return 0; sleep 0.05; done
    return 1
}
blocks() { echo $(( $(stat -c %s "$1") / 512 )); }

check "nbd module loads" modprobe nbd nbds_max=16 max_part=16

# --- a read-only qcow2 over a Unix socket, attached through netlink ---
check "vdisk-nbd serves disk.qcow2 read-only on a Unix socket" \
    vdisk-nbd --fork --pid-file "$T/a.pid" -r -t -k "$T/a.sock" /data/disk.qcow2
check "nbd-client -u attaches it to /dev/nbd3" nbd-client -u "$T/a.sock" /dev/nbd3
[ "$(cat /sys/block/nbd3/size 2>/dev/null)" = "$(blocks /data/disk.raw)" ] &&
    ok "/dev/nbd3 has the image's size" || not_ok "/dev/nbd3 size" "$(cat /sys/block/nbd3/size 2>&1)"
[ "$(cat /sys/block/nbd3/ro 2>/dev/null)" = 1 ] && ok "the read-only export gives a read-only device" ||
    not_ok "read-only device" "ro=$(cat /sys/block/nbd3/ro 2>&1)"
same_file "/dev/nbd3 reads as the image" /dev/nbd3 /data/disk.raw
check "nbd-client -c sees it connected" nbd-client -c /dev/nbd3
mkdir -p /mnt/a
check "its ext4 partition mounts" mount -t ext4 -o ro /dev/nbd3p1 /mnt/a
same_file "hello.txt through nbd-client" /data/hello.txt /mnt/a/hello.txt
check "unmount" umount /mnt/a
check "nbd-client -d detaches it" nbd-client -d /dev/nbd3
check "the server (-t) still runs after the client left, and stops on SIGTERM" stop_server "$T/a.pid"

# --- the ioctl interface (-nonetlink) and a 4096-byte block size ---
check "vdisk-nbd serves it again" \
    vdisk-nbd --fork --pid-file "$T/b.pid" -r -t -k "$T/b.sock" /data/disk.qcow2
check "nbd-client -L -b 4096 attaches /dev/nbd4 with the ioctls" \
    nbd-client -L -b 4096 -u "$T/b.sock" /dev/nbd4
[ "$(cat /sys/block/nbd4/queue/logical_block_size 2>/dev/null)" = 4096 ] &&
    ok "the device has 4096-byte blocks" ||
    not_ok "4096-byte blocks" "$(cat /sys/block/nbd4/queue/logical_block_size 2>&1)"
same_file "/dev/nbd4 reads as the image" /dev/nbd4 /data/disk.raw
check "nbd-client -d /dev/nbd4" nbd-client -d /dev/nbd4
check "stop that server" stop_server "$T/b.pid"

# --- a named export over TCP on 127.0.0.1, written through the kernel ---
check "vdisk-nbd serves rw.raw read-write as export \"disk\" on 127.0.0.1" \
    vdisk-nbd --fork --pid-file "$T/c.pid" -t -b 127.0.0.1 -p 10809 -x disk /share/rw.raw
check "nbd-client -l lists the export" nbd-client -l 127.0.0.1 10809
grep -q '^disk' "$T/.out" && ok "the listing names \"disk\"" || not_ok "listing" "$(cat "$T/.out")"
check_fails "nbd-client -N with an unknown export name fails" '.' \
    nbd-client -N nosuch 127.0.0.1 10809 /dev/nbd5
check "nbd-client -N disk attaches /dev/nbd5" nbd-client -N disk 127.0.0.1 10809 /dev/nbd5
[ "$(cat /sys/block/nbd5/ro 2>/dev/null)" = 0 ] && ok "the device is writable" ||
    not_ok "writable device" "ro=$(cat /sys/block/nbd5/ro 2>&1)"
check "write 1 MiB at 5 MiB with O_DIRECT" \
    dd if=/data/pattern.bin of=/dev/nbd5 bs=65536 seek=80 oflag=direct conv=notrunc
check "write 4 KiB at 7 MiB + 4096 through the page cache, then flush" \
    sh -c 'dd if=/data/pattern.bin of=/dev/nbd5 bs=4096 count=1 seek=1793 conv=notrunc,fsync'
dd if=/dev/nbd5 of="$T/back" bs=65536 skip=80 count=16 iflag=direct 2>/dev/null
same_file "the written MiB reads back through the device" "$T/back" /data/pattern.bin
check "nbd-client -d /dev/nbd5" nbd-client -d /dev/nbd5
check "stop the read-write server (flushes)" stop_server "$T/c.pid"
done_testing
