#!/usr/bin/env bash
# test-qcow2-crash.sh — qcow2 writing survives SIGKILL (issue 7).
#
# $QCOW2_CRASH_RUNS runs (default 50), a few at a time on different images:
# vdisk-nbd serves a fresh qcow2 read-write; tests/qcow2_model.py crash
# drives a random workload over 4 connections (writes, FUA writes,
# write-zeroes, trims, frequent flushes, up to 32 requests in flight) and
# records what was acknowledged before each FLUSH was sent; at a random
# moment this script kills the server (by PID) with SIGKILL.  Then:
#   - `qemu-img check` finds no corruption: exit 0, or 3 (leaked clusters
#     only, which the issue allows; leaks are counted and printed);
#   - every byte acknowledged before the last completed flush, and not
#     written again afterwards by any request (finished or not), reads back
#     (`qemu-img convert -O raw`, tests/qcow2_model.py verify);
#   - a snapshot taken before still reads what it read.
# Stronger, as a diagnostic only: vdisk-nbd writes through, so a SIGKILL
# should lose nothing acknowledged at all, flushed or not.
# Images vary: 64 KiB and 512 B clusters, with and without qcow2/raw backing
# files, extended L2, v2, compressed clusters, an internal snapshot; the
# 512 B runs write big sequential runs so the file outgrows what the first
# refcount table covers (new refcount blocks, a grown refcount table).
# Then systematic crash points: the server under strace is killed just
# before its N-th pwrite: the 26 writes around a refcount table growth and
# random others ($QCOW2_CRASH_POINTS, default 40), and random points on a
# compressed image with an internal snapshot ($QCOW2_CRASH_SNAP_POINTS,
# default 16).
# Finally: the checker catches a lost acknowledged write (a byte of a copy
# of a crashed image flipped in its data cluster).
#
# Seed: $QCOW2_SEED, else random (printed).  Parallel runs: $QCOW2_CRASH_JOBS
# (default 3).
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io cmp od
require_nbd_python
require_vdisk_nbd
cd "${T:?}" || exit 1

SEED=${QCOW2_SEED:-$(( $(od -An -N4 -tu4 /dev/urandom) % 1000000 ))}
RUNS=${QCOW2_CRASH_RUNS:-50}
JOBS=${QCOW2_CRASH_JOBS:-3}
MODEL=$VDISK_TOP/tests/qcow2_model.py
MiB=$((1 << 20))
diag "seed $SEED, $RUNS runs, $JOBS at a time (rerun with QCOW2_SEED=$SEED)"

