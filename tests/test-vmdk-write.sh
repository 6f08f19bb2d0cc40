#!/usr/bin/env bash
# test-vmdk-write.sh — writing vmdk disks whose extents are all flat:
# monolithicFlat and twoGbMaxExtentFlat as qemu-img makes them, and an ESXi
# "vmfs" descriptor with its -flat.vmdk.  Seeded qemu-io writes (data, zeros,
# across extent files) go through `vdisk-nbd` (read-write) and to a raw copy;
# qemu must then read the disk as the copy.  The descriptor's CID changes
# before the first write and nothing else in it does, so a delta disk made
# before the write no longer opens.  Sparse, stream-optimized and delta disks
# and RDONLY/ZERO extent lines are refused for writing with a message.
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io python3 cmp truncate diff
require_vdisk_nbd

GiB=$((1 << 30))
make_patterns 20261128

# cid FILE: the CID line of a descriptor file.
cid() { grep -a '^CID=' "$1"; }

# write_matches DESC DESCRIPTOR SEED [OP...]: seeded writes (and OPs) through
# vdisk-nbd to DESCRIPTOR and to a raw copy; qemu reads the disk as the copy;
# the descriptor differs from before only in its CID.
write_matches() {
    local desc=$1 img=$2 seed=$3 ops vsize before; shift 3
    vsize=$(qemu-img info -f vmdk --output=json "$img" | sed -n 's/^ *"virtual-size": \([0-9]*\),*$/\1/p' | head -n 1)
    qemu-img convert -f vmdk -O raw "$img" "$T/w.oracle"
    mapfile -t ops < <(gen_ops "$seed" "$vsize" 30 $((1 << 20)) 0.25 1)
    ops+=("$@")
    qio raw "$T/w.oracle" "${ops[@]}"
    cp "$img" "$T/desc.before"
    start_nbd "$T/w.sock" -f vmdk "$img" || return 0
    qio raw "$(nbd_uri "$T/w.sock")" "${ops[@]}" 2>"$T/.err" ||
        not_ok "$desc: qemu-io writes through vdisk-nbd" "$(cat "$T/.err")"
    stop_nbd "$desc: the server stops cleanly" "$NBD_PID" "$T/w.sock.log" "$T/w.sock"
    qemu-img compare -f vmdk -F raw "$img" "$T/w.oracle" >"$T/.cmp" 2>&1 &&
        ok "$desc: qemu reads the written disk as the raw copy" ||
        not_ok "$desc: qemu reads the written disk as the raw copy" "$(cat "$T/.cmp")"
    if [ "$(cid "$T/desc.before")" != "$(cid "$img")" ] &&
       [ "$(diff -a "$T/desc.before" "$img" | grep -c '^[<>]')" = 2 ]; then
        ok "$desc: the descriptor's CID changed, and nothing else in it"
    else
        not_ok "$desc: the descriptor's CID changed, and nothing else in it" \
            "$(diff -a "$T/desc.before" "$img" | head -n 6)"
    fi
    rm -f "$T/w.oracle" "$T/desc.before"
}

# ----------------------------------------------------- qemu-img's flat disks

qemu-img create -q -f vmdk -o subformat=monolithicFlat "$T/mf.vmdk" 64M
qio vmdk "$T/mf.vmdk" "write -q -P 0x61 1000 300000" "write -q -s $T/pat1 30000000 4093"
write_matches "monolithicFlat" "$T/mf.vmdk" 601
qemu-img convert -f vmdk -O raw "$T/mf.vmdk" "$T/mf.raw"
bf_cat_matches "monolithicFlat: we read what we wrote" "$T/mf.raw" "$T/mf.vmdk"
rm -f "$T/mf.raw"

qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentFlat "$T/tg.vmdk" 5G
write_matches "twoGbMaxExtentFlat, 5 GiB in three extent files" "$T/tg.vmdk" 602 \
    "write -q -s $T/pat2 $((2 * GiB - 30000)) 65521" "write -q -z $((4 * GiB - 4096)) 8192" \
    "write -q -P 0x7e $((5 * GiB - 1000)) 1000"
for w in $((2 * GiB - 32768)):65536 $((4 * GiB - 8192)):16384 $((5 * GiB - 4096)):4096; do
    qemu-img convert -O raw --image-opts \
        "driver=raw,offset=${w%%:*},size=${w##*:},file.driver=vmdk,file.file.filename=$T/tg.vmdk" \
        "$T/win.raw"
    "$BFTEST" read "$T/tg.vmdk" "${w%%:*}" "${w##*:}" >"$T/win.ours" 2>"$T/.err"
    same_file "twoGbMaxExtentFlat: we read the window $w as qemu does" "$T/win.raw" "$T/win.ours"
