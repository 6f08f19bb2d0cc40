#!/bin/bash
# mkimages.sh CACHE_DIR — make the benchmark's images once; reuse them after.
#
# Each image is made in a scratch directory and moved when complete, so an
# interrupted run leaves no half-made image that a later run would trust.
# RECIPE names the recipe; change it when the recipe changes and every image
# is remade.  All are made with the real tools (qemu-img, sfdisk, mkfs.ext4).
#
#   raw.img        1 GiB of text-like data (gendata.py; ~3:1 with zlib)
#   qcow2.qcow2    the same, qcow2, 64 KiB clusters, uncompressed
#   zlib.qcow2     the same, qcow2, every cluster zlib-compressed (qemu-img convert -c)
#   zstd.qcow2     the same, qcow2, compression_type=zstd
#   stream.vmdk    the same, vmdk subformat=streamOptimized (deflate grains)
#   big1t.qcow2    1 TiB virtual, 4096 x 64 KiB of data, one in every 256 MiB
#                  stripe at a seeded random offset, so every L2 table is used
#   fs.raw         GPT disk, p1 = ext4 (start 1 MiB) holding big.txt (the 1 GiB
#                  of raw.img), dir10k/ (10 000 small files) and hello.txt
#   fs.qcow2       fs.raw converted to qcow2
set -euo pipefail
CACHE=$1
HERE=$(cd "$(dirname "$0")" && pwd)
PY=/usr/bin/python3
RECIPE="vdisk-bench-images-2"

mkdir -p "$CACHE"
if [ "$(cat "$CACHE/RECIPE" 2>/dev/null)" != "$RECIPE" ]; then
    rm -rf "${CACHE:?}"/*
    echo "$RECIPE" > "$CACHE/RECIPE"
fi

say() { echo "mkimages: $*"; }

# make NAME COMMAND...: run COMMAND with $OUT set to a temporary name, then
# rename it to NAME.
make_img() {
    local name=$1; shift
    [ -e "$CACHE/$name" ] && return 0
    say "making $name"
    # The final file name, in a scratch directory: a streamOptimized vmdk
    # names its own file in its descriptor, and libvmdk opens it by that name.
    rm -rf "$CACHE/.tmp"; mkdir -p "$CACHE/.tmp"
    OUT="$CACHE/.tmp/$name"
    "$@"
    mv "$OUT" "$CACHE/$name"
    rm -rf "$CACHE/.tmp"
}

mk_raw()   { "$PY" "$HERE/gendata.py" 1024 "$OUT"; }
mk_qcow2() { qemu-img convert -f raw -O qcow2 -o cluster_size=65536 "$CACHE/raw.img" "$OUT"; }
mk_zlib()  { qemu-img convert -W -c -f raw -O qcow2 -o cluster_size=65536,compression_type=zlib "$CACHE/raw.img" "$OUT"; }
mk_zstd()  { qemu-img convert -W -c -f raw -O qcow2 -o cluster_size=65536,compression_type=zstd "$CACHE/raw.img" "$OUT"; }
mk_vmdk()  { qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$CACHE/raw.img" "$OUT"; }

mk_big1t() {
    # A sparse raw file with the data at its places, then qemu-img convert
    # (which skips the holes); the raw file is removed.
    local sparse="$OUT.sparse"
    "$PY" - "$CACHE/raw.img" "$sparse" <<'EOF'
import os, random, sys
src, dst = sys.argv[1], sys.argv[2]
r = random.Random(1)
stripe, chunk = 256 << 20, 64 << 10
with open(src, "rb") as s, open(dst, "wb") as d:
    d.truncate(1 << 40)
    for i in range(4096):
        s.seek((i * chunk) % (1 << 30))
        d.seek(i * stripe + r.randrange(stripe // chunk) * chunk)
        d.write(s.read(chunk))
EOF
    qemu-img convert -f raw -O qcow2 -o cluster_size=65536 "$sparse" "$OUT"
    rm -f "$sparse"
}

mk_fsraw() {
    local src="$OUT.src" part="$OUT.part" psize=$((1300 << 20))
    rm -rf "$src"; mkdir -p "$src/dir10k"
    ln "$CACHE/raw.img" "$src/big.txt" 2>/dev/null || cp "$CACHE/raw.img" "$src/big.txt"
    echo "hello from the vdisk benchmark" > "$src/hello.txt"
    "$PY" -c '
import sys
d = sys.argv[1]
for i in range(1, 10001):
    with open("%s/file-%05d.txt" % (d, i), "w") as f:
        f.write("entry %d\n" % i)
' "$src/dir10k"
    truncate -s "$psize" "$part"
    mkfs.ext4 -q -L benchfs -d "$src" "$part"
    rm -rf "$src"
    truncate -s $((psize + (2 << 20))) "$OUT"
    printf 'label: gpt\nstart=2048, size=%d, type=linux\n' $((psize / 512)) | sfdisk -q "$OUT"
    dd if="$part" of="$OUT" bs=1M seek=1 conv=notrunc,sparse status=none
    rm -f "$part"
}
mk_fsqcow2() { qemu-img convert -f raw -O qcow2 "$CACHE/fs.raw" "$OUT"; }

make_img raw.img     mk_raw
make_img qcow2.qcow2 mk_qcow2
make_img zlib.qcow2  mk_zlib
make_img zstd.qcow2  mk_zstd
make_img stream.vmdk mk_vmdk
make_img big1t.qcow2 mk_big1t
make_img fs.raw      mk_fsraw
make_img fs.qcow2    mk_fsqcow2
exit 0
