#!/usr/bin/env bash
# test-nbd-source.sh — images that live on another NBD server (issue 9):
# blockfmt's nbd:// source (blockfmt/source-nbd.c) under bftest, vdisk-mount
# and vdisk-nbd, and `vdisk-nbd -L`.
#
# Servers: nbdkit's file plugin and `qemu-nbd -f raw` serve image *files* as
# raw bytes, so the format is probed on the remote bytes.  Oracles: qemu-img
# convert -O raw and qemu-img map of the local files, sfdisk for partitions,
# the source tree for the ext4 file system, qemu-nbd -L for export listings.
#
#   formats:  a qcow2 over qemu-nbd whose backing file is an nbd+unix URI on
#             nbdkit; a local qcow2 with a remote backing file; a
#             streamOptimized vmdk over nbdkit; a raw disk over TCP
#             (127.0.0.1); bytes (1 and 4 threads) and map
#   views:    vdisk-mount disk view, -l, -m p1 (ext4 in a remote qcow2);
#             vdisk-nbd re-export (nbdcopy) and --partitions of a remote disk
#   -L:       against vdisk-nbd --partitions and qemu-nbd (names, sizes,
#             descriptions as qemu-nbd -L reports them)
#   writes:   read-only by default (clear message), --rw writes through to a
#             raw export (bftest and the FUSE disk view), a read-only export
#             refuses --rw
#   failures: server killed mid-read (bftest, FUSE: EIO quickly, -u exits 0),
#             a stopped server (timeout, VDISK_NBD_TIMEOUT), bad URIs,
#             unknown export, no server, TLS refused, backing rules (relative
#             or local names in a remote image, other schemes, loops)
#
# Every server listens on a Unix socket in $T (one on 127.0.0.1), is started
# here and stopped here by its PID.  Clients run under `timeout`.
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io qemu-nbd nbdkit nbdcopy sfdisk mkfs.ext4 python3 timeout cmp \
    fusermount3 dd
for p in "$VDISK_NBD" "$VDISK_MOUNT"; do
    [ -x "$p" ] || { not_ok "$p is built" "make testprogs"; done_testing; }
done
# Serving processes' stderr is not ours: in the sanitizer build their
# reports go to files, checked at the end.
[ -n "${ASAN_OPTIONS:-}" ] && export ASAN_OPTIONS="$ASAN_OPTIONS:log_path=$T/san"
[ -n "${UBSAN_OPTIONS:-}" ] && export UBSAN_OPTIONS="$UBSAN_OPTIONS:log_path=$T/san"
TO="timeout 120"
cd "${T:?}" || exit 1
mnt=$T/mnt
mkdir -p "$mnt"
cleanup_mount() { "$VDISK_MOUNT" -u --retry 0 "$1" >/dev/null 2>&1 || fusermount3 -u -z "$1" 2>/dev/null; }
on_exit cleanup_mount "$mnt"

# ------------------------------------------------------------ helpers

# serve NAME CMD...: run a server (CMD, in the foreground) in the
# background until it listens on $T/NAME.sock; sets SPID.  Stopped at exit.
serve() {
    local name=$1 i; shift
    local sock=$T/$name.sock
    rm -f "$sock"
    "$@" >"$T/$name.log" 2>&1 &
    SPID=$!
    on_exit "_nbd_reap $SPID"
    for ((i = 0; i < 300; i++)); do
        nbd_listening "$sock" && return 0
        alive "$SPID" || break
        sleep 0.1
    done
    not_ok "server $name listens" "$(tail -n 5 "$T/$name.log")"
    return 1
}
nbdkit_file() { local name=$1; shift; serve "$name" nbdkit -f -U "$T/$name.sock" "$@"; }
qemu_nbd() { local name=$1; shift; serve "$name" qemu-nbd -k "$T/$name.sock" "$@"; }
stop() { _nbd_reap "$1"; }
# mounted: something is mounted on $mnt
mounted() { grep -q " $mnt .* - fuse.vdisk " /proc/self/mountinfo; }

