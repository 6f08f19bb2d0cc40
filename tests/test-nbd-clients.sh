#!/usr/bin/env bash
# test-nbd-clients.sh — vdisk-nbd against real NBD clients: nbdinfo, nbdcopy,
# nbdsh (libnbd), qemu-img, qemu-io, qemu-nbd -L and fio --ioengine=nbd.
#
# Images are made here with qemu-img, qemu-io and sfdisk; the oracles are
# qemu too: `qemu-img convert -O raw` (bytes), `qemu-img map --output=json`
# (allocation, backing depth), `qemu-img convert -l` (internal snapshots),
# `sfdisk --json` (partitions), qemu-io applying the same writes locally,
# `qemu-img compare` and `qemu-img check`.
#
#   clients:    nbdinfo --list/--json/--map/--map=qemu:allocation-depth,
#               nbdcopy and qemu-img compare for the disk and per partition
#               (--partitions, -P N), qemu-nbd -L, TCP on 127.0.0.1
#   writes:     qemu-io over NBD (write, FUA, zero, discard, flush) on a raw
#               image served read-write equals the same qemu-io commands run
#               on a local copy; the same on qcow2 (alone and over a backing
#               file) once the library writes qcow2; nbdcopy (4 connections)
#               and fio (2 x 32 in flight, verified) writing into the server;
#               --partitions read-write stays inside each partition; -s
#               leaves the image byte-for-byte unchanged; -r -s is read-only;
#               -l serves an internal snapshot; a format the library cannot
#               write is refused read-write with a hint at -r and -s
#   lifetime:   socket activation (nbdinfo/nbdcopy -- [ vdisk-nbd ... ]),
#               --fork --pid-file (and an unwritable pid file: no daemon
#               left), exit after the first client without -t, -t, -e 2 (a
#               third client waits), SIGTERM (idle client connected too),
#               --help/--version, usage errors
#
# Every server listens on a Unix socket in $T (one test uses 127.0.0.1), is
# started by this script and stopped by its PID.  Client commands run under
# `timeout` so that a hung server fails a test instead of the run.
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io qemu-nbd nbdinfo nbdcopy sfdisk python3 timeout cmp sha256sum fio
require_nbdsh
require_vdisk_nbd

TO="timeout 60"
MiB=$((1 << 20))
cd "${T:?}" || exit 1

# ------------------------------------------------------------ helpers

# nbdmap.py ORACLE.json NBDINFO.json base|depth [START LEN]: does
# `nbdinfo --map --json` (base:allocation, or qemu:allocation-depth) say what
# `qemu-img map --output=json` says (clipped to [START, START+LEN) and moved
# to 0 when given)?  Runs are coalesced first.  base: type = HOLE(1) unless
# data, | ZERO(2) when zero and not data (qemu's data+zero is data, see
# mapcmp.py).  depth: 0 when not present, else qemu's depth + 1.
cat >"$T/nbdmap.py" <<'EOF'
import json, sys

def runs(entries, key, start=0, length=None):
    out, pos = [], 0
    end = start + length if length is not None else None
    for e in entries:
        s, l, k = key(e)
        if s != pos:
            sys.exit(f"gap or overlap at {s} (expected {pos}): {e}")
        pos = s + l
        a, b = s, s + l
        if end is not None:
            a, b = max(a, start), min(b, end)
            if a >= b:
                continue
        a -= start; b -= start
        if out and out[-1][2] == k and out[-1][1] == a:
            out[-1][1] = b
        else:
            out.append([a, b, k])
    return out

oracle = json.load(open(sys.argv[1]))
ours = json.load(open(sys.argv[2]))
mode = sys.argv[3]
window = [int(x) for x in sys.argv[4:6]]

def qkey(e):
    if mode == "base":
        data = e["data"]
        t = (0 if data else 1) | (2 if e["zero"] and not data else 0)
    else:
        t = e["depth"] + 1 if e["present"] else 0
    return e["start"], e["length"], t

a = runs(oracle, qkey, *window)
b = runs(ours, lambda e: (e["offset"], e["length"], e["type"]))
if a != b:
    print("qemu-img map:", a[:8])
    print("nbdinfo map: ", b[:8])
    sys.exit(1)
EOF

# map_matches DESC ORACLE.json MODE URI [START LEN]: nbdinfo --map of URI
# equals the qemu-img map ORACLE (see nbdmap.py).
map_matches() {
    local desc=$1 oracle=$2 mode=$3 uri=$4; shift 4
    local arg=--map
    [ "$mode" = depth ] && arg=--map=qemu:allocation-depth
    if ! $TO nbdinfo --json "$arg" "$uri" >"$T/.nbdmap.json" 2>"$T/.err"; then
        not_ok "$desc" "nbdinfo $arg $uri failed" "$(tail -n 5 "$T/.err")"
    elif ! python3 "$T/nbdmap.py" "$oracle" "$T/.nbdmap.json" "$mode" "$@" >"$T/.mapdiff" 2>&1; then
        not_ok "$desc" "$(head -n 6 "$T/.mapdiff")"
    else
        ok "$desc"
    fi
}

