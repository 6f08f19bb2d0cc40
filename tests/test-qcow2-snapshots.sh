#!/usr/bin/env bash
# test-qcow2-snapshots.sh — qcow2 internal snapshots: list them, open the
# image as it was at a snapshot chosen by id or by name (ids first, as
# qemu-nbd -l does), unknown snapshots fail cleanly, and the current state
# still reads right.  Version 2 and 3 images, tiny clusters, a backing file
# under the snapshots, compressed clusters shared with a snapshot, a snapshot
# deleted, and the disk grown after a snapshot.
#
# Oracles: `qemu-img convert -l snapshot.id=ID` / `-l snapshot.name=NAME` for
# the bytes; for the map, `qemu-img map` of a copy with the snapshot applied
# (`qemu-img snapshot -a`); `qemu-img info --output=json` for the list.
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io python3 cmp

bf_python - "$T" <<'EOF'
import random, sys
r = random.Random(31337)
open(f"{sys.argv[1]}/pat1", "wb").write(r.randbytes(5003))
EOF

M=$((1024 * 1024))

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

# list_matches DESC IMG: `bftest snapshots` lists what qemu-img info lists
# (id, name, VM state size), in the same order.
list_matches() {
    local desc=$1 img=$2
    qemu-img info --output=json "$img" | bf_python -c '
import json, sys
for s in json.load(sys.stdin).get("snapshots", []):
    print("%s\t%s\t%d" % (s["id"], s["name"], s["vm-state-size"]))' >"$T/list.want"
    if "$BFTEST" snapshots "$img" 2>"$T/.err" | cut -f1,2,4 >"$T/list.got" &&
       ! _sanitizer_report "$T/.err" && cmp -s "$T/list.want" "$T/list.got"; then
        ok "$desc"
    else
        not_ok "$desc" "qemu:" "$(cat "$T/list.want")" "bftest:" "$(cat "$T/list.got" "$T/.err")"
    fi
}

# snap_matches DESC IMG ID NAME: the snapshot opened by id and by name reads
# what qemu-img convert -l reads, also from 4 threads in random pieces; its
# map equals qemu's map of a copy with the snapshot applied.
snap_matches() {
    local desc=$1 img=$2 id=$3 name=$4
    qemu-img convert -O raw -l "snapshot.id=$id" "$img" "$T/snap-id.raw"
    qemu-img convert -O raw -l "snapshot.name=$name" "$img" "$T/snap-name.raw"
    bf_cat_matches "$desc: --snapshot $id (id) bytes" "$T/snap-id.raw" --snapshot "$id" "$img"
    bf_cat_matches "$desc: --snapshot '$name' (name) bytes" "$T/snap-name.raw" --snapshot "$name" "$img"
    bf_cat_matches "$desc: --snapshot $id bytes, 4 threads, random pieces" "$T/snap-id.raw" \
        --threads 4 --chunk 0 --seed "$id" --snapshot "$id" "$img"
    cp "$img" "$T/applied.qcow2"
    qemu-img snapshot -a "$id" "$T/applied.qcow2"
    qemu-img map --output=json "$T/applied.qcow2" >"$T/applied.json"
    bf_map_matches "$desc: --snapshot $id map" "$T/applied.json" --snapshot "$id" "$img"
    rm -f "$T/applied.qcow2"
}

# ---------------------------------------------------------- two snapshots, v3
img=$T/s.qcow2
qemu-img create -q -f qcow2 "$img" $((8 * M))
qio "$img" "write -q -s $T/pat1 0 $((3 * M + 100))" "write -q -P 0x11 $((5 * M)) 70000"
qemu-img snapshot -c first "$img"
qio "$img" "write -q -P 0x22 $((M - 1000)) $((M + 2000))" "write -q -z $((2 * M + 65536)) 65536" \
    "discard -q $((5 * M)) 65536" "write -q -s $T/pat1 $((7 * M + 3)) 9999"
