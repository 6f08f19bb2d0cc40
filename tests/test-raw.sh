#!/usr/bin/env bash
# test-raw.sh — raw images: reads equal the file, holes of a sparse file map
# as zero the way `qemu-img map` shows them, write / zero (with and without
# unmap) / discard / flush change the file as they should, out-of-range
# requests and impossible opens fail cleanly with a message.
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io python3 stat truncate

M=1048576

# A file of deterministic pseudo-random bytes: mkdata FILE SIZE [SEED]
mkdata() {
    python3 -c 'import random,sys; r=random.Random(int(sys.argv[3]));
open(sys.argv[1],"wb").write(r.randbytes(int(sys.argv[2])))' "$1" "$2" "${3:-1}"
}

# map_like_qemu DESC IMG: bftest map equals qemu-img map -f raw.
map_like_qemu() {
    local desc=$1 img=$2
    if qemu-img map --output=json -f raw "$img" >"$T/.qmap" 2>"$T/.err" &&
       "$BFTEST" map "$img" >"$T/.bmap" 2>"$T/.err" && ! _sanitizer_report "$T/.err" &&
       python3 "$VDISK_TOP/tests/mapcmp.py" --size "$(stat -c %s "$img")" \
           "$T/.qmap" "$T/.bmap" >"$T/.cmp" 2>&1; then
        ok "$desc"
    else
        not_ok "$desc" "$(tail -n 5 "$T/.err")" "$(head -n 5 "$T/.cmp" 2>/dev/null)"
    fi
}

# range_is DESC FILE OFF LEN EXPECTED-FILE: bytes [OFF, OFF+LEN) of FILE
# equal EXPECTED-FILE.
range_is() {
    if cmp -s <(tail -c +$(($3 + 1)) "$2" | head -c "$4") "$5"; then ok "$1"
    else not_ok "$1" "bytes $3..$(($3 + $4)) of $2 differ"; fi
}

blocks() { stat -c %b "$1"; }

# ------------------------------------------------------------------ reads

R=$T/data.img
mkdata "$R" $((3 * M + 1234))           # not a multiple of 512
check "raw image opens" "$BFTEST" info "$R"
if grep -q '^format: raw$' "$T/.out" && grep -q "^size: $((3 * M + 1234))\$" "$T/.out"; then
    ok "probed as raw with the file's size"
else
    not_ok "probed as raw with the file's size" "$(cat "$T/.out")"
fi
check "cat" "$BFTEST" cat "$R" "$T/out"
same_file "cat equals the file" "$T/out" "$R"
check "cat -f raw, 3 threads, random pieces" "$BFTEST" -f raw --threads 3 --chunk 0 --seed 7 cat "$R" "$T/out"
same_file "threaded cat equals the file" "$T/out" "$R"
"$BFTEST" read "$R" $((3 * M + 1000)) 234 >"$T/got" 2>"$T/.err"
range_is "read of the last bytes" "$R" $((3 * M + 1000)) 234 "$T/got"

: >"$T/empty.img"
check "empty raw file opens" "$BFTEST" info "$T/empty.img"
check "empty raw file: cat" "$BFTEST" cat "$T/empty.img" "$T/out"
if [ ! -s "$T/out" ]; then ok "empty raw file: cat is empty"; else not_ok "empty raw file: cat is empty"; fi
check "empty raw file: map" "$BFTEST" map "$T/empty.img"

# ------------------------------------------------------- sparse file map

S=$T/sparse.img
truncate -s $((16 * M)) "$S"
mkdata "$T/chunk" 65536 2
dd if="$T/chunk" of="$S" bs=64k seek=16 conv=notrunc status=none        # 1 MiB
dd if="$T/chunk" of="$S" bs=4k seek=$((5 * 256)) count=1 conv=notrunc status=none  # 5 MiB
dd if="$T/chunk" of="$S" bs=64k seek=255 conv=notrunc status=none       # the last 64 KiB
map_like_qemu "sparse file: map equals qemu-img map" "$S"
"$BFTEST" map "$S" >"$T/.bmap" 2>/dev/null
if python3 - "$T/.bmap" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
hole = [e for e in m if e["start"] == 0][0]
sys.exit(0 if hole["zero"] and not hole["data"] and hole["length"] >= 1 << 20 else 1)
EOF
then ok "sparse file: the leading hole is zero, not data"
else not_ok "sparse file: the leading hole is zero, not data" "$(head -n 3 "$T/.bmap")"; fi
check "sparse file: cat" "$BFTEST" cat "$S" "$T/out"
same_file "sparse file: cat equals the file" "$T/out" "$S"

