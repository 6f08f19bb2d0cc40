#!/usr/bin/env bash
# test-vhdx.sh — vhdx images as qemu-img writes them: block sizes 1, 8, 32
# and 256 MiB, log sizes, dynamic and fixed, with and without ZERO block
# states, odd sizes, a 6 GiB sparse disk whose BAT interleaves sector-bitmap
# entries, and a 4096-byte logical sector disk (qemu-img makes only 512; the
# tool reshapes one); data written at scattered offsets with qemu-io (which
# writes every BAT update through the log and replays it).  Then damaged
# images, and the real images whose log was never replayed.
#
# Oracles: qemu (`qemu-img convert -O raw` for bytes, the virtual size) and
# tests/vhdx_tool.py, an independent reading of the BAT, for the allocation
# map: qemu 7.2 has no block status for vhdx and calls every byte data, so
# its map says nothing; instead every range our map calls zero must be zero
# in qemu's bytes.
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io python3 cmp dd truncate

TOOL=$VDISK_TOP/tests/vhdx_tool.py
MiB=$((1 << 20))

make_patterns 20240611

# qio_ops IMG SEED SIZE COUNT: seeded writes and zeros across 1 MiB and
# larger blocks.
qio_ops() {
    local img=$1 ops
    mapfile -t ops < <(gen_ops "$2" "$3" "$4" $((1 << 20)) 0.15)
    qio vhdx "$img" "${ops[@]}"
}

# map_matches DESC IMAGE [RAW]: bftest map equals the BAT as vhdx_tool.py
# reads it; with RAW (qemu's bytes), every zero range is zero there.
map_matches() {
    local desc=$1 img=$2 raw=${3:-}
    if ! python3 "$TOOL" map "$img" >"$T/.want.json" 2>"$T/.err"; then
        not_ok "$desc: vhdx_tool reads the BAT" "$(tail -n 5 "$T/.err")"
        return
    fi
    bf_map_matches "$desc: map is the BAT's" "$T/.want.json" "$img"
    if [ -n "$raw" ]; then
        if python3 "$TOOL" zerocheck "$T/.map.json" "$raw" >"$T/.zc" 2>&1; then
            ok "$desc: what the map calls zero, qemu reads as zero"
        else
            not_ok "$desc: what the map calls zero, qemu reads as zero" "$(cat "$T/.zc")"
        fi
    fi
}