# copy_matches DESC URI ORACLE [NBDCOPY OPTIONS...]: nbdcopy URI equals ORACLE.
copy_matches() {
    local desc=$1 uri=$2 oracle=$3; shift 3
    rm -f "$T/.copy.raw"
    if ! $TO nbdcopy "$@" "$uri" "$T/.copy.raw" 2>"$T/.err"; then
        not_ok "$desc" "nbdcopy $* $uri failed" "$(tail -n 5 "$T/.err")"
    else
        same_file "$desc" "$oracle" "$T/.copy.raw"
    fi
    rm -f "$T/.copy.raw"
}

# json_check DESC FILE PYTHON-EXPR: EXPR (with j = the parsed FILE) is true.
json_check() {
    local desc=$1 file=$2 expr=$3
    if python3 -c "import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if ($expr) else 1)" \
        "$file" 2>"$T/.err"; then
        ok "$desc"
    else
        not_ok "$desc" "false: $expr" "$(head -c 1500 "$file")" "$(tail -n 3 "$T/.err")"
    fi
}

# usage_error DESC ARGS...: vdisk-nbd ARGS exits 2 with a message.
usage_error() {
    local desc=$1 rc=0; shift
    $TO "$VDISK_NBD" "$@" >"$T/.out" 2>"$T/.err" </dev/null || rc=$?
    if [ "$rc" -eq 2 ] && [ -s "$T/.err" ] && ! _sanitizer_report "$T/.err"; then
        ok "$desc"
    else
        not_ok "$desc" "vdisk-nbd $* exited $rc (wanted 2 and a message)" "$(tail -n 5 "$T/.err")"
    fi
}

# ------------------------------------------------------------- images

# A qcow2 with a qcow2 backing file, data at scattered (partly unaligned)
# offsets in both layers, a zero cluster over backing data, and a hole.
qemu-img create -q -f qcow2 base.qcow2 64M
qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -P 0x22 10M 512k' \
    -c 'write -P 0x44 40963k 4k' -c 'write -P 0x55 66060800 100k' base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qemu-io -f qcow2 -c 'write -P 0x33 512k 1M' -c 'write -z 10M 64k' -c 'write -P 0x66 20M 64k' \
    -c 'write -P 0x77 34603009 1' -c 'write -P 0x88 60M 2M' top.qcow2 >/dev/null
qemu-img convert -O raw top.qcow2 top.raw
qemu-img convert -O raw base.qcow2 base.raw
qemu-img map --output=json top.qcow2 >top.map.json
TOPSZ=$((64 * MiB))

# An MBR disk (in a qcow2): p1, p2 primary, p3 extended holding logical p5.
truncate -s 32M disk.raw
sfdisk -q disk.raw >/dev/null 2>sfdisk.err <<'EOF'
label: dos
start=2048, size=16384, type=83
start=18432, size=12288, type=7
start=30720, type=5
start=32768, size=16384, type=83
EOF
qemu-io -f raw -c 'write -P 0xa1 1M 3M' -c 'write -P 0xa2 7M 100000' -c 'write -P 0xb1 9M 1M' \
    -c 'write -P 0xb2 14M 1M' -c 'write -P 0xc5 16M 2M' -c 'write -P 0xc6 23M 4096' disk.raw >/dev/null
qemu-img convert -O qcow2 disk.raw disk.qcow2
qemu-img map --output=json disk.qcow2 >disk.map.json
sfdisk --json disk.raw >disk.parts.json
# "N START LENGTH" (bytes) for every partition but the extended container.
python3 - >disk.parts <<'EOF'
import json
t = json.load(open("disk.parts.json"))["partitiontable"]
for p in t["partitions"]:
    if p["type"] in ("5", "f", "85"):
        continue
    n = int(p["node"][len("disk.raw"):])
    print(n, p["start"] * 512, p["size"] * 512)
EOF
while read -r n start len; do
    dd if=disk.raw of="p$n.raw" bs=512 skip=$((start / 512)) count=$((len / 512)) status=none
done <disk.parts
if [ "$(cut -d' ' -f1 disk.parts | tr '\n' ' ')" = "1 2 5 " ]; then
    ok "sfdisk made partitions 1, 2 and logical 5"
else
    not_ok "sfdisk made partitions 1, 2 and logical 5" "$(cat disk.parts sfdisk.err)"
fi

# A raw image: data, a hole, more data.
python3 -c '
import random, sys
r = random.Random(4)
sys.stdout.buffer.write(bytes(r.getrandbits(8) for _ in range(1 << 20)))' >raw.img
truncate -s 6M raw.img
python3 -c 'import sys; sys.stdout.buffer.write(b"vdisk" * 200000)' | \
    dd of=raw.img bs=1M seek=4 conv=notrunc status=none
truncate -s 8M raw.img
cp raw.img raw.orig

