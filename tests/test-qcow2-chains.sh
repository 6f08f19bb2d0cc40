#!/usr/bin/env bash
# test-qcow2-chains.sh — qcow2 backing chains and external data files: a
# three-level chain with overlapping data (the child wins), relative backing
# names resolved against the image's directory whatever the cwd, the backing
# format recorded or probed, a backing file shorter than its overlay,
# --no-backing, a missing backing file, loops, the chain depth bound, and
# external data files with and without data_file_raw.
#
# The oracle is qemu: `qemu-img convert -O raw` for the bytes and
# `qemu-img map --output=json` for allocation (via bf_matches_qemu in lib.sh).
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io python3 cmp

bf_python - "$T" <<'EOF'
import random, sys
r = random.Random(424242)
open(f"{sys.argv[1]}/pat1", "wb").write(r.randbytes(3001))
EOF

# qio IMG CMD...: run qemu-io commands on IMG; a failing one fails the test.
qio() {
    local img=$1; shift
    local args=() c rc=0
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io "${args[@]}" "$img" >"$T/.qio" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ] || grep -qiE 'error|fail' "$T/.qio"; then
        not_ok "qemu-io on $(basename "$img")" "$(head -n 5 "$T/.qio")" "commands: $*"
        return 1
    fi
}

# byte_at DESC IMG OFF HEX [BFTEST-OPTIONS...]: bftest reads byte HEX at OFF.
byte_at() {
    local desc=$1 img=$2 off=$3 want=$4; shift 4
    local got
    got=$("$BFTEST" "$@" read "$img" "$off" 1 2>"$T/.err" | od -An -tx1 | tr -d ' \n')
    if [ "$got" = "$want" ] && ! _sanitizer_report "$T/.err"; then
        ok "$desc"
    else
        not_ok "$desc" "byte at $off is '$got', wanted '$want'" "$(tail -n 5 "$T/.err")"
    fi
}

# nobacking_matches DESC IMG: --no-backing equals qemu with "backing": null.
nobacking_matches() {
    local desc=$1 img=$2
    local spec="json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\",\"filename\":\"$img\"},\"backing\":null}"
    qemu-img convert -O raw "$spec" "$T/nb.raw"
    qemu-img map --output=json "$spec" >"$T/nb.json"
    bf_cat_matches "$desc: bytes" "$T/nb.raw" --no-backing "$img"
    bf_map_matches "$desc: map" "$T/nb.json" --no-backing "$img"
}

# strip_backing_fmt IMG: remove the backing-format header extension, as
# images written by old qemu versions (and by hand) lack it; qemu-img 7.2
# insists on -F, so this is the way to make such an image.
strip_backing_fmt() {
    bf_python - "$1" <<'EOF'
import struct, sys
f = open(sys.argv[1], "r+b")
h = bytearray(f.read(65536))
ver = struct.unpack(">I", h[4:8])[0]
hlen = struct.unpack(">I", h[100:104])[0] if ver >= 3 else 72
boff = struct.unpack(">Q", h[8:16])[0]
end = boff if boff else 512
off, kept = hlen, []
while off + 8 <= end:
    t, n = struct.unpack(">II", h[off:off + 8])
    if t == 0:
        break
    if t != 0xE2792ACA:
        kept.append(h[off:off + 8 + ((n + 7) & ~7)])
    off += 8 + ((n + 7) & ~7)
new = b"".join(kept) + bytes(8)
h[hlen:end] = new + bytes(end - hlen - len(new))
f.seek(0)
f.write(h[:end])
EOF
}

M=$((1024 * 1024))

