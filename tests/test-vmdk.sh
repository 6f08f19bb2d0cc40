#!/usr/bin/env bash
# test-vmdk.sh — vmdk images as qemu-img writes them: every subformat
# (monolithicSparse, monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat,
# streamOptimized) with compat6, hwversion, adapter_type and zeroed_grain
# variants, data written at scattered offsets with qemu-io; split images of
# 5 GiB whose writes cross the 2 GiB extent boundaries; delta disks chained
# three deep (parents named relative to the child, in another directory).
#
# The oracle is qemu: `qemu-img convert -O raw` for bytes (whole disks, or
# windows of the 5 GiB ones), `qemu-img map --output=json` for allocation.
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io python3 cmp dd

make_patterns 20240602

# qio_ops IMG SEED SIZE COUNT [ZERO]: seeded writes across grains and grain
# tables; with ZERO=1 also write -z, aligned or not.
qio_ops() {
    local img=$1 ops
    mapfile -t ops < <(gen_ops "$2" "$3" "$4" 65536 "$([ "${5:-0}" = 1 ] && echo 0.25 || echo 0)" 1)
    qio "" "$img" "${ops[@]}"
}

# make_vmdk NAME SIZE OPTIONS SEED [ZERO]: create $T/NAME.vmdk and fill it.
make_vmdk() {
    local name=$1 size=$2 o=$3 seed=$4 zero=${5:-0}
    qemu-img create -q -f vmdk -o "$o" "$T/$name.vmdk" "$size" &&
        qio_ops "$T/$name.vmdk" "$seed" "$size" 25 "$zero"
}

# ------------------------------------------------- every subformat, small

seed=100
while read -r name size opts zero; do
    seed=$((seed + 1))
    if ! make_vmdk "$name" "$size" "$opts" "$seed" "$zero"; then
        not_ok "$name: qemu-img/qemu-io make the image ($opts)"
        continue
    fi
    bf_matches_qemu "$name ($opts)" "$T/$name.vmdk"
done <<'EOF'
sparse           67108864 subformat=monolithicSparse 0
sparse-compat6   40894464 subformat=monolithicSparse,compat6=on 0
sparse-hw7       33555456 subformat=monolithicSparse,hwversion=7,adapter_type=lsilogic 0
sparse-zero      67108864 subformat=monolithicSparse,zeroed_grain=on 1
sparse-zero-c6   20971520 subformat=monolithicSparse,zeroed_grain=on,compat6=on,adapter_type=buslogic 1
flat             67108864 subformat=monolithicFlat 0
flat-buslogic    10486272 subformat=monolithicFlat,adapter_type=buslogic,hwversion=6 0
split-sparse     50331648 subformat=twoGbMaxExtentSparse,adapter_type=legacyESX 0
split-sparse-z   50331648 subformat=twoGbMaxExtentSparse,zeroed_grain=on,compat6=on 1
split-flat       25165824 subformat=twoGbMaxExtentFlat,adapter_type=lsilogic 0
EOF

# streamOptimized: qemu writes it only by conversion, from a disk with data.
for v in "so:streamOptimized:67108864" "so-c6:streamOptimized,compat6=on:10486272" \
         "so-hw:streamOptimized,hwversion=8,adapter_type=lsilogic:33621504"; do
    IFS=: read -r name opts size <<<"$v"
    seed=$((seed + 1))
    if qemu-img create -q -f qcow2 "$T/$name-src.qcow2" "$size" &&
       qio_ops "$T/$name-src.qcow2" "$seed" "$size" 25 1 &&
       qemu-img convert -O vmdk -o "subformat=$opts" "$T/$name-src.qcow2" "$T/$name.vmdk"; then
        bf_matches_qemu "$name ($opts)" "$T/$name.vmdk"
    else
        not_ok "$name: qemu-img makes a $opts image"
    fi
    rm -f "$T/$name-src.qcow2"
done

# info: what the image says about itself
check "info of a monolithicSparse image" "$BFTEST" info "$T/sparse.vmdk"
grep -q '^format: vmdk$' "$T/.out" && grep -q '^version: monolithicSparse (sparse extent version 1)$' "$T/.out" &&
    grep -q '^cluster_size: 65536$' "$T/.out" && ! grep -q '^compression' "$T/.out" &&
    ok "info names createType, header version and grain size" ||
    not_ok "info names createType, header version and grain size" "$(cat "$T/.out")"