# The comparisons below can fail: sanity checks on what they compare.
if ! cmp -s top.raw base.raw && ! python3 nbdmap.py top.map.json <(qemu-img map --output=json \
        base.qcow2 | python3 -c '
import json, sys
print(json.dumps([{"offset": e["start"], "length": e["length"], "type": 0 if e["data"] else 3}
                  for e in json.load(sys.stdin)]))') base >/dev/null; then
    ok "sanity: the oracles tell the two layers apart (bytes and map)"
else
    not_ok "sanity: the oracles tell the two layers apart (bytes and map)"
fi

# ------------------------------------------- nbdinfo on a qcow2 chain

S=$T/top.sock
if start_nbd "$S" -r -t -e 0 -D "test disk: qcow2 over a backing file" top.qcow2; then
    pid=$NBD_PID
    U=$(nbd_uri "$S")
    check "nbdinfo --json" sh -c "$TO nbdinfo --json '$U' >info.json"
    json_check "nbdinfo --json: size" info.json "j['exports'][0]['export-size'] == $TOPSZ"
    json_check "nbdinfo --json: read-only, no trim/zero" info.json \
        "j['exports'][0]['is_read_only'] and not j['exports'][0]['can_trim'] and not j['exports'][0]['can_zero']"
    json_check "nbdinfo --json: contexts base:allocation and qemu:allocation-depth" info.json \
        "set(j['exports'][0]['contexts']) >= {'base:allocation', 'qemu:allocation-depth'}"
    json_check "nbdinfo --json: description" info.json \
        "j['exports'][0]['description'] == 'test disk: qcow2 over a backing file'"
    json_check "nbdinfo --json: structured replies, flush, fua, block sizes 1/4096/32M" info.json \
        "j['structured'] and j['exports'][0]['can_flush'] and j['exports'][0]['can_fua'] and
         (j['exports'][0]['block_size_minimum'], j['exports'][0]['block_size_maximum']) == (1, 32 << 20)"
    json_check "nbdinfo --json: multi-conn advertised with -e 0" info.json \
        "j['exports'][0]['can_multi_conn']"
    check "nbdinfo --list" sh -c "$TO nbdinfo --list --json '$U' >list.json"
    json_check "nbdinfo --list: the one export, with its description" list.json \
        "[e['export-name'] for e in j['exports']] == [''] and
         j['exports'][0]['description'].startswith('test disk')"
    map_matches "nbdinfo --map equals qemu-img map" top.map.json base "$U"
    map_matches "nbdinfo --map=qemu:allocation-depth shows the backing layer" top.map.json depth "$U"
    if $TO nbdinfo --map=qemu:allocation-depth "$U" 2>/dev/null | grep -q 'backing depth 2'; then
        ok "nbdinfo --map=qemu:allocation-depth names 'backing depth 2'"
    else
        not_ok "nbdinfo --map=qemu:allocation-depth names 'backing depth 2'"
    fi
    copy_matches "nbdcopy (4 connections) equals qemu-img convert" "$U" top.raw
    copy_matches "nbdcopy --connections=1 --request-size=65536 equals qemu-img convert" "$U" top.raw \
        --connections=1 --request-size=65536
    check "qemu-img compare nbd+unix with the qcow2" $TO qemu-img compare -f raw -F qcow2 "$U" top.qcow2
    if ! $TO qemu-img compare -q -f raw -F qcow2 "$U" base.qcow2 2>/dev/null; then
        ok "sanity: qemu-img compare tells the disk from its backing file"
    else
        not_ok "sanity: qemu-img compare tells the disk from its backing file"
    fi
    check "qemu-io reads the patterns over NBD" sh -c "$TO qemu-io -r -f raw \
        -c 'read -P 0x11 0 512k' -c 'read -P 0x33 512k 1M' -c 'read -P 0 10M 64k' \
        -c 'read -P 0x22 10304k 448k' -c 'read -P 0x77 34603009 1' -c 'read -P 0x55 66060800 100k' \
        '$U' >qio.out 2>&1 && ! grep -qiE 'fail|error' qio.out"
    stop_nbd "SIGTERM with clients gone: exit 0" "$pid" "$S.log" "$S"
fi

# ---------------------------------------------- partitions (--partitions, -P)

S=$T/disk.sock
if start_nbd "$S" -r -t -e 0 --partitions disk.qcow2; then
    pid=$NBD_PID
    check "nbdinfo --list with --partitions" sh -c "$TO nbdinfo --list --json '$(nbd_uri "$S")' >plist.json"
    json_check "--partitions exports '', p1, p2, p5 (not the extended p3)" plist.json \
        "sorted(e['export-name'] for e in j['exports']) == ['', 'p1', 'p2', 'p5']"
    while read -r n start len; do
        json_check "--partitions: p$n has the size sfdisk gives ($len)" plist.json \
            "[e['export-size'] for e in j['exports'] if e['export-name'] == 'p$n'] == [$len]"
    done <disk.parts
    json_check "--partitions: descriptions say which partition" plist.json \
        "all(('partition ' + e['export-name'][1:]) in e.get('description', '')
             for e in j['exports'] if e['export-name'])"
    if $TO qemu-nbd -L -k "$S" >qlist.out 2>&1 && grep -q "exports available: 4" qlist.out &&
        grep -q "export: 'p5'" qlist.out && grep -q "export: ''" qlist.out; then
        ok "qemu-nbd -L lists the 4 exports"
    else
        not_ok "qemu-nbd -L lists the 4 exports" "$(head -n 20 qlist.out)"
    fi
    copy_matches "nbdcopy of the whole disk equals the raw disk" "$(nbd_uri "$S")" disk.raw
    map_matches "nbdinfo --map of the whole disk equals qemu-img map" disk.map.json base "$(nbd_uri "$S")"
    while read -r n start len; do
        copy_matches "nbdcopy of export p$n equals partition $n (dd)" "$(nbd_uri "$S" "p$n")" "p$n.raw"
        check "qemu-img compare export p$n with partition $n" \
            $TO qemu-img compare -f raw -F raw "$(nbd_uri "$S" "p$n")" "p$n.raw"
        map_matches "nbdinfo --map of p$n equals qemu-img map of its range" disk.map.json base \
            "$(nbd_uri "$S" "p$n")" "$start" "$len"
    done <disk.parts
    if ! $TO qemu-img compare -q -f raw -F raw "$(nbd_uri "$S" p1)" p2.raw 2>/dev/null; then
        ok "sanity: qemu-img compare tells p1 from p2"
    else
        not_ok "sanity: qemu-img compare tells p1 from p2"
    fi
    stop_nbd "--partitions server stops on SIGTERM" "$pid" "$S.log" "$S"