# remote_matches DESC FILE URI: bftest cat (1 thread, and 4 threads in
# random pieces) and map of URI equal qemu's reading of the local FILE.
remote_matches() {
    local desc=$1 file=$2 uri=$3
    qemu-img convert -O raw "$file" "$T/.oracle.raw"
    qemu-img map --output=json "$file" >"$T/.oracle.json"
    bf_cat_matches "$desc: bytes" "$T/.oracle.raw" "$uri"
    bf_cat_matches "$desc: bytes, 4 threads, random pieces" "$T/.oracle.raw" \
        --threads 4 --chunk 0 --seed 7 "$uri"
    bf_map_matches "$desc: map" "$T/.oracle.json" "$uri"
}

# fails_with_eio_within SECS DESC CMD...: CMD fails (exit 1) with EIO on
# stderr in less than SECS seconds.
fails_with_eio_within() {
    local secs=$1 desc=$2; shift 2
    local start rc=0 el
    start=$(date +%s.%N)
    timeout 60 "$@" >"$T/.out" 2>"$T/.err" || rc=$?
    el=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")
    if [ "$rc" -eq 1 ] && grep -q "Input/output error" "$T/.err" &&
       python3 -c "import sys; sys.exit(0 if $el < $secs else 1)"; then
        ok "$desc (${el}s)"
    else
        not_ok "$desc" "exit $rc after ${el}s (wanted 1, EIO, < ${secs}s)" "$(tail -n 5 "$T/.err")"
    fi
}

# ------------------------------------------------------------- images

# A qcow2 chain: base (data, a hole) under top (data over it, a zero
# cluster over base data, unaligned writes).
qemu-img create -q -f qcow2 base.qcow2 64M
qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -P 0x22 10M 512k' \
    -c 'write -P 0x44 40963k 4k' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qemu-io -f qcow2 -c 'write -P 0x33 512k 1M' -c 'write -z 10M 64k' -c 'write -P 0x66 20M 64k' \
    -c 'write -P 0x77 34603009 1' top.qcow2 >/dev/null
qemu-img convert -O raw top.qcow2 top.raw
qemu-img map --output=json top.qcow2 >top.map.json

# ============================================ qcow2 with a remote backing

nbdkit_file base file file="$T/base.qcow2" || done_testing
BASE_URI=$(nbd_uri "$T/base.sock")
remote_matches "qcow2 over nbdkit" base.qcow2 "$BASE_URI"
check "bftest info of a remote qcow2" "$BFTEST" info "$BASE_URI"
grep -q '^format: qcow2' "$T/.out" && ok "probed as qcow2 from the remote bytes" ||
    not_ok "probe" "$(cat "$T/.out")"
# a socket path relative to the current directory still works once the
# serving process of vdisk-mount has moved to /
check "vdisk-mount with a relative socket= path" $TO "$VDISK_MOUNT" "nbd+unix:///?socket=base.sock" mnt
if mounted; then
    qemu-img convert -O raw base.qcow2 base.raw
    same_file "disk view over a relative socket path equals qemu-img convert" "$mnt/disk" base.raw
    check "vdisk-mount -u" $TO "$VDISK_MOUNT" -u "$mnt"
fi

# the local top, rebased onto the URI: a local image with a remote backing
cp top.qcow2 top-local.qcow2
qemu-img rebase -u -b "$BASE_URI" -F qcow2 top-local.qcow2
bf_cat_matches "local qcow2, backing file an nbd+unix URI: bytes" top.raw top-local.qcow2
bf_map_matches "local qcow2, backing file an nbd+unix URI: map" top.map.json top-local.qcow2

# the same file served raw by qemu-nbd: remote image, remote backing
qemu_nbd top -f raw -r -t "$T/top-local.qcow2" || done_testing
TOP_PID=$SPID
TOP_URI=$(nbd_uri "$T/top.sock")
bf_cat_matches "qcow2 over qemu-nbd, backing over nbdkit: bytes" top.raw "$TOP_URI"
bf_cat_matches "qcow2 over qemu-nbd, backing over nbdkit: bytes, 4 threads" top.raw \
    --threads 4 --chunk 0 --seed 3 "$TOP_URI"