# Whatever a run left running when the script ends early: only processes
# whose command line names this script's temp dir.
kill_leftovers() {
    local f p
    for f in "$T"/r*/*.pid; do
        [ -f "$f" ] || continue
        p=$(cat "$f")
        if alive "$p" && tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF "$T/"; then
            kill -9 "$p" 2>/dev/null
        fi
    done
}
on_exit kill_leftovers

# Shared backing files (read-only, shared locks: runs in parallel may use them).
mkdir -p "$T/base"
qemu-img create -q -f raw "$T/base/b.raw" 16M
qemu-io -f raw -c 'write -P 0x5a 0 5M' -c 'write -P 0xa5 8M 6M' "$T/base/b.raw" >/dev/null
qemu-img convert -O qcow2 "$T/base/b.raw" "$T/base/b.qcow2"
qemu-img convert -O qcow2 -o cluster_size=512 "$T/base/b.raw" "$T/base/b512.qcow2"
qemu-img create -q -f raw "$T/base/c.raw" 16M
qemu-io -f raw -c 'write -P 0x11 0 12M' "$T/base/c.raw" >/dev/null

# name|create options|prep (on $I)|client options|kill delay (ms): min max|snapshot
CFGS=(
    "plain-64k|-o cluster_size=64k||--cluster 65536|30 900|0"
    "backing-qcow2|-b $T/base/b.qcow2 -F qcow2||--cluster 65536|30 900|0"
    "extl2-64k|-o extended_l2=on||--cluster 65536|30 900|0"
    "grow-512|-o cluster_size=512||--cluster 512 --l2span 32768 --bigwrites --maxlen 262144|500 1600|0"
    "backing-512|-o cluster_size=512 -b $T/base/b512.qcow2 -F qcow2||--cluster 512 --l2span 32768 --maxlen 262144|30 900|0"
    "extl2-backing-raw|-o extended_l2=on -b $T/base/b.raw -F raw||--cluster 65536|30 900|0"
    "v2-4k|-o compat=0.10,cluster_size=4k||--cluster 4096 --l2span 2097152|30 900|0"
    "compressed-snapshot|-o cluster_size=64k|qemu-img convert -c -O qcow2 $T/base/c.raw \$I|--cluster 65536|30 900|1"
)
SIZE=$((16 * MiB))

# crash_run I: one run in $T/rI; results in $T/rI/res (shell assignments).
crash_run() {
    local i=$1 d=$T/r$1 cfg name create prep copts delays snap seed lo hi delay
    cfg=${CFGS[$(( (i - 1) % ${#CFGS[@]} ))]}
    IFS='|' read -r name create prep copts delays snap <<<"$cfg"
    read -r lo hi <<<"$delays"
    seed=$((SEED * 1000 + i))
    delay=$(( lo + (seed * 7919 + i * 104729) % (hi - lo + 1) ))
    mkdir -p "$d"
    local img=$d/img.qcow2 S=$d/sock res=$d/res
    {
        echo "name=$name"
        echo "seed=$seed"
        echo "delay=$delay"
    } >"$res"
    # shellcheck disable=SC2086,SC2034  # (I is for $prep)
    if ! qemu-img create -q -f qcow2 $create "$img" "$SIZE" >"$d/mk.log" 2>&1 ||
       { [ -n "$prep" ] && ! (I=$img && eval "$prep") >>"$d/mk.log" 2>&1; }; then
        echo "fail='image not made: $(tail -n 2 "$d/mk.log" | tr "\n'" '  ')'" >>"$res"
        return
    fi
    if [ "$snap" = 1 ]; then
        qemu-img snapshot -c snap1 "$img" &&
            qemu-img convert -l snapshot.name=snap1 -O raw "$img" "$d/snap.before.raw"
    fi
    qemu-img convert -O raw "$img" "$d/init.raw"
    "$NBD_PYTHON" "$MODEL" rcinfo "$img" >"$d/rc.before"

    "$VDISK_NBD" -k "$S" -t -e 4 "$img" 2>"$S.log" &
    local spid=$! k
    echo "$spid" >"$d/server.pid"
    for ((k = 0; k < 300; k++)); do
        nbd_listening "$S" && break
        alive "$spid" || break
        sleep 0.1
    done
    if ! nbd_listening "$S"; then
        echo "fail='server did not start: $(tail -n 3 "$S.log" | tr "\n'" '  ')'" >>"$res"
        kill -9 "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
        return
    fi
    # shellcheck disable=SC2086
    "$NBD_PYTHON" "$MODEL" crash "$S" --init "$d/init.raw" --out "$d/c" --seed "$seed" \
        --ready "$d/ready" --secs 30 $copts >"$d/client.out" 2>"$d/client.err" &
    local cpid=$!
    echo "$cpid" >"$d/client.pid"
    for ((k = 0; k < 300; k++)); do
        [ -e "$d/ready" ] && break
        alive "$cpid" || break
        sleep 0.05
    done
    sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
    local died_early=0 src=0 crc=0
    alive "$spid" || died_early=1
    kill -9 "$spid" 2>/dev/null
    wait "$spid" 2>/dev/null || src=$?
    wait "$cpid" 2>/dev/null || crc=$?
    if [ "$died_early" = 1 ] || _sanitizer_report "$S.log"; then
        echo "fail='the server died before the kill (exit $src): $(tail -n 5 "$S.log" | tr "\n'" '  ')'" >>"$res"
        return
    fi
    if [ "$crc" -ne 0 ] || [ ! -f "$d/c.exp" ]; then
        echo "fail='the workload failed (exit $crc): $(tail -n 3 "$d/client.err" | tr "\n'" '  ')'" >>"$res"
        return
    fi
    sed -n 's/^\(ops=.*\)$/\1/p' "$d/client.out" | tr ' ' '\n' | sed 's/^/c_/' >>"$res"
    grep '^# ' "$d/client.out" | head -1 | sed "s/^# \(.*\)/stats='\1'/" >>"$res"

    local qrc=0 leaks
    qemu-img check "$img" >"$d/check.out" 2>&1 || qrc=$?
    leaks=$(sed -n 's/^\([0-9]*\) leaked clusters\? w[ae][rs]e\? found.*/\1/p' "$d/check.out" | head -1)
    echo "check_rc=$qrc" >>"$res"
    echo "leaks=${leaks:-0}" >>"$res"
    if [ "$qrc" -ne 0 ] && [ "$qrc" -ne 3 ]; then
        echo "check_msg='$(grep -v '^$' "$d/check.out" | head -n 8 | tr "\n'" '  ')'" >>"$res"
    fi
    local vrc=0
    if qemu-img convert -O raw "$img" "$d/act.raw" 2>"$d/convert.err"; then
        "$NBD_PYTHON" "$MODEL" verify "$d/c.exp" "$d/c.unknown" "$d/act.raw" \
            >"$d/verify.out" 2>"$d/verify.err" || vrc=$?
        echo "verify_rc=$vrc" >>"$res"
        [ "$vrc" -eq 0 ] ||
            echo "verify_msg='$(head -n 4 "$d/verify.err" | tr "\n'" '  ')'" >>"$res"
        "$NBD_PYTHON" "$MODEL" verify "$d/c.all.exp" "$d/c.all.unknown" "$d/act.raw" \
            >"$d/verify-all.out" 2>/dev/null || true
        echo "lost_run=$(sed -n 's/^bad=\([0-9]*\).*/\1/p' "$d/verify-all.out")" >>"$res"
    else
        echo "verify_rc=9" >>"$res"
        echo "verify_msg='qemu-img convert failed: $(tail -n 2 "$d/convert.err" | tr "\n'" '  ')'" >>"$res"
    fi
    if [ "$snap" = 1 ]; then
        if qemu-img convert -l snapshot.name=snap1 -O raw "$img" "$d/snap.after.raw" 2>/dev/null &&
           cmp -s "$d/snap.before.raw" "$d/snap.after.raw"; then
            echo "snap_ok=1" >>"$res"
        else
            echo "snap_ok=0" >>"$res"
        fi
    fi
    "$NBD_PYTHON" "$MODEL" rcinfo "$img" >"$d/rc.after"
    local b a
    read -r -a b <"$d/rc.before"
    read -r -a a <"$d/rc.after"
    echo "rt_grew=$([ "${a[0]}" != "${b[0]}" ] && echo 1 || echo 0)" >>"$res"
    echo "rb_added=$(( ${a[2]} - ${b[2]} ))" >>"$res"
    # keep what the lost-write test needs from early plain runs; drop the rest
    rm -f "$d/act.raw" "$d/init.raw" "$d/c.all.exp" "$d/snap."*.raw
    if [ "$name" != plain-64k ] || [ "$i" -gt 24 ]; then
        rm -f "$d/c.exp" "$img"
    fi
}