qemu-img snapshot -c "second one" "$img"
qio "$img" "write -q -P 0x33 $((M + 500)) 100" "write -q -z -u 0 65536" \
    "write -q -P 0x34 $((8 * M - 512)) 512"
list_matches "two snapshots: listed as qemu lists them" "$img"
if "$BFTEST" snapshots "$img" | cut -f1,2,3 | grep -qxP "1\tfirst\t$((8 * M))" &&
   "$BFTEST" snapshots "$img" | cut -f1,2,3 | grep -qxP "2\tsecond one\t$((8 * M))"; then
    ok "two snapshots: ids, names and disk sizes"
else
    not_ok "two snapshots: ids, names and disk sizes" "$("$BFTEST" snapshots "$img" 2>&1)"
fi
snap_matches "snapshot 1" "$img" 1 first
snap_matches "snapshot 2" "$img" 2 "second one"
qemu-img convert -O raw -l snapshot.id=1 "$img" "$T/snap1.raw"
if [ -s "$T/snap1.raw" ] && [ -s "$T/snap-id.raw" ] && ! cmp -s "$T/snap-id.raw" "$T/snap1.raw"; then
    ok "the two snapshots differ (so the comparisons can tell them apart)"
else
    not_ok "the two snapshots differ (so the comparisons can tell them apart)"
fi
bf_matches_qemu "current state next to two snapshots" "$img"
if "$BFTEST" --snapshot "second one" info "$img" >"$T/info" 2>&1 && grep -q '^snapshot: 2$' "$T/info" &&
   grep -q '^snapshots: 2$' "$T/info"; then
    ok "info on a snapshot names it"
else
    not_ok "info on a snapshot names it" "$(cat "$T/info")"
fi
check_fails "unknown snapshot name: clean error" "no internal snapshot.*'nosuch'" \
    "$BFTEST" --snapshot nosuch cat "$img" "$T/x.raw"
check_fails "unknown snapshot id: clean error" "no internal snapshot.*'7'" \
    "$BFTEST" --snapshot 7 map "$img"

# A snapshot whose name is another's id: ids win, as in qemu-nbd -l; the name
# still reaches it through qemu's snapshot.name.
qemu-img snapshot -c 1 "$img"
qemu-img convert -O raw -l snapshot.id=1 "$img" "$T/id1.raw"
qemu-img convert -O raw -l snapshot.id=3 "$img" "$T/id3.raw"
bf_cat_matches "a snapshot named '1': --snapshot 1 is id 1" "$T/id1.raw" --snapshot 1 "$img"
bf_cat_matches "a snapshot named '1': --snapshot 3 is it" "$T/id3.raw" --snapshot 3 "$img"

# Deleting the first snapshot leaves the second intact.
qemu-img snapshot -d first "$img"
list_matches "after deleting a snapshot: listed as qemu lists them" "$img"
check_fails "the deleted snapshot is gone" "no internal snapshot.*'first'" \
    "$BFTEST" --snapshot first cat "$img" "$T/x.raw"
snap_matches "after deleting snapshot 1, snapshot 2" "$img" 2 "second one"
bf_matches_qemu "after deleting a snapshot, current state" "$img"

# --------------------------------------- version 2, 512-byte clusters (many L2s)
img=$T/v2.qcow2
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=512 "$img" $((2 * M + 512))
qio "$img" "write -q -s $T/pat1 100 $((M + 7))" "write -q -P 0x41 $((2 * M)) 512"
qemu-img snapshot -c a "$img"
qio "$img" "write -q -P 0x42 $((M / 2)) $M" "write -q -z 0 32768" "discard -q $((2 * M)) 512"
qemu-img snapshot -c b "$img"
qio "$img" "write -q -s $T/pat1 $((M + 12345)) 4444"
list_matches "v2, 512 B clusters: listed as qemu lists them" "$img"
snap_matches "v2 snapshot a" "$img" 1 a
snap_matches "v2 snapshot b" "$img" 2 b
bf_matches_qemu "v2, current state" "$img"