# ----------------------------------------------------------------- writes

W=$T/w.img
truncate -s $((8 * M)) "$W"
mkdata "$T/pat" 100000 3
check "--rw write" "$BFTEST" --rw write "$W" 12345 "$T/pat"
range_is "write: the bytes landed" "$W" 12345 100000 "$T/pat"
if [ "$(stat -c %s "$W")" -eq $((8 * M)) ]; then ok "write: the file size is unchanged"
else not_ok "write: the file size is unchanged" "size $(stat -c %s "$W")"; fi
check_fails "write without --rw fails" "read-only" "$BFTEST" write "$W" 0 "$T/pat"

# zero, keeping the allocation: the bytes read as zero, blocks stay.
mkdata "$T/full" $((2 * M)) 4
cp "$T/full" "$T/z.img"
b0=$(blocks "$T/z.img")
check "zero without --unmap" "$BFTEST" --rw zero "$T/z.img" 65536 $M
head -c $M /dev/zero >"$T/zeros"
range_is "zero: the range reads as zero" "$T/z.img" 65536 $M "$T/zeros"
range_is "zero: bytes before the range are kept" "$T/z.img" 0 65536 <(head -c 65536 "$T/full")
range_is "zero: bytes after the range are kept" "$T/z.img" $((M + 65536)) $((M - 65536)) \
    <(tail -c +$((M + 65536 + 1)) "$T/full")
b1=$(blocks "$T/z.img")
if [ "$b1" -ge "$b0" ]; then ok "zero without --unmap keeps the blocks allocated ($b0 -> $b1)"
else not_ok "zero without --unmap keeps the blocks allocated" "st_blocks $b0 -> $b1"; fi

# zero with unmap: the bytes read as zero and a hole is punched.
cp "$T/full" "$T/zu.img"
b0=$(blocks "$T/zu.img")
check "zero --unmap" "$BFTEST" --rw --unmap zero "$T/zu.img" 65536 $M
range_is "zero --unmap: the range reads as zero" "$T/zu.img" 65536 $M "$T/zeros"
range_is "zero --unmap: bytes after the range are kept" "$T/zu.img" $((M + 65536)) $((M - 65536)) \
    <(tail -c +$((M + 65536 + 1)) "$T/full")
b1=$(blocks "$T/zu.img")
# 1 MiB is 2048 blocks of 512 bytes; allow for file system rounding.
if [ $((b0 - b1)) -ge 1900 ]; then ok "zero --unmap punched a hole ($b0 -> $b1 blocks)"
else not_ok "zero --unmap punched a hole" "st_blocks $b0 -> $b1"; fi
map_like_qemu "zero --unmap: map equals qemu-img map" "$T/zu.img"
check "zero --fast" "$BFTEST" --rw --fast zero "$T/zu.img" 0 4096
range_is "zero --fast: the range reads as zero" "$T/zu.img" 0 4096 <(head -c 4096 /dev/zero)

# discard: a hint; on raw files it punches a hole, and the size stays.
cp "$T/full" "$T/d.img"
b0=$(blocks "$T/d.img")
check "discard" "$BFTEST" --rw discard "$T/d.img" $M $M
b1=$(blocks "$T/d.img")
if [ "$(stat -c %s "$T/d.img")" -eq $((2 * M)) ] && [ $((b0 - b1)) -ge 1900 ]; then
    ok "discard punched a hole and kept the size ($b0 -> $b1 blocks)"
else
    not_ok "discard punched a hole and kept the size" "size $(stat -c %s "$T/d.img"), st_blocks $b0 -> $b1"
fi
range_is "discard: the range before is kept" "$T/d.img" 0 $M <(head -c $M "$T/full")
check_fails "discard without --rw fails" "read-only" "$BFTEST" discard "$T/d.img" 0 4096

check "flush (read-write)" "$BFTEST" --rw flush "$W"
check "flush (read-only)" "$BFTEST" flush "$W"

