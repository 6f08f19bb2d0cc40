#!/usr/bin/env bash
# test-vhd.sh — VHD ("vpc") images as qemu-img writes them: dynamic and
# fixed, odd sizes, force_size on and off, a 5 GiB and a 1 TiB sparse disk,
# data written at scattered offsets with qemu-io; the virtual size of every
# creator application qemu knows; differencing disks (read as qemu reads
# them: the parent ignored); damaged images, made by tests/vhdpoke.py, each
# refused with a message, and seeded fuzzing where every image is refused
# cleanly or read as qemu reads it.
#
# The oracle is qemu: `qemu-img convert -f vpc -O raw` for bytes,
# `qemu-img map -f vpc --output=json` for allocation, `qemu-img info` for the
# virtual size.  The format is named (-f vpc) where it must be: qemu's probe,
# and ours, call a fixed VHD raw.
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io python3 cmp dd truncate

POKE="bf_python $VDISK_TOP/tests/vhdpoke.py"
MB=$((1 << 20))
GiB=$((1 << 30))

make_patterns 20240611

# make_vhd NAME SIZE OPTIONS SEED [COUNT]: create $T/NAME.vhd and fill it.
make_vhd() {
    local name=$1 size=$2 o=$3 seed=$4 count=${5:-20} ops vsize
    qemu-img create -q -f vpc -o "$o" "$T/$name.vhd" "$size" || return 1
    vsize=$(qsize "$T/$name.vhd")
    [ "$vsize" -gt 0 ] || return 0
    mapfile -t ops < <(gen_ops "$seed" "$vsize" "$count" $((2 << 20)) 0.1)
    qio vpc "$T/$name.vhd" "${ops[@]}"
}

# read as vpc (named: a fixed VHD probes as raw), against qemu (lib.sh)
qsize() { img_qsize vpc "$1"; }
size_matches() { img_size_matches vpc "$@"; }
vpc_matches() { img_matches vpc "$@"; }

# ------------------------------------------ qemu-img's images, many sizes

seed=100
while read -r name size opts count; do
    seed=$((seed + 1))
    if ! make_vhd "$name" "$size" "$opts" "$seed" "$count"; then
        not_ok "$name: qemu-img/qemu-io make the image ($opts, $size bytes)"
        continue
    fi
    vpc_matches "$name ($opts, $size bytes asked)" "$T/$name.vhd"
done <<'EOF'
dyn-64m        67108864 subformat=dynamic 25
dyn-64m-force  67108864 subformat=dynamic,force_size=on 25
dyn-odd        10000000 subformat=dynamic 15
dyn-odd-force  12345678 subformat=dynamic,force_size=on 15
dyn-tiny       1000     subformat=dynamic 3
dyn-tiny-force 1000     subformat=dynamic,force_size=on 3
dyn-empty      0        subformat=dynamic 0
fixed-16m      16777216 subformat=fixed 15
fixed-odd      10000000 subformat=fixed 10
fixed-force    12345678 subformat=fixed,force_size=on 10
fixed-tiny     512      subformat=fixed,force_size=on 2
EOF

# what each is detected as: qemu's probe and ours agree
"$BFTEST" info "$T/dyn-64m.vhd" >"$T/.out" 2>&1
grep -q '^format: vpc$' "$T/.out" && grep -q '^cluster_size: 2097152$' "$T/.out" &&
    grep -q "^version: dynamic, creator 'qemu' 5.3$" "$T/.out" &&
    ok "a dynamic VHD is detected as vpc; info gives its type, creator and block size" ||
    not_ok "a dynamic VHD is detected as vpc; info gives its type, creator and block size" "$(cat "$T/.out")"
"$BFTEST" info "$T/fixed-16m.vhd" >"$T/.out" 2>&1
fsize=$(stat -c %s "$T/fixed-16m.vhd")
grep -q '^format: raw$' "$T/.out" && grep -q "^size: $fsize$" "$T/.out" &&
    qemu-img info "$T/fixed-16m.vhd" | grep -q '^file format: raw$' &&
    ok "a fixed VHD is detected as raw (footer and all), as qemu's probe does" ||
    not_ok "a fixed VHD is detected as raw (footer and all), as qemu's probe does" "$(cat "$T/.out")"
"$BFTEST" -f vpc info "$T/fixed-16m.vhd" >"$T/.out" 2>&1
grep -q "^version: fixed, creator 'qemu' 5.3$" "$T/.out" && ! grep -q '^cluster_size' "$T/.out" &&
    ok "info of a fixed VHD opened as vpc" || not_ok "info of a fixed VHD opened as vpc" "$(cat "$T/.out")"