fi

# -P N: one partition as the only export; the server exits after the client.
while read -r n start len; do
    S=$T/part$n.sock
    if start_nbd "$S" -r -P "$n" disk.qcow2; then
        copy_matches "-P $n: nbdcopy equals partition $n" "$(nbd_uri "$S")" "p$n.raw"
        wait_nbd "-P $n: the server exits after its client" "$NBD_PID" "$S.log"
    fi
done <disk.parts
check_fails "-P 3 (the extended container) is refused" 'partition 3' \
    $TO "$VDISK_NBD" -r -P 3 -k "$T/bad.sock" disk.qcow2
check_fails "-P 9 (no such partition) is refused" 'partition 9' \
    $TO "$VDISK_NBD" -r -P 9 -k "$T/bad.sock" disk.qcow2
check_fails "-P on a disk without a partition table is refused" 'partition|table' \
    $TO "$VDISK_NBD" -r -P 1 -k "$T/bad.sock" raw.img
check_fails "-x p1 with --partitions is refused (the name is used twice)" "p1" \
    $TO "$VDISK_NBD" -r --partitions -x p1 -k "$T/bad.sock" disk.qcow2

# --partitions on a writable raw disk: writes through a partition export land
# at the partition's offset in the file, and stop at the partition's end.
cp disk.raw diskrw.raw
S=$T/diskrw.sock
if start_nbd "$S" -t -e 0 --partitions diskrw.raw; then
    pid=$NBD_PID
    cat >partwrite.py <<EOF
import errno, nbd
parts = {int(n): (int(s), int(l)) for n, s, l in (x.split() for x in open("disk.parts"))}
want = bytearray(open("disk.raw", "rb").read())
for n, (start, length) in parts.items():
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.connect_uri("nbd+unix:///p%d?socket=$S" % n)
    assert h.get_size() == length and not h.is_read_only()
    for off, data in ((0, bytes([0xf0 + n]) * 4096), (length - 1000, bytes([0xe0 + n]) * 1000)):
        h.pwrite(data, off)
        want[start + off:start + off + len(data)] = data
    h.zero(65536, 65536)
    want[start + 65536:start + 131072] = bytes(65536)
    for what, f, args in (("write", h.pwrite, (b"x" * 512, length - 256)),
                          ("zero", h.zero, (512, length - 256))):
        try:
            f(*args)
            raise AssertionError("p%d: %s past the partition's end succeeded" % (n, what))
        except nbd.Error as e:
            assert e.errnum == errno.ENOSPC, (n, what, e)
    h.flush()
    h.shutdown()
open("diskrw.want", "wb").write(want)
print("ok")
EOF
    check "--partitions, read-write: writes to p1, p2, p5 at both ends, ENOSPC past them" \
        sh -c "$TO $NBDSH -n -c - <partwrite.py"
    stop_nbd "--partitions, read-write: SIGTERM: exit 0" "$pid" "$S.log" "$S"
    same_file "--partitions, read-write: the disk file holds exactly those writes" diskrw.want diskrw.raw
fi

# -x NAME: the export has that name, and "" is not served.
S=$T/named.sock
if start_nbd "$S" -r -t -x "my disk/1" raw.img; then
    copy_matches "-x NAME: nbdcopy of export 'my disk/1' equals the image" \
        "nbd+unix:///my%20disk/1?socket=$S" raw.img
    if ! $TO nbdinfo --size "$(nbd_uri "$S")" >/dev/null 2>&1; then
        ok "-x NAME: the default export '' is not there"
    else
        not_ok "-x NAME: the default export '' is not there"
    fi
    stop_nbd "-x NAME: SIGTERM: exit 0" "$NBD_PID" "$S.log" "$S"
fi

# -r wins over -s, as in qemu-nbd.
S=$T/rs.sock
if start_nbd "$S" -r -s raw.img; then
    if $TO nbdinfo --json "$(nbd_uri "$S")" >rs.json 2>&1; then
        json_check "-r -s: the export is read-only" rs.json "j['exports'][0]['is_read_only']"
    else
        not_ok "-r -s: the export is read-only" "$(cat rs.json)"
    fi
    wait_nbd "-r -s: exits after its client" "$NBD_PID" "$S.log"
fi

# ------------------------------------------------------------ TCP

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$VDISK_NBD" -r -b 127.0.0.1 -p "$port" raw.img 2>tcp.log &
pid=$!
on_exit "_nbd_reap $pid"
hexport=$(printf '%04X' "$port")
for ((i = 0; i < 300; i++)); do
    grep -q "0100007F:$hexport 00000000:0000 0A" /proc/net/tcp && break
    alive "$pid" || break
    sleep 0.1
