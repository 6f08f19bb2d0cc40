#!/usr/bin/env bash
# test-vdi.sh — VirtualBox VDI images as qemu-img writes them: dynamic and
# static, odd and tiny sizes, a 5 GiB and a 1 TiB sparse disk, data written
# at scattered offsets with qemu-io; discarded blocks; a disk size that is not
# a whole number of sectors; damaged images, made by tests/vdipoke.py, each
# refused with a message, and seeded fuzzing where every image is refused
# cleanly or read as qemu reads it; differencing images (VirtualBox
# snapshots, which qemu refuses) laid out as VirtualBox lays them out; the
# same images served by vdisk-nbd, read-only and read-write (seeded qemu-io
# writes, and nbdcopy over 4 connections allocating blocks at once).
#
# The oracle is qemu: `qemu-img convert -f vdi -O raw` for bytes,
# `qemu-img map -f vdi --output=json` for allocation, `qemu-img info` for the
# virtual size, `qemu-img compare` and `qemu-img check` after writes.
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io python3 cmp truncate nbdcopy

POKE="bf_python $VDISK_TOP/tests/vdipoke.py"
MB=$((1 << 20))
GiB=$((1 << 30))

make_patterns 20261127

# make_vdi NAME SIZE OPTIONS SEED [COUNT]: create $T/NAME.vdi and fill it.
make_vdi() {
    local name=$1 size=$2 o=$3 seed=$4 count=${5:-20} ops
    qemu-img create -q -f vdi ${o:+-o "$o"} "$T/$name.vdi" "$size" || return 1
    [ "$size" -gt 0 ] || return 0
    mapfile -t ops < <(gen_ops "$seed" "$(qsize "$T/$name.vdi")" "$count" $((2 << 20)) 0.1)
    qio vdi "$T/$name.vdi" "${ops[@]}"
}

# against qemu (lib.sh)
qsize() { img_qsize vdi "$1"; }
vdi_matches() { img_matches vdi "$@"; }

# ------------------------------------------ qemu-img's images, many sizes

seed=200
while read -r name size opts count; do
    seed=$((seed + 1))
    [ "$opts" = - ] && opts=""
    if ! make_vdi "$name" "$size" "$opts" "$seed" "$count"; then
        not_ok "$name: qemu-img/qemu-io make the image (${opts:-dynamic}, $size bytes)"
        continue
    fi
    vdi_matches "$name (${opts:-dynamic}, $size bytes asked)" "$T/$name.vdi"
done <<'EOF'
dyn-64m      67108864 -         25
dyn-odd      10000000 -         15
dyn-tiny     1000     -         3
dyn-empty    0        -         0
static-16m   16777216 static=on 15
static-odd   5000000  static=on 8
EOF

# info_says DESC IMG LINE...: `bftest info IMG` (format detected) prints
# every LINE whole.
info_says() {
    local desc=$1 img=$2 line; shift 2
    "$BFTEST" info "$img" >"$T/.out" 2>&1
    for line in "$@"; do
        grep -qxF -- "$line" "$T/.out" || { not_ok "$desc" "no line '$line' in:" "$(cat "$T/.out")"; return 0; }
    done
    ok "$desc"
}

# what each is detected as, and what info says
info_says "a dynamic VDI is detected as vdi; info gives its version, type and block size" \
    "$T/dyn-64m.vdi" "format: vdi" "cluster_size: 1048576" "version: 1.1, normal (dynamic)"
info_says "a static VDI is detected as vdi, type fixed" "$T/static-16m.vdi" "format: vdi" \
    "version: 1.1, fixed"
check_fails "VDI images have no internal snapshots" "no internal snapshots" \
    "$BFTEST" --snapshot 1 info "$T/dyn-64m.vdi"

