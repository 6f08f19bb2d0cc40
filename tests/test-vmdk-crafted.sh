#!/usr/bin/env bash
# test-vmdk-crafted.sh — vmdk shapes qemu-img cannot write, built by
# tests/mkvmdk.py from the published layouts with the expected bytes known by
# construction:
#   - COWD (vmfsSparse) delta extents over a vmfs base, seSparse delta extents
#     (data, zero and unmapped grains) over a flat base;
#   - a descriptor with RW, RDONLY and NOACCESS lines and FLAT, VMFS, SPARSE
#     and ZERO extents, CRLF line ends, two extents in one file;
#   - the redundant grain directory used when the primary one is damaged
#     (garbage entries, zeroed, its offset past the end, garbage grain tables);
#   - a monolithicSparse file renamed after creation;
#   - a CID mismatch (refused naming both CIDs; read with --no-parent-check);
#   - a VMware-style stream-optimized file (grain directory at the end, read
#     through the footer), odd grain and grain-table sizes, compressed grains
#     without markers.
# Layout sources (VMware's Virtual Disk Format 1.1 and 5.0 technical notes;
# qemu's block/vmdk.c for seSparse) are listed in tests/mkvmdk.py.  Where
# qemu can read a shape too, its reading is checked to agree, which checks
# the generator as well.
. "$(dirname "$0")/lib.sh"
require python3 cmp qemu-img

D=$T/c
mk() { python3 "$VDISK_TOP/tests/mkvmdk.py" "$D" "$1" 2>"$T/.mkerr" ||
       { not_ok "mkvmdk.py builds $1" "$(tail -n 5 "$T/.mkerr")"; return 1; }; }

seed=0
for c in cowd sesparse extents rgd rgd-zeroed rgd-gdoff rgd-gt renamed stream geometry; do
    mk "$c" || continue
    seed=$((seed + 1))
    bf_cat_matches "$c: reads as constructed" "$D/$c.expect" "$D/$c.vmdk"
    bf_cat_matches "$c: reads as constructed, 4 threads, random pieces" "$D/$c.expect" \
        --threads 4 --chunk 0 --seed $seed "$D/$c.vmdk"
done

# qemu reads these shapes as well: it must agree with the construction
# (bytes) and with us (allocation).
for c in cowd sesparse renamed stream geometry; do
    [ -f "$D/$c.expect" ] || continue
    if qemu-img convert -O raw "$D/$c.vmdk" "$T/q.raw" 2>"$T/.err"; then
        same_file "$c: qemu reads the same bytes" "$D/$c.expect" "$T/q.raw"
        qemu-img map --output=json "$D/$c.vmdk" >"$T/q.json"
        bf_map_matches "$c: map equals qemu's" "$T/q.json" "$D/$c.vmdk"
    else
        not_ok "$c: qemu reads it" "$(tail -n 3 "$T/.err")"
    fi
    rm -f "$T/q.raw"
done

# info_has DESC IMAGE REGEX...: `bftest info` output has a line for each regex.
info_has() {
    local desc=$1 img=$2; shift 2
    local re out
    out=$("$BFTEST" info "$img" 2>&1)
    for re in "$@"; do
        if ! grep -qE -- "$re" <<<"$out"; then
            not_ok "$desc" "no line matching: $re" "$out"
            return 0
        fi
    done
    ok "$desc"
}
info_has "cowd: info" "$D/cowd.vmdk" '^version: vmfsSparse \(COWD version 1\)$' \
    '^cluster_size: 1024$' '^backing_file: cowd-base.vmdk$' '^chain\[1\]: vmdk .*/cowd-base.vmdk$'
info_has "sesparse: info" "$D/sesparse.vmdk" '^version: seSparse$' '^cluster_size: 4096$' \
    '^backing_file: se-base.vmdk$'
info_has "stream: info" "$D/stream.vmdk" '^version: streamOptimized \(sparse extent version 3\)$' \
    '^compression: zlib$'
info_has "renamed: opens as the file it is" "$D/renamed.vmdk" '^format: vmdk$' '^size: 2097152$'

# The NOACCESS and ZERO extents read as zero and say so.
"$BFTEST" map "$D/extents.vmdk" >"$T/ext.json" 2>"$T/.err"
python3 - "$T/ext.json" <<'EOF' >"$T/.py" 2>&1 && ok "extents: NOACCESS and ZERO extents map as zero" || not_ok "extents: NOACCESS and ZERO extents map as zero" "$(cat "$T/.py")"
import json, sys
m = json.load(open(sys.argv[1]))
lo, hi = 2500 * 512, (2500 + 777 + 2048) * 512       # after the two flat extents
cover = [e for e in m if e["start"] < hi and e["start"] + e["length"] > lo]
bad = [e for e in cover if not (e["zero"] and e["present"] and not e["data"])]
assert cover and not bad, bad
assert m[0]["data"] and m[0]["present"], m[0]
EOF

# A delta disk whose parentCID is not its parent's CID.
if mk cid; then
    check_fails "cid: a parentCID mismatch is refused, naming both CIDs" \
        "parentCID 22222222 does not match the CID 11111111 of its parent .*cid-parent.vmdk" \
        "$BFTEST" info "$D/cid.vmdk"
    bf_cat_matches "cid: --no-parent-check reads it anyway" "$D/cid.expect" --no-parent-check "$D/cid.vmdk"
    check "cid: --no-backing does not open the parent, so there is nothing to check" \
        "$BFTEST" --no-backing info "$D/cid.vmdk"
fi

done_testing