done
copy_matches "TCP on 127.0.0.1:$port: nbdcopy equals the raw image" "nbd://127.0.0.1:$port" raw.img
wait_nbd "TCP server exits after its client" "$pid" tcp.log

# ---------------------------------------- writes with qemu-io (raw, read-write)

# The same qemu-io commands, over NBD and on a local copy.
QIO_WRITES=(-c 'write -P 0xaa 0 64k' -c 'write -P 0xbb 100000 5000' -c 'write -f -P 0xcc 1M 128k'
    -c 'write -z 2M 256k' -c 'write -z -u 3M 128k' -c 'discard 4M 64k' -c 'flush'
    -c 'write -P 0xdd 8384512 4096' -c 'write -f -z 5M 1000' -c 'write -P 0xee 6291455 3')
QIO_READS=(-c 'read -P 0xaa 0 64k' -c 'read -P 0xbb 100000 5000' -c 'read -P 0xcc 1M 128k'
    -c 'read -P 0 2M 256k' -c 'read -P 0 3M 128k' -c 'read -P 0xdd 8384512 4096'
    -c 'read -P 0 5M 1000' -c 'read -P 0xee 6291455 3')
cp raw.orig rw.img
cp raw.orig local.img
$TO qemu-io -f raw -d unmap "${QIO_WRITES[@]}" local.img >/dev/null 2>&1
S=$T/rw.sock
if start_nbd "$S" rw.img; then
    pid=$NBD_PID
    if $TO qemu-io -f raw -d unmap "${QIO_WRITES[@]}" "${QIO_READS[@]}" "$(nbd_uri "$S")" \
        >qio-rw.out 2>&1 && ! grep -qiE 'fail|error' qio-rw.out; then
        ok "qemu-io over NBD: write, write -f (FUA), write -z, discard, flush, read back"
    else
        not_ok "qemu-io over NBD: write, write -f (FUA), write -z, discard, flush, read back" \
            "$(grep -iE 'fail|error' qio-rw.out | head -n 5)"
    fi
    wait_nbd "read-write server exits cleanly after its client" "$pid" "$S.log"
    same_file "the served raw file equals the same qemu-io commands run locally" local.img rw.img
    if ! cmp -s raw.orig rw.img; then ok "sanity: the writes changed the file"; else
        not_ok "sanity: the writes changed the file"; fi
fi

# The same on qcow2 once the library writes qcow2 (bftest --rw opens it):
# a standalone qcow2 and one over a backing file (partial writes into
# clusters whose data is in the backing file).  Oracle: qemu-io on copies;
# qemu-img compare for the content, qemu-img check for the metadata.
cp top.qcow2 probe.qcow2
if "$BFTEST" --rw info probe.qcow2 >/dev/null 2>&1; then
    qemu-img create -q -f qcow2 solo.qcow2 16M
    qemu-io -f qcow2 -c 'write -P 0x21 0 3M' -c 'write -P 0x22 5M 1M' -c 'write -z 7M 64k' \
        solo.qcow2 >/dev/null
    for img in solo.qcow2 top.qcow2; do
        cp "$img" "w-$img"
        cp "$img" "l-$img"
        $TO qemu-io -f qcow2 -d unmap "${QIO_WRITES[@]}" "l-$img" >/dev/null 2>&1
        S=$T/w-$img.sock
        start_nbd "$S" "w-$img" || continue
        pid=$NBD_PID
        if $TO qemu-io -f raw -d unmap "${QIO_WRITES[@]}" "${QIO_READS[@]}" "$(nbd_uri "$S")" \
            >"qio-$img.out" 2>&1 && ! grep -qiE 'fail|error' "qio-$img.out"; then
            ok "qcow2 read-write ($img): qemu-io writes over NBD read back"
        else
            not_ok "qcow2 read-write ($img): qemu-io writes over NBD read back" \
                "$(grep -iE 'fail|error' "qio-$img.out" | head -n 5)"
        fi
        wait_nbd "qcow2 read-write ($img): the server exits cleanly" "$pid" "$S.log"
        check "qcow2 read-write ($img): qemu-img compare with qemu-io's copy" \
            qemu-img compare -f qcow2 -F qcow2 "w-$img" "l-$img"
        check "qcow2 read-write ($img): qemu-img check finds no errors or leaks" \
            qemu-img check -f qcow2 "w-$img"
    done
    if ! qemu-img compare -q -f qcow2 -F qcow2 w-solo.qcow2 solo.qcow2 2>/dev/null; then
        ok "sanity: the qcow2 writes changed the image"
    else
        not_ok "sanity: the qcow2 writes changed the image"
    fi
else
    not_ok "qcow2 served read-write" "qcow2 images cannot be written by this build"
fi

# ------------------- many writers at once: nbdcopy and fio into the server

# nbdcopy writes with 4 connections (multi-conn, -e 0) and zeroes the
# source's holes; fio writes random sizes with 32 requests in flight from
# two connections and verifies every block (crc32c).  Raw, and qcow2 when
# the library writes it (concurrent cluster allocation).
python3 -c '
import random, sys
sys.stdout.buffer.write(random.Random(9).randbytes(6 << 20))' >src.raw
truncate -s 32M src.raw
printf 'tail of the source' | dd of=src.raw bs=1 seek=$((30 * MiB)) conv=notrunc status=none
truncate -s 32M sink.raw
sinks="sink.raw"
if [ -e probe.qcow2 ] && "$BFTEST" --rw info probe.qcow2 >/dev/null 2>&1; then
    qemu-img create -q -f qcow2 sink.qcow2 32M
    sinks="$sinks sink.qcow2"
