#!/usr/bin/env bash
# test-mount-disk.sh — vdisk-mount's disk view and lifecycle: `disk` and `pN`
# equal the image and its partitions (oracle: qemu-img convert, dd of the
# sfdisk ranges); read-only means nothing is written (SHA-256 and mtime of
# every image file before and after, EROFS on open for writing); --rw writes
# raw images; -s keeps the image unchanged; the command returns only when the
# mount is usable; -f, --pid-file, -o; -u exit codes 0/2/3 and it waits for
# the serving process.
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io sfdisk python3 fusermount3 strace

mnt=$T/mnt
mkdir -p "$mnt"
cleanup_mount() { "$VDISK_MOUNT" -u --retry 0 "$1" >/dev/null 2>&1 || fusermount3 -u -z "$1" 2>/dev/null; }
on_exit cleanup_mount "$mnt"

# A disk with an MBR: 2 primaries and 2 logicals, data written at scattered
# offsets (some crossing partition boundaries), under a qcow2 with a backing
# file so the view goes through a chain.
truncate -s 64M "$T/base.raw"
printf 'label: dos\nstart=2048,size=20480,type=83\nstart=22528,size=30720,type=c\nstart=53248,size=65536,type=5\nstart=55296,size=16384,type=83\nstart=73728,size=20480,type=82\n' |
    sfdisk -q "$T/base.raw"
qemu-io -f raw -c 'write -P 0x11 1048576 3000000' -c 'write -P 0x22 11000000 5000000' \
    -c 'write -P 0x33 28000000 1000' "$T/base.raw" >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw "$T/img.qcow2"
qemu-io -c 'write -P 0x44 2000000 70000' -c 'write -P 0x55 37748736 65536' "$T/img.qcow2" >/dev/null
qemu-img convert -O raw "$T/img.qcow2" "$T/oracle.raw"

hash_images() { sha256sum "$T/base.raw" "$T/img.qcow2"; stat -c '%n %Y %s' "$T/base.raw" "$T/img.qcow2"; }
hash_images >"$T/before"

# --- read-only disk view -------------------------------------------------
check "mount the disk view" "$VDISK_MOUNT" "$T/img.qcow2" "$mnt"
# the command returned: the mount must be usable on the very next line
if ls "$mnt" >"$T/ls" 2>&1; then ok "mount is usable as soon as the command returns"; else not_ok "mount usable at once" "$(cat "$T/ls")"; fi
same_file "disk equals qemu-img convert" "$mnt/disk" "$T/oracle.raw"
sfdisk --json "$T/base.raw" >"$T/parts.json"
python3 - "$T/parts.json" >"$T/ranges" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))["partitiontable"]
for p in t["partitions"]:
    n = p["node"][len(t["device"]):]
    if p["type"] in ("5", "f", "85"):
        continue
    print(n, p["start"], p["size"])
EOF
want=$(awk '{printf "p%s ", $1}' "$T/ranges")
have=$(ls "$mnt" | grep -v '^disk$' | sort -V | tr '\n' ' ')
if [ "$have" = "$want" ]; then ok "partition files are $want"; else not_ok "partition files" "want: $want" "have: $have"; fi
while read -r n start size; do
    dd if="$T/oracle.raw" bs=512 skip="$start" count="$size" status=none of="$T/slice"
    same_file "p$n equals its sfdisk range" "$mnt/p$n" "$T/slice"
done <"$T/ranges"
size=$(stat -c %s "$mnt/p5")
if [ "$size" = $((16384 * 512)) ]; then ok "p5 has the exact partition size"; else not_ok "p5 size is $size"; fi
if ( exec 3>>"$mnt/disk" ) 2>"$T/err"; then not_ok "opening for writing fails"; else
    grep -q 'Read-only' "$T/err" && ok "opening for writing fails with EROFS" || not_ok "EROFS expected" "$(cat "$T/err")"; fi
grep -q " $mnt .*fuse.vdisk vdisk:" /proc/self/mountinfo && ok "mount is listed as fuse.vdisk" || not_ok "mountinfo"
# A read-only view answers reads by splicing ranges of the image file into
# the reply (diskview.c): the serving process must be calling splice(2), and
# direct reads of odd sizes at odd places (data, zeros, the backing file,
# runs crossing from one to the other, a logical partition's slice) must
# still equal the oracle.
spid=$(sed -n "s|^.* $mnt .* - fuse.vdisk vdisk:\([0-9]*\):.*|\1|p" /proc/self/mountinfo)
pipe_max=$(cat /proc/sys/fs/pipe-max-size 2>/dev/null || echo 0)
if [ "$pipe_max" -lt $(( (128 << 10) + 19 * 4096 )) ]; then
    skip "reads are spliced" "/proc/sys/fs/pipe-max-size is $pipe_max: too small, the view does not splice"