bf_map_matches "qcow2 over qemu-nbd, backing over nbdkit: map" top.map.json "$TOP_URI"
check "bftest info names the remote backing file" "$BFTEST" info "$TOP_URI"
grep -qF "chain[1]: qcow2 $BASE_URI" "$T/.out" && ok "backing chain shows the URI" ||
    not_ok "backing chain" "$(cat "$T/.out")"

# views of it
check "vdisk-mount URI (disk view)" $TO "$VDISK_MOUNT" "$TOP_URI" "$mnt"
if mounted; then
    same_file "disk view of the remote qcow2 equals qemu-img convert" "$mnt/disk" top.raw
    if ( exec 3>>"$mnt/disk" ) 2>"$T/err"; then not_ok "read-only by default: opening for writing fails"
    else grep -q 'Read-only' "$T/err" && ok "read-only by default: EROFS on open for writing" ||
        not_ok "EROFS expected" "$(cat "$T/err")"; fi
    check "vdisk-mount -u" $TO "$VDISK_MOUNT" -u "$mnt"
fi
check "vdisk-mount -l URI" $TO "$VDISK_MOUNT" -l "$TOP_URI"
grep -q 'qcow2' "$T/.out" && grep -qF "$BASE_URI" "$T/.out" && ok "-l shows the format and remote backing" ||
    not_ok "-l output" "$(head -n 20 "$T/.out")"
if start_nbd "$T/re.sock" -r "$TOP_URI"; then
    re_pid=$NBD_PID
    rm -f copy.raw
    if $TO nbdcopy "$(nbd_uri "$T/re.sock")" copy.raw 2>"$T/err"; then
        same_file "vdisk-nbd re-export of the remote qcow2 (nbdcopy) equals qemu-img convert" copy.raw top.raw
    else
        not_ok "nbdcopy of the re-export" "$(cat "$T/err")"
    fi
    wait_nbd "re-exporting server exits after its client" "$re_pid" "$T/re.sock.log"
fi
stop "$TOP_PID"

# ========================================= streamOptimized vmdk, TCP raw

python3 -c "
import random, sys
r = random.Random(5); b = bytearray(32 << 20)
for i in range(40):
    o = r.randrange(0, len(b) - 70000); n = r.randrange(1, 70000)
    b[o:o + n] = bytes([r.randrange(1, 256)]) * n
open('vm.raw', 'wb').write(b)"
qemu-img convert -q -f raw -O vmdk -o subformat=streamOptimized vm.raw so.vmdk
nbdkit_file vmdk file file="$T/so.vmdk" && {
    remote_matches "streamOptimized vmdk over nbdkit" so.vmdk "$(nbd_uri "$T/vmdk.sock")"
    stop "$SPID"
}

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
nbdkit -f -i 127.0.0.1 -p "$port" file file="$T/vm.raw" >"$T/tcp.log" 2>&1 &
tcp_pid=$!
on_exit "_nbd_reap $tcp_pid"
for ((i = 0; i < 100; i++)); do
    grep -q ":$(printf '%04X' "$port") 00000000:0000 0A" /proc/net/tcp && break
    sleep 0.1
done
bf_cat_matches "raw over nbd://127.0.0.1:$port (TCP)" vm.raw "nbd://127.0.0.1:$port"
check_fails "nbds:// to a server without TLS fails cleanly" "TLS|tls" \
    $TO "$BFTEST" info "nbds://127.0.0.1:$port"
# a password in the URI stays out of the world-readable mount table
check "vdisk-mount nbd://user:password@host (disk view)" $TO "$VDISK_MOUNT" \
    "nbd://u:hunter2@127.0.0.1:$port/" "$mnt"
if grep " $mnt " /proc/self/mountinfo | grep -q hunter2; then
    not_ok "the URI's password is in /proc/self/mountinfo"
elif grep -q " $mnt .* vdisk:[0-9]*:nbd://u@127.0.0.1:$port/ " /proc/self/mountinfo; then
    ok "the mount is named by the URI without its password"