fi
for img in $sinks; do
    S=$T/$img.sock
    start_nbd "$S" -t -e 0 "$img" || continue
    pid=$NBD_PID
    U=$(nbd_uri "$S")
    check "nbdcopy into the server ($img, 4 connections)" $TO nbdcopy src.raw "$U"
    check "qemu-img compare: what nbdcopy wrote to $img reads back" \
        $TO qemu-img compare -f raw -F raw "$U" src.raw
    check "fio --ioengine=nbd on $img: 2 connections x 32 in flight, random sizes, verified" \
        $TO fio --name=verify --ioengine=nbd --uri="$U" --rw=randwrite --bsrange=512-128k \
        --iodepth=32 --numjobs=2 --size=16M --offset_increment=16M --verify=crc32c \
        --do_verify=1 --verify_fatal=1 --randrepeat=0 --output="fio-$img.out"
    stop_nbd "$img server with many writers: SIGTERM, exit 0" "$pid" "$S.log" "$S"
    case $img in
    *.qcow2) check "qemu-img check $img after the concurrent writes" qemu-img check -f qcow2 "$img" ;;
    esac
done
if [ "$sinks" = sink.raw ]; then
    not_ok "nbdcopy and fio into a qcow2" "qcow2 images cannot be written by this build"
fi

# ------------------------------------------------- -s (throwaway overlay)

sha_before=$(sha256sum top.qcow2 base.qcow2 raw.img)
S=$T/snap.sock
if start_nbd "$S" -s -t top.qcow2; then
    pid=$NBD_PID
    U=$(nbd_uri "$S")
    check "-s: nbdinfo says writable" sh -c "$TO nbdinfo --json '$U' >snap.json"
    json_check "-s: the export is writable, trim and zero advertised" snap.json \
        "not j['exports'][0]['is_read_only'] and j['exports'][0]['can_trim'] and j['exports'][0]['can_zero']"
    check "-s: qemu-io writes succeed and read back" sh -c "$TO qemu-io -f raw \
        -c 'write -P 0x5a 0 1M' -c 'write -z 10M 1M' -c 'write -P 0x5b 63M 1M' -c 'discard 512k 64k' \
        -c 'read -P 0x5a 0 512k' -c 'read -P 0 10M 1M' -c 'read -P 0x5b 63M 1M' -c flush \
        '$U' >qio-snap.out 2>&1 && ! grep -qiE 'fail|error' qio-snap.out"
    check "-s: a second client sees the first one's writes" sh -c "$TO qemu-io -r -f raw \
        -c 'read -P 0x5a 0 512k' -c 'read -P 0x5b 63M 1M' -c 'read -P 0x33 1M 512k' \
        '$U' >qio-snap2.out 2>&1 && ! grep -qiE 'fail|error' qio-snap2.out"
    stop_nbd "-s: the server stops on SIGTERM" "$pid" "$S.log" "$S"
fi
S=$T/snapraw.sock
if start_nbd "$S" -s raw.img; then
    check "-s on a raw image: qemu-io writes" $TO qemu-io -f raw -c 'write -P 0x99 0 2M' \
        -c 'write -z 4M 1M' "$(nbd_uri "$S")"
    wait_nbd "-s on a raw image: exits after its client" "$NBD_PID" "$S.log"
fi
if [ "$(sha256sum top.qcow2 base.qcow2 raw.img)" = "$sha_before" ]; then
    ok "-s: the image files are byte-for-byte unchanged"
else
    not_ok "-s: the image files are byte-for-byte unchanged"
fi

# ---------------------------------------- -l (internal qcow2 snapshot)

qemu-img create -q -f qcow2 snap.qcow2 16M
qemu-io -f qcow2 -c 'write -P 0x71 0 1M' -c 'write -P 0x72 8M 64k' snap.qcow2 >/dev/null
qemu-img snapshot -c first snap.qcow2
qemu-io -f qcow2 -c 'write -P 0x73 512k 1M' -c 'write -z 8M 64k' snap.qcow2 >/dev/null
qemu-img snapshot -c second snap.qcow2
qemu-io -f qcow2 -c 'write -P 0x74 0 4M' snap.qcow2 >/dev/null
qemu-img convert -O raw -l snapshot.name=first snap.qcow2 snap-first.raw
qemu-img convert -O raw -l snapshot.id=2 snap.qcow2 snap-second.raw
qemu-img convert -O raw snap.qcow2 snap-now.raw
for spec in "first snap-first.raw" "2 snap-second.raw"; do
    set -- $spec
    S=$T/l$1.sock
    if start_nbd "$S" -l "$1" snap.qcow2; then
        copy_matches "-l $1: nbdcopy equals qemu-img convert -l" "$(nbd_uri "$S")" "$2"
        wait_nbd "-l $1: exits after its client" "$NBD_PID" "$S.log"
    fi
