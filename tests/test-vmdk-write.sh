#!/usr/bin/env bash
# test-vmdk-write.sh — writing vmdk disks: flat extents (monolithicFlat,
# twoGbMaxExtentFlat as qemu-img makes them, an ESXi "vmfs" descriptor with
# its -flat.vmdk) and hosted sparse extents (monolithicSparse,
# twoGbMaxExtentSparse, a delta disk over a sparse parent, a real
# monolithicSparse file).  Seeded qemu-io writes (data, zeros, across extent
# files and grains) go through `vdisk-nbd` (read-write) and to a raw copy;
# qemu must then read the disk as the copy and `qemu-img check` it clean.
# The descriptor's CID changes before the first write and nothing else in it
# does, so a delta disk made before the write no longer opens.  nbdcopy over
# four connections into an empty sparse disk allocates each grain it writes
# once and none for zeros.  Stream-optimized disks and RDONLY/ZERO extent
# lines are refused for writing with a message.
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io python3 cmp truncate diff nbdcopy
require_vdisk_nbd

GiB=$((1 << 30))
make_patterns 20261128

# desc_text FILE: the descriptor of a vmdk: the file itself, or the text
# embedded in a sparse (KDMV) file.
desc_text() {
    python3 -c 'import struct, sys
d = open(sys.argv[1], "rb").read()
if d[:4] == b"KDMV":
    off, size = struct.unpack_from("<QQ", d, 28)
    d = d[off * 512:(off + size) * 512]
sys.stdout.write(d.split(b"\0")[0].decode("latin-1"))' "$1"
}

# cid FILE: the CID line of a vmdk's descriptor.
cid() { desc_text "$1" | grep -a '^CID='; }