start=$(date +%s)
running=0
for ((i = 1; i <= RUNS; i++)); do
    crash_run "$i" &
    echo $! >"$T/job$i"
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then
        wait -n 2>/dev/null || true
        running=$((running - 1))
    fi
done
wait
diag "$RUNS runs in $(( $(date +%s) - start ))s"

# ------------------------------------------------------------- results
total_leaks=0 leak_runs=0 grew=0 added=0 total_ops=0 total_acked=0 lost_unflushed=0 covered_runs=0
keep=""
for ((i = 1; i <= RUNS; i++)); do
    name="" seed="" delay="" fail="" check_rc="" leaks=0 check_msg="" verify_rc="" verify_msg=""
    snap_ok="" rt_grew=0 rb_added=0 c_ops=0 c_acked=0 c_flushes=0 c_covered=0 c_known=0
    c_inflight=0 stats="" lost_run=0
    # shellcheck disable=SC1090
    [ -f "$T/r$i/res" ] && . "$T/r$i/res"
    what="run $i ($name, seed $seed, SIGKILL after ${delay} ms)"
    if [ -n "$fail" ]; then
        not_ok "$what" "$fail" "$(tail -n 5 "$T/r$i/sock.log" 2>/dev/null)"
        continue
    fi
    if [ "$check_rc" = 0 ] || [ "$check_rc" = 3 ]; then
        ok "$what: qemu-img check finds no corruption (exit $check_rc, $leaks leaked clusters)"
    else
        not_ok "$what: qemu-img check finds no corruption (exit $check_rc)" "$check_msg"
    fi
    if [ "$verify_rc" = 0 ]; then
        ok "$what: $c_known bytes acknowledged before the last completed flush read back ($c_ops ops, $c_flushes flushes)"
    else
        not_ok "$what: data acknowledged before the last completed flush reads back" "$verify_msg"
    fi
    if [ -n "$snap_ok" ]; then
        if [ "$snap_ok" = 1 ]; then ok "$what: snapshot snap1 reads what it read before"
        else not_ok "$what: snapshot snap1 reads what it read before"; fi
    fi
    [ "${leaks:-0}" -gt 0 ] && leak_runs=$((leak_runs + 1))
    total_leaks=$((total_leaks + ${leaks:-0}))
    grew=$((grew + rt_grew))
    [ "$rb_added" -gt 0 ] && added=$((added + 1))
    total_ops=$((total_ops + c_ops))
    total_acked=$((total_acked + c_acked))
    [ "$c_covered" -gt 0 ] && covered_runs=$((covered_runs + 1))
    lost_unflushed=$((lost_unflushed + ${lost_run:-0}))
    diag "run $i: ops $c_ops, acked $c_acked, flushes $c_flushes, in flight at the kill $c_inflight, leaks $leaks, refcount blocks added $rb_added, table grew $rt_grew; $stats"
    if [ -z "$keep" ] && [ "$c_known" -gt 0 ] && [ -f "$T/r$i/img.qcow2" ] && [ -f "$T/r$i/c.exp" ]; then
        keep=$i
    fi