# A discarded block (0xfffffffe) reads as zeros, as does a block past the
# disk's end whatever its entry says; a disk size that is not a whole number
# of sectors is rounded up (VBoxManage convertfromraw writes such).
eval "$($POKE info "$T/dyn-64m.vdi")"
cp "$T/dyn-64m.vdi" "$T/disc.vdi"
$POKE bmap "$T/disc.vdi" "$v_first" 0xfffffffe
vdi_matches "a discarded block" "$T/disc.vdi"
cp "$T/dyn-64m.vdi" "$T/odd.vdi"
$POKE set "$T/odd.vdi" size 67108000
vdi_matches "a disk size of 67108000 bytes (rounded up to a sector)" "$T/odd.vdi"
cp "$T/dyn-64m.vdi" "$T/room.vdi"
$POKE set "$T/room.vdi" blocks 80
$POKE bmap "$T/room.vdi" 70 0x7fffffff
vdi_matches "a block map longer than the disk (an entry past its end never read)" "$T/room.vdi"
for t in 3 4; do
    cp "$T/dyn-64m.vdi" "$T/type.vdi"
    $POKE set "$T/type.vdi" type $t
    vdi_matches "image type $t without a parent UUID (read as qemu reads it)" "$T/type.vdi"
done
rm -f "$T"/disc.vdi "$T"/odd.vdi "$T"/room.vdi "$T"/type.vdi "$T"/dyn-{odd,tiny,empty}.vdi "$T"/static-odd.vdi

# --------------------------------------------------- large sparse disks
for v in "big5:5368709120" "big1t:1099511627776"; do
    IFS=: read -r name size <<<"$v"
    img=$T/$name.vdi
    if ! qemu-img create -q -f vdi "$img" "$size" ||
       ! qio vdi "$img" "write -q -s $T/pat1 0 70000" \
            "write -q -s $T/pat2 $((4 * GiB - 98304)) 200000" \
            "write -q -P 0x33 $((3 * GiB + 12345)) 3000000" \
            "write -q -s $T/pat2 $((size - 70000)) 70000"; then
        not_ok "$name: qemu-img/qemu-io make a sparse $size-byte disk"
        continue
    fi
    img_windows_match vdi "$name" "$img" 0:131072 $((4 * GiB - 2 * MB)):$((4 * MB)) \
        $((3 * GiB)):$((4 * MB)) $((size - 3 * MB)):$((3 * MB))
    qemu-img map -f vdi --output=json "$img" >"$T/big.json"
    bf_map_matches "$name: map" "$T/big.json" "$img"
    rm -f "$img" "$T/big.json"
done

# ------------------------------------------------------- damaged images

make_vdi good 16777216 "" 900 10
good=$T/good.vdi
eval "$($POKE info "$good")"
# bad DESC REGEX SETUP: the good image damaged by SETUP (with $B the copy)
# is refused on open and on read (lib.sh img_bad).
bad() { img_bad vdi "$good" "$@"; }
bad "signature damaged (named vdi)" "not a VDI image" '$POKE set $B signature 0xbeda107e'
bad "version 1.0" "VDI version 1.0 is not supported" '$POKE set $B version 0x00010000'
bad "version 2.1" "VDI version 2.1 is not supported" '$POKE set $B version 0x00020001'
bad "block map offset not on a sector" "block map starts at offset 513" '$POKE set $B bmap 513'
bad "data offset not on a sector" "data starts at offset 4097" '$POKE set $B data 4097'
bad "sectors of 4096 bytes" "sectors of 4096 bytes" '$POKE set $B sector 4096'
bad "blocks of 2 MiB" "blocks of 2097152 bytes" '$POKE set $B block 2097152'
bad "blocks of 0 bytes" "blocks of 0 bytes" '$POKE set $B block 0'
bad "disk larger than its block map" "has room for 16 blocks" '$POKE set $B size 16777217000'
bad "disk size 2^64-1" "more than the" '$POKE set $B size 0xffffffffffffffff'
bad "a differencing image whose parent is nowhere" \
    "parent \\{67452301-ab89-efcd-0123-456789abcdef\\} is not among the .vdi files" \
    '$POKE uuid $B link 0123456789abcdef0123456789abcdef'
bad "2^30 blocks" "more than the" '$POKE set $B blocks 0x40000000; $POKE set $B size 4096'
bad "2^26 blocks (past ours)" "more than the .* supported" \
    '$POKE set $B blocks 0x4000000; $POKE set $B size 4096'
bad "extra bytes before each block" "extra bytes before each block" '$POKE set $B extra 512'
bad "block map past the end of the file" "block map .* past the end" '$POKE set $B bmap 0x7ffffe00'
bad "block map longer than the file" "block map .* past the end" \
    '$POKE set $B blocks 0x1000000'
bad "block number past the image's blocks" "stored as block 16, but the image has only 16" \
    '$POKE bmap $B $v_first 16'