# ------------------------------------------------- out of range requests

size=$(stat -c %s "$W")
check_fails "write crossing the end fails" "beyond the end" "$BFTEST" --rw write "$W" $((size - 10)) "$T/pat"
check_fails "write starting past the end fails" "beyond the end" "$BFTEST" --rw write "$W" $((size + 1)) "$T/pat"
check_fails "zero crossing the end fails" "beyond the end" "$BFTEST" --rw zero "$W" $((size - 512)) 1024
check_fails "zero at offset 2^64-512 fails" "beyond the end" "$BFTEST" --rw zero "$W" 18446744073709551104 1024
check_fails "discard crossing the end fails" "beyond the end" "$BFTEST" --rw discard "$W" $((size - 512)) 1024
if [ "$(stat -c %s "$W")" -eq "$size" ]; then ok "failed writes did not grow the file"
else not_ok "failed writes did not grow the file" "size $(stat -c %s "$W")"; fi
# bftest's read exits through die() without freeing its buffer; the library
# refuses the range before allocating anything, so leak checking is off for
# this one command only.
ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 \
    check_fails "read crossing the end fails" "beyond the end" "$BFTEST" read "$W" $((size - 10)) 20

# ---------------------------------------------------------------- opens

Q=$T/img.qcow2
qemu-img create -q -f qcow2 "$Q" 4M
qemu-io -f qcow2 -c 'write -q -P 0x77 0 64k' "$Q"
qemu-img create -q -f vmdk -o subformat=streamOptimized "$T/img.vmdk" 4M
check_fails "a read-only format (stream-optimized vmdk) opened --rw fails, saying so" \
    "stream-optimized .*cannot be written" "$BFTEST" --rw info "$T/img.vmdk"
check "qcow2 opens --rw" "$BFTEST" --rw info "$Q"
check "-f raw on a qcow2 file" "$BFTEST" -f raw cat "$Q" "$T/out"
same_file "-f raw on a qcow2 file reads its bytes as they are" "$T/out" "$Q"
# An Apple disk image has no header, only a "koly" trailer in its last 512
# bytes; probing must not show it as a raw disk.
mkdata "$T/dmg.img" 8192 5
python3 -c 'import struct,sys; f=open(sys.argv[1],"r+b"); f.seek(-512,2);
f.write(b"koly"+struct.pack(">II",4,512))' "$T/dmg.img"
check_fails "a file ending in a DMG trailer is refused, naming dmg" "dmg format" "$BFTEST" info "$T/dmg.img"
check "-f raw on that file" "$BFTEST" -f raw cat "$T/dmg.img" "$T/out"
same_file "-f raw on that file reads its bytes as they are" "$T/out" "$T/dmg.img"
check_fails "-f nosuchformat" "unknown image format 'nosuchformat'" "$BFTEST" -f nosuchformat info "$R"
check_fails "a directory" "is a directory" "$BFTEST" info "$T"
check_fails "a directory, -f raw" "is a directory" "$BFTEST" -f raw info "$T"
check_fails "a missing file" "No such file or directory" "$BFTEST" info "$T/nosuch.img"
check_fails "an empty file name" "no image file name" "$BFTEST" info ""
check_fails "a snapshot of a raw image" "no internal snapshots" "$BFTEST" --snapshot x info "$R"

# Unreadable file: chmod 000 means nothing to root, so as root run bftest as
# nobody on a file only root may read (when nobody can reach bftest at all).
U=$T/unreadable.img
cp "$R" "$U"
chmod 000 "$U"
if [ "$(id -u)" -ne 0 ]; then
    check_fails "an unreadable file" "Permission denied" "$BFTEST" info "$U"
elif command -v setpriv >/dev/null &&
     setpriv --reuid=65534 --regid=65534 --clear-groups "$BFTEST" --help >/dev/null 2>&1; then
    chmod 0711 "$T"           # nobody may pass through $T, not list it
    check_fails "an unreadable file (run as nobody)" "Permission denied" \
        setpriv --reuid=65534 --regid=65534 --clear-groups "$BFTEST" info "$U"
    chmod 0700 "$T"
else
    skip "an unreadable file" "running as root and user nobody cannot run $BFTEST"
fi

done_testing