elif [ -n "$spid" ]; then
    direct_read() { dd if="$mnt/disk" of=/dev/null iflag=direct bs=1M count=2 skip=$((RANDOM % 60)) status=none; }
    syscall_seen "reads of a read-only view are spliced from the image file" "$spid" splice direct_read
else
    not_ok "serving PID not found in mountinfo"
fi
start5=$(awk '$1 == 5 { print $2 * 512 }' "$T/ranges")
if python3 - "$mnt" "$T/oracle.raw" "$start5" >"$T/rr" 2>&1 <<'PY'
import mmap, os, random, sys
mnt, oracle, start5 = sys.argv[1], open(sys.argv[2], 'rb').read(), int(sys.argv[3])
random.seed(11)
buf = mmap.mmap(-1, 4 << 20)
for name, base in (("disk", 0), ("p5", start5)):
    fd = os.open(os.path.join(mnt, name), os.O_RDONLY | os.O_DIRECT)
    size = os.fstat(fd).st_size
    for _ in range(400):
        n = random.choice([4096, 8192, 12288, 65536, 1 << 20, 3 << 20, (4 << 20)])
        off = random.randrange(0, size) // 4096 * 4096
        got = os.preadv(fd, [memoryview(buf)[:n]], off)
        want = oracle[base + off:base + min(off + n, size)]
        if got != len(want) or buf[:got] != want:
            sys.exit(f"{name}: {n} bytes at {off}: got {got} bytes, differ")
    os.close(fd)
PY
then ok "direct reads at random places equal the oracle (disk, p5)"; else not_ok "direct reads" "$(cat "$T/rr")"; fi
check "unmount" "$VDISK_MOUNT" -u "$mnt"
hash_images >"$T/after"
same_file "read-only session left image files (sha256, mtime, size) unchanged" "$T/before" "$T/after"

# --- -u exit codes and waiting for the server -----------------------------
rc=0; "$VDISK_MOUNT" -u "$mnt" 2>"$T/err" || rc=$?
[ $rc -eq 3 ] && grep -q 'not mounted' "$T/err" && ok "-u on a plain directory exits 3" || not_ok "-u not mounted: exit $rc" "$(cat "$T/err")"
rc=0; "$VDISK_MOUNT" -u /proc 2>"$T/err" || rc=$?
[ $rc -eq 3 ] && ok "-u on a mount that is not ours exits 3" || not_ok "-u foreign mount: exit $rc" "$(cat "$T/err")"
check "mount again with --pid-file" "$VDISK_MOUNT" --pid-file "$T/pid" "$T/img.qcow2" "$mnt"
pid=$(cat "$T/pid" 2>/dev/null)
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then ok "pid file holds the live serving process"; else not_ok "pid file: '$pid'"; fi
exec 4<"$mnt/disk"
rc=0; "$VDISK_MOUNT" -u --retry 2 "$mnt" 2>"$T/err" || rc=$?
[ $rc -eq 2 ] && grep -q "held by process $$" "$T/err" && ok "-u with a file held open exits 2 and names the holder" ||
    not_ok "-u busy: exit $rc" "$(cat "$T/err")"
exec 4<&-
check "-u after closing exits 0" "$VDISK_MOUNT" -u "$mnt"
if process_gone "$pid"; then ok "serving process gone after -u"; else not_ok "serving process gone after -u"; fi
[ ! -e "$T/pid" ] && ok "pid file removed" || not_ok "pid file left behind"

# --- foreground ------------------------------------------------------------
"$VDISK_MOUNT" -f "$T/img.qcow2" "$mnt" 2>"$T/fg.err" &
fg=$!
on_exit "kill $fg 2>/dev/null; wait $fg 2>/dev/null"
for _ in $(seq 100); do [ -e "$mnt/disk" ] && break; sleep 0.05; done
same_file "-f serves in the foreground" "$mnt/disk" "$T/oracle.raw"
check "-u a foreground mount" "$VDISK_MOUNT" -u "$mnt"
if wait $fg; then ok "foreground process exits 0 after unmount"; else not_ok "foreground exit status $?"; fi

# --- -o passes FUSE options -------------------------------------------------
check "mount with -o allow_other" "$VDISK_MOUNT" -o allow_other "$T/img.qcow2" "$mnt"
grep " $mnt " /proc/self/mountinfo | grep -q allow_other && ok "-o allow_other reaches the mount" ||
    not_ok "-o allow_other" "$(grep " $mnt " /proc/self/mountinfo)"