bad "block number 0x7fffffff" "stored as block 2147483647" '$POKE bmap $B $v_first 0x7fffffff'
bad "data offset past the end of the file" "past the end of the file" '$POKE set $B data 0x7ffffe00'
bad "a block over the header" "overlaps the header" '$POKE set $B data 0; $POKE bmap $B $v_first 0'
bad "a block over the block map" "overlaps the block map" \
    '$POKE set $B data $v_bmap; $POKE bmap $B $v_first 0'
bad "file cut in the last block" "past the end of the file" 'truncate -s $((v_fsize - 4096)) $B'
bad "file cut in the block map" "past the end of the file" 'truncate -s $((v_bmap + 2)) $B'
bad "file cut to 1000 bytes" "past the end of the file" 'truncate -s 1000 $B'
bad "file cut to 100 bytes" "too small to hold a VDI header" 'truncate -s 100 $B'

# Only the parent's modification UUID set (no linkage): a base image still.
cp "$good" "$T/pm.vdi"
$POKE uuid "$T/pm.vdi" parent 0123456789abcdef0123456789abcdef
qemu-img convert -f vdi -O raw "$good" "$T/good.raw"
bf_cat_matches "only the parent modification UUID set: read as a base image" "$T/good.raw" "$T/pm.vdi"
rm -f "$T/pm.vdi"

# ---------------------------------------------- differencing (snapshots)

