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