# write_matches DESC IMG SEED [OP...]: seeded writes (and OPs; of about
# $WM_UNIT bytes, default 1 MiB) through vdisk-nbd to the vmdk IMG and to a
# raw copy; qemu reads the disk as the copy and finds it clean; the
# descriptor differs from before only in its CID.
write_matches() {
    local desc=$1 img=$2 seed=$3 ops vsize before; shift 3
    vsize=$(qemu-img info -f vmdk --output=json "$img" | sed -n 's/^ *"virtual-size": \([0-9]*\),*$/\1/p' | head -n 1)
    qemu-img convert -f vmdk -O raw "$img" "$T/w.oracle"
    mapfile -t ops < <(gen_ops "$seed" "$vsize" 30 "${WM_UNIT:-$((1 << 20))}" 0.25 1)
    ops+=("$@")
    qio raw "$T/w.oracle" "${ops[@]}"
    desc_text "$img" >"$T/desc.before"
    start_nbd "$T/w.sock" -f vmdk "$img" || return 0
    qio raw "$(nbd_uri "$T/w.sock")" "${ops[@]}" 2>"$T/.err" ||
        not_ok "$desc: qemu-io writes through vdisk-nbd" "$(cat "$T/.err")"
    stop_nbd "$desc: the server stops cleanly" "$NBD_PID" "$T/w.sock.log" "$T/w.sock"
    qemu-img compare -f vmdk -F raw "$img" "$T/w.oracle" >"$T/.cmp" 2>&1 &&
        ok "$desc: qemu reads the written disk as the raw copy" ||
        not_ok "$desc: qemu reads the written disk as the raw copy" "$(cat "$T/.cmp")"
    check "$desc: qemu-img check finds no errors" qemu-img check -q -f vmdk "$img"
    desc_text "$img" >"$T/desc.after"
    if [ "$(cid "$T/desc.before")" != "$(cid "$T/desc.after")" ] &&
       [ "$(diff -a "$T/desc.before" "$T/desc.after" | grep -c '^[<>]')" = 2 ]; then
        ok "$desc: the descriptor's CID changed, and nothing else in it"
    else
        not_ok "$desc: the descriptor's CID changed, and nothing else in it" \
            "$(diff -a "$T/desc.before" "$T/desc.after" | head -n 6)"
    fi
    rm -f "$T/w.oracle" "$T/desc.before" "$T/desc.after"
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

# ------------------------------------------------------ hosted sparse disks

WM_UNIT=65536
qemu-img create -q -f vmdk "$T/ms.vmdk" 64M
qio vmdk "$T/ms.vmdk" "write -q -P 0x61 1000 300000" "write -q -s $T/pat1 30000000 4093"
write_matches "monolithicSparse" "$T/ms.vmdk" 611
qemu-img convert -f vmdk -O raw "$T/ms.vmdk" "$T/ms.raw"
bf_cat_matches "monolithicSparse: we read what we wrote" "$T/ms.raw" "$T/ms.vmdk"
rm -f "$T/ms.raw"

# The last grain cut short by the disk's end (capacity not a whole number
# of grains).
qemu-img create -q -f vmdk "$T/odd.vmdk" $((10 * 1048576 + 4096 + 512))
write_matches "monolithicSparse whose last grain is cut short" "$T/odd.vmdk" 612 \
    "write -q -P 0x33 $((10 * 1048576)) $((4096 + 512))"

qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse "$T/tgs.vmdk" 5G
write_matches "twoGbMaxExtentSparse, 5 GiB in three extent files" "$T/tgs.vmdk" 613 \
    "write -q -s $T/pat2 $((2 * GiB - 30000)) 65521" "write -q -z $((4 * GiB - 4096)) 8192" \
    "write -q -P 0x7e $((5 * GiB - 1000)) 1000"
rm -f "$T"/tgs*.vmdk

# A delta disk over a sparse parent: a grain written for the first time
# holds the parent's bytes around the written ones; the parent is untouched.
qemu-img create -q -f vmdk "$T/pbase.vmdk" 32M
qio vmdk "$T/pbase.vmdk" "write -q -s $T/pat2 0 65521" "write -q -P 0x44 100000 20000000" \
    "write -q -s $T/pat1 31000000 4093"
cp "$T/pbase.vmdk" "$T/pbase.before"
qemu-img create -q -f vmdk -b pbase.vmdk -F vmdk "$T/pdelta.vmdk"
write_matches "a delta disk over a monolithicSparse parent" "$T/pdelta.vmdk" 614 \
    "write -q -P 0x9 70000 100"
same_file "the delta disk's parent is unchanged" "$T/pbase.vmdk" "$T/pbase.before"
check "the written delta disk still opens over its parent (parentCID matches)" \
    "$BFTEST" info "$T/pdelta.vmdk"

# A real monolithicSparse file (dfvfs's ext2.vmdk): the same writes through
# vdisk-nbd and through qemu-io on two copies give the same disk.
REAL=$SHARED/realimages/dfvfs/ext2.vmdk
if [ -f "$REAL" ]; then
    cp "$REAL" "$T/real-ours.vmdk" && cp "$REAL" "$T/real-qemu.vmdk"
    mapfile -t rops < <(gen_ops 615 4194304 25 65536 0.25 1)
    qio vmdk "$T/real-qemu.vmdk" "${rops[@]}"
    if start_nbd "$T/real.sock" -f vmdk "$T/real-ours.vmdk"; then
        qio raw "$(nbd_uri "$T/real.sock")" "${rops[@]}" 2>"$T/.err" ||
            not_ok "real monolithicSparse: qemu-io writes through vdisk-nbd" "$(cat "$T/.err")"
        stop_nbd "real monolithicSparse: the server stops cleanly" "$NBD_PID" "$T/real.sock.log" "$T/real.sock"
    fi
    check "real monolithicSparse: the disk written by us equals the one qemu wrote" \
        qemu-img compare -f vmdk -F vmdk "$T/real-ours.vmdk" "$T/real-qemu.vmdk"
    check "real monolithicSparse: qemu-img check finds no errors" qemu-img check -q -f vmdk "$T/real-ours.vmdk"
else
    not_ok "the real image dfvfs/ext2.vmdk is there" "$REAL is missing"
fi

# Four connections writing at once into an empty sparse disk: each grain
# written is allocated once, zeros allocate nothing.  The source is 1 MiB of
# data, 1 MiB of zeros, and so on.
qemu-img create -q -f vmdk "$T/par.vmdk" 32M
python3 -c 'import random, sys
r = random.Random(616)
with open(sys.argv[1], "wb") as f:
    for i in range(32):
        f.write(r.randbytes(1 << 20) if i % 2 == 0 else bytes(1 << 20))' "$T/par.src"
before=$(stat -c %s "$T/par.vmdk")
if start_nbd "$T/par.sock" -f vmdk "$T/par.vmdk"; then
    check "nbdcopy -C 4 --requests 64 into an empty sparse vmdk" \
        timeout 120 nbdcopy -C 4 --requests 64 "$T/par.src" "$(nbd_uri "$T/par.sock")"
    stop_nbd "nbdcopy: the server stops cleanly" "$NBD_PID" "$T/par.sock.log" "$T/par.sock"
fi
check "nbdcopy: qemu reads the disk as the source" qemu-img compare -f vmdk -F raw "$T/par.vmdk" "$T/par.src"
check "nbdcopy: qemu-img check finds no errors" qemu-img check -q -f vmdk "$T/par.vmdk"
grew=$(( $(stat -c %s "$T/par.vmdk") - before ))
[ "$grew" -eq $((16 << 20)) ] && ok "nbdcopy: 16 MiB of data took 16 MiB of new grains (no grain twice, none for zeros)" ||
    not_ok "nbdcopy: 16 MiB of data took 16 MiB of new grains (no grain twice, none for zeros)" "the file grew by $grew bytes"
rm -f "$T/par.src"

# Zeroing a free grain allocates nothing; zeroing in an allocated one keeps
# the rest of it.
qemu-img create -q -f vmdk "$T/z0.vmdk" 8M
qio vmdk "$T/z0.vmdk" "write -q -P 0x77 0 65536"
before=$(stat -c %s "$T/z0.vmdk")
check "bftest --rw zero over an allocated grain and free ones" "$BFTEST" --rw zero "$T/z0.vmdk" 4096 2000000
[ "$(stat -c %s "$T/z0.vmdk")" -eq "$before" ] && ok "zeroing allocated no grain" ||
    not_ok "zeroing allocated no grain" "$before -> $(stat -c %s "$T/z0.vmdk")"
qemu-img convert -f vmdk -O raw "$T/z0.vmdk" "$T/z0.raw"
python3 -c 'import sys; d = open(sys.argv[1], "rb").read()
sys.exit(not (d[:4096] == b"\x77" * 4096 and d[4096:2004096] == bytes(2000000)))' "$T/z0.raw" &&
    ok "zeroed bytes read as zeros, the rest of the grain as before" ||
    not_ok "zeroed bytes read as zeros, the rest of the grain as before"
unset WM_UNIT

# ------------------------------------------------------------- refused

qemu-img create -q -f vmdk -o subformat=streamOptimized "$T/stream.vmdk" 8M
check_fails "stream-optimized vmdk: writing refused with a message" "stream-optimized.*cannot be written" \
    "$BFTEST" --rw info "$T/stream.vmdk"
check "stream-optimized vmdk: reading still works" "$BFTEST" info "$T/stream.vmdk"
qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse "$T/tgs.vmdk" 8M
sed -i 's/^RW \([0-9]*\) SPARSE/RDONLY \1 SPARSE/' "$T/tgs.vmdk"
check_fails "an RDONLY sparse extent line: writing refused" "line [0-9]* is read-only" \
    "$BFTEST" --rw info "$T/tgs.vmdk"
sed 's/^RW 65536 VMFS/RDONLY 65536 VMFS/' "$T/esx.vmdk" >"$T/ro.vmdk"
check_fails "an RDONLY extent line: writing refused, naming the line" "line 9 is read-only" \
    "$BFTEST" --rw info "$T/ro.vmdk"
check "an RDONLY extent line: reading still works" "$BFTEST" info "$T/ro.vmdk"
sed 's/^RW 65536 VMFS "esx-flat.vmdk"/RW 65536 VMFS "esx-flat.vmdk"\nRW 2048 ZERO/' "$T/esx.vmdk" >"$T/z.vmdk"
check_fails "a ZERO extent line: writing refused" "is a ZERO extent" "$BFTEST" --rw info "$T/z.vmdk"
rc=0
"$VDISK_NBD" -k "$T/rw.sock" "$T/stream.vmdk" >"$T/.out" 2>"$T/.err" || rc=$?
[ $rc -ne 0 ] && grep -q -- "-r" "$T/.err" && ! _sanitizer_report "$T/.err" &&
    ok "vdisk-nbd refuses to serve a stream-optimized vmdk read-write, suggesting -r" ||
    not_ok "vdisk-nbd refuses to serve a stream-optimized vmdk read-write, suggesting -r" "exit $rc" "$(cat "$T/.err")"

done_testing