check "unmount" "$VDISK_MOUNT" -u "$mnt"
# a max_read of the user's replaces the view's own (libfuse ends a session
# whose init does not repeat it, so this once mounted and died at once)
check "mount with -o max_read=65536" "$VDISK_MOUNT" -o max_read=65536 "$T/img.qcow2" "$mnt"
grep " $mnt " /proc/self/mountinfo | grep -q 'max_read=65536' && ok "-o max_read reaches the mount" ||
    not_ok "-o max_read" "$(grep " $mnt " /proc/self/mountinfo)"
same_file "disk equals qemu-img convert with -o max_read=65536" "$mnt/disk" "$T/oracle.raw"
check "unmount" "$VDISK_MOUNT" -u "$mnt"

# --- -s: writes to a throwaway overlay --------------------------------------
check "mount with -s" "$VDISK_MOUNT" -s "$T/img.qcow2" "$mnt"
head -c 100000 /dev/urandom >"$T/w"
check "write into p1 through -s" dd if="$T/w" of="$mnt/p1" bs=4096 seek=3 conv=notrunc status=none
if cmp -s <(dd if="$mnt/p1" bs=4096 skip=3 count=25 status=none | head -c 100000) "$T/w"; then
    ok "-s writes read back"; else not_ok "-s writes read back"; fi
check "unmount" "$VDISK_MOUNT" -u "$mnt"
hash_images >"$T/after"
same_file "-s left image files unchanged" "$T/before" "$T/after"

# --- --rw on a raw image; refused on qcow2 -----------------------------------
cp "$T/oracle.raw" "$T/rw.raw"
cp "$T/oracle.raw" "$T/model.raw"
check "mount a raw image --rw" "$VDISK_MOUNT" --rw "$T/rw.raw" "$mnt"
check "write into p2" dd if="$T/w" of="$mnt/p2" bs=1 seek=777 conv=notrunc status=none
dd if="$T/w" of="$T/model.raw" bs=1 seek=$((22528 * 512 + 777)) conv=notrunc status=none
rc=0; dd if="$T/w" of="$mnt/p1" bs=1 seek=$((20480 * 512 - 10)) conv=notrunc status=none 2>"$T/err" || rc=$?
[ $rc -ne 0 ] && ok "a write past the end of p1 fails" || not_ok "write past partition end succeeded"
dd if="$T/w" of="$T/model.raw" bs=1 seek=$((2048 * 512 + 20480 * 512 - 10)) count=10 conv=notrunc status=none
check "unmount" "$VDISK_MOUNT" -u "$mnt"
same_file "--rw writes landed in the raw image, nowhere else" "$T/rw.raw" "$T/model.raw"
qemu-img convert -O vmdk -o subformat=streamOptimized "$T/oracle.raw" "$T/img.vmdk"
check_fails "--rw on a read-only format (stream-optimized vmdk) is refused, suggesting -s" "use -s" \
    "$VDISK_MOUNT" --rw "$T/img.vmdk" "$mnt"

# --- --rw on a qcow2 with a backing file: copy-on-write through the view ----
cp "$T/img.qcow2" "$T/rw.qcow2"
cp "$T/oracle.raw" "$T/model.raw"
check "mount a qcow2 --rw" "$VDISK_MOUNT" --rw "$T/rw.qcow2" "$mnt"
check "write into p5 (a logical partition)" dd if="$T/w" of="$mnt/p5" bs=1 seek=5000 conv=notrunc status=none
dd if="$T/w" of="$T/model.raw" bs=1 seek=$((55296 * 512 + 5000)) conv=notrunc status=none
check "unmount" "$VDISK_MOUNT" -u "$mnt"
check "qemu-img check of the written qcow2" qemu-img check -q "$T/rw.qcow2"
qemu-img convert -O raw "$T/rw.qcow2" "$T/rw-out.raw"
same_file "--rw writes landed in the qcow2 (read by qemu)" "$T/rw-out.raw" "$T/model.raw"
hash_images >"$T/after"
grep -q "$(sha256sum "$T/base.raw")" "$T/before" && ok "--rw on the overlay left its backing file unchanged" ||
    not_ok "--rw changed the backing file"

# --- usage errors -------------------------------------------------------------
rc=0; "$VDISK_MOUNT" "$T/img.qcow2" 2>/dev/null || rc=$?
[ $rc -eq 2 ] && ok "missing mount point is a usage error (2)" || not_ok "usage error exit $rc"
check_fails "missing image is an error" "No such file" "$VDISK_MOUNT" "$T/none.qcow2" "$mnt"
check_fails "mount point must exist" "No such file" "$VDISK_MOUNT" "$T/img.qcow2" "$T/nodir"
check "--help" "$VDISK_MOUNT" --help
check "--version" "$VDISK_MOUNT" --version

done_testing