# ------------------------------------------------------------ three levels
# base (v2, 4 KiB clusters, 6 MiB) <- mid (v3, 64 KiB, 8 MiB) <- top (v3,
# 512 B clusters, 10 MiB).  Every level writes at offset 1 MiB + 1000 (so the
# child's byte must win), zeroes and discards hide data below.
mkdir -p "$T/three"
base=$T/three/base.qcow2 mid=$T/three/mid.qcow2 top=$T/three/top.qcow2
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4096 "$base" $((6 * M))
qemu-img create -q -f qcow2 -o cluster_size=65536 -b base.qcow2 -F qcow2 "$mid" $((8 * M))
qemu-img create -q -f qcow2 -o cluster_size=512 -b mid.qcow2 -F qcow2 "$top" $((10 * M))
qio "$base" "write -q -P 0x11 0 $((5 * M))" "write -q -s $T/pat1 $((3 * M + 7)) 100000" \
    "write -q -P 0x1f $((6 * M - 4096)) 4096"
qio "$mid" "write -q -P 0x22 $((M - 5000)) 70000" "write -q -s $T/pat1 $((2 * M + 333)) 200000" \
    "write -q -z $((4 * M)) 131072" "write -q -z $((4 * M + 200000)) 3000" \
    "discard -q $((3 * M)) 65536" "write -q -z -u $((3 * M + 131072)) 65536" \
    "write -q -P 0x2f $((6 * M - 100)) 4196"
qio "$top" "write -q -P 0x33 $((M + 1000)) 1" "write -q -P 0x33 $((M - 100)) 700" \
    "write -q -s $T/pat1 $((2 * M + 100000)) 50000" "write -q -z $((2 * M + 150000)) 1024" \
    "write -q -P 0x3f $((10 * M - 513)) 513" "discard -q $((5 * M)) 65536"
byte_at "3 levels: the top's byte wins over mid and base" "$top" $((M + 1000)) 33
byte_at "3 levels: mid's byte wins over base" "$mid" $((M + 1000)) 22
byte_at "3 levels: base's byte shows where nothing covers it" "$top" $((M / 2)) 11
byte_at "3 levels: mid's zero cluster hides base data" "$top" $((4 * M + 10)) 00
byte_at "3 levels: past the end of the 6 MiB base, under mid, reads zero" "$top" $((7 * M)) 00
byte_at "--no-backing: unallocated reads as zero" "$top" $((M / 2)) 00 --no-backing
bf_matches_qemu "3 levels, top" "$top"
bf_matches_qemu "3 levels, mid" "$mid"
nobacking_matches "3 levels, top --no-backing" "$top"
nobacking_matches "3 levels, mid --no-backing" "$mid"
if "$BFTEST" info "$top" >"$T/info" 2>&1 &&
   grep -q "^chain\[1\]: qcow2 .*three/mid.qcow2$" "$T/info" &&
   grep -q "^chain\[2\]: qcow2 .*three/base.qcow2$" "$T/info" &&
   grep -q "^backing_format: qcow2$" "$T/info"; then
    ok "info lists the chain: top, mid, base"
else
    not_ok "info lists the chain: top, mid, base" "$(cat "$T/info")"
fi

# ---------------------------------------------------- relative backing names
# chain/top.qcow2 -> sub/mid.qcow2 -> ../base.qcow2 (names as recorded),
# read from another directory through relative and absolute paths.
mkdir -p "$T/chain/sub" "$T/elsewhere/deeper"
cp "$base" "$T/chain/base.qcow2"
qemu-img create -q -f qcow2 -b ../base.qcow2 -F qcow2 "$T/chain/sub/mid.qcow2" $((8 * M))
qemu-img create -q -f qcow2 -b sub/mid.qcow2 -F qcow2 "$T/chain/top.qcow2" $((8 * M))
qio "$T/chain/sub/mid.qcow2" "write -q -P 0x44 $((2 * M)) $M"
qio "$T/chain/top.qcow2" "write -q -P 0x55 $((2 * M + 4096)) 4096"
if qemu-img info "$T/chain/top.qcow2" | grep -qE '^backing file: sub/mid\.qcow2( \(actual path: [^)]*\))?$'; then
    ok "relative: the backing name is recorded as given"
