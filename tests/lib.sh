# lib.sh — shared helpers for tests/test-*.sh.  Source it first.
#
# Each test script prints TAP lines ("ok N - what", "not ok N - what",
# "ok N - what # SKIP why") and ends with done_testing.  tests/run counts them.
#
# Environment (set by tests/run, defaults for running a script by hand):
#   VDISK_BUILD  absolute path of the build directory holding the binaries
#   VDISK_TOP    the source tree
# Provides: $T (a private temp dir, removed at exit), $BFTEST, and helpers.
# Thread model: none; scripts are sequential shells.

set -u
VDISK_TOP=${VDISK_TOP:-$(cd "$(dirname "$0")/.." && pwd)}
VDISK_BUILD=${VDISK_BUILD:-$VDISK_TOP/build}
BFTEST=$VDISK_BUILD/tests/bftest
VDISK_NBD=$VDISK_BUILD/vdisk-nbd
VDISK_MOUNT=$VDISK_BUILD/vdisk-mount
SHARED=${VDISK_SHARED:-$VDISK_TOP/../shared}

T=$(mktemp -d "${TMPDIR:-/tmp}/vdisk-test.XXXXXX")
_tap_n=0
_tap_failed=0
_cleanup_hooks=()

# Run "$@" at exit (servers a test started, mounts it made), then remove $T.
on_exit() { _cleanup_hooks+=("$*"); }
_run_cleanup() {
    local i
    for ((i = ${#_cleanup_hooks[@]} - 1; i >= 0; i--)); do eval "${_cleanup_hooks[$i]}" || true; done
    rm -rf "$T"
}
trap _run_cleanup EXIT

ok()      { _tap_n=$((_tap_n + 1)); echo "ok $_tap_n - $1"; }
not_ok()  {
    _tap_n=$((_tap_n + 1)); _tap_failed=$((_tap_failed + 1))
    echo "not ok $_tap_n - $1"
    shift
    [ $# -gt 0 ] && printf '%s\n' "$@" | sed 's/^/#   /'
    return 0
}
skip()    { _tap_n=$((_tap_n + 1)); echo "ok $_tap_n - $1 # SKIP $2"; }
diag()    { printf '%s\n' "$@" | sed 's/^/# /'; }

# Sanitizer reports make a test fail even when the exit status looks right.
_sanitizer_report() { grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: UndefinedBehaviorSanitizer' "$1"; }

# check DESC CMD...: passes when CMD exits 0 without sanitizer reports.
check() {
    local desc=$1; shift
    if "$@" >"$T/.out" 2>"$T/.err" && ! _sanitizer_report "$T/.err"; then
        ok "$desc"
    else
        not_ok "$desc" "command: $*" "$(tail -n 20 "$T/.err")"
    fi
}

# check_fails DESC REGEX CMD...: passes when CMD exits 1 (a clean error), its
# stderr matches REGEX (extended) and no sanitizer complained.
check_fails() {
    local desc=$1 re=$2; shift 2
    local rc=0
    "$@" >"$T/.out" 2>"$T/.err" || rc=$?
    if [ "$rc" -eq 1 ] && grep -qE -- "$re" "$T/.err" && ! _sanitizer_report "$T/.err"; then
        ok "$desc"
    else
        not_ok "$desc" "command: $*" "exit status $rc, wanted 1 with stderr matching: $re" \
            "$(tail -n 20 "$T/.err")"
    fi
}

# same_file DESC A B: passes when the files are byte-identical.
same_file() {
    if cmp -s "$2" "$3"; then ok "$1"; else not_ok "$1" "$(cmp "$2" "$3" 2>&1 | head -n 3)"; fi
}

# require CMD...: the tools a test needs.  tests/deps.sh installs them, so a
# missing one is a broken set-up and fails the script (never a silent skip).
require() {
    local c
    for c in "$@"; do
        if ! command -v "$c" >/dev/null 2>&1; then
            not_ok "required tool '$c' is installed" "run tests/deps.sh"
            done_testing
        fi
    done
}

done_testing() {
    echo "1..$_tap_n"
    [ "$_tap_failed" -eq 0 ] && exit 0 || exit 1
}

# raw_of IMAGE OUT [qemu-img convert options...]: the oracle's raw bytes.
raw_of() { local img=$1 out=$2; shift 2; qemu-img convert -O raw "$@" "$img" "$out"; }

# ---- oracle comparisons against qemu (used by the qcow2 tests) ----

# bf_python ARGS...: python3 for scripts that use only the standard library,
# resolved once to the interpreter itself (a version manager's shim, such as
# pyenv's, costs a shell start per call) and started without site packages.
bf_python() { "${BF_PYTHON:=$(python3 -c 'import sys; print(sys.executable)')}" -S "$@"; }

# bf_cat_matches DESC ORACLE [BFTEST-OPTIONS...] IMAGE: `bftest OPTIONS cat
# IMAGE` exits 0, without sanitizer reports, and writes exactly ORACLE's bytes.
bf_cat_matches() {
    local desc=$1 oracle=$2; shift 2
    local img=${!#} out=$T/.cat.raw rc=0
    local opts=("${@:1:$#-1}")
    rm -f "$out"
    "$BFTEST" "${opts[@]}" cat "$img" "$out" >"$T/.out" 2>"$T/.err" || rc=$?
    if [ "$rc" -ne 0 ] || _sanitizer_report "$T/.err"; then
        not_ok "$desc" "command: $BFTEST ${opts[*]} cat $img (exit $rc)" "$(tail -n 20 "$T/.err")"
    elif ! cmp -s "$oracle" "$out"; then
        not_ok "$desc" "bftest ${opts[*]} cat $img differs from $oracle:" \
            "$(cmp "$oracle" "$out" 2>&1 | head -n 3)"
    else
        ok "$desc"
    fi
    rm -f "$out"
}

# bf_map_matches DESC ORACLE.json [BFTEST-OPTIONS...] IMAGE: `bftest OPTIONS
# map IMAGE` equals ORACLE.json (qemu-img map --output=json) after coalescing
# (tests/mapcmp.py).
bf_map_matches() {
    local desc=$1 oracle=$2; shift 2
    local img=${!#} rc=0
    local opts=("${@:1:$#-1}")
    "$BFTEST" "${opts[@]}" map "$img" >"$T/.map.json" 2>"$T/.err" || rc=$?
    if [ "$rc" -ne 0 ] || _sanitizer_report "$T/.err"; then
        not_ok "$desc" "command: $BFTEST ${opts[*]} map $img (exit $rc)" "$(tail -n 20 "$T/.err")"
    elif ! bf_python "$VDISK_TOP/tests/mapcmp.py" "$oracle" "$T/.map.json" >"$T/.mapcmp" 2>&1; then
        not_ok "$desc" "$(head -n 5 "$T/.mapcmp")"
    else
        ok "$desc"
    fi
}

# bf_matches_qemu DESC IMAGE: three tests against qemu's view of IMAGE (its
# whole backing chain): bftest cat equals `qemu-img convert -O raw`, so does a
# read from 4 threads in random-sized pieces, and bftest map equals
# `qemu-img map --output=json`.
_bf_seed=0
bf_matches_qemu() {
    local desc=$1 img=$2
    _bf_seed=$((_bf_seed + 1))
    if ! qemu-img convert -O raw "$img" "$T/.oracle.raw" 2>"$T/.err" ||
       ! qemu-img map --output=json "$img" >"$T/.oracle.json" 2>>"$T/.err"; then
        not_ok "$desc: qemu reads the image" "$(tail -n 5 "$T/.err")"
        return 0
    fi
    bf_cat_matches "$desc: bytes" "$T/.oracle.raw" "$img"
    bf_cat_matches "$desc: bytes, 4 threads, random pieces (seed $_bf_seed)" "$T/.oracle.raw" \
        --threads 4 --chunk 0 --seed "$_bf_seed" "$img"
    bf_map_matches "$desc: map" "$T/.oracle.json" "$img"
    rm -f "$T/.oracle.raw"
}

# ---- NBD servers and clients (used by tests/test-nbd-*.sh) ----

# nbd_listening SOCK: something listens on the Unix socket SOCK.  Read from
# /proc/net/unix rather than by connecting: a probe connection would count
# as the server's first client.
nbd_listening() {
    awk -v p="$1" '$NF == p && $4 == "00010000" { f = 1 } END { exit !f }' /proc/net/unix
}

# _nbd_reap PID: stop a server this script started (cleanup hook): SIGTERM,
# then SIGKILL after 10 s, then reap it.
_nbd_reap() {
    local i
    alive "$1" || { wait "$1" 2>/dev/null; return 0; }
    kill "$1" 2>/dev/null
    for ((i = 0; i < 100; i++)); do alive "$1" || break; sleep 0.1; done
    alive "$1" && kill -9 "$1" 2>/dev/null
    wait "$1" 2>/dev/null
    return 0
}

# start_nbd SOCK [VDISK-NBD OPTIONS...] IMAGE: run `vdisk-nbd -k SOCK ...` in
# the background and return once it listens.  Sets NBD_PID; the server's
# stderr goes to SOCK.log.  Returns 1 (after a not_ok) when the server exits
# or does not listen within 30 s.  It is stopped at exit if still running;
# stop_nbd / wait_nbd stop it earlier and check how it ended.
start_nbd() {
    local sock=$1 i; shift
    rm -f "$sock"
    "$VDISK_NBD" -k "$sock" "$@" 2>"$sock.log" &
    NBD_PID=$!
    on_exit "_nbd_reap $NBD_PID"
    for ((i = 0; i < 300; i++)); do
        nbd_listening "$sock" && return 0
        alive "$NBD_PID" || break
        sleep 0.1
    done
    not_ok "vdisk-nbd $* listens on $sock" "$(tail -n 20 "$sock.log")"
    return 1
}

# wait_nbd DESC PID LOG [SECS] [STATUS]: PID (a server this script started)
# exits by itself within SECS (default 20) with STATUS (default 0) and LOG
# has no sanitizer report.
wait_nbd() {
    local desc=$1 pid=$2 log=$3 secs=${4:-20} want=${5:-0} i rc=0
    for ((i = 0; i < secs * 10; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
        not_ok "$desc" "server $pid still running after ${secs}s"
        _nbd_reap "$pid"
        return 0
    fi
    wait "$pid" 2>/dev/null || rc=$?
    if [ "$rc" -ne "$want" ] || _sanitizer_report "$log"; then
        not_ok "$desc" "server exit status $rc (wanted $want)" "$(tail -n 20 "$log")"
    else
        ok "$desc"
    fi
}

# stop_nbd DESC PID LOG [SOCK]: SIGTERM stops the server cleanly: exit 0
# within 20 s, no sanitizer report, and the socket file SOCK is removed.
stop_nbd() {
    local desc=$1 pid=$2 log=$3 sock=${4:-}
    kill -TERM "$pid" 2>/dev/null
    wait_nbd "$desc" "$pid" "$log" 20
    if [ -n "$sock" ] && [ -e "$sock" ]; then
        not_ok "$desc: socket file removed" "$sock still exists"
    fi
}

# nbd_uri SOCK [EXPORT]: the NBD URI of an export on a Unix socket.
nbd_uri() { echo "nbd+unix:///${2:-}?socket=$1"; }

# require_nbdsh: sets NBDSH to run nbdsh with a python3 that has libnbd's
# `nbd` module first in PATH (a python3 from pyenv or a venv may lack it).
# Run a script with `$NBDSH -n -c - <script.py`.  Like require, a missing
# module (package python3-libnbd) fails the script.
require_nbdsh() {
    local p
    require nbdsh
    for p in python3 /usr/bin/python3; do
        if "$p" -c 'import nbd' 2>/dev/null; then
            mkdir -p "$T/.pybin"
            ln -sf "$(command -v "$p")" "$T/.pybin/python3"
            NBDSH="env PATH=$T/.pybin:$PATH nbdsh"
            return 0
        fi
    done
    not_ok "python3 has libnbd's nbd module (nbdsh)" "install python3-libnbd (tests/deps.sh)"
    done_testing
}

# process_gone PID: true when PID has exited (a zombie not yet reaped by its
# new parent counts as gone: it holds no files any more).
process_gone() {
    local st
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 0
    [ -z "$st" ] || [ "$st" = Z ] || [ "$st" = X ]
}

# alive PID: the process exists and is not a zombie.  One read of its stat
# file decides: bash reaps an exited child whenever it waits for another
# (the awk below is one), so "/proc/PID exists, then its stat is unreadable"
# means the process has just gone, not that it runs.
alive() { ! process_gone "$1"; }

# require_vdisk_nbd: a test of the server fails (not skips) when it is not built.
require_vdisk_nbd() {
    [ -x "$VDISK_NBD" ] && return 0
    not_ok "vdisk-nbd is built" "$VDISK_NBD is missing (make testprogs)"
    done_testing
}

# syscall_seen DESC PID SYSCALL CMD...: trace PID's SYSCALL calls with strace
# while CMD runs (again, up to 50 times, until one is seen); ok/not_ok DESC.
syscall_seen() {
    local desc=$1 pid=$2 sc=$3 tr st i
    shift 3
    tr=$(mktemp "$T/.trace.XXXXXX")
    strace -f -qq -e trace="$sc" -o "$tr" -p "$pid" 2>/dev/null &
    st=$!
    for ((i = 0; i < 50; i++)); do
        "$@" >/dev/null 2>&1
        grep -q "$sc(" "$tr" 2>/dev/null && break
        sleep 0.1
    done
    kill "$st" 2>/dev/null
    wait "$st" 2>/dev/null
    if grep -q "$sc(" "$tr"; then ok "$desc"; else
        not_ok "$desc" "no $sc(2) seen in process $pid" "$(head -3 "$tr")"; fi
}

# ---- format tests (test-vmdk.sh, test-vhd.sh, test-vhdx.sh) ----

# make_patterns SEED: $T/pat1 and $T/pat2, seeded data for qemu-io -s writes.
make_patterns() { python3 "$VDISK_TOP/tests/qio_ops.py" patterns "$T" "$1"; }

# gen_ops SEED SIZE COUNT UNIT ZERO [ALIGNED]: qemu-io write commands, one a
# line, scattered over a SIZE-byte disk across UNIT-byte allocation units, a
# fraction ZERO of them zeros (tests/qio_ops.py).
gen_ops() {
    python3 "$VDISK_TOP/tests/qio_ops.py" ops "$1" "$2" "$3" "$4" "$5" "${6:-0}" "$T/pat1" "$T/pat2"
}

# qio FMT IMG CMD...: run qemu-io commands (one per argument) on IMG, opened
# as FMT (empty: qemu's probe); fails on any error qemu-io prints.
qio() {
    local fmt=$1 img=$2 args=() c
    shift 2
    [ -n "$fmt" ] && args=(-f "$fmt")
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io "${args[@]}" "$img" >"$T/.qio" 2>&1 || { cat "$T/.qio" >&2; return 1; }
    if grep -qiE 'error|fail' "$T/.qio"; then cat "$T/.qio" >&2; return 1; fi
}

# ---- qcow2 write tests (tests/test-qcow2-write-model.sh, -crash.sh, -locking.sh) ----

# require_nbd_python: sets NBD_PYTHON to a python3 that can `import nbd`
# (python3-libnbd; see require_nbdsh), for tests/qcow2_model.py.
require_nbd_python() {
    require_nbdsh
    NBD_PYTHON=$T/.pybin/python3
}

# qemu_in DIR CMD...: run a qemu tool from DIR (qemu 7.2 opens a relative
# external data file name relative to its working directory).
qemu_in() { local d=$1; shift; (cd "$d" && "$@"); }

# qcheck_rc DIR IMAGE: the exit status of `qemu-img check` of IMAGE run in
# DIR (0 clean, 2 corruption, 3 leaks only); its output is in $T/.qcheck.
qcheck_rc() {
    local rc=0
    qemu_in "$1" qemu-img check "$2" >"$T/.qcheck" 2>&1 || rc=$?
    echo "$rc"
}

# stop_pid PID: SIGTERM a helper process this script started, SIGKILL after
# 5 s, and reap it (a cleanup hook for background qemu-io and the like).
stop_pid() {
    local i
    kill "$1" 2>/dev/null
    for ((i = 0; i < 50; i++)); do alive "$1" || break; sleep 0.1; done
    alive "$1" && kill -9 "$1" 2>/dev/null
    wait "$1" 2>/dev/null
    return 0
}

# ---- a read-only format driver against qemu (test-vhd.sh, test-vdi.sh) ----

# img_qsize FMT IMG: the virtual size qemu gives IMG read as FMT (empty if
# qemu cannot open it).
img_qsize() {
    qemu-img info -f "$1" --output=json "$2" 2>/dev/null |
        sed -n 's/^ *"virtual-size": \([0-9]*\),*$/\1/p'
}

# img_size_matches FMT DESC IMG: bftest and qemu give IMG the same size.
img_size_matches() {
    local fmt=$1 desc=$2 img=$3 want got
    want=$(img_qsize "$fmt" "$img")
    got=$("$BFTEST" -f "$fmt" info "$img" 2>/dev/null | sed -n 's/^size: //p')
    if [ -n "$want" ] && [ "$want" = "$got" ]; then
        ok "$desc: virtual size $want, as qemu's"
    else
        not_ok "$desc: virtual size as qemu's" "qemu: ${want:-cannot open}, bftest: ${got:-cannot open}" \
            "$("$BFTEST" -f "$fmt" info "$img" 2>&1 | tail -n 3)"
    fi
}

# img_matches FMT DESC IMG: read as FMT, IMG has qemu's virtual size, bytes
# (whole, and from 4 threads in random pieces) and allocation map.
_img_seed=0
img_matches() {
    local fmt=$1 desc=$2 img=$3
    _img_seed=$((_img_seed + 1))
    if ! qemu-img convert -f "$fmt" -O raw "$img" "$T/.oracle.raw" 2>"$T/.err" ||
       ! qemu-img map -f "$fmt" --output=json "$img" >"$T/.oracle.json" 2>>"$T/.err"; then
        not_ok "$desc: qemu reads the image" "$(tail -n 5 "$T/.err")"
        return 0
    fi
    img_size_matches "$fmt" "$desc" "$img"
    bf_cat_matches "$desc: bytes" "$T/.oracle.raw" -f "$fmt" "$img"
    bf_cat_matches "$desc: bytes, 4 threads, random pieces (seed $_img_seed)" "$T/.oracle.raw" \
        -f "$fmt" --threads 4 --chunk 0 --seed "$_img_seed" "$img"
    if [ -s "$T/.oracle.raw" ]; then
        bf_map_matches "$desc: map" "$T/.oracle.json" -f "$fmt" "$img"
    else
        # qemu lists one entry of length 0 for an empty disk; we list none
        [ "$("$BFTEST" -f "$fmt" map "$img" 2>&1)" = "[]" ] && ok "$desc: map is empty" ||
            not_ok "$desc: map is empty" "$("$BFTEST" -f "$fmt" map "$img" 2>&1 | head -n 3)"
    fi
    rm -f "$T/.oracle.raw"
}

# img_windows_match FMT NAME IMG OFF:LEN...: the bytes of each window of a
# disk too large to convert whole are qemu's.
img_windows_match() {
    local fmt=$1 name=$2 img=$3 w; shift 3
    for w in "$@"; do
        if ! qemu-img convert -O raw --image-opts \
            "driver=raw,offset=${w%%:*},size=${w##*:},file.driver=$fmt,file.file.filename=$img" \
            "$T/.win.raw" 2>"$T/.err"; then
            not_ok "$name: qemu reads window $w" "$(cat "$T/.err")"
            continue
        fi
        "$BFTEST" -f "$fmt" read "$img" "${w%%:*}" "${w##*:}" >"$T/.win" 2>"$T/.err" &&
            ! _sanitizer_report "$T/.err" && cmp -s "$T/.win.raw" "$T/.win" &&
            ok "$name: bytes at $w as qemu's" ||
            not_ok "$name: bytes at $w as qemu's" "$(tail -n 3 "$T/.err")" \
                "$(cmp "$T/.win.raw" "$T/.win" 2>&1 | head -n 2)"
    done
    rm -f "$T/.win.raw" "$T/.win"
}

# img_bad FMT GOOD DESC REGEX SETUP: copy GOOD to $B, run SETUP (a string,
# evaluated, that damages $B); bftest -f FMT info and cat must both fail
# with a message matching REGEX.
img_bad() {
    local fmt=$1 good=$2 desc=$3 re=$4; shift 4
    B=$T/.bad.$fmt
    cp "$good" "$B"
    eval "$*"
    check_fails "$desc (open)" "$re" "$BFTEST" -f "$fmt" info "$B"
    check_fails "$desc (read)" "$re" "$BFTEST" -f "$fmt" cat "$B" "$T/.bad.out"
    rm -f "$B" "$T/.bad.out"
}

# img_fuzz FMT GOOD COUNT FUZZ-CMD...: COUNT times, copy GOOD and damage the
# copy with `FUZZ-CMD... COPY SEED` (seeds 1..COUNT); bftest info, map and
# cat must exit 0 or 1 without a sanitizer report (1 with a message), and
# where both it and qemu read the copy, they read the same bytes.
img_fuzz() {
    local fmt=$1 good=$2 count=$3 s rc cmd; shift 3
    local crashes=() differ=() nread=0 nrefused=0 nqemu=0 f=$T/.fz.$fmt
    for s in $(seq 1 "$count"); do
        cp "$good" "$f"
        "$@" "$f" "$s"
        for cmd in info map; do
            rc=0
            timeout 60 "$BFTEST" -f "$fmt" $cmd "$f" >/dev/null 2>"$T/.err" || rc=$?
            if [ $rc -gt 1 ] || _sanitizer_report "$T/.err"; then
                crashes+=("seed $s $cmd: exit $rc $(tail -n 3 "$T/.err")")
            fi
        done
        rc=0
        timeout 60 "$BFTEST" -f "$fmt" cat "$f" "$f.ours" 2>"$T/.err" || rc=$?
        if [ $rc -gt 1 ] || _sanitizer_report "$T/.err"; then
            crashes+=("seed $s cat: exit $rc $(tail -n 3 "$T/.err")")
        elif [ $rc -eq 1 ]; then
            [ -s "$T/.err" ] || crashes+=("seed $s cat: refused without a message")
            nrefused=$((nrefused + 1))
        else
            nread=$((nread + 1))
            if timeout 60 qemu-img convert -f "$fmt" -O raw "$f" "$f.qemu" 2>/dev/null; then
                nqemu=$((nqemu + 1))
                cmp -s "$f.qemu" "$f.ours" ||
                    differ+=("seed $s: $(cmp "$f.qemu" "$f.ours" 2>&1 | head -n 1)")
            fi
        fi
        rm -f "$f" "$f.ours" "$f.qemu"
    done
    diag "fuzzing: $nread of $count images read ($nqemu of them also by qemu), $nrefused refused"
    [ ${#crashes[@]} -eq 0 ] && ok "$count fuzzed images: each refused with a message or read, never a crash" ||
        not_ok "$count fuzzed images: each refused with a message or read, never a crash" "${crashes[@]}"
    [ ${#differ[@]} -eq 0 ] && ok "fuzzed images both qemu and bftest read have the same bytes" ||
        not_ok "fuzzed images both qemu and bftest read have the same bytes" "${differ[@]}"
}