# VirtualBox's layout: the base disk in the VM folder, snapshot images in
# Snapshots/ named by UUID, each naming its parent by the parent's creation
# UUID.  qemu cannot read these; the oracle is composed from qemu's reads
# of each image as a base image (vdipoke.py compose).  Decoys beside them:
# a file named .vdi that is not one, and a VDI with another UUID.
VM=$T/vm
mkdir -p "$VM/Snapshots"
mv "$good" "$VM/base.vdi"
good=$VM/base.vdi
# snap NAME PARENT SEED: a 16 MiB image written at a few places, one block
# discarded, linked to PARENT; $T/NAME.alone.raw is what it reads alone.
snap() {
    local name=$1 parent=$2 seed=$3 ops
    qemu-img create -q -f vdi "$name" 16777216 || return 1
    mapfile -t ops < <(gen_ops "$seed" 16777216 4 $((2 << 20)) 0)
    qio vdi "$name" "${ops[@]}" "write -q -P 0x5a $((9 * MB + 100)) 5000" || return 1
    qemu-img convert -f vdi -O raw "$name" "$name.alone.raw" || return 1
    $POKE bmap "$name" 15 0xfffffffe
    $POKE uuid "$name" link "$($POKE getuuid "$parent" create)"
    $POKE uuid "$name" parent "$($POKE getuuid "$parent" modify)"
    $POKE set "$name" type 4
}
S1=$VM/Snapshots/s1.vdi S2=$VM/Snapshots/s2.vdi
if snap "$S1" "$good" 31 && snap "$S2" "$S1" 32; then
    echo "not a disk image" >"$VM/Snapshots/decoy.vdi"
    qemu-img create -q -f vdi "$VM/Snapshots/a-other.vdi" 1M
    qemu-img convert -f vdi -O raw "$good" "$T/base.raw"
    $POKE compose "$S1" "$S1.alone.raw" "$T/base.raw" "$T/s1.want"
    $POKE compose "$S2" "$S2.alone.raw" "$T/s1.want" "$T/s2.want"
    bf_cat_matches "a snapshot image reads its free blocks from the base disk in the folder above" \
        "$T/s1.want" "$S1"
    bf_cat_matches "a snapshot of a snapshot: a chain of three" "$T/s2.want" "$S2"
    bf_cat_matches "a chain of three, 4 threads, random pieces" "$T/s2.want" \
        --threads 4 --chunk 0 --seed 7 "$S2"
    info_says "info of a snapshot image names its parent (found beside it)" "$S2" \
        "version: 1.1, differencing" "backing_file: s1.vdi" "backing_format: vdi"
    info_says "info of the first snapshot names the base disk in the folder above" "$S1" \
        "backing_file: ../base.vdi"
    $POKE compose "$S2" "$S2.alone.raw" /dev/null "$T/s2.alone.want"
    bf_cat_matches "--no-backing: free blocks of a snapshot read as zeros" "$T/s2.alone.want" \
        --no-backing "$S2"
    if start_nbd "$T/snap.sock" -r "$S2"; then
        nbdcopy "$(nbd_uri "$T/snap.sock")" "$T/snap.raw" 2>"$T/.err" &&
            same_file "vdisk-nbd serves a snapshot image with its parents" "$T/s2.want" "$T/snap.raw" ||
            not_ok "vdisk-nbd serves a snapshot image with its parents" "$(cat "$T/.err")"
        stop_nbd "vdisk-nbd serving a snapshot stops cleanly" "$NBD_PID" "$T/snap.sock.log" "$T/snap.sock"
    fi
    mv "$good" "$T/away.vdi"
    check_fails "a snapshot whose base disk is gone: refused, naming the parent's UUID" \
        "s1.vdi: this differencing VDI's parent \\{[0-9a-f-]{36}\\} is not among the .vdi files in [^ ]*/Snapshots or" \
        "$BFTEST" info "$S2"
    mv "$T/away.vdi" "$good"
    cp "$S1" "$T/s1-self.vdi"
    $POKE uuid "$T/s1-self.vdi" link "$($POKE getuuid "$T/s1-self.vdi" create)"
    check_fails "a differencing image that names itself as its parent is refused" \
        "is not among" "$BFTEST" info "$T/s1-self.vdi"
    rm -f "$VM"/Snapshots/*.raw "$T"/s1*.want "$T"/s2*.want "$T/snap.raw" "$T/s1-self.vdi"
else
    not_ok "qemu-img/qemu-io make the images of a snapshot chain"
fi

# --------------------------------------------------------------- fuzzing

# Seeded damage to the header, the block map and the file's length: bftest
# must exit 0 or 1 without a sanitizer report, and where both it and qemu
# read the image, read the same bytes.
img_fuzz vdi "$good" 40 $POKE fuzz

# ------------------------------------------------ served by vdisk-nbd

# Detected by content, served read-only; nbdcopy reads qemu's bytes.
require_vdisk_nbd
qemu-img convert -f vdi -O raw "$T/dyn-64m.vdi" "$T/.oracle.raw"
if start_nbd "$T/nbd.sock" -r "$T/dyn-64m.vdi"; then
    if nbdcopy "$(nbd_uri "$T/nbd.sock")" "$T/served.raw" 2>"$T/.err"; then
        same_file "vdisk-nbd -r serves a VDI: nbdcopy reads qemu's bytes" "$T/.oracle.raw" "$T/served.raw"
    else
        not_ok "vdisk-nbd -r serves a VDI: nbdcopy reads qemu's bytes" "$(cat "$T/.err")"
    fi
    stop_nbd "vdisk-nbd serving a VDI stops cleanly on SIGTERM" "$NBD_PID" "$T/nbd.sock.log" "$T/nbd.sock"
fi
# ---------------------------------------------------------------- writing

# write_matches DESC IMG SEED: the same seeded writes (data, zeros, some
# block-aligned, crossing blocks) go to a raw copy with qemu-io and to IMG
# through `vdisk-nbd` (read-write) with qemu-io over NBD; IMG must then read
# as the copy, for qemu and for us, and `qemu-img check` find no errors.
write_matches() {
    local desc=$1 img=$2 seed=$3 ops vsize
    vsize=$(qsize "$img")
    qemu-img convert -f vdi -O raw "$img" "$T/w.oracle"
    mapfile -t ops < <(gen_ops "$seed" "$vsize" 40 $((1 << 20)) 0.25 1)
    qio raw "$T/w.oracle" "${ops[@]}"
    start_nbd "$T/w.sock" "$img" || return 0
    if ! qio raw "$(nbd_uri "$T/w.sock")" "${ops[@]}" 2>"$T/.err"; then
        not_ok "$desc: qemu-io writes through vdisk-nbd" "$(cat "$T/.err")"
    fi
    stop_nbd "$desc: the server stops cleanly" "$NBD_PID" "$T/w.sock.log" "$T/w.sock"
    qemu-img compare -f vdi -F raw "$img" "$T/w.oracle" >"$T/.cmp" 2>&1 &&
        ok "$desc: qemu reads the written image as the raw copy" ||
        not_ok "$desc: qemu reads the written image as the raw copy" "$(cat "$T/.cmp")"
    bf_cat_matches "$desc: we read it as the raw copy" "$T/w.oracle" "$img"
    qemu-img check -f vdi "$img" >"$T/.chk" 2>&1 &&
        ok "$desc: qemu-img check finds no errors" ||
        not_ok "$desc: qemu-img check finds no errors" "$(cat "$T/.chk")"
    rm -f "$T/w.oracle"
}
cp "$T/dyn-64m.vdi" "$T/w-dyn.vdi"
write_matches "writing a dynamic VDI" "$T/w-dyn.vdi" 501
cp "$T/static-16m.vdi" "$T/w-static.vdi"
write_matches "writing a static VDI" "$T/w-static.vdi" 502
qemu-img create -q -f vdi "$T/w-empty.vdi" 50000000
write_matches "writing an empty VDI of an odd size" "$T/w-empty.vdi" 503

# Many writers at once: nbdcopy (4 connections, 64 requests in flight)
# copies a disk of data and holes into an empty VDI, allocating blocks from
# every connection; zero ranges must not allocate.
python3 - "$T/src.raw" <<'PY'
import random, sys
r = random.Random(77)
with open(sys.argv[1], "wb") as f:
    f.truncate(96 << 20)
    for i in range(0, 96, 3):                  # data in two of every three MiB
        for j in (0, 1):
            f.seek((i + j) << 20)
            f.write(r.randbytes(1 << 20))
PY
qemu-img create -q -f vdi "$T/w-par.vdi" $((96 << 20))
if start_nbd "$T/p.sock" "$T/w-par.vdi"; then
    nbdcopy --connections=4 --requests=64 "$T/src.raw" "$(nbd_uri "$T/p.sock")" 2>"$T/.err" ||
        not_ok "nbdcopy writes a VDI over 4 connections" "$(cat "$T/.err")"
    stop_nbd "a VDI written over 4 connections: the server stops cleanly" "$NBD_PID" \
        "$T/p.sock.log" "$T/p.sock"
    qemu-img compare -f vdi -F raw "$T/w-par.vdi" "$T/src.raw" >"$T/.cmp" 2>&1 &&
        qemu-img check -f vdi "$T/w-par.vdi" >"$T/.chk" 2>&1 &&
        ok "a VDI written over 4 connections reads as its source, and qemu-img check is clean" ||
        not_ok "a VDI written over 4 connections reads as its source, and qemu-img check is clean" \
            "$(cat "$T/.cmp" "$T/.chk")"
    n=$(( ($(stat -c %s "$T/w-par.vdi") - $(python3 "$VDISK_TOP/tests/vdipoke.py" info "$T/w-par.vdi" |
          sed 's/.*v_data=\([0-9]*\).*/\1/')) >> 20 ))
    [ "$n" -le 64 ] && ok "nbdcopy's zero ranges allocate no blocks ($n blocks for 64 MiB of data)" ||
        not_ok "nbdcopy's zero ranges allocate no blocks" "$n blocks for 64 MiB of data"
