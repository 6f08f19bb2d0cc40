#!/usr/bin/env bash
# test-qcow2-write-model.sh — qcow2 writing through vdisk-nbd, model-checked
# (issue 7): a seeded random workload (tests/qcow2_model.py run) of writes,
# FUA writes, write-zeroes (plain, NO_HOLE, FAST_ZERO accepting ENOTSUP,
# FUA), trims, flushes and reads of random sizes and offsets (unaligned,
# 512-aligned, cluster-aligned, crowding around L2-table boundaries, the
# middle and the end of the disk) over 4 connections with up to 32 requests
# in flight (never overlapping), against images qemu-img makes:
#   v2 and v3; clusters of 512 B, 4 KiB, 64 KiB and 2 MiB; extended L2
#   (16 KiB, 64 KiB, 2 MiB clusters); qcow2 and raw backing files (v2 and
#   v3, extended L2, 512 B clusters); compressed clusters (also with
#   extended L2); internal snapshots (64 KiB, 512 B, over compressed data,
#   refcount_bits=64); external data files (with and without
#   data_file_raw, with extended L2, over a backing file); refcount_bits=1
#   and 64 (also with 512 B clusters: the refcount table grows); sizes that
#   are no multiple of the cluster size; preallocation=metadata (also with
#   extended L2); lazy_refcounts=on; zstd compression.
# After each run: every read matched the model, the whole disk read over NBD
# equals it, the server exits 0 on SIGTERM, `qemu-img check` is clean
# (exit 0), `qemu-img convert -O raw` and `bftest cat` equal the model, and
# a snapshot still reads what it read before (`qemu-img convert -l`).
# Regression: a FAST_ZERO refused with ENOTSUP changes nothing (it zeroed
# whole compressed clusters before refusing the part of one it could not do
# quickly, with extended L2).  Then: the comparison catches one wrong byte
# in the model (--poison).
#
# Seed: $QCOW2_SEED, else a random one (printed: rerun with QCOW2_SEED=N).
# Ops per image: $QCOW2_OPS (default 3000).  Only images whose name contains
# $QCOW2_ONLY (when set).
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io cmp
require_nbd_python
require_vdisk_nbd
cd "${T:?}" || exit 1

SEED=${QCOW2_SEED:-$(( $(od -An -N4 -tu4 /dev/urandom) % 1000000 ))}
OPS=${QCOW2_OPS:-3000}
MODEL=$VDISK_TOP/tests/qcow2_model.py
MiB=$((1 << 20))
diag "seed $SEED ($OPS ops per image; rerun with QCOW2_SEED=$SEED)"

n_cfg=0 n_run=0
total_ops=0