else
    not_ok "mount name" "$(grep " $mnt " /proc/self/mountinfo)"
fi
same_file "disk view of nbd://user:password@host" "$mnt/disk" vm.raw
check "vdisk-mount -u" $TO "$VDISK_MOUNT" -u "$mnt"
stop "$tcp_pid"

# ============================= a partitioned disk with ext4, in a qcow2

mkdir -p src/dir/sub
echo hello >src/hello.txt
head -c 300000 /dev/urandom >src/dir/random.bin
ln -s hello.txt src/link
for i in $(seq 1 50); do echo "$i" >"src/dir/sub/f$i"; done
truncate -s 48M disk.raw
printf 'label: dos\nstart=2048,size=40960,type=83\nstart=43008,type=83\n' | sfdisk -q disk.raw
mkfs.ext4 -q -F -d src -E offset=$((2048 * 512)) disk.raw 20M 2>"$T/mkfs.err" ||
    diag "mkfs.ext4: $(cat "$T/mkfs.err")"
qemu-img convert -q -f raw -O qcow2 disk.raw disk.qcow2
nbdkit_file disk file file="$T/disk.qcow2" || done_testing
disk_pid=$SPID
DISK_URI=$(nbd_uri "$T/disk.sock")
bf_cat_matches "partitioned qcow2 over nbdkit: bytes" disk.raw "$DISK_URI"

# --partitions of the remote disk, listed by our -L and by qemu-nbd -L
if start_nbd "$T/parts.sock" -r -t --partitions -D "the whole disk" "$DISK_URI"; then
    parts_pid=$NBD_PID
    check "vdisk-nbd -L against vdisk-nbd --partitions" $TO "$VDISK_NBD" -L -k "$T/parts.sock"
    cp "$T/.out" ours.L
    if $TO qemu-nbd -L -k "$T/parts.sock" >theirs.L 2>"$T/err"; then
        grep -E "^ *(exports available|export|description|size):" ours.L >ours.Lk
        grep -E "^ *(exports available|export|description|size):" theirs.L >theirs.Lk
        if cmp -s ours.Lk theirs.Lk; then ok "-L names, sizes, descriptions equal qemu-nbd -L's"
        else not_ok "-L vs qemu-nbd -L" "$(diff ours.Lk theirs.Lk | head -n 10)"; fi
    else
        not_ok "qemu-nbd -L against vdisk-nbd" "$(cat "$T/err")"
    fi
    grep -q "export: 'p1'" ours.L && grep -q "export: 'p2'" ours.L &&
        grep -q "description: the whole disk" ours.L && grep -q "size:  $((48 << 20))" ours.L &&
        grep -q "size:  $((40960 * 512))" ours.L && ok "-L lists '', p1, p2 with sizes" ||
        not_ok "-L content" "$(cat ours.L)"
    dd if=disk.raw of=p1.raw bs=512 skip=2048 count=40960 status=none
    rm -f copy.raw
    if $TO nbdcopy "$(nbd_uri "$T/parts.sock" p1)" copy.raw 2>"$T/err"; then
        same_file "export p1 of a remote disk equals the partition" copy.raw p1.raw
    else
        not_ok "nbdcopy p1" "$(cat "$T/err")"
    fi
    stop_nbd "--partitions server stops on SIGTERM" "$parts_pid" "$T/parts.sock.log"
fi

# -L against qemu-nbd: name, size and description
if qemu_nbd qn -f raw -r -t -x "the export" -D "served by qemu-nbd" "$T/vm.raw"; then
    qn_pid=$SPID
    check "vdisk-nbd -L against qemu-nbd" $TO "$VDISK_NBD" -L -k "$T/qn.sock"
    grep -q "exports available: 1" "$T/.out" && grep -q "export: 'the export'" "$T/.out" &&
        grep -q "description: served by qemu-nbd" "$T/.out" &&
        grep -q "size:  $((32 << 20))" "$T/.out" && ok "-L shows qemu-nbd's name, description, size" ||
        not_ok "-L of qemu-nbd" "$(cat "$T/.out")"
    check_fails "unknown export fails cleanly" "no export named 'nope'" \
        $TO "$BFTEST" info "$(nbd_uri "$T/qn.sock" nope)"
    stop "$qn_pid"