check_fails "VHD images cannot be opened for writing" "cannot be written|read-only" \
    "$BFTEST" --rw info "$T/dyn-64m.vhd"
check_fails "fixed VHD images opened as vpc cannot be written either" "cannot be written|read-only" \
    "$BFTEST" -f vpc --rw info "$T/fixed-16m.vhd"
check_fails "VHD images have no internal snapshots" "no internal snapshots" \
    "$BFTEST" --snapshot 1 info "$T/dyn-64m.vhd"

# A dynamic disk whose trailing footer is missing still reads (qemu uses the
# copy at the start); one whose bitmaps say "no data" reads its data all the
# same (qemu never reads the bitmaps).
cp "$T/dyn-64m.vhd" "$T/nofooter.vhd"
truncate -s -512 "$T/nofooter.vhd"
vpc_matches "dynamic disk without its trailing footer" "$T/nofooter.vhd"
eval "$($POKE info "$T/dyn-64m.vhd")"
cp "$T/dyn-64m.vhd" "$T/nobitmap.vhd"
dd if=/dev/zero of="$T/nobitmap.vhd" bs=512 seek="$v_first_sector" count=1 conv=notrunc 2>/dev/null
vpc_matches "dynamic disk whose first block's bitmap is all zeros" "$T/nobitmap.vhd"
rm -f "$T/nofooter.vhd" "$T/nobitmap.vhd" "$T"/fixed-*.vhd "$T"/dyn-{odd,tiny,empty}*.vhd

# ------------------------------------------------------ differencing disks

# qemu cannot make one; a dynamic disk whose footers say type 4 is one to
# qemu's reader, which ignores the parent: unallocated blocks read as zero.
cp "$T/dyn-64m.vhd" "$T/diff.vhd"
$POKE footer "$T/diff.vhd" both type 4
vpc_matches "differencing disk (type 4), its parent ignored as qemu does" "$T/diff.vhd"
"$BFTEST" info "$T/diff.vhd" >"$T/.out" 2>&1
grep -q '^version: differencing' "$T/.out" && ! grep -q '^backing_file' "$T/.out" &&
    ok "info says differencing, with no backing file" || not_ok "info says differencing, with no backing file" "$(cat "$T/.out")"
rm -f "$T/diff.vhd"

# ------------------------------------------------ creator applications

# qemu sizes the disk by the geometry (C x H x S), except for creators that
# use the footer's current size ("win ", "qem2", "d2v ", "CTXS", "tap\0")
# and for the largest geometry (65535 x 16 x 255).  Current sizes below and
# above the geometry's, and one that is not a whole number of sectors.
qemu-img create -q -f vpc "$T/app.vhd" 100M
for app in 'vpc ' 'qemu' 'qem2' 'win ' 'd2v ' 'd2v\x00' 'CTXS' 'tap\x00' 'tap ' 'vbox' 'WIN '; do
    for cur in 103809024 106954752 104864999; do
        cp "$T/app.vhd" "$T/a.vhd"
        $POKE footer "$T/a.vhd" both app "$app"
        $POKE footer "$T/a.vhd" both cur "$cur"
        size_matches "creator '$app', current size $cur" "$T/a.vhd"
    done
done
cp "$T/app.vhd" "$T/a.vhd"
$POKE footer "$T/a.vhd" both app 'win '
$POKE footer "$T/a.vhd" both cur 106954752
qio vpc "$T/a.vhd" "write -q -P 0x3c 104800000 2000000"
vpc_matches "creator 'win ': the disk is the current size, past the geometry's" "$T/a.vhd"
for app in 'vpc ' 'qemu'; do
    cp "$T/app.vhd" "$T/a.vhd"
    $POKE footer "$T/a.vhd" both app "$app"
    $POKE footer "$T/a.vhd" both chs 65535,16,255
    $POKE footer "$T/a.vhd" both cur 100000256
    size_matches "creator '$app' with the largest geometry: the current size" "$T/a.vhd"
done
rm -f "$T/a.vhd" "$T/app.vhd"

# --------------------------------------------------- large sparse disks