# run_cfg NAME SIZE CLUSTER L2ENTRY CREATE-OPTS PRE PREP SNAPSHOT [MAXLEN]
#   CREATE-OPTS: qemu-img create options ("" for none), PRE: shell run
#   before create (backing files), PREP: shell run after create with $I the
#   image, SNAPSHOT: 1 to take an internal snapshot before writing;
#   L2ENTRY: 8, or 16 with extended L2 (for the L2-table span).
run_cfg() {
    local name=$1 size=$2 cs=$3 l2e=$4 create=$5 pre=$6 prep=$7 snap=$8 maxlen=${9:-$MiB}
    local d=$T/$name img=$T/$name/$name.qcow2 S=$T/$name.sock seed
    n_cfg=$((n_cfg + 1))
    [ -n "${QCOW2_ONLY:-}" ] && [[ $name != *$QCOW2_ONLY* ]] && return 0
    n_run=$((n_run + 1))
    seed=$((SEED * 100 + n_cfg))
    mkdir -p "$d"
    # shellcheck disable=SC2086,SC2034  # (I is for $prep)
    if ! (cd "$d" && eval "$pre" && qemu-img create -q -f qcow2 $create "$img" "$size" >/dev/null &&
          I=$img && eval "$prep") >"$T/.mk" 2>&1; then
        not_ok "$name: image made" "$(tail -n 5 "$T/.mk")"
        return 0
    fi
    if [ "$snap" = 1 ]; then
        qemu_in "$d" qemu-img snapshot -c snap1 "$img" &&
            qemu_in "$d" qemu-img convert -l snapshot.name=snap1 -O raw "$img" "$d/snap.before.raw"
        # and change the active layer a little, so some clusters are shared and some not
        qemu_in "$d" qemu-io -c "write -P 0x99 $((size / 3)) 100k" "$img" >/dev/null
    fi
    qemu_in "$d" qemu-img convert -O raw "$img" "$d/init.raw"
    start_nbd "$S" -t -e 4 "$img" || return 0
    local pid=$NBD_PID rc=0
    "$NBD_PYTHON" "$MODEL" run "$S" --init "$d/init.raw" --out "$d/model.raw" --seed "$seed" \
        --ops "$OPS" --conns 4 --depth 32 --cluster "$cs" --l2span $((cs * (cs / l2e))) \
        --maxlen "$maxlen" >"$d/run.out" 2>"$d/run.err" || rc=$?
    grep '^#' "$d/run.out" | sed "s/^# /$name: /" | while read -r l; do diag "$l"; done
    if [ "$rc" -eq 0 ]; then
        ok "$name: $OPS random ops over 4 connections: reads and the whole disk over NBD equal the model (seed $seed)"
        total_ops=$((total_ops + OPS))
    else
        not_ok "$name: $OPS random ops over 4 connections equal the model (seed $seed)" \
            "$(tail -n 12 "$d/run.err")" "server log:" "$(tail -n 5 "$S.log")"
    fi
    stop_nbd "$name: SIGTERM: server exits 0" "$pid" "$S.log" "$S"
    [ -f "$d/model.raw" ] || return 0
    rc=$(qcheck_rc "$d" "$img")
    if [ "$rc" -eq 0 ]; then
        ok "$name: qemu-img check is clean"
    else
        not_ok "$name: qemu-img check is clean (exit $rc)" "$(head -n 20 "$T/.qcheck")"
    fi
    if qemu_in "$d" qemu-img convert -O raw "$img" "$d/out.raw" 2>"$T/.err"; then
        same_file "$name: qemu-img convert -O raw equals the model" "$d/model.raw" "$d/out.raw"
    else
        not_ok "$name: qemu-img convert -O raw equals the model" "$(tail -n 5 "$T/.err")"
    fi
    bf_cat_matches "$name: bftest cat equals the model" "$d/model.raw" "$img"
    if [ "$snap" = 1 ]; then
        if qemu_in "$d" qemu-img convert -l snapshot.name=snap1 -O raw "$img" "$d/snap.after.raw" \
            2>"$T/.err"; then
            same_file "$name: snapshot snap1 still reads what it read before" \
                "$d/snap.before.raw" "$d/snap.after.raw"
        else
            not_ok "$name: snapshot snap1 still reads" "$(tail -n 5 "$T/.err")"
        fi
    fi
    rm -rf "$d"
}

# patterned backing files (qemu-io makes them)
mkraw() {   # FILE SIZE: a raw file with patterned data and holes
    qemu-img create -q -f raw "$1" "$2" &&
        qemu-io -f raw -c "write -P 0x5a 0 $(($2 / 3))" -c "write -P 0xa5 $(($2 / 2)) $(($2 / 4))" \
            -c "write -P 0x3c $(($2 - 70000)) 70000" "$1" >/dev/null
}
mkqcow() {  # FILE SIZE [OPTS]: the same as a qcow2
    mkraw "$1.src" "$2" && qemu-img convert -O qcow2 ${3:+-o "$3"} "$1.src" "$1" && rm -f "$1.src"
}

# name size cluster l2entry create pre prep snapshot [maxlen]
run_cfg v3-64k        $((64 * MiB)) 65536 8  "-o cluster_size=64k" "" "" 0
run_cfg v2-64k        $((48 * MiB)) 65536 8  "-o compat=0.10" "" "" 0
run_cfg v3-512        $((12 * MiB)) 512 8    "-o cluster_size=512" "" "" 0 $((256 << 10))
run_cfg v2-512        $((8 * MiB))  512 8    "-o compat=0.10,cluster_size=512" "" "" 0 $((256 << 10))
run_cfg v3-4k         $((24 * MiB)) 4096 8   "-o cluster_size=4k" "" "" 0
run_cfg v3-2m         $((64 * MiB)) $((2 * MiB)) 8 "-o cluster_size=2M" "" "" 0 $((5 * MiB))
run_cfg extl2-16k     $((40 * MiB)) 16384 16 "-o extended_l2=on,cluster_size=16k" "" "" 0
run_cfg extl2-64k     $((48 * MiB)) 65536 16 "-o extended_l2=on,cluster_size=64k" "" "" 0
run_cfg extl2-2m      $((64 * MiB)) $((2 * MiB)) 16 "-o extended_l2=on,cluster_size=2M" "" "" 0 $((5 * MiB))
run_cfg backing-qcow2 $((48 * MiB)) 65536 8  "-b base.qcow2 -F qcow2" "mkqcow base.qcow2 $((40 * MiB))" "" 0
run_cfg backing-raw   $((48 * MiB)) 65536 8  "-b base.raw -F raw" "mkraw base.raw $((48 * MiB))" "" 0
run_cfg backing-v2    $((32 * MiB)) 65536 8  "-o compat=0.10 -b base.raw -F raw" "mkraw base.raw $((32 * MiB))" "" 0
run_cfg backing-extl2 $((48 * MiB)) 65536 16 "-o extended_l2=on -b base.qcow2 -F qcow2" \
    "mkqcow base.qcow2 $((48 * MiB))" "" 0