done
S=$T/lro.sock
if start_nbd "$S" -l first snap.qcow2; then
    if $TO nbdinfo --json "$(nbd_uri "$S")" >lro.json 2>&1; then
        json_check "-l: the snapshot is exported read-only" lro.json "j['exports'][0]['is_read_only']"
    else
        not_ok "-l: the snapshot is exported read-only" "$(cat lro.json)"
    fi
    wait_nbd "-l: exits after nbdinfo" "$NBD_PID" "$S.log"
fi
if ! cmp -s snap-first.raw snap-now.raw && ! cmp -s snap-first.raw snap-second.raw; then
    ok "sanity: the snapshots and the current state differ"
else
    not_ok "sanity: the snapshots and the current state differ"
fi
check_fails "-l with an unknown snapshot is refused" 'nosuch|snapshot' \
    $TO "$VDISK_NBD" -l nosuch -k "$T/bad.sock" snap.qcow2

# --------------------- a format that cannot be written: refused with a hint

# Whichever of these formats the library cannot write yet (bftest --rw
# says): serving it read-write must fail with a message naming -r and -s.
qemu-img create -q -f vmdk -o subformat=streamOptimized ro.vmdk 16M
qemu-img create -q -f vpc ro.vhd 16M
rofmt=
for img in ro.vmdk ro.vhd; do   # (add formats here; the first one not writable is used)
    if ! "$BFTEST" --rw info "$img" >/dev/null 2>&1; then rofmt=$img; break; fi
done
if [ -n "$rofmt" ]; then
    check_fails "a read-only format ($rofmt) served read-write is refused, naming -r and -s" \
        '(-r.*-s)|(-s.*-r)' $TO "$VDISK_NBD" -k "$T/bad.sock" "$rofmt"
    if [ -e "$T/bad.sock" ]; then not_ok "a refused server leaves no socket file"
    else ok "a refused server leaves no socket file"; fi
    S=$T/rofmt.sock
    if start_nbd "$S" -s "$rofmt"; then
        check "... and with -s it is served writable" $TO qemu-io -f raw -c 'write -P 0x42 0 64k' \
            -c 'read -P 0x42 0 64k' "$(nbd_uri "$S")"
        wait_nbd "... and the -s server exits after its client" "$NBD_PID" "$S.log"
    fi
else
    not_ok "a read-only format served read-write is refused" "no read-only format was found (stream-optimized vmdk and vhd should be)"
fi

# ------------------------------------------------- socket activation

check "socket activation: nbdinfo -- [ vdisk-nbd -r IMG ]" \
    sh -c "$TO nbdinfo --json -- [ '$VDISK_NBD' -r top.qcow2 ] >sa.json"
json_check "socket activation: nbdinfo sees the size" sa.json "j['exports'][0]['export-size'] == $TOPSZ"
rm -f sa.raw
check "socket activation: nbdcopy -- [ vdisk-nbd -r IMG ] OUT" \
    $TO nbdcopy -- [ "$VDISK_NBD" -r top.qcow2 ] sa.raw
same_file "socket activation: nbdcopy output equals qemu-img convert" top.raw sa.raw
check "socket activation: nbdcopy -- [ vdisk-nbd -r -P 5 IMG ] OUT" \
    $TO nbdcopy -- [ "$VDISK_NBD" -r -P 5 disk.qcow2 ] sa-p5.raw
same_file "socket activation with -P 5: the copy equals partition 5" p5.raw sa-p5.raw

# ------------------------------------------------ --fork and --pid-file

S=$T/fork.sock
rm -f fork.pid
rc=0
$TO "$VDISK_NBD" --fork --pid-file "$T/fork.pid" -v -r -t -k "$S" top.qcow2 2>fork.log || rc=$?
fpid=$(cat fork.pid 2>/dev/null)
[ -n "$fpid" ] && on_exit "kill $fpid 2>/dev/null"
if [ "$rc" -eq 0 ]; then ok "--fork returns 0"; else not_ok "--fork returns 0" "exit $rc" "$(cat fork.log)"; fi
if $TO nbdinfo "$(nbd_uri "$S")" >fork-info.out 2>&1; then
    ok "--fork: the socket accepts a client as soon as --fork returns"
else
    not_ok "--fork: the socket accepts a client as soon as --fork returns" "$(cat fork-info.out)"
fi
if [ -n "$fpid" ] && alive "$fpid" && [ "$(readlink "/proc/$fpid/exe")" = "$(readlink -f "$VDISK_NBD")" ]; then
    ok "--pid-file holds the live server's PID"
else
    not_ok "--pid-file holds the live server's PID" "pid file: '$fpid'"
fi
check "--fork -t: a second client is served" $TO nbdinfo --size "$(nbd_uri "$S")"
if [ -n "$fpid" ]; then
    kill "$fpid"
    for ((i = 0; i < 200; i++)); do alive "$fpid" || break; sleep 0.1; done
    if ! alive "$fpid" && [ ! -e "$S" ] && [ ! -e fork.pid ] && ! _sanitizer_report fork.log; then
        ok "--fork: SIGTERM stops the daemon; socket and pid file removed"
    else
        not_ok "--fork: SIGTERM stops the daemon; socket and pid file removed" \
            "$(ls -l "$S" fork.pid 2>&1)" "$(tail -n 10 fork.log)"
    fi