done
diag "workload: $total_ops ops issued, $total_acked acknowledged over $RUNS runs"
diag "leaked clusters: $total_leaks in $leak_runs of $RUNS runs (allowed)"
diag "acknowledged but unflushed bytes lost: $lost_unflushed (the protocol allows it; a write-through server should lose none)"
if [ "$grew" -gt 0 ] && [ "$added" -gt 0 ]; then
    ok "runs added refcount blocks ($added runs) and grew the refcount table ($grew runs)"
else
    not_ok "runs added refcount blocks ($added runs) and grew the refcount table ($grew runs)" \
        "the grow-512 runs must write past what the first refcount table covers"
fi
if [ "$covered_runs" -ge $((RUNS / 2)) ]; then
    ok "most runs had acknowledged data covered by a completed flush ($covered_runs of $RUNS)"
else
    not_ok "most runs had acknowledged data covered by a completed flush ($covered_runs of $RUNS)"
fi

# ------------------------------------------- systematic crash points
# A SIGKILL at a random moment rarely lands inside the few writes that grow
# the refcount table.  Here the server runs under strace, which kills it
# just before its N-th pwrite (fault injection: the write never happens).
# One connection, one request at a time, one worker thread: the writes come
# in the same order every time, so N names one write of a dry run.
#   grow: 512 B clusters, 64-bit refcounts (a refcount block covers 64
#     clusters, the first table 4096), filled by qemu-io to just below what
#     the first table covers, so the table grows early; N sweeps the writes
#     around the first growth (the header switch) and random others.
#   snapshot: 4 KiB clusters, compressed data and an internal snapshot
#     (L2 tables and clusters shared: copied, compressed ones freed); N at
#     random; the snapshot must still read what it read.
sys_server() {   # DIR IMAGE TRACE [N]: vdisk-nbd under strace, in the background
    local d=$1 img=$2 tr=$3 n=${4:-} inj=() k
    [ -n "$n" ] && inj=(-e "inject=pwrite64:signal=SIGKILL:when=$n")
    # (LeakSanitizer cannot run under ptrace)
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
        strace -f -o "$tr" -e trace=pwrite64 "${inj[@]}" \
        "$VDISK_NBD" -k "$d/sock" -t --threads 1 --pid-file "$d/server.pid" "$img" 2>"$d/sock.log" &
    echo $! >"$d/strace.pid"
    for ((k = 0; k < 300; k++)); do
        nbd_listening "$d/sock" && return 0
        alive "$(cat "$d/strace.pid")" || return 1
        sleep 0.05
    done
    return 1
}