for v in "big5:5368709120:subformat=dynamic" "big1t:1099511627776:subformat=dynamic,force_size=on"; do
    IFS=: read -r name size opts <<<"$v"
    img=$T/$name.vhd
    if ! qemu-img create -q -f vpc -o "$opts" "$img" "$size" ||
       ! vsize=$(qsize "$img") ||
       ! qio vpc "$img" "write -q -s $T/pat1 0 70000" \
            "write -q -s $T/pat2 $((4 * GiB - 98304)) 200000" \
            "write -q -P 0x77 $((4 * GiB - 512)) 1024" \
            "write -q -P 0x33 $((3 * GiB + 12345)) 3000000" \
            "write -q -s $T/pat2 $((vsize - 70000)) 70000"; then
        not_ok "$name: qemu-img/qemu-io make a sparse $size-byte disk"
        continue
    fi
    size_matches "$name ($opts)" "$img"
    # the oracle's windows, not the whole disk
    img_windows_match vpc "$name" "$img" 0:131072 $((4 * GiB - 2 * MB)):$((4 * MB)) \
        $((3 * GiB)):$((4 * MB)) $((vsize - 3 * MB)):$((3 * MB))
    qemu-img map -f vpc --output=json "$img" >"$T/big.json"
    bf_map_matches "$name: map" "$T/big.json" "$img"
    rm -f "$img" "$T/big.json"
done

# ------------------------------------------------------- damaged images

make_vhd good 16777216 subformat=dynamic 900 10
good=$T/good.vhd
eval "$($POKE info "$good")"
qemu-img create -q -f vpc -o subformat=fixed "$T/fgood.vhd" 4M
qio vpc "$T/fgood.vhd" "write -q -P 0x11 0 4096"
fgood=$T/fgood.vhd

# bad DESC REGEX SETUP: the good dynamic image damaged by SETUP (with $B
# the copy) is refused on open and on read (lib.sh img_bad).
bad() { img_bad vpc "$good" "$@"; }
fbad() {
    local desc=$1 re=$2; shift 2
    B=$T/bad.vhd
    cp "$fgood" "$B"
    eval "$*"
    check_fails "$desc" "$re" "$BFTEST" -f vpc info "$B"
}

bad "footer copy checksum wrong" "footer copy at the start of the file is damaged: its checksum" \
    '$POKE footer $B start checksum 0x12345678'
bad "footer copy changed without its checksum" "checksum" \
    '$POKE footer $B start cur 1048576 --keep-sum'
bad "footer copy cookie damaged (the end footer is a dynamic one)" "only a fixed disk .type 2. has no copy" \
    '$POKE footer $B start cookie conectiy'
bad "no footer anywhere" "not a VHD image" \
    '$POKE footer $B both cookie xxxxxxxx'
bad "footer copy says fixed" "says the disk is fixed" '$POKE footer $B start type 2'
bad "footer copy gives an unknown disk type" "unknown disk type 7" '$POKE footer $B start type 7'
bad "footer copy gives disk type 0 (none)" "unknown disk type 0" '$POKE footer $B start type 0'
bad "dynamic header offset past the end of the file" "dynamic disk header .* past the end" \
    '$POKE footer $B start offset 0xffffffffffffffff'
bad "dynamic header offset at the BAT" "no header there" '$POKE footer $B start offset $v_bat'
bad "dynamic header cookie damaged" "no header there" '$POKE header $B cookie cxsparsf'
bad "dynamic header checksum wrong" "dynamic disk header is damaged" \
    '$POKE header $B checksum 0xdeadbeef'
bad "BAT offset past the end of the file" "allocation table .* past the end" \
    '$POKE header $B table 0x7fffffffffff0000'
bad "BAT offset wraps around" "allocation table .* past the end" \
    '$POKE header $B table 0xfffffffffffffff0'
bad "BAT with too few entries for the disk" "too few for a disk" '$POKE header $B entries 2'
bad "BAT with 2^30 entries" "past the end|more than the" '$POKE header $B entries 0x40000000'
bad "BAT with 2^32-1 entries" "past the end|more than the" '$POKE header $B entries 0xffffffff'
bad "block size 0" "block size 0 is not a power of two" '$POKE header $B block 0'
bad "block size 3000 (not a power of two)" "not a power of two" '$POKE header $B block 3000'
bad "block size 2^31" "not supported" '$POKE header $B block 0x80000000'
bad "block size 512 (qemu and the specification disagree where its data is)" "not supported" \
    '$POKE header $B block 512'
bad "BAT entry past the end of the file" "block $v_first .* past the end" \
    '$POKE bat $B $v_first 0x7fffffff'