else
    not_ok "relative: the backing name is recorded as given" "$(qemu-img info "$T/chain/top.qcow2")"
fi
qemu-img convert -O raw "$T/chain/top.qcow2" "$T/rel.raw"
qemu-img map --output=json "$T/chain/top.qcow2" >"$T/rel.json"
cd "$T/elsewhere/deeper" || exit 1
bf_cat_matches "relative: read from another cwd through ../../chain/top.qcow2" "$T/rel.raw" \
    ../../chain/top.qcow2
bf_map_matches "relative: map from another cwd" "$T/rel.json" ../../chain/top.qcow2
bf_cat_matches "relative: read from another cwd through the absolute path" "$T/rel.raw" \
    "$T/chain/top.qcow2"
cd "$T/chain" || exit 1
bf_cat_matches "relative: read from the image's own directory (bare file name)" "$T/rel.raw" \
    top.qcow2
cd "$T" || exit 1

# ------------------------------------------------ backing format: recorded or probed
mkdir -p "$T/fmt"
qemu-img create -q -f qcow2 -o cluster_size=4096 "$T/fmt/b.qcow2" $((4 * M))
qio "$T/fmt/b.qcow2" "write -q -s $T/pat1 12345 500000"
bf_python -c "import random,sys; sys.stdout.buffer.write(random.Random(5).randbytes(3*1024*1024+1536))" \
    >"$T/fmt/b.raw"
for bfmt in qcow2 raw; do
    for rec in recorded absent; do
        img=$T/fmt/o-$bfmt-$rec.qcow2
        # without the extension: a version 2 image, as old qemu wrote them
        qemu-img create -q -f qcow2 -o compat=$([ $rec = absent ] && echo 0.10 || echo 1.1) \
            -b "b.$bfmt" -F "$bfmt" "$img" $((5 * M))
        qio "$img" "write -q -P 0x66 $((M + 17)) 77777"
        [ $rec = absent ] && strip_backing_fmt "$img"
        if [ $rec = absent ] && qemu-img info "$img" | grep -q 'backing file format'; then
            not_ok "backing format $bfmt $rec: the extension is gone" "$(qemu-img info "$img")"
        fi
        if [ $rec = recorded ]; then want="^backing_format: $bfmt\$"; else want="^backing_format"; fi
        if "$BFTEST" info "$img" >"$T/info" 2>&1 && grep -q "^chain\[1\]: $bfmt " "$T/info" &&
           { grep -q "$want" "$T/info"; [ $? -eq "$([ $rec = recorded ] && echo 0 || echo 1)" ]; }; then
            ok "backing format $bfmt $rec: opened as $bfmt"
        else
            not_ok "backing format $bfmt $rec: opened as $bfmt" "$(cat "$T/info")"
        fi
        bf_matches_qemu "backing format $bfmt $rec" "$img"
    done
done

# ------------------------------------ backing files shorter than the overlay
# A 1 MiB + 512 B raw file with a hole in it and a 3 MiB qcow2 under 8 MiB
# overlays: reads past their end are zero and the map says so as qemu does.
mkdir -p "$T/short"
truncate -s $((M + 512)) "$T/short/b.raw"
qio "$T/short/b.raw" "write -q -P 0x77 0 200000" "write -q -P 0x78 $((M - 1000)) 1512"
qemu-img create -q -f qcow2 -o cluster_size=65536 "$T/short/b.qcow2" $((3 * M))
qio "$T/short/b.qcow2" "write -q -P 0x79 $((3 * M - 70000)) 70000"
for bfmt in raw qcow2; do
    img=$T/short/o-$bfmt.qcow2
    qemu-img create -q -f qcow2 -b "b.$bfmt" -F $bfmt "$img" $((8 * M))
    qio "$img" "write -q -P 0x7a $((M - 300)) 100" "write -q -P 0x7b $((5 * M)) 4096"
    if [ $bfmt = raw ]; then bend=$((M + 512)) last=78; else bend=$((3 * M)) last=79; fi
    byte_at "short $bfmt backing: its last byte shows" "$img" $((bend - 1)) $last
    byte_at "short $bfmt backing: the byte after its end reads zero" "$img" $bend 00
    bf_matches_qemu "short $bfmt backing" "$img"