# sys_point DIR N SNAP CLIENT-OPTS...: one run killed at pwrite N; results
# in DIR/pN/res.  DIR holds img.orig, init.raw (and snap.raw).
sys_point() {
    local base=$1 n=$2 snap=$3 d=$1/p$2 rc=0 k spid; shift 3
    mkdir -p "$d"
    cp "$base/img.orig" "$d/img.qcow2"
    if ! sys_server "$d" "$d/img.qcow2" "$d/trace" "$n"; then
        echo "fail='server did not start: $(tail -n 2 "$d/sock.log" | tr "\n'" '  ')'" >"$d/res"
        return
    fi
    "$NBD_PYTHON" "$MODEL" crash "$d/sock" --init "$base/init.raw" --out "$d/c" --seed "$SEED" \
        --secs 60 "$@" >"$d/client.out" 2>"$d/client.err" || rc=$?
    spid=$(cat "$d/strace.pid")
    for ((k = 0; k < 100; k++)); do alive "$spid" || break; sleep 0.1; done
    [ -f "$d/server.pid" ] && alive "$(cat "$d/server.pid")" && kill -9 "$(cat "$d/server.pid")"
    wait "$spid" 2>/dev/null
    {
        echo "client_rc=$rc"
        grep -q 'killed by SIGKILL' "$d/trace" && echo killed=1 || echo killed=0
        echo "at='$("$NBD_PYTHON" "$MODEL" pwrites "$d/trace" | awk '$3 == "?" { print $1, $2 }' | tail -n 1)'"
        local q=0 v=0
        qemu-img check "$d/img.qcow2" >"$d/check.out" 2>&1 || q=$?
        echo "check_rc=$q"
        echo "leaks=$(sed -n 's/^\([0-9]*\) leaked clusters\? w[ae][rs]e\? found.*/\1/p' "$d/check.out" | head -1)"
        [ "$q" -ne 0 ] && [ "$q" -ne 3 ] &&
            echo "check_msg='$(grep -v '^$' "$d/check.out" | head -n 6 | tr "\n'" '  ')'"
        qemu-img convert -O raw "$d/img.qcow2" "$d/act.raw" 2>/dev/null &&
            "$NBD_PYTHON" "$MODEL" verify "$d/c.exp" "$d/c.unknown" "$d/act.raw" \
                >"$d/verify.out" 2>"$d/verify.err" || v=$?
        echo "verify_rc=$v"
        [ "$v" -ne 0 ] && echo "verify_msg='$(head -n 3 "$d/verify.err" | tr "\n'" '  ')'"
        if [ "$snap" = 1 ]; then
            qemu-img convert -l snapshot.name=snap1 -O raw "$d/img.qcow2" "$d/snap.raw" 2>/dev/null &&
                cmp -s "$base/snap.raw" "$d/snap.raw" && echo snap_ok=1 || echo snap_ok=0
        fi
    } >"$d/res"
    rm -f "$d/act.raw" "$d/snap.raw" "$d/c.exp" "$d/c.all.exp" "$d/img.qcow2" "$d/trace"
}