fi
S=$T/forkfail.sock
check_fails "--fork with an unwritable --pid-file fails" 'pid' \
    $TO "$VDISK_NBD" --fork --pid-file "$T/no-such-dir/pid" -r -t -k "$S" raw.img
sleep 0.2
# (a leftover daemon would have our private $T in its command line)
orphans=$(pgrep -f -- "--pid-file $T/no-such-dir/pid")
if ! nbd_listening "$S" && [ ! -e "$S" ] && [ -z "$orphans" ]; then
    ok "--fork with an unwritable --pid-file leaves no daemon and no socket behind"
else
    not_ok "--fork with an unwritable --pid-file leaves no daemon and no socket behind" \
        "daemon PIDs: $orphans"
    for p in $orphans; do kill "$p"; done
fi
S=$T/pidfile.sock
if start_nbd "$S" --pid-file "$T/fg.pid" -r raw.img; then
    for ((i = 0; i < 50; i++)); do [ -s fg.pid ] && break; sleep 0.1; done
    if [ "$(cat fg.pid 2>/dev/null)" = "$NBD_PID" ]; then ok "--pid-file without --fork holds our PID"
    else not_ok "--pid-file without --fork holds our PID" "$(cat fg.pid 2>&1) != $NBD_PID"; fi
    stop_nbd "--pid-file: SIGTERM before any client: exit 0" "$NBD_PID" "$S.log" "$S"
    if [ -e fg.pid ]; then not_ok "--pid-file is removed at exit"; else ok "--pid-file is removed at exit"; fi
fi

# ------------------------------------------------------ lifetime: -t, -e

S=$T/once.sock
if start_nbd "$S" -r raw.img; then
    pid=$NBD_PID
    check "without -t: the first client is served" $TO nbdinfo --size "$(nbd_uri "$S")"
    wait_nbd "without -t: the server exits after its first client disconnects" "$pid" "$S.log"
    if [ -e "$S" ]; then not_ok "without -t: socket file removed"; else ok "without -t: socket file removed"; fi
fi

S=$T/persist.sock
if start_nbd "$S" -r -t raw.img; then
    pid=$NBD_PID
    n=0
    for i in 1 2 3; do $TO nbdinfo --size "$(nbd_uri "$S")" >/dev/null 2>&1 && n=$((n + 1)); done
    if [ "$n" -eq 3 ] && alive "$pid"; then ok "-t: three clients one after another, still serving"
    else not_ok "-t: three clients one after another, still serving" "$n served"; fi
    # A client connected and idle when SIGTERM comes: the server still ends.
    cat >idle.py <<EOF
import nbd, time
h = nbd.NBD()
h.connect_unix("$S")
print("connected", flush=True)
time.sleep(60)
EOF
    $NBDSH -n -c - <idle.py >idle.out 2>&1 &
    idle=$!
    on_exit "kill $idle 2>/dev/null"
    for ((i = 0; i < 100; i++)); do grep -q connected idle.out 2>/dev/null && break; sleep 0.1; done
    stop_nbd "SIGTERM with an idle client connected: exit 0, socket removed" "$pid" "$S.log" "$S"
    kill "$idle" 2>/dev/null
    wait "$idle" 2>/dev/null
fi

S=$T/shared.sock
if start_nbd "$S" -r -t -e 2 raw.img; then
    pid=$NBD_PID
    cat >shared.py <<EOF
import nbd, time
sock = "$S"
h1 = nbd.NBD(); h1.connect_unix(sock)
h2 = nbd.NBD(); h2.connect_unix(sock)
assert h1.can_multi_conn(), "-e 2 should advertise multi-conn"
want = open("raw.img", "rb").read(4096)
assert h1.pread(4096, 0) == want and h2.pread(4096, 0) == want
h3 = nbd.NBD()
h3.aio_connect_unix(sock)
end = time.time() + 1.5
while time.time() < end:
    h3.poll(100)
assert not h3.aio_is_ready(), "a third client was served while two were connected"
assert h3.aio_is_connecting(), "the third client gave up"
h1.shutdown()
del h1
end = time.time() + 20
while not h3.aio_is_ready():
    assert time.time() < end, "the third client was not served after the first left"
    h3.poll(100)
assert h3.pread(4096, 0) == want and h2.pread(4096, 0) == want
print("ok")
EOF
    check "-e 2: two clients at once, a third waits until one leaves" \
        sh -c "$TO $NBDSH -n -c - <shared.py"
    stop_nbd "-e 2: SIGTERM: exit 0" "$pid" "$S.log" "$S"
fi

# ---------------------------------------------------- options, usage

check "--help exits 0" sh -c "'$VDISK_NBD' --help | grep -q -- --partitions"
check "--version exits 0 and names the program" sh -c "'$VDISK_NBD' --version | grep -q vdisk-nbd"
usage_error "an unknown option exits 2" --no-such-option raw.img
usage_error "no IMAGE exits 2" -r
usage_error "two IMAGEs exit 2" -r raw.img raw.img
usage_error "-e with a non-number exits 2" -e many raw.img
usage_error "-p out of range exits 2" -p 99999 raw.img
usage_error "-P with a non-number exits 2" -P one raw.img
check_fails "a missing image file exits 1 with its name" 'no-such\.img' \
    $TO "$VDISK_NBD" -r -k "$T/bad.sock" no-such.img

done_testing