done

# and the other way round: an overlay smaller than its backing file
qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 "$T/short/smaller.qcow2" $((2 * M + 512))
qio "$T/short/smaller.qcow2" "write -q -P 0x7c $((2 * M)) 512"
bf_matches_qemu "overlay smaller than its backing file" "$T/short/smaller.qcow2"

# ---------------------------------------------------- missing backing file
mkdir -p "$T/miss/sub"
qemu-img create -q -f qcow2 "$T/miss/sub/gone.qcow2" $M
qemu-img create -q -f qcow2 -b sub/gone.qcow2 -F qcow2 "$T/miss/top.qcow2" $M
qemu-img create -q -f qcow2 -b "$T/miss/sub/gone.qcow2" -F qcow2 "$T/miss/abs.qcow2" $M
qio "$T/miss/top.qcow2" "write -q -P 0x5e 0 512"
rm "$T/miss/sub/gone.qcow2"
cd "$T/elsewhere" || exit 1
check_fails "missing backing file (relative name): a clear error naming the path" \
    "backing file 'sub/gone.qcow2'.*\.\./miss/sub/gone\.qcow2.*No such file" \
    "$BFTEST" cat ../miss/top.qcow2 "$T/miss.raw"
cd "$T" || exit 1
check_fails "missing backing file (absolute name): a clear error naming the path" \
    "$T/miss/sub/gone\.qcow2.*No such file" "$BFTEST" info "$T/miss/abs.qcow2"
byte_at "missing backing file: --no-backing still reads the image" "$T/miss/top.qcow2" 0 5e \
    --no-backing

# -------------------------------------------------------------------- loops
mkdir -p "$T/loop"
for n in a b self c; do qemu-img create -q -f qcow2 "$T/loop/$n.qcow2" $M; done
qemu-img rebase -u -b b.qcow2 -F qcow2 "$T/loop/a.qcow2"
qemu-img rebase -u -b a.qcow2 -F qcow2 "$T/loop/b.qcow2"
qemu-img rebase -u -b self.qcow2 -F qcow2 "$T/loop/self.qcow2"
ln "$T/loop/c.qcow2" "$T/loop/c-link.qcow2"      # the same file under another name
qemu-img rebase -u -b c-link.qcow2 -F qcow2 "$T/loop/c.qcow2"
check_fails "loop a -> b -> a: clean error" "loop" "$BFTEST" cat "$T/loop/a.qcow2" "$T/loop.raw"
check_fails "loop b -> a -> b: clean error" "loop" "$BFTEST" map "$T/loop/b.qcow2"
check_fails "loop self -> self: clean error" "loop" "$BFTEST" info "$T/loop/self.qcow2"
check_fails "loop through a hard link to the same file: clean error" "loop" \
    "$BFTEST" info "$T/loop/c.qcow2"
check "loop: --no-backing opens the image" "$BFTEST" --no-backing cat "$T/loop/a.qcow2" "$T/loop.raw"

# ---------------------------------------------------------- chain depth bound
# Copies of one tiny overlay, each naming the previous one: d000 <- d001 <-
# ... <- d300.  The library's bound is 256 layers, the top included: d255
# opens (and reads d000's data through 255 empty layers), d256 and d300 fail.
mkdir -p "$T/deep"
qemu-img create -q -f qcow2 -o cluster_size=65536 "$T/deep/d000.qcow2" $M
qio "$T/deep/d000.qcow2" "write -q -s $T/pat1 1000 70000"
qemu-img create -q -f qcow2 -o cluster_size=65536 -b d000.qcow2 -F qcow2 "$T/deep/tmpl.qcow2" $M
bf_python - "$T/deep" <<'EOF'
import sys
d = sys.argv[1]
t = open(f"{d}/tmpl.qcow2", "rb").read()
assert t.count(b"d000.qcow2") == 1
for i in range(1, 301):
    open(f"{d}/d{i:03d}.qcow2", "wb").write(t.replace(b"d000.qcow2", b"d%03d.qcow2" % (i - 1)))