run_cfg backing-512   $((8 * MiB))  512 8    "-o cluster_size=512 -b base.qcow2 -F qcow2" \
    "mkqcow base.qcow2 $((8 * MiB)) cluster_size=512" "" 0 $((256 << 10))
run_cfg backing-compressed $((32 * MiB)) 65536 8 "-b base.qcow2 -F qcow2" \
    "mkraw b.raw $((32 * MiB)) && qemu-img convert -c -O qcow2 b.raw base.qcow2" "" 0
run_cfg compressed    $((32 * MiB)) 65536 8  "" "mkraw c.raw $((32 * MiB))" \
    'qemu-img convert -c -O qcow2 c.raw $I' 0
run_cfg compressed-extl2 $((32 * MiB)) 65536 16 "" "mkraw c.raw $((32 * MiB))" \
    'qemu-img convert -c -O qcow2 -o extended_l2=on c.raw $I' 0
run_cfg snapshot      $((32 * MiB)) 65536 8  "" "" 'qemu-io -c "write -P 0x44 0 20M" $I' 1
run_cfg snapshot-512  $((4 * MiB))  512 8    "-o cluster_size=512" "" 'qemu-io -c "write -P 0x45 0 3M" $I' 1 \
    $((256 << 10))
run_cfg snapshot-compressed $((32 * MiB)) 65536 8 "" "mkraw c.raw $((32 * MiB))" \
    'qemu-img convert -c -O qcow2 c.raw $I' 1
run_cfg snapshot-refcount64 $((24 * MiB)) 65536 8 "-o refcount_bits=64" "" \
    'qemu-io -c "write -P 0x46 1M 16M" $I' 1
run_cfg refcount1-4k  $((16 * MiB)) 4096 8   "-o refcount_bits=1,cluster_size=4k" "" "" 0
run_cfg datafile      $((32 * MiB)) 65536 8  "-o data_file=df.raw" "" 'qemu-io -c "write -P 0x47 0 5M" $I' 0
run_cfg datafile-raw  $((32 * MiB)) 65536 8  "-o data_file=dfr.raw,data_file_raw=on" "" \
    'qemu-io -c "write -P 0x48 3M 5M" $I' 0
run_cfg odd-size      $((24 * MiB + 12345)) 65536 8 "-o cluster_size=64k" "" "" 0
run_cfg odd-size-extl2 $((24 * MiB + 1536)) 65536 16 "-o extended_l2=on -b base.raw -F raw" \
    "mkraw base.raw $((24 * MiB))" "" 0
run_cfg refcount64-512 $((6 * MiB)) 512 8    "-o cluster_size=512,refcount_bits=64" "" "" 0 $((256 << 10))
run_cfg compressed-4k $((16 * MiB)) 4096 8   "" "mkraw c.raw $((16 * MiB))" \
    'qemu-img convert -c -O qcow2 -o cluster_size=4k c.raw $I' 1
run_cfg compressed-512-v2 $((4 * MiB)) 512 8 "" "mkraw c.raw $((4 * MiB))" \
    'qemu-img convert -c -O qcow2 -o cluster_size=512,compat=0.10 c.raw $I' 1 $((256 << 10))
run_cfg datafile-extl2 $((32 * MiB)) 65536 16 "-o data_file=dfx.raw,extended_l2=on" "" \
    'qemu-io -c "write -P 0x49 1M 5M" $I' 0
run_cfg datafile-backing $((32 * MiB)) 65536 8 "-o data_file=dfb.raw -b base.raw -F raw" \
    "mkraw base.raw $((32 * MiB))" "" 0
run_cfg prealloc-metadata $((32 * MiB)) 65536 8 "-o preallocation=metadata" "" "" 0
run_cfg prealloc-extl2 $((32 * MiB)) 65536 16 "-o preallocation=metadata,extended_l2=on" "" "" 0
run_cfg lazy-refcounts $((32 * MiB)) 65536 8 "-o lazy_refcounts=on" "" 'qemu-io -c "write -P 0x4a 0 9M" $I' 0
run_cfg compressed-zstd $((32 * MiB)) 65536 8 "" "mkraw c.raw $((32 * MiB))" \
    'qemu-img convert -c -O qcow2 -o compression_type=zstd c.raw $I' 1
run_cfg extl2-2m-backing $((64 * MiB)) $((2 * MiB)) 16 "-o extended_l2=on,cluster_size=2M -b base.qcow2 -F qcow2" \
    "mkqcow base.qcow2 $((64 * MiB))" "" 0 $((5 * MiB))

diag "$total_ops ops in $n_run images"