"$BFTEST" info "$T/so.vmdk" >"$T/.out" 2>&1
grep -q '^version: streamOptimized (sparse extent version 3)$' "$T/.out" && grep -q '^compression: zlib$' "$T/.out" &&
    ok "info of streamOptimized says zlib" || not_ok "info of streamOptimized says zlib" "$(cat "$T/.out")"
"$BFTEST" info "$T/split-flat.vmdk" >"$T/.out" 2>&1
grep -q '^version: twoGbMaxExtentFlat$' "$T/.out" && ! grep -q '^cluster_size' "$T/.out" &&
    ok "info of twoGbMaxExtentFlat" || not_ok "info of twoGbMaxExtentFlat" "$(cat "$T/.out")"
check_fails "stream-optimized vmdk images cannot be opened for writing" "stream-optimized.*cannot be written" \
    "$BFTEST" --rw info "$T/so.vmdk"
check_fails "vmdk images have no internal snapshots" "no internal snapshots" \
    "$BFTEST" --snapshot 1 info "$T/sparse.vmdk"
rm -f "$T"/*.vmdk

# Empty disks (qemu-img writes a flat one as a descriptor with no extents).
for sub in monolithicSparse monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat streamOptimized; do
    qemu-img create -q -f vmdk -o subformat=$sub "$T/empty.vmdk" 0
    check "$sub of size 0 opens" "$BFTEST" info "$T/empty.vmdk"
    grep -q '^size: 0$' "$T/.out" && ok "$sub of size 0 is empty" || not_ok "$sub of size 0 is empty" "$(cat "$T/.out")"
    rm -f "$T"/empty*
done

# ------------------------------------- split images across 2 GiB extents

# window_matches DESC IMAGE ORACLE OFF LEN: `bftest read` of one window.
window_matches() {
    local desc=$1 img=$2 oracle=$3 off=$4 len=$5 rc=0
    "$BFTEST" read "$img" "$off" "$len" >"$T/.win" 2>"$T/.err" || rc=$?
    dd if="$oracle" of="$T/.want" bs=1M iflag=skip_bytes,count_bytes skip="$off" count="$len" 2>/dev/null
    if [ $rc -ne 0 ] || _sanitizer_report "$T/.err"; then
        not_ok "$desc" "bftest read $off $len: exit $rc" "$(tail -n 5 "$T/.err")"
    else
        same_file "$desc" "$T/.want" "$T/.win"
    fi
}

G=$((1 << 30))
for sub in twoGbMaxExtentSparse twoGbMaxExtentFlat; do
    img=$T/big-$sub.vmdk
    size=$((5 * G))
    qemu-img create -q -f vmdk -o subformat=$sub "$img" $size || { not_ok "$sub: create 5 GiB"; continue; }
    n_ext=$(grep -c '^RW ' "$img")
    [ "$n_ext" -eq 3 ] && ok "$sub: 5 GiB is three extents" || not_ok "$sub: 5 GiB is three extents" "$(cat "$img")"
    if ! qio "" "$img" "write -q -s $T/pat1 0 70000" \
            "write -q -s $T/pat2 $((2 * G - 98304)) 200000" \
            "write -q -P 0x77 $((2 * G - 512)) 1024" \
            "write -q -s $T/pat1 $((4 * G - 1000)) 5000" \
            "write -q -P 0x33 $((3 * G + 12345)) 65536" \
            "write -q -s $T/pat2 $((5 * G - 70000)) 70000"; then
        not_ok "$sub: qemu-io writes across the extent boundaries"
        continue
    fi
    raw_of "$img" "$T/big.raw"
    for w in 0:131072 $((2 * G - 1048576)):2097152 $((2 * G - 65536)):131072 \
             $((4 * G - 4096)):8192 $((3 * G)):1048576 $((5 * G - 1048576)):1048576; do
        window_matches "$sub: bytes $w" "$img" "$T/big.raw" "${w%%:*}" "${w##*:}"
    done
    qemu-img map --output=json "$img" >"$T/big.json"
    bf_map_matches "$sub: map of 5 GiB" "$T/big.json" "$img"
    rm -f "$T"/big*
done

# ---------------------------------------------- delta disks, three deep

mkdir -p "$T/base-dir"
if make_vmdk base-dir/base 67108864 subformat=monolithicSparse 201 &&
   qemu-img create -q -f vmdk -b base-dir/base.vmdk -F vmdk "$T/mid.vmdk" &&
   qio_ops "$T/mid.vmdk" 202 67108864 15 &&
   qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse -b mid.vmdk -F vmdk "$T/top.vmdk" &&
   qio_ops "$T/top.vmdk" 203 67108864 15; then
    bf_matches_qemu "delta chain base <- mid <- top" "$T/top.vmdk"
    bf_matches_qemu "delta chain base <- mid" "$T/mid.vmdk"
    (cd / && "$BFTEST" info "$T/top.vmdk") >"$T/.out" 2>&1
    grep -q '^backing_file: mid.vmdk$' "$T/.out" && grep -q "^chain\[2\]: vmdk $T/base-dir/base.vmdk$" "$T/.out" &&
        ok "the chain resolves parents relative to each child" ||
        not_ok "the chain resolves parents relative to each child" "$(cat "$T/.out")"
    qemu-img convert -O raw \
        "json:{\"driver\":\"vmdk\",\"file\":{\"driver\":\"file\",\"filename\":\"$T/top.vmdk\"},\"backing\":null}" \
        "$T/nb.raw"
    bf_cat_matches "delta disk without its parent (--no-backing)" "$T/nb.raw" --no-backing "$T/top.vmdk"
    rm -f "$T/nb.raw"
    # The chain as VMware on Windows writes it and a user copies it here:
    # parentFileNameHint a Windows path.  Absolute: the parent is looked for
    # beside the child by its last component; relative: backslashes are
    # separators.  The bytes are qemu's reading of the original chain.
    mkdir -p "$T/win/sub"
    cp -r "$T/mid.vmdk" "$T/base-dir" "$T/win/sub/"
    cp "$T/mid.vmdk" "$T/win/"
    cp -r "$T/base-dir" "$T/win/"
    cp "$T"/top*.vmdk "$T/win/"
    raw_of "$T/top.vmdk" "$T/top.raw"
    for hint in 'C:\Users\me\Virtual Machines\mid.vmdk' '\\filer\vms\mid.vmdk' 'sub\mid.vmdk'; do
        sed "s|^parentFileNameHint=.*|parentFileNameHint=\"${hint//\\/\\\\}\"|" "$T/top.vmdk" >"$T/win/top.vmdk"
        bf_cat_matches "parentFileNameHint=\"$hint\" (a Windows path) finds the copied parent" \
            "$T/top.raw" "$T/win/top.vmdk"
    done
    sed 's|^parentFileNameHint=.*|parentFileNameHint="D:\\VMs\\gone.vmdk"|' "$T/top.vmdk" >"$T/win/top.vmdk"
    check_fails "a Windows parent found nowhere is refused, naming both places looked at" \
        "parent file 'D:.VMs.gone.vmdk' \(a Windows path\) is neither there nor at $T/win/gone.vmdk" \
        "$BFTEST" info "$T/win/top.vmdk"
    rm -rf "$T/win" "$T/top.raw"
else
    not_ok "qemu-img makes a three-deep delta chain"
fi

# a flat base under a sparse child under a streamless sparse grandchild
if make_vmdk fbase 33554432 subformat=monolithicFlat 301 &&
   qemu-img create -q -f vmdk -o zeroed_grain=on -b fbase.vmdk -F vmdk "$T/fmid.vmdk" &&
   qio_ops "$T/fmid.vmdk" 302 33554432 20 1 &&
   qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse -b fmid.vmdk -F vmdk "$T/ftop.vmdk" &&
   qio_ops "$T/ftop.vmdk" 303 33554432 10; then
    bf_matches_qemu "delta chain flat <- zeroed-grain sparse <- split sparse" "$T/ftop.vmdk"
else
    not_ok "qemu-img makes a delta chain over a flat base"
fi

done_testing