done
rm -f "$T"/tg*.vmdk "$T/win.raw" "$T/win.ours"

# ESXi's layout: a "vmfs" descriptor and its -flat.vmdk
truncate -s 32M "$T/esx-flat.vmdk"
cat >"$T/esx.vmdk" <<'EOF'
# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=fffffffe
parentCID=ffffffff
createType="vmfs"

# Extent description
RW 65536 VMFS "esx-flat.vmdk"

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.geometry.cylinders = "4"
ddb.geometry.heads = "255"
ddb.geometry.sectors = "63"
ddb.virtualHWVersion = "13"
EOF
write_matches "an ESXi vmfs disk (descriptor and -flat.vmdk)" "$T/esx.vmdk" 603

# A delta disk made from a flat disk before a write no longer opens after it:
# the parent's CID changed.
qemu-img create -q -f vmdk -o subformat=monolithicFlat "$T/base.vmdk" 8M
qemu-img create -q -f vmdk -b base.vmdk -F vmdk "$T/delta.vmdk"
check "a delta disk of a flat disk opens before the base is written" "$BFTEST" info "$T/delta.vmdk"
printf 'x' >"$T/x"
check "bftest --rw writes the flat base" "$BFTEST" --rw write "$T/base.vmdk" 0 "$T/x"
check_fails "after the write the delta disk's parentCID no longer matches" "parentCID .* does not match" \
    "$BFTEST" info "$T/delta.vmdk"

# qemu writes a CID without leading zeros ("CID=ac874c1"): the new one takes
# as many digits, written in place.
sed 's/^CID=.*/CID=5/' "$T/esx.vmdk" >"$T/short.vmdk"
cp "$T/short.vmdk" "$T/short.before"
check "a one-digit CID: bftest --rw writes the disk" "$BFTEST" --rw write "$T/short.vmdk" 512 "$T/x"
if cid "$T/short.vmdk" | grep -qx 'CID=[0-9a-f]' && [ "$(cid "$T/short.vmdk")" != CID=5 ] &&
   [ "$(diff -a "$T/short.before" "$T/short.vmdk" | grep -c '^[<>]')" = 2 ]; then
    ok "a one-digit CID is replaced by another of one digit, in place"
else
    not_ok "a one-digit CID is replaced by another of one digit, in place" "$(diff -a "$T/short.before" "$T/short.vmdk")"
fi
check "the disk with the new one-digit CID opens" "$BFTEST" info "$T/short.vmdk"

# ------------------------------------------------------------- refused

qemu-img create -q -f vmdk "$T/sparse.vmdk" 8M
qemu-img create -q -f vmdk -o subformat=streamOptimized "$T/stream.vmdk" 8M
qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse "$T/tgs.vmdk" 8M
for img in sparse stream delta tgs; do
    check_fails "$img vmdk: writing refused with a message" "cannot be written|can be written" \
        "$BFTEST" --rw info "$T/$img.vmdk"
done
sed 's/^RW 65536 VMFS/RDONLY 65536 VMFS/' "$T/esx.vmdk" >"$T/ro.vmdk"
check_fails "an RDONLY extent line: writing refused, naming the line" "line 9 is read-only" \
    "$BFTEST" --rw info "$T/ro.vmdk"
check "an RDONLY extent line: reading still works" "$BFTEST" info "$T/ro.vmdk"
sed 's/^RW 65536 VMFS "esx-flat.vmdk"/RW 65536 VMFS "esx-flat.vmdk"\nRW 2048 ZERO/' "$T/esx.vmdk" >"$T/z.vmdk"
check_fails "a ZERO extent line: writing refused" "is a ZERO extent" "$BFTEST" --rw info "$T/z.vmdk"
rc=0
"$VDISK_NBD" -k "$T/rw.sock" "$T/sparse.vmdk" >"$T/.out" 2>"$T/.err" || rc=$?
[ $rc -ne 0 ] && grep -q -- "-r" "$T/.err" && ! _sanitizer_report "$T/.err" &&
    ok "vdisk-nbd refuses to serve a sparse vmdk read-write, suggesting -r" ||
    not_ok "vdisk-nbd refuses to serve a sparse vmdk read-write, suggesting -r" "exit $rc" "$(cat "$T/.err")"

done_testing