# Regression: a FAST_ZERO over a whole compressed cluster and part of the
# next one (extended L2: only whole subclusters) was refused with ENOTSUP
# after the first cluster had already been zeroed.  NBD: a refused fast zero
# "SHOULD NOT alter the contents of the export".
d=$T/fastzero
mkdir -p "$d"
mkraw "$d/c.raw" $((4 * MiB))
qemu-img convert -c -O qcow2 -o extended_l2=on "$d/c.raw" "$d/fz.qcow2"
if start_nbd "$T/fz.sock" -t "$d/fz.qcow2"; then
    pid=$NBD_PID
    rc=0
    "$NBD_PYTHON" - "$T/fz.sock" >"$d/out" 2>&1 <<'EOF' || rc=$?
import nbd, sys
h = nbd.NBD()
h.connect_unix(sys.argv[1])
before = h.pread(4 * 65536, 0)
for off, n in ((0, 65536 + 2048), (65536 - 2048, 2048 + 65536 + 4096), (3 * 65536 + 2048, 65536 - 2048)):
    try:
        h.zero(n, off, nbd.CMD_FLAG_FAST_ZERO)
        sys.exit("fast zero %d+%d succeeded" % (off, n))
    except nbd.Error as e:
        if e.errno != "ENOTSUP":
            sys.exit("fast zero %d+%d: %s" % (off, n, e))
    if h.pread(4 * 65536, 0) != before:
        sys.exit("fast zero %d+%d was refused but changed the disk" % (off, n))
h.zero(65536, 65536, nbd.CMD_FLAG_FAST_ZERO)        # a whole compressed cluster: fast
if h.pread(65536, 65536) != bytes(65536):
    sys.exit("a fast zero of a whole compressed cluster did not zero it")
h.shutdown()
EOF
    if [ "$rc" -eq 0 ]; then
        ok "regression: a refused FAST_ZERO (compressed cluster, extended L2) changes nothing"
    else
        not_ok "regression: a refused FAST_ZERO (compressed cluster, extended L2) changes nothing" \
            "$(tail -n 3 "$d/out")"
    fi
    stop_nbd "fast-zero server: SIGTERM: exit 0" "$pid" "$T/fz.sock.log" "$T/fz.sock"
    rc=$(qcheck_rc "$d" "$d/fz.qcow2")
    [ "$rc" -eq 0 ] && ok "fast-zero image: qemu-img check is clean" ||
        not_ok "fast-zero image: qemu-img check is clean (exit $rc)" "$(head -n 10 "$T/.qcheck")"
fi

# The comparison can fail: one flipped byte in the model is caught, both by
# the NBD read-back in qcow2_model.py and by the comparison with qemu.
d=$T/poison
mkdir -p "$d"
qemu-img create -q -f qcow2 "$d/p.qcow2" 4M
qemu-img convert -O raw "$d/p.qcow2" "$d/init.raw"
if start_nbd "$T/p.sock" -t -e 4 "$d/p.qcow2"; then
    pid=$NBD_PID rc=0
    "$NBD_PYTHON" "$MODEL" run "$T/p.sock" --init "$d/init.raw" --out "$d/model.raw" \
        --seed "$SEED" --ops 300 --poison >"$d/run.out" 2>"$d/run.err" || rc=$?
    if [ "$rc" -eq 1 ] && grep -q "differs from the model in 1 bytes" "$d/run.err"; then
        ok "a wrong byte in the model is caught by the NBD comparison"
    else
        not_ok "a wrong byte in the model is caught by the NBD comparison" \
            "exit $rc" "$(tail -n 5 "$d/run.err")"
    fi
    stop_nbd "poisoned run: SIGTERM: server exits 0" "$pid" "$T/p.sock.log" "$T/p.sock"
    qemu-img convert -O raw "$d/p.qcow2" "$d/out.raw"
    if [ -f "$d/model.raw" ] && ! cmp -s "$d/model.raw" "$d/out.raw"; then
        ok "a wrong byte in the model is caught by the comparison with qemu-img convert"
    else
        not_ok "a wrong byte in the model is caught by the comparison with qemu-img convert"
    fi
fi

# Persistent dirty bitmaps would go stale under our writes (and clearing
# their auto-clear bit makes qemu drop them): writing is refused, reading not.
qemu-img create -q -f qcow2 "$T/bm.qcow2" 8M
qemu-img bitmap --add "$T/bm.qcow2" backup0
check_fails "an image with persistent dirty bitmaps is refused read-write" "dirty bitmaps" \
    "$BFTEST" --rw info "$T/bm.qcow2"
check "... and opens read-only" "$BFTEST" info "$T/bm.qcow2"
check "... and its bitmap is still there" sh -c "qemu-img info '$T/bm.qcow2' | grep -q backup0"

done_testing