# size_is DESC IMAGE: bftest info gives qemu's virtual size and format vhdx.
size_is() {
    local want got
    want=$(qemu-img info --output=json -f vhdx "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
    "$BFTEST" info "$2" >"$T/.info" 2>"$T/.err"
    got=$(sed -n 's/^size: //p' "$T/.info")
    if grep -q '^format: vhdx$' "$T/.info" && [ "$got" = "$want" ]; then
        ok "$1: format vhdx, virtual size $want as qemu"
    else
        not_ok "$1: format vhdx, virtual size $want as qemu" "got size '$got'" "$(cat "$T/.info" "$T/.err")"
    fi
}

# whole DESC IMAGE: bytes (one thread, and 4 threads in random pieces), size
# and map against the oracles.  Leaves qemu's bytes in $T/NAME.raw.
whole() {
    local desc=$1 img=$2 raw=${2%.vhdx}.raw
    if ! qemu-img convert -f vhdx -O raw "$img" "$raw" 2>"$T/.err"; then
        not_ok "$desc: qemu reads the image" "$(tail -n 5 "$T/.err")"
        return
    fi
    size_is "$desc" "$img"
    bf_cat_matches "$desc: bytes" "$raw" "$img"
    _bf_seed=$((_bf_seed + 1))
    bf_cat_matches "$desc: bytes, 4 threads, random pieces (seed $_bf_seed)" "$raw" \
        --threads 4 --chunk 0 --seed "$_bf_seed" "$img"
    map_matches "$desc" "$img" "$raw"
}

# window_matches DESC IMAGE RAW OFF LEN: `bftest read` of one window.
window_matches() {
    local desc=$1 img=$2 raw=$3 off=$4 len=$5 rc=0
    "$BFTEST" read "$img" "$off" "$len" >"$T/.win" 2>"$T/.err" || rc=$?
    dd if="$raw" of="$T/.wantwin" bs=1M iflag=skip_bytes,count_bytes skip="$off" count="$len" 2>/dev/null
    if [ $rc -ne 0 ] || _sanitizer_report "$T/.err"; then
        not_ok "$desc" "bftest read $off $len: exit $rc" "$(tail -n 5 "$T/.err")"
    else
        same_file "$desc" "$T/.wantwin" "$T/.win"
    fi
}

# ------------------------------------------------- images qemu-img makes

seed=300
while read -r name size opts count; do
    seed=$((seed + 1))
    if ! qemu-img create -q -f vhdx -o "$opts" "$T/$name.vhdx" "$size" ||
       ! qio_ops "$T/$name.vhdx" "$seed" "$size" "$count"; then
        not_ok "$name: qemu-img/qemu-io make the image ($opts)"
        continue
    fi
    whole "$name ($opts, $size bytes)" "$T/$name.vhdx"
    [ "$name" = b8m-log4m ] || [ "$name" = b32m ] || rm -f "$T/$name.raw"
done <<'EOF'
b1m        67108864   block_size=1M 20
b1m-odd    10486272   block_size=1M,log_size=1M 12
b8m-log4m  41944576   block_size=8M,log_size=4M 15
b32m       104857600  block_size=32M 12
b256m      629145600  block_size=256M 10
nozero     50331648   block_size=2M,block_state_zero=off 15
fixed      25165824   subformat=fixed,block_size=8M 10
fixed-1m   5243392    subformat=fixed,block_size=1M,log_size=2M 8
EOF

# A 6 GiB sparse disk of 1 MiB blocks: 6144 data blocks, with a sector
# bitmap entry after every 4096 in the BAT; writes on both sides of it.
big=$T/big.vhdx
if qemu-img create -q -f vhdx -o block_size=1M "$big" 6G &&
   qemu-io -f vhdx -c "write -q -P 0x11 0 1M" -c "write -q -P 0x22 4095M 2M" \
       -c "write -q -s $T/pat2 4G 65521" -c "write -q -P 0x33 $((5 * 1024 + 7))M 3M" \
       -c "write -q -z $((5 * 1024 + 8))M 4096" -c "write -q -P 0x44 $((6 * 1024 - 1))M 1M" \
       "$big" >/dev/null && qemu-img convert -f vhdx -O raw "$big" "$T/big.raw"; then
    size_is "6 GiB sparse" "$big"
    for w in 0:1048576 4293918720:3145728 4294967296:1048576 5375000000:9000000 6441402368:1048576; do
        window_matches "6 GiB sparse: bytes at ${w%:*} (+${w#*:})" "$big" "$T/big.raw" "${w%:*}" "${w#*:}"
    done
    map_matches "6 GiB sparse" "$big" "$T/big.raw"
else
    not_ok "qemu makes a 6 GiB vhdx with writes past 4 GiB"
fi
rm -f "$T/big.raw"

# The same disk reshaped for 4096-byte logical sectors: sector bitmaps now
# come after every 32768 blocks, so block 4096 moves in the BAT.  qemu 7.2
# refuses such disks (ENOTSUP); the guest bytes are those of the 512-byte
# original.
cp --sparse=always "$big" "$T/big4k.vhdx"
if python3 "$TOOL" edit "$T/big4k.vhdx" sector4k; then
    for w in 0:1048576 4293918720:3145728 5375000000:9000000 6441402368:1048576; do
        # the original's windows were checked against qemu above
        "$BFTEST" read "$big" "${w%:*}" "${w#*:}" >"$T/a" 2>/dev/null
        rc=0
        "$BFTEST" read "$T/big4k.vhdx" "${w%:*}" "${w#*:}" >"$T/b" 2>"$T/.err" || rc=$?
        if [ $rc -eq 0 ] && ! _sanitizer_report "$T/.err"; then
            same_file "6 GiB, 4096-byte sectors: bytes at ${w%:*} as the 512-byte original" "$T/a" "$T/b"
        else
            not_ok "6 GiB, 4096-byte sectors: bytes at ${w%:*} as the 512-byte original" "$(tail -n 5 "$T/.err")"
        fi
    done
    map_matches "6 GiB, 4096-byte sectors" "$T/big4k.vhdx"
else
    not_ok "vhdx_tool reshapes a disk for 4096-byte sectors"
fi
rm -f "$T/big4k.vhdx" "$T/a" "$T/b"
cp "$T/b32m.vhdx" "$T/s4k.vhdx"
if python3 "$TOOL" edit "$T/s4k.vhdx" sector4k; then
    bf_cat_matches "100 MiB, 4096-byte sectors: bytes as the 512-byte original" "$T/b32m.raw" "$T/s4k.vhdx"
    bf_cat_matches "100 MiB, 4096-byte sectors: 4 threads, random pieces" "$T/b32m.raw" \
        --threads 4 --chunk 0 --seed 99 "$T/s4k.vhdx"
    map_matches "100 MiB, 4096-byte sectors" "$T/s4k.vhdx" "$T/b32m.raw"
fi
cp "$T/b8m-log4m.vhdx" "$T/s4k.vhdx"
python3 "$TOOL" edit "$T/s4k.vhdx" sector4k
check_fails "4096-byte sectors, size not a whole number of them: refused" \
    "not a whole number of 4096-byte sectors" "$BFTEST" info "$T/s4k.vhdx"
rm -f "$T/s4k.vhdx"

# An empty disk, as qemu-img makes it.
qemu-img create -q -f vhdx "$T/empty.vhdx" 0
check "an empty vhdx opens" "$BFTEST" info "$T/empty.vhdx"
grep -q '^size: 0$' "$T/.out" && ok "an empty vhdx has size 0" || not_ok "an empty vhdx has size 0" "$(cat "$T/.out")"

# ------------------------------------------------------- info, refusals

"$BFTEST" info "$T/b8m-log4m.vhdx" >"$T/.out" 2>&1
grep -q '^version: dynamic$' "$T/.out" && grep -q '^cluster_size: 8388608$' "$T/.out" &&
    ok "info: dynamic, block size 8 MiB" || not_ok "info: dynamic, block size 8 MiB" "$(cat "$T/.out")"
"$BFTEST" info "$T/fixed.vhdx" >"$T/.out" 2>&1
grep -q '^version: fixed$' "$T/.out" && ok "info: fixed" || not_ok "info: fixed" "$(cat "$T/.out")"
check_fails "vhdx cannot be opened for writing" "vhdx.*(read-only|cannot be written)" \
    "$BFTEST" --rw info "$T/b1m.vhdx"
check_fails "vhdx has no internal snapshots" "no internal snapshots" \
    "$BFTEST" --snapshot 1 info "$T/b1m.vhdx"
check "-f vhdx opens a vhdx" "$BFTEST" -f vhdx info "$T/b1m.vhdx"

# ------------------------------------------------------ damaged images

base=$T/b8m-log4m.vhdx
baseraw=$T/b8m-log4m.raw
# edit | expectation: "same" reads as the undamaged image, "read RE" opens
# but reading fails with RE, else the open fails with RE.
while IFS='|' read -r what want; do
    d=$T/bad.vhdx
    cp "$base" "$d"
    if ! python3 "$TOOL" edit "$d" "$what" 2>"$T/.err"; then
        not_ok "$what: vhdx_tool damages the image" "$(cat "$T/.err")"
        continue
    fi
    case $want in
    same) bf_cat_matches "$what: read as before the damage" "$baseraw" "$d" ;;
    read\ *)
        check "$what: opens" "$BFTEST" info "$d"
        check_fails "$what: reading fails with a message" "${want#read }" "$BFTEST" cat "$d" "$T/out" ;;
    *) check_fails "$what: refused with a message" "$want" "$BFTEST" cat "$d" "$T/out" ;;
    esac