bad "BAT entry 0xfffffffe" "past the end" '$POKE bat $B $v_first 0xfffffffe'
bad "BAT entry at the footer copy" "overlaps the footer copy" '$POKE bat $B $v_first 0'
bad "BAT entry at the dynamic header" "overlaps the dynamic disk header" '$POKE bat $B $v_first 2'
bad "BAT entry at the BAT" "overlaps the block allocation table" '$POKE bat $B $v_first 3'
bad "BAT entry over the trailing footer" "overlaps the footer" \
    '$POKE bat $B $v_first $(( (v_fsize - v_block - 512) / 512 ))'
bad "BAT entry past the disk's end pointing past the file" "past the end" \
    '$POKE header $B entries $((v_entries + 1)); $POKE bat $B $v_entries 0x100000'
bad "file cut in the last block" "past the end of the file" 'truncate -s $((v_fsize - 4096)) $B'
bad "file cut in the BAT" "past the end of the file" 'truncate -s $((v_bat + 2)) $B'
bad "file cut to 1000 bytes" "past the end of the file" 'truncate -s 1000 $B'
bad "file of 300 bytes" "too small to hold a VHD footer" 'truncate -s 300 $B'
bad "current size 2^63 from a current-size creator" "more than the 4278190080" \
    '$POKE footer $B start app "win "; $POKE footer $B start cur 0x8000000000000000'
bad "geometry 65535/255/255 (almost 2 TiB) with a BAT for 16 MiB" "too few for a disk" \
    '$POKE footer $B start chs 65535,255,255'
bad "current size one sector past 2040 GiB" "more than the" \
    '$POKE footer $B start app "qem2"; $POKE footer $B start cur $((0xff000000 * 512 + 512))'
fbad "fixed: footer checksum wrong" "footer at the end of the file is damaged" \
    '$POKE footer $B end checksum 1'
fbad "fixed: the end footer says dynamic" "only a fixed disk" '$POKE footer $B end type 3'
fbad "fixed: disk longer than the file" "truncated" \
    '$POKE footer $B end app "win "; $POKE footer $B end cur $((64 << 20))'
fbad "fixed: disk of 2040 GiB in a small file" "truncated" \
    '$POKE footer $B end app "qem2"; $POKE footer $B end cur $((0xff000000 * 512))'
fbad "fixed: file cut short" "truncated|not a VHD" 'truncate -s -1024 $B'
fbad "a fixed disk of no bytes (only a footer; qemu refuses it too)" "only a VHD footer" \
    'qemu-img create -q -f vpc -o subformat=fixed $B 0'
rm -f "$T/bad.vhd" "$T/fgood.vhd"

# ------------------------------------------------------------ fuzzing

# Seeded damage to the footers, the header, the BAT and the file's length
# (tests/vhdpoke.py fuzz): bftest must exit 0 or 1 without a sanitizer
# report, and where both it and qemu read the image, read the same bytes.
img_fuzz vpc "$good" 40 $POKE fuzz

# ------------------------------------- real images (when ../shared is there)

# The large Virtual PC and Hyper-V disks: their maps, and a window of bytes
# (test-realimages.sh checks sizes, and the bytes of the small ones).
R=$SHARED/realimages
for img in qemu-iotests/virtualpc-dynamic.vhd qemu-iotests/hyperv2012r2-dynamic.vhd ImHex-Patterns/vhd.hexpat.vhd; do
    if [ ! -e "$R/$img" ] && [ ! -e "$R/$img.bz2" ]; then
        skip "real image $img" "$R is absent"
        continue
    fi
    if [ -e "$R/$img.bz2" ]; then
        bzip2 -dc "$R/$img.bz2" | cp --sparse=always /dev/stdin "$T/real.vhd"
    else
        cp --sparse=always "$R/$img" "$T/real.vhd"
    fi
    size_matches "$img" "$T/real.vhd"
    qemu-img map -f vpc --output=json "$T/real.vhd" >"$T/real.json"
    bf_map_matches "$img: map" "$T/real.json" -f vpc "$T/real.vhd"
    qemu-img convert -O raw --image-opts \
        "driver=raw,offset=0,size=$((3 * MB)),file.driver=vpc,file.file.filename=$T/real.vhd" "$T/win.raw"
    "$BFTEST" -f vpc read "$T/real.vhd" 0 $((3 * MB)) >"$T/.win" 2>"$T/.err"
    same_file "$img: its first 3 MiB as qemu's" "$T/win.raw" "$T/.win"
    rm -f "$T/real.vhd" "$T/real.json" "$T/win.raw"
done

done_testing