fi
rm -f "$T/src.raw" "$T"/w-*.vdi

# What cannot be written is refused at open, read-only use unaffected.
check_fails "a differencing VDI cannot be opened for writing" "differencing VDIs .* cannot be written" \
    "$BFTEST" --rw info "$S1"
cp "$T/dyn-64m.vdi" "$T/dup.vdi"
eval "$($POKE info "$T/dup.vdi")"
$POKE bmap "$T/dup.vdi" $((v_first + 40)) "$v_first_at"
check_fails "two blocks stored in one: refused for writing" "which another block uses too" \
    "$BFTEST" --rw info "$T/dup.vdi"
check "two blocks stored in one: still opens read-only" "$BFTEST" info "$T/dup.vdi"
qemu-img create -q -f vdi "$T/full.vdi" 2M
printf 'x' >"$T/x"
"$BFTEST" --rw write "$T/full.vdi" $((1 << 20)) "$T/x" >/dev/null 2>&1   # block 1 in block 0
$POKE bmap "$T/full.vdi" 1 1                                            # ... now in block 1
truncate -s +1M "$T/full.vdi"
check_fails "no room for another block: a write fails with a message" "all are in use" \
    "$BFTEST" --rw write "$T/full.vdi" 0 "$T/x"
rm -f "$T/dup.vdi" "$T/full.vdi" "$T/x"

done_testing