fi
check_fails "-L with no server fails cleanly" "none.sock" $TO "$VDISK_NBD" -L -k "$T/none.sock"

# ================================================================ writes

cp vm.raw rw.raw
cp vm.raw rw-oracle.raw
nbdkit_file rw file file="$T/rw.raw" && {
    rw_pid=$SPID
    RW_URI=$(nbd_uri "$T/rw.sock")
    head -c 100000 /dev/urandom >patch.bin
    check_fails "a remote image is read-only by default" "read-only" \
        $TO "$BFTEST" write "$RW_URI" 12345 patch.bin
    check "--rw writes through to the remote raw export" $TO "$BFTEST" --rw write "$RW_URI" 12345 patch.bin
    dd if=patch.bin of=rw-oracle.raw bs=1 seek=12345 conv=notrunc status=none
    check "--rw zero through the remote export" $TO "$BFTEST" --rw zero "$RW_URI" 1048576 2097152
    dd if=/dev/zero of=rw-oracle.raw bs=1M seek=1 count=2 conv=notrunc status=none
    same_file "the served file changed accordingly" rw.raw rw-oracle.raw
    check "vdisk-mount --rw URI" $TO "$VDISK_MOUNT" --rw "$RW_URI" "$mnt"
    if mounted; then
        dd if=patch.bin of="$mnt/disk" bs=4096 seek=1000 conv=notrunc status=none 2>"$T/err" &&
            ok "write through the FUSE disk view" || not_ok "dd into the view" "$(cat "$T/err")"
        check "vdisk-mount -u after writing" $TO "$VDISK_MOUNT" -u "$mnt"
        dd if=patch.bin of=rw-oracle.raw bs=4096 seek=1000 conv=notrunc status=none
        same_file "the served file has the FUSE write" rw.raw rw-oracle.raw
    fi
    stop "$rw_pid"
}
nbdkit_file ro -r file file="$T/vm.raw" && {
    check_fails "--rw on a read-only export is refused" "export is read-only" \
        $TO "$BFTEST" --rw write "$(nbd_uri "$T/ro.sock")" 0 patch.bin
    stop "$SPID"
}

# ============================================================== failures

check_fails "unknown URI scheme" "not a URI that can be opened" $TO "$BFTEST" info "http://127.0.0.1/x.qcow2"
check_fails "vsock is not a supported transport" "not a URI that can be opened" \
    $TO "$BFTEST" info "nbd+vsock:///"
check_fails "no server listening" "cannot connect to the NBD server" \
    $TO "$BFTEST" info "$(nbd_uri "$T/none.sock")"
check_fails "no server listening (TCP)" "cannot connect to the NBD server" \
    $TO "$BFTEST" info "nbd://127.0.0.1:1/"
check_fails "vdisk-mount with no server" "cannot connect" $TO "$VDISK_MOUNT" "$(nbd_uri "$T/none.sock")" "$mnt"
check_fails "vdisk-nbd with no server" "cannot connect" \
    $TO "$VDISK_NBD" -r -k "$T/x.sock" "$(nbd_uri "$T/none.sock")"