# sys_sweep NAME NPOINTS WINDOW SNAP CLIENT-OPTS...: the dry run on
# $T/sys-NAME/img.orig (made by the caller), then NPOINTS crash points: the
# 26 writes around the first header switch when WINDOW is 1, random others.
sys_sweep() {
    local name=$1 npoints=$2 window=$3 snap=$4 base=$T/sys-$1; shift 4
    local rc0 rc1 total grow n r t start running what rel want sys_leaks=0
    qemu-img convert -O raw "$base/img.orig" "$base/init.raw"
    [ "$snap" = 1 ] && qemu-img convert -l snapshot.name=snap1 -O raw "$base/img.orig" "$base/snap.raw"
    read -r -a rc0 < <("$NBD_PYTHON" "$MODEL" rcinfo "$base/img.orig")
    cp "$base/img.orig" "$base/img.qcow2"
    if sys_server "$base" "$base/img.qcow2" "$base/dry.trace"; then
        "$NBD_PYTHON" "$MODEL" crash "$base/sock" --init "$base/init.raw" --out "$base/c" \
            --seed "$SEED" --secs 60 "$@" >"$base/client.out" 2>&1
        kill "$(cat "$base/server.pid")"
        wait "$(cat "$base/strace.pid")" 2>/dev/null
    fi
    "$NBD_PYTHON" "$MODEL" pwrites "$base/dry.trace" >"$base/dry.pw"
    total=$(wc -l <"$base/dry.pw")
    grow=$(grep -n '^12 48 ' "$base/dry.pw" | head -n 1 | cut -d: -f1)
    read -r -a rc1 < <("$NBD_PYTHON" "$MODEL" rcinfo "$base/img.qcow2")
    points=()
    if [ "$window" = 1 ]; then
        if [ -z "$grow" ] || [ "${rc1[0]}" = "${rc0[0]}" ]; then
            not_ok "systematic crash points ($name): the dry run grows the refcount table" \
                "$total pwrites, header rewritten at: ${grow:-never}; table before: ${rc0[*]}, after: ${rc1[*]}"
            return
        fi
        ok "systematic crash points ($name): the dry run ($total pwrites, seed $SEED) grows the refcount table (header switch at pwrite $grow; table at ${rc0[0]} -> ${rc1[0]}, ${rc0[2]} -> ${rc1[2]} blocks)"
        for ((n = grow - 16; n <= grow + 9; n++)); do [ "$n" -ge 1 ] && points+=("$n"); done
    elif [ "$total" -lt 100 ]; then
        not_ok "systematic crash points ($name): the dry run writes" "only $total pwrites"
        return
    else
        ok "systematic crash points ($name): the dry run makes $total pwrites (seed $SEED)"
    fi
    # strace's inject when= takes a call number of at most 65535: random
    # points come from the first 65535 writes of longer dry runs.
    local span=$(( total < 65535 ? total : 65535 ))
    r=$SEED
    for ((t = 0; t < 10 * npoints && ${#points[@]} < npoints; t++)); do
        r=$(( (r * 1103515245 + 12345) % 2147483648 ))
        n=$(( 1 + r % span ))
        [[ " ${points[*]} " == *" $n "* ]] || points+=("$n")     # each point once
    done
    start=$(date +%s)
    running=0
    for n in "${points[@]}"; do
        sys_point "$base" "$n" "$snap" "$@" 2>/dev/null &      # (no "Killed" job notices)
        running=$((running + 1))
        if [ "$running" -ge "$JOBS" ]; then wait -n 2>/dev/null || true; running=$((running - 1)); fi
    done
    wait
    diag "$name: ${#points[@]} crash points in $(( $(date +%s) - start ))s"
    for n in "${points[@]}"; do
        fail="" client_rc="" killed=0 at="" check_rc="" leaks="" check_msg="" verify_rc=""
        verify_msg="" snap_ok=""
        # shellcheck disable=SC1090
        . "$base/p$n/res" 2>/dev/null
        want=$(sed -n "${n}p" "$base/dry.pw" | awk '{print $1, $2}')
        what="crash point ($name): pwrite $n ($want)"
        if [ -n "$grow" ] && [ "$window" = 1 ]; then
            rel=$((n - grow))
            if [ "$rel" -eq 0 ]; then what="crash point ($name): pwrite $n (the header switch; $want)"
            elif [ "$rel" -lt 0 ]; then what="crash point ($name): pwrite $n (${rel#-} before the header switch; $want)"
            else what="crash point ($name): pwrite $n ($rel after the header switch; $want)"; fi
        fi
        if [ -n "$fail" ] || [ "$killed" != 1 ]; then
            not_ok "$what: the server is killed there" "${fail:-not killed (client exit $client_rc)}" \
                "$(tail -n 3 "$base/p$n/client.err" 2>/dev/null)"
            continue
        fi
        [ "$at" != "$want" ] && diag "pwrite $n: killed at '$at', the dry run had '$want' (the order differed)"
        sys_leaks=$((sys_leaks + ${leaks:-0}))
        if { [ "$check_rc" = 0 ] || [ "$check_rc" = 3 ]; } && [ "$verify_rc" = 0 ] && [ "$snap_ok" != 0 ]; then
            ok "$what: qemu-img check exit $check_rc (${leaks:-0} leaked), flushed data reads back${snap_ok:+, the snapshot too}"
        else
            not_ok "$what: qemu-img check finds no corruption, flushed data (and the snapshot) read back" \
                "qemu-img check exit $check_rc: $check_msg" "verify exit $verify_rc: $verify_msg" \
                "snapshot unchanged: ${snap_ok:-n/a}"
        fi
    done
    diag "$name: leaked clusters over the crash points: $sys_leaks"
}

if ! command -v strace >/dev/null 2>&1 ||
   ! strace -o /dev/null -e trace=pwrite64 -e inject=pwrite64:signal=SIGKILL:when=100 true 2>/dev/null; then
    skip "systematic crash points" "strace (with syscall fault injection) is not installed"
else
    mkdir -p "$T/sys-grow" "$T/sys-snapshot"
    qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 "$T/sys-grow/img.orig" 4M
    qemu-io -c 'write -P 0x77 0 1900k' "$T/sys-grow/img.orig" >/dev/null
    sys_sweep grow "${QCOW2_CRASH_POINTS:-40}" 1 0 \
        --conns 1 --depth 1 --ops 120 --cluster 512 --l2span 32768 --bigwrites --maxlen 65536
    qemu-img convert -c -O qcow2 -o cluster_size=4k "$T/base/c.raw" "$T/sys-snapshot/img.orig"
    qemu-img snapshot -c snap1 "$T/sys-snapshot/img.orig"
    qemu-io -c 'write -P 0x32 1M 512k' "$T/sys-snapshot/img.orig" >/dev/null
    sys_sweep snapshot "${QCOW2_CRASH_SNAP_POINTS:-16}" 0 1 \
        --conns 1 --depth 1 --ops 250 --cluster 4096 --l2span 2097152 --maxlen 65536
fi

# ------------------------------------------------ the checker can fail
# Flip one byte of a crashed image's data cluster that holds data
# acknowledged before the last flush: the check must notice.
if [ -z "$keep" ]; then
    not_ok "a lost acknowledged write is caught" "no plain-64k run kept data to corrupt"
else
    d=$T/r$keep
    cp "$d/img.qcow2" "$T/lost.qcow2"
    qemu-img map --output=json "$T/lost.qcow2" >"$T/lost.map" 2>/dev/null
    if read -r guest host < <("$NBD_PYTHON" "$MODEL" pick "$d/c.exp" "$d/c.unknown" "$T/lost.map" "$SEED"); then
        old=$(od -An -tu1 -j "$host" -N1 "$T/lost.qcow2" | tr -d ' ')
        printf "$(printf '\\%03o' $(( (old ^ 0x5a) & 255 )))" |
            dd of="$T/lost.qcow2" bs=1 seek="$host" conv=notrunc status=none
        qemu-img convert -O raw "$T/lost.qcow2" "$T/lost.raw"
        rc=0
        "$NBD_PYTHON" "$MODEL" verify "$d/c.exp" "$d/c.unknown" "$T/lost.raw" >"$T/.out" 2>"$T/.err" || rc=$?
        if [ "$rc" -eq 1 ] && grep -q "offset $guest:" "$T/.err"; then
            ok "a lost acknowledged write is caught (run $keep, guest offset $guest, file offset $host)"
        else
            not_ok "a lost acknowledged write is caught (run $keep, guest offset $guest)" \
                "verify exit $rc" "$(head -n 3 "$T/.err")"
        fi
    else
        not_ok "a lost acknowledged write is caught" "no known byte in a data cluster of run $keep"
    fi
fi

done_testing