# ----------------------------------------------- snapshots over a backing file
qemu-img create -q -f qcow2 "$T/base.qcow2" $((4 * M))
qio "$T/base.qcow2" "write -q -P 0x51 0 $((4 * M))"
img=$T/ov.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$img" $((4 * M))
qio "$img" "write -q -P 0x52 $M 65536"
qemu-img snapshot -c before "$img"
qio "$img" "write -q -P 0x53 $((M + 4096)) $M" "write -q -z $((3 * M)) 65536"
qemu-img snapshot -c after "$img"
qio "$img" "discard -q $M $((2 * M))"
snap_matches "over a backing file, snapshot 'before'" "$img" 1 before
snap_matches "over a backing file, snapshot 'after'" "$img" 2 after
bf_matches_qemu "over a backing file, current state" "$img"

# ------------------------------------------- compressed clusters in a snapshot
bf_python -c "import sys; sys.stdout.buffer.write(b''.join(b'compressible line %08d\n' % i for i in range(200000)))" \
    >"$T/text.raw"
truncate -s $((5 * M)) "$T/text.raw"
img=$T/comp.qcow2
qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd "$T/text.raw" "$img"
qemu-img snapshot -c packed "$img"
qio "$img" "write -q -P 0x61 $((M + 3)) 100000" "write -q -z -u 0 $M"
snap_matches "compressed (zstd) clusters shared with a snapshot" "$img" 1 packed
bf_matches_qemu "compressed clusters rewritten after a snapshot, current state" "$img"

# ------------------------------------------------ disk grown after a snapshot
# The image as it was at the snapshot has the snapshot's size: what
# `qemu-img snapshot -a` restores.  `qemu-img convert -l` (and qemu-nbd -l)
# keep the current, larger size and read zeros past the snapshot's end.
img=$T/grow.qcow2
qemu-img create -q -f qcow2 "$img" $((3 * M))
qio "$img" "write -q -s $T/pat1 0 $((3 * M))"
qemu-img snapshot -c small "$img"
if qemu-img resize -q "$img" $((5 * M)) 2>"$T/.err"; then
    qio "$img" "write -q -P 0x71 $((2 * M)) $((2 * M))"
    cp "$img" "$T/grow-applied.qcow2"
    qemu-img snapshot -a small "$T/grow-applied.qcow2"
    qemu-img convert -O raw "$T/grow-applied.qcow2" "$T/grow-applied.raw"
    bf_cat_matches "grown after a snapshot: the snapshot reads as qemu-img snapshot -a restores it" \
        "$T/grow-applied.raw" --snapshot small "$img"
    qemu-img convert -O raw -l snapshot.name=small "$img" "$T/grow-l.raw"
    if [ "$(stat -c %s "$T/grow-applied.raw")" -eq $((3 * M)) ] &&
       cmp -s -n $((3 * M)) "$T/grow-l.raw" "$T/grow-applied.raw" &&
       [ -z "$(tail -c $((2 * M)) "$T/grow-l.raw" | tr -d '\0' | head -c 1)" ]; then
        ok "grown after a snapshot: qemu-img convert -l gives the same bytes plus a zero tail"
    else
        not_ok "grown after a snapshot: qemu-img convert -l gives the same bytes plus a zero tail"
    fi
    if "$BFTEST" --snapshot small info "$img" | grep -qx "size: $((3 * M))"; then
        ok "grown after a snapshot: the snapshot's size is its own"
    else
        not_ok "grown after a snapshot: the snapshot's size is its own" "$("$BFTEST" --snapshot small info "$img" 2>&1)"
    fi
    bf_matches_qemu "grown after a snapshot, current state" "$img"
else
    skip "grown after a snapshot" "qemu-img refuses: $(head -n 1 "$T/.err")"
fi

done_testing
