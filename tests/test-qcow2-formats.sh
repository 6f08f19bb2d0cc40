#!/usr/bin/env bash
# test-qcow2-formats.sh — qcow2 conformance on good images: every cluster size
# (512 B, 4 KiB, 64 KiB, 2 MiB) in version 2 (compat=0.10) and version 3
# (compat=1.1); unallocated, zero and pre-allocated zero clusters; discards;
# compressed clusters (zlib, zstd); extended L2 entries (subclusters) over a
# backing file.
#
# Images are made here with qemu-img/qemu-io from known (seeded) content.
# The oracle is qemu: `qemu-img convert -O raw` for every byte (whole disks,
# or windows of disks too large to read whole), `qemu-img map --output=json`
# for data/zero/unallocated.
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io python3 cmp

# Deterministic content: pattern files for qemu-io -s (odd lengths, so each
# write puts different bytes at a given offset in a cluster).
bf_python - "$T" <<'EOF'
import random, sys
r = random.Random(20240601)
d = sys.argv[1]
open(f"{d}/pat1", "wb").write(r.randbytes(4093))
open(f"{d}/pat2", "wb").write(bytes((i * 7 + i // 251) & 0xff for i in range(65521)))
EOF

# gen_ops SEED SIZE CLUSTER COUNT: qemu-io commands, one a line: writes of
# seeded data, write -z, write -z -u and discard at scattered offsets and
# lengths (unaligned, crossing clusters and L2 tables), within [0, SIZE).
gen_ops() {
    bf_python - "$@" "$T/pat1" "$T/pat2" <<'EOF'
import random, sys
seed, size, cs, count = (int(a) for a in sys.argv[1:5])
pats = sys.argv[5:]
r = random.Random(seed)
def rlen():
    k = r.random()
    if k < 0.3: return r.randint(1, 600)
    if k < 0.7: return r.randint(1, 3 * cs)
    if k < 0.9: return r.randint(cs, 8 * cs)
    return r.randint(1, 1 << 20)
def aligned(off, ln):
    a = off // cs * cs
    e = min(size, -(-(off + ln) // cs) * cs)
    return a, max(e - a, 1)
for _ in range(count):
    ln = min(rlen(), size)
    off = r.randint(0, size - ln)
    k = r.random()
    if k < 0.40:
        print(f"write -q -s {r.choice(pats)} {off} {ln}")
    elif k < 0.55:
        print(f"write -q -P {r.randint(1, 255)} {off} {ln}")
    elif k < 0.70:
        print(f"write -q -z {off} {ln}")
    elif k < 0.78:
        print("write -q -z -u %d %d" % aligned(off, ln))
    elif k < 0.86:
        print("write -q -z %d %d" % aligned(off, ln))
    elif k < 0.93:
        print("discard -q %d %d" % aligned(off, ln))
    else:
        print(f"discard -q {off} {ln}")
EOF
}

# qio IMG CMD...: run qemu-io commands (one per argument) on IMG; a command
# that fails is a failed test (the image would not be what the test meant).
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

# qio_ops IMG SEED SIZE CLUSTER COUNT: run gen_ops's commands on IMG.
qio_ops() {
    local img=$1 ops
    mapfile -t ops < <(gen_ops "$2" "$3" "$4" "$5")
    qio "$img" "${ops[@]}"
}

# window_matches DESC IMG OFF LEN: `bftest read` of a window equals qemu's
# bytes of the same window (for disks too large to convert whole).
window_matches() {
    local desc=$1 img=$2 off=$3 len=$4 rc=0
    qemu-img convert -O raw --image-opts \
        "driver=raw,offset=$off,size=$len,file.driver=qcow2,file.file.filename=$img" \
        "$T/win.oracle"
    "$BFTEST" read "$img" "$off" "$len" >"$T/win.out" 2>"$T/.err" || rc=$?
    if [ "$rc" -ne 0 ] || _sanitizer_report "$T/.err"; then
        not_ok "$desc" "bftest read $img $off $len: exit $rc" "$(tail -n 20 "$T/.err")"
    elif ! cmp -s "$T/win.oracle" "$T/win.out"; then
        not_ok "$desc" "$(cmp "$T/win.oracle" "$T/win.out" 2>&1 | head -n 3)"
    else
        ok "$desc"
    fi
}

# info_has DESC IMG REGEX [BFTEST-OPTIONS...]: `bftest info` output matches.
info_has() {
    local desc=$1 img=$2 re=$3; shift 3
    if "$BFTEST" "$@" info "$img" >"$T/.info" 2>"$T/.err" && grep -qE -- "$re" "$T/.info" &&
       ! _sanitizer_report "$T/.err"; then
        ok "$desc"
    else
        not_ok "$desc" "wanted a line matching: $re" "$(cat "$T/.info" "$T/.err")"
    fi
}

# The comparison must be able to fail: mapcmp.py must see a difference in a
# changed map, and the byte comparison must see one in a changed image.
qemu-img create -q -f qcow2 "$T/sanity.qcow2" 1M
qio "$T/sanity.qcow2" "write -q -P 0x5a 4096 8192"
qemu-img map --output=json "$T/sanity.qcow2" >"$T/sanity.json"
sed 's/"data": true/"data": false/' "$T/sanity.json" >"$T/sanity-bad.json"
if bf_python "$VDISK_TOP/tests/mapcmp.py" "$T/sanity.json" "$T/sanity-bad.json" >"$T/.mc"; then
    not_ok "mapcmp.py reports a difference between different maps"
else
    ok "mapcmp.py reports a difference between different maps"
    diag "$(cat "$T/.mc")"
fi
bf_python "$VDISK_TOP/tests/mapcmp.py" "$T/sanity.json" "$T/sanity.json" >"$T/.mc" &&
    ok "mapcmp.py accepts equal maps" || not_ok "mapcmp.py accepts equal maps" "$(cat "$T/.mc")"
qemu-img convert -O raw "$T/sanity.qcow2" "$T/sanity.raw"
qio "$T/sanity.qcow2" "write -q -P 0x5b 8000 1"
"$BFTEST" cat "$T/sanity.qcow2" "$T/sanity.out"
if cmp -s "$T/sanity.raw" "$T/sanity.out"; then
    not_ok "the byte comparison sees a one-byte change"
else
    ok "the byte comparison sees a one-byte change"
fi

# ------------------------------------------------------- cluster sizes x versions
# A 9 MiB + 1.5 KiB disk: the last cluster is partial (for clusters > 512 B),
# 512 B clusters give 288 L2 tables, 4 KiB clusters 5.
SMALL=$((9 * 1024 * 1024 + 1536))
seed=100
for cs in 512 4096 65536 2097152; do
    span=$((cs * cs / 8))           # guest bytes one L2 table maps
    for compat in 0.10 1.1; do
        name="cluster $cs compat=$compat"
        img=$T/c$cs-$compat.qcow2
        if ! qemu-img create -q -f qcow2 -o "cluster_size=$cs,compat=$compat" "$img" "$SMALL" \
            2>"$T/.err"; then
            not_ok "$name: image made" "$(head -n 1 "$T/.err")"
            continue
        fi
        # fixed cases: first and last byte, every L2 table boundary crossed,
        # the partial last cluster, then seeded scattered operations
        fixed=("write -q -s $T/pat1 0 1" "write -q -P 0x7e $((SMALL - 1)) 1")
        for ((b = span; b < SMALL; b += span)); do
            fixed+=("write -q -s $T/pat2 $((b - 700)) 1500")
            [ ${#fixed[@]} -gt 40 ] && break
        done
        fixed+=("write -q -s $T/pat1 $((SMALL - SMALL % cs - 100)) $((SMALL % cs + 100))")
        qio "$img" "${fixed[@]}"
        seed=$((seed + 1))
        qio_ops "$img" "$seed" "$SMALL" "$cs" 60
        # and data written last over some of what was zeroed or discarded
        seed=$((seed + 1))
        qio_ops "$img" "$seed" "$SMALL" "$cs" 15
        info_has "$name: info says the version" "$img" \
            "^version: $([ $compat = 0.10 ] && echo 2 || echo 3) \(compat=$compat\)"
        info_has "$name: info says the cluster size" "$img" "^cluster_size: $cs\$"
        bf_matches_qemu "$name" "$img"

        # Metadata preallocation: every cluster allocated up front; zeroes
        # written over allocated clusters keep them (v3: zero flag with a host
        # offset, a "pre-allocated zero cluster").
        pimg=$T/p$cs-$compat.qcow2
        qemu-img create -q -f qcow2 -o "cluster_size=$cs,compat=$compat,preallocation=metadata" \
            "$pimg" "$SMALL"
        seed=$((seed + 1))
        qio "$pimg" "write -q -s $T/pat1 0 $((3 * cs + 5))" "write -q -z $cs $cs" \
            "write -q -z $((2 * cs + 3)) 17" "write -q -z -u $((4 * cs)) $((SMALL - 4 * cs < 2 * cs ? SMALL - 4 * cs : 2 * cs))"
        qio_ops "$pimg" "$seed" "$SMALL" "$cs" 25
        bf_matches_qemu "$name, preallocation=metadata" "$pimg"
    done
done

# ---------------------------------------------- L2 table boundaries, large disks
# 64 KiB clusters map 512 MiB per L2 table, 2 MiB clusters 512 GiB: sparse
# disks of a few tables, written across each table boundary; bytes are
# compared in windows, the map over the whole disk.
for spec in "65536 $((1280 * 1024 * 1024 + 1536))" "2097152 $((1537 * 1024 * 1024 * 1024 + 1536))"; do
    read -r cs size <<<"$spec"
    span=$((cs * cs / 8))
    for compat in 0.10 1.1; do
        name="cluster $cs compat=$compat, $((size >> 20)) MiB disk"
        img=$T/big$cs-$compat.qcow2
        qemu-img create -q -f qcow2 -o "cluster_size=$cs,compat=$compat" "$img" "$size"
        ops=("write -q -s $T/pat1 0 $((cs + 3))" "write -q -P 0x61 $((size - 1)) 1"
             "write -q -s $T/pat2 $((size - size % cs - 7)) $((size % cs + 7))")
        windows=("0 $((2 * cs))" "$((size - 2 * cs)) $((2 * cs))")
        for ((b = span; b < size; b += span)); do
            ops+=("write -q -s $T/pat2 $((b - cs - 100)) $((2 * cs + 300))"
                  "write -q -z $((b - cs / 2)) $((cs / 4))"
                  "write -q -z -u $((b + cs)) $cs"
                  "write -q -P 0x33 $((b + cs + 5)) 9"
                  "discard -q $((b - cs)) $cs")
            windows+=("$((b - 3 * cs)) $((6 * cs))")
        done
        qio "$img" "${ops[@]}"
        for w in "${windows[@]}"; do
            read -r off len <<<"$w"
            window_matches "$name: bytes $off+$len" "$img" "$off" "$len"
        done
        qemu-img map --output=json "$img" >"$T/big.json"
        bf_map_matches "$name: map" "$T/big.json" "$img"
    done
done

# ------------------------------------------------------------------ compressed
# Source content: compressible text, incompressible noise, zeros and runs of
# one byte, in pieces that do not line up with clusters.
# Two sizes: 6 MiB for small clusters, 24 MiB (12 clusters) for 2 MiB ones.
for mib in 6 24; do
bf_python - "$T/comp-src-$mib.raw" "$mib" <<'EOF'
import random, sys
r = random.Random(7)
out = bytearray()
size = int(sys.argv[2]) * 1024 * 1024 + 3 * 512
while len(out) < size:
    k = r.randrange(4)
    n = r.randint(1000, 300000)
    if k == 0:
        line = b"".join(b"line %d of some compressible text, fairly repetitive\n" % (len(out) + i)
                        for i in range(n // 50 + 1))
        out += line[:n]
    elif k == 1:
        out += r.randbytes(n)
    elif k == 2:
        out += bytes(n)
    else:
        out += bytes([r.randint(1, 255)]) * n
open(sys.argv[1], "wb").write(bytes(out[:size]))
EOF
done
for ctype in zlib zstd; do
    for cs in 4096 65536 2097152; do
        src=$T/comp-src-$([ $cs -lt 2097152 ] && echo 6 || echo 24).raw
        csize=$(stat -c %s "$src")
        # version 2 (zlib only: qemu refuses zstd there) with 64 KiB clusters
        compats=1.1
        [ $cs = 65536 ] && [ $ctype = zlib ] && compats="0.10 1.1"
        for compat in $compats; do
            name="compressed $ctype, cluster $cs, compat=$compat"
            img=$T/z-$ctype-$cs-$compat.qcow2
            opts="cluster_size=$cs,compat=$compat"
            [ "$compat" = 1.1 ] && opts="$opts,compression_type=$ctype"
            if ! qemu-img convert -c -f raw -O qcow2 -o "$opts" "$src" "$img" \
                2>"$T/.err"; then
                not_ok "$name: image made" "$(head -n 1 "$T/.err")"
                continue
            fi
            info_has "$name: info says the compression type" "$img" "^compression: $ctype\$"
            bf_matches_qemu "$name" "$img"
            # uncompressed clusters written afterwards, partial writes over
            # compressed clusters (qemu copies them on write), zeroes and
            # discards over compressed clusters, and new compressed writes
            seed=$((seed + 1))
            qio "$img" "write -q -s $T/pat1 $((cs / 2)) $((cs * 2))" \
                "write -q -z $((4 * cs)) $cs" "write -q -z -u $((6 * cs)) $((2 * cs))" \
                "discard -q $((8 * cs)) $cs" "write -q -P 0x42 $((csize - cs - 3)) $((cs + 3))" \
                "discard -q $((9 * cs)) $((2 * cs))" "write -q -c -s $T/pat2 $((9 * cs)) $cs" \
                "write -q -c -P 0x24 $((10 * cs)) $cs"
            qio_ops "$img" "$seed" "$csize" "$cs" 12
            bf_matches_qemu "$name, then rewritten in part" "$img"
        done
    done
done

# ---------------------------------------------------------------- extended L2
# Subclusters (cluster/32) over a backing file: unallocated subclusters read
# the backing file, zero subclusters read zero, allocated ones their data.
bf_python - "$T/xbase.raw" <<'EOF'
import random, sys
r = random.Random(11)
size = 12 * 1024 * 1024
b = bytearray(size)
for _ in range(60):
    off = r.randrange(size); n = r.randint(1, 400000)
    chunk = r.randbytes(min(n, size - off))
    b[off:off + len(chunk)] = chunk
open(sys.argv[1], "wb").write(bytes(b))
EOF
qemu-img convert -f raw -O qcow2 "$T/xbase.raw" "$T/xbase.qcow2"
for cs in 32768 65536 2097152; do
    sc=$((cs / 32))
    # larger than the 12 MiB backing file for 2 MiB clusters: reads past its end
    XSIZE=$(( (cs * 11 > 12 << 20 ? cs * 11 : 12 << 20) + 512 * 5 ))
    for base in raw qcow2 none; do
        name="extended_l2 cluster $cs, backing $base"
        img=$T/x$cs-$base.qcow2
        if [ $base = none ]; then
            bopt=()
        else
            bopt=(-b "$T/xbase.$base" -F "$base")
        fi
        if ! qemu-img create -q -f qcow2 -o "extended_l2=on,cluster_size=$cs" "${bopt[@]}" \
            "$img" "$XSIZE" 2>"$T/.err"; then
            skip "$name" "qemu-img refuses: $(head -n 1 "$T/.err")"
            continue
        fi
        # subcluster-granular writes (aligned and not), zeroes of part of a
        # cluster (aligned to subclusters: zero bits; unaligned: copy), zeroes
        # that unmap, discards, then seeded scattered operations
        qio "$img" "write -q -s $T/pat1 $sc $sc" "write -q -s $T/pat2 $((3 * sc)) $((2 * sc))" \
            "write -q -P 0x71 $((cs + 5 * sc + 17)) $((sc / 2))" \
            "write -q -s $T/pat1 $((2 * cs - sc)) $((2 * sc))" \
            "write -q -z $((4 * cs + 2 * sc)) $((3 * sc))" \
            "write -q -z $((5 * cs + 100)) $((sc + 7))" \
            "write -q -s $T/pat1 $((6 * cs)) $cs" "write -q -z -u $((6 * cs + 8 * sc)) $((8 * sc))" \
            "write -q -z $((6 * cs + 20 * sc)) $((4 * sc))" "discard -q $((6 * cs + 28 * sc)) $((2 * sc))" \
            "write -q -z -u $((7 * cs)) $((3 * cs))" "write -q -s $T/pat2 $((8 * cs + 31 * sc)) 3" \
            "write -q -P 0x19 $((XSIZE - sc - 1)) $((sc + 1))"
        seed=$((seed + 1))
        qio_ops "$img" "$seed" "$XSIZE" "$sc" 40
        info_has "$name: info says extended_l2" "$img" "^flags:.* extended_l2"
        bf_matches_qemu "$name" "$img"
    done
    # compressed clusters in an extended-L2 image (their bitmap is unused),
    # then subclusters written over and beside them
    name="extended_l2 cluster $cs, compressed"
    img=$T/xc$cs.qcow2
    if ! qemu-img convert -c -f raw -O qcow2 -o "extended_l2=on,cluster_size=$cs,compression_type=zstd" \
        "$T/comp-src-$([ $cs -lt 2097152 ] && echo 6 || echo 24).raw" "$img" 2>"$T/.err"; then
        skip "$name" "qemu-img refuses: $(head -n 1 "$T/.err")"
        continue
    fi
    qio "$img" "write -q -s $T/pat1 $((cs + sc)) $((sc + 5))" "write -q -z $((3 * cs)) $((4 * sc))" \
        "write -q -z -u $((5 * cs + 4 * sc)) $((4 * sc))"
    bf_matches_qemu "$name" "$img"
done

done_testing