EOF
qemu-img convert -O raw "$T/deep/d000.qcow2" "$T/deep.raw"
bf_cat_matches "chain of 256 layers (the bound) reads the bottom's data" "$T/deep.raw" \
    "$T/deep/d255.qcow2"
check_fails "chain of 257 layers: clean error" "deeper than 256" \
    "$BFTEST" cat "$T/deep/d256.qcow2" "$T/deep.out"
check_fails "chain of 301 layers: clean error" "deeper than 256" \
    "$BFTEST" map "$T/deep/d300.qcow2"
check "chain of 301 layers: --no-backing opens the top" \
    "$BFTEST" --no-backing info "$T/deep/d300.qcow2"

# ------------------------------------------------------- external data files
# qemu 7.2 opens a relative data file name against its cwd, the library (like
# backing files) against the image's directory: make and read the oracle from
# the image's directory, read with bftest from elsewhere.
mkdir -p "$T/ext"
cd "$T/ext" || exit 1
qemu-img create -q -f qcow2 -b "$T/fmt/b.raw" -F raw ext-base.qcow2 $((4 * M))
for variant in plain raw backing; do
    img=ext-$variant.qcow2
    case $variant in
    plain) opts=(-o data_file=ext-$variant.data) ;;
    raw) opts=(-o data_file=ext-$variant.data,data_file_raw=on) ;;
    backing) opts=(-o data_file=ext-$variant.data -b ext-base.qcow2 -F qcow2) ;;
    esac
    if ! qemu-img create -q -f qcow2 "${opts[@]}" "$img" $((6 * M + 1536)) 2>"$T/.err"; then
        not_ok "external data file ($variant): image made" "$(head -n 1 "$T/.err")"
        continue
    fi
    qio "$img" "write -q -s $T/pat1 0 4097" "write -q -P 0x91 $((M - 5)) 200000" \
        "write -q -z $((M + 65536)) 65536" "write -q -z -u $((M + 3 * 65536)) 65536" \
        "discard -q $((M + 5 * 65536)) 65536" "write -q -s $T/pat1 $((3 * M + 11)) $((M + 9))" \
        "write -q -P 0x92 $((6 * M + 1000)) 536"
    qemu-img convert -O raw "$img" "$T/ext-$variant.raw"
    qemu-img map --output=json "$img" >"$T/ext-$variant.json"
    cd "$T/elsewhere" || exit 1
    bf_cat_matches "external data file ($variant): bytes" "$T/ext-$variant.raw" "../ext/$img"
    bf_cat_matches "external data file ($variant): bytes, 4 threads, random pieces" \
        "$T/ext-$variant.raw" --threads 4 --chunk 0 --seed 9 "../ext/$img"
    bf_map_matches "external data file ($variant): map" "$T/ext-$variant.json" "../ext/$img"
    if "$BFTEST" info "../ext/$img" >"$T/info" 2>&1 && grep -q "^data_file: ext-$variant.data$" "$T/info" &&
       { grep -q '^flags:.* data_file_raw' "$T/info"; [ $? -eq "$([ $variant = raw ] && echo 0 || echo 1)" ]; }; then
        ok "external data file ($variant): info names it"
    else
        not_ok "external data file ($variant): info names it" "$(cat "$T/info")"
    fi
    cd "$T/ext" || exit 1
done
mv ext-plain.data ext-plain.moved
check_fails "missing external data file: a clear error naming it" \
    "ext-plain\.data.*No such file" "$BFTEST" cat "$T/ext/ext-plain.qcow2" "$T/ext.out"
cd "$T" || exit 1

done_testing