# backing-file rules for images opened by URI
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 rel.qcow2
qemu-img create -q -f qcow2 -b "$T/base.qcow2" -F qcow2 abs.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 http.qcow2
qemu-img rebase -q -u -b "http://127.0.0.1/base.qcow2" -F qcow2 http.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 loop.qcow2
qemu-img create -q -f vmdk -o subformat=monolithicFlat flat.vmdk 8M
nbdkit_file rules file dir="$T" && {
    R=$T/rules.sock
    qemu-img rebase -q -u -b "nbd+unix:///loop.qcow2?socket=$R" -F qcow2 loop.qcow2
    check_fails "relative backing name in a remote image is refused" "relative name.*opened by NBD URI" \
        $TO "$BFTEST" info "nbd+unix:///rel.qcow2?socket=$R"
    check_fails "local backing path in a remote image is refused" "local path.*server's machine" \
        $TO "$BFTEST" info "nbd+unix:///abs.qcow2?socket=$R"
    check "a remote image opens without its backing file (--no-backing)" \
        $TO "$BFTEST" --no-backing info "nbd+unix:///rel.qcow2?socket=$R"
    check_fails "a backing URI of another scheme is refused" "neither a local file nor an NBD URI" \
        $TO "$BFTEST" info http.qcow2
    check_fails "a remote image backed by itself is a loop" "loops" \
        $TO "$BFTEST" info "nbd+unix:///loop.qcow2?socket=$R"
    # extent files named by a remote vmdk descriptor are not resolved
    check_fails "a remote vmdk descriptor's extent file is refused: it is not an NBD URI" "extent 'flat-flat.vmdk' cannot be opened: an image opened by NBD URI may only name other NBD URIs" \
        $TO "$BFTEST" info "nbd+unix:///flat.vmdk?socket=$R"
    stop "$SPID"
}

# the server killed in the middle of reads
python3 -c "open('slow.raw', 'wb').write(bytes(range(256)) * (256 << 10))"   # 64 MiB
SLOW_URI=$(nbd_uri "$T/slow.sock")
nbdkit_file slow --filter=delay file file="$T/slow.raw" rdelay=50ms && {
    ( sleep 1; kill -9 "$SPID" ) &
    killer=$!
    fails_with_eio_within 15 "bftest cat fails with EIO when the server is killed" \
        "$BFTEST" cat "$SLOW_URI" "$T/killed.raw"
    wait "$killer"
    stop "$SPID"
}
nbdkit_file slow --filter=delay file file="$T/slow.raw" rdelay=50ms && {
    slow_pid=$SPID
    check "vdisk-mount a slow remote image" $TO "$VDISK_MOUNT" "$SLOW_URI" "$mnt"
    if mounted; then
        # O_DIRECT: one delayed request at a time, so the read is still going
        # when the server dies (read-ahead would finish 64 MiB in a second)
        ( sleep 1; kill -9 "$slow_pid" ) &
        killer=$!
        fails_with_eio_within 15 "reads of the FUSE view fail with EIO when the server is killed" \
            dd if="$mnt/disk" of=/dev/null bs=64k iflag=direct
        wait "$killer"
        check "vdisk-mount -u after the server died" $TO "$VDISK_MOUNT" -u "$mnt"
    fi
    stop "$slow_pid"
}
# a server that stops answering: the request times out
nbdkit_file stopped file file="$T/slow.raw" && {
    stopped_pid=$SPID
    on_exit "kill -CONT $stopped_pid 2>/dev/null"
    ( sleep 0.5; kill -STOP "$stopped_pid" ) &
    killer=$!
    fails_with_eio_within 12 "a stopped server times out (VDISK_NBD_TIMEOUT=3)" \
        env VDISK_NBD_TIMEOUT=3 "$BFTEST" --chunk 4096 cat "$(nbd_uri "$T/stopped.sock")" \
        "$T/stopped.raw"
    wait "$killer"
    kill -CONT "$stopped_pid" 2>/dev/null
    stop "$stopped_pid"
}

# ================================ the filesystem view (ext4 in a remote qcow2)

check "vdisk-mount -m p1 URI (filesystem view)" $TO "$VDISK_MOUNT" -m p1 "$DISK_URI" "$mnt"
if mounted; then
    if diff -r -x lost+found src "$mnt" >"$T/diff" 2>&1; then
        ok "the files of the remote ext4 are listed and read as in the source tree"
    else
        not_ok "filesystem view differs from the source tree" "$(head -n 10 "$T/diff")"
    fi
    check "vdisk-mount -u (filesystem view)" $TO "$VDISK_MOUNT" -u "$mnt"
fi
stop "$disk_pid"

if ls "$T"/san.* >/dev/null 2>&1; then
    not_ok "no sanitizer reports from the serving processes" "$(head -n 40 "$T"/san.*)"
else
    ok "no sanitizer reports from the serving processes"
fi
done_testing