done <<'EOF'
hdr-cur-crc|same
hdr-both-crc|no valid vhdx header
hdr-same-seq|same sequence number
rt1-crc|same
rt-both-crc|region tables
rt-count|regions \(at most 2047
bat-region-eof|BAT .*past the end of the file
bat-region-header|places the BAT at offset 0
bat-eof|past the end of the file
bat-huge|past the end of the file
bat-header|overlaps the header area
bat-bat|overlaps the BAT
bat-state4|read unknown state 4
bat-partial|read partially present
block-3m|block size 3145728
block-512m|block size 536870912
block-0|block size 0
size-huge|virtual disk size
size-bat-short|BAT region .* too small
size-odd|virtual disk size
lsec-1024|logical sector size 1024
md-count|metadata table lists 65535
md-item-outside|outside the metadata region
has-parent|differencing
EOF

cp "$base" "$T/bad.vhdx"
truncate -s $(($(stat -c %s "$base") - MiB)) "$T/bad.vhdx"
check_fails "truncated by 1 MiB: refused" "past the end of the file" "$BFTEST" cat "$T/bad.vhdx" "$T/out"
truncate -s 300K "$T/bad.vhdx"
check_fails "truncated to 300 KiB: refused" "shorter than the 1 MiB header area" "$BFTEST" info "$T/bad.vhdx"
rm -f "$T"/b*.raw "$T"/*.vhdx.raw

# ------------------------------------------------- logs never replayed

R=$SHARED/realimages
if [ -f "$R/DiscUtils/vhdx-log-replay.vhdx.gz" ]; then
    dirty=$T/dirty.vhdx
    gzip -dc "$R/DiscUtils/vhdx-log-replay.vhdx.gz" | cp --sparse=always /dev/stdin "$dirty"
    check_fails "qemu refuses the dirty image read-only (what we do instead: replay in memory)" \
        "needs to be replayed" qemu-img info -f vhdx "$dirty"
    want=$(awk -F'\t' '$1 == "DiscUtils/vhdx-log-replay.vhdx" { print $5 }' "$R/manifest.tsv")
    got=$("$BFTEST" cat "$dirty" 2>"$T/.err" | sha256sum | cut -d' ' -f1)
    [ "$got" = "$want" ] && ! _sanitizer_report "$T/.err" &&
        ok "Windows image with a pending log: replayed in memory, bytes as qemu's replay" ||
        not_ok "Windows image with a pending log: replayed in memory, bytes as qemu's replay" \
            "sha256 $got, want $want" "$(tail -n 5 "$T/.err")"
    "$BFTEST" info "$dirty" >"$T/.out" 2>&1
    grep -q 'log replayed in memory' "$T/.out" && ok "info says the log was replayed" ||
        not_ok "info says the log was replayed" "$(cat "$T/.out")"
    cmp -s "$dirty" <(gzip -dc "$R/DiscUtils/vhdx-log-replay.vhdx.gz") &&
        ok "the dirty image is not written" || not_ok "the dirty image is not written"
    # qemu's own replay (read-write, on a copy) is the oracle for the rest
    cp "$dirty" "$T/replayed.vhdx"
    qemu-img check -q -r all -f vhdx "$T/replayed.vhdx" >/dev/null 2>&1
    qemu-img convert -f vhdx -O raw "$T/replayed.vhdx" "$T/replayed.raw"
    bf_cat_matches "pending log: 4 threads, random pieces" "$T/replayed.raw" --threads 4 --chunk 0 --seed 77 "$dirty"
    "$BFTEST" map "$T/replayed.vhdx" >"$T/replayed.json"
    bf_map_matches "pending log: map as after qemu's replay" "$T/replayed.json" "$dirty"
    # A damaged log entry is no valid sequence: qemu and we read the
    # image as it is, without a replay.
    python3 "$TOOL" edit "$dirty" log-crc
    if qemu-img convert -f vhdx -O raw "$dirty" "$T/nolog.raw" 2>"$T/.err"; then
        bf_cat_matches "log entry with a bad checksum: nothing replayed, as qemu" "$T/nolog.raw" "$dirty"
        cmp -s "$T/nolog.raw" "$T/replayed.raw" && not_ok "the damaged log changes what is read" ||
            ok "the damaged log changes what is read"
    else
        not_ok "qemu reads the image whose log entry is damaged" "$(cat "$T/.err")"
    fi
    rm -f "$T"/replayed.* "$T/nolog.raw" "$dirty"
else
    skip "Windows image with a pending log" "$R is absent"
fi

if [ -f "$R/qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2" ]; then
    dirty=$T/dirty10g.vhdx
    bzip2 -dc "$R/qemu-iotests/iotest-dirtylog-10G-4M.vhdx.bz2" | cp --sparse=always /dev/stdin "$dirty"
    cp --sparse=always "$dirty" "$T/replayed.vhdx"
    qemu-img check -q -r all -f vhdx "$T/replayed.vhdx" >/dev/null 2>&1
    "$BFTEST" map "$T/replayed.vhdx" >"$T/replayed.json"
    bf_map_matches "qemu's dirty-log image: map as after qemu's replay" "$T/replayed.json" "$dirty"
    # the data blocks, read from both
    python3 -c '
import json, sys
for e in json.load(open(sys.argv[1])):
    if e["data"]: print(e["start"], e["length"])' "$T/replayed.json" | head -n 40 >"$T/ranges"
    bad=0
    while read -r off len; do
        "$BFTEST" read "$dirty" "$off" "$len" >"$T/a" 2>"$T/.err" &&
            "$BFTEST" read "$T/replayed.vhdx" "$off" "$len" >"$T/b" && cmp -s "$T/a" "$T/b" || bad=1
    done <"$T/ranges"
    [ $bad = 0 ] && [ -s "$T/ranges" ] && ok "qemu's dirty-log image: data blocks as after qemu's replay" ||
        not_ok "qemu's dirty-log image: data blocks as after qemu's replay" "$(tail -n 5 "$T/.err")"
    rm -f "$dirty" "$T"/replayed.* "$T/a" "$T/b"
else
    skip "qemu's dirty-log image" "$R is absent"
fi

done_testing
