#!/usr/bin/env bash
# test-qcow2-locking.sh — image locks compatible with qemu's (issue 7): OFD
# byte-range locks on bytes 100+perm / 200+perm, as qemu's file driver takes
# them (blockfmt/source.c, bf_source_lock).
#
#   vdisk-nbd serving read-write: qemu-io and qemu-img (write, snapshot -c)
#     refuse to write the image, qemu-img info refuses without -U and reads
#     with -U; a second vdisk-nbd writer, a vdisk-nbd reader and vdisk-mount
#     --rw are refused with a clear message; -r -U (--force-share) reads; the
#     backing file is read-locked (qemu-io cannot write it, qemu-img info
#     reads it); an external data file is locked like the image; the locks
#     go when the server exits (SIGTERM, and SIGKILL too).
#   qemu-io holding the image open for writing (in the background, stopped
#     by PID): vdisk-nbd refuses it read-write and read-only, with a clear
#     message; -r -U serves it; vdisk-mount refuses --rw and read-only, and
#     --force-share mounts it.
#   readers: two vdisk-nbd -r coexist, and qemu-img info / convert (no -U)
#     work next to them.
#   two writers starting at once (the first slowed down by strace): never
#     both serve (regression: the lock bytes were tested before being taken).
#   vdisk-mount --rw on a qcow2: writes reach the image; meanwhile
#     vdisk-nbd (read-write and read-only) and qemu-io are refused; released
#     after unmount.
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io cmp timeout fusermount3
require_vdisk_nbd
cd "${T:?}" || exit 1
TO="timeout 30"

# ---------------------------------------------------------------- helpers

# locked FILE BYTE: some process holds an OFD lock covering BYTE of FILE.
locked() {
    local ino
    ino=$(stat -c %i "$1") || return 1
    awk -v ino="$ino" -v b="$2" '$2 == "OFDLCK" && $6 ~ (":" ino "$") && $7 <= b && b <= $8 { f = 1 }
        END { exit !f }' /proc/locks
}

# wait_locked FILE BYTE: until locked (10 s at most).
wait_locked() {
    local i
    for ((i = 0; i < 100; i++)); do locked "$1" "$2" && return 0; sleep 0.1; done
    return 1
}

# refused DESC REGEX CMD...: CMD exits non-zero (and not by timeout or a
# signal), without a sanitizer report, and its stderr matches REGEX.
refused() {
    local desc=$1 re=$2 rc=0; shift 2
    $TO "$@" >"$T/.out" 2>"$T/.err" </dev/null || rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -lt 124 ] && grep -qE -- "$re" "$T/.err" &&
       ! _sanitizer_report "$T/.err"; then
        ok "$desc"
    else
        not_ok "$desc" "command: $*" "exit $rc, wanted a failure with stderr matching: $re" \
            "$(tail -n 5 "$T/.err")"
    fi
}

# vdisk-nbd refusals: exit 1 and a message (it must not start serving)
nbd_refused() {
    local desc=$1 re=$2; shift 2
    rm -f "$T/refused.sock"
    check_fails "$desc" "$re" $TO "$VDISK_NBD" -k "$T/refused.sock" "$@"
}

# nbd_reads DESC SOCK ORACLE: qemu-img reads the export and gets ORACLE.
nbd_reads() {
    if $TO qemu-img convert -f raw -O raw "$(nbd_uri "$2")" "$T/.nbd.raw" 2>"$T/.err"; then
        same_file "$1" "$3" "$T/.nbd.raw"
    else
        not_ok "$1" "$(tail -n 3 "$T/.err")"
    fi
    rm -f "$T/.nbd.raw"
}

# qemu_io_hold IMAGE [OPTS]: qemu-io holds IMAGE open (read-write unless
# OPTS say -r) in the background until stopped; sets QIO_PID.
qemu_io_hold() {
    local img=$1; shift
    qemu-io "$@" -c 'sleep 600000' "$img" >"$T/qemu-io.log" 2>&1 &
    QIO_PID=$!
    on_exit "stop_pid $QIO_PID"
    wait_locked "$img" 100
}

MNT=$T/mnt MNT2=$T/mnt2
mkdir -p "$MNT" "$MNT2"
unmount_quiet() {
    grep -qF " $1 " /proc/self/mountinfo || return 0
    "$VDISK_MOUNT" -u --retry 0 "$1" >/dev/null 2>&1 || fusermount3 -u -z "$1" 2>/dev/null
}
on_exit unmount_quiet "$MNT"
on_exit unmount_quiet "$MNT2"

# ----------------------------------------------------------------- images
qemu-img create -q -f raw base.raw 8M
qemu-io -f raw -c 'write -P 0x5a 0 8M' base.raw >/dev/null
qemu-img convert -O qcow2 base.raw base.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 img.qcow2
qemu-io -c 'write -P 0x22 1M 64k' img.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o data_file=df.raw df.qcow2 8M
W_LOCK='Failed to get "write" lock'
SH_LOCK='Failed to get shared "write" lock'
NO_WRITE='does not allow it to be written'
WRITING='another process is writing the image.*force-share'

# ------------------------------------- vdisk-nbd serves read-write
S=$T/rw.sock
if start_nbd "$S" -t -e 0 img.qcow2; then
    pid=$NBD_PID
    if locked img.qcow2 101 && locked img.qcow2 201; then
        ok "read-write server holds qemu's write-permission and write-unshare bytes (101, 201)"
    else
        not_ok "read-write server holds qemu's lock bytes 101 and 201" "$(grep OFDLCK /proc/locks)"
    fi
    refused "served read-write: qemu-io cannot write the image" "$W_LOCK" \
        qemu-io -c 'write -P 0x33 0 4k' img.qcow2
    refused "served read-write: qemu-img snapshot -c cannot write the image" "$W_LOCK" \
        qemu-img snapshot -c s1 img.qcow2
    refused "served read-write: qemu-img info without -U refuses (qemu's behaviour with a writer)" \
        "$SH_LOCK" qemu-img info img.qcow2
    check "served read-write: qemu-img info -U reads it" qemu-img info -U img.qcow2
    nbd_refused "served read-write: a second vdisk-nbd writer is refused with a clear message" \
        "img.qcow2: another process has the image open and $NO_WRITE" img.qcow2
    nbd_refused "served read-write: a vdisk-nbd reader (-r) is refused and told of --force-share" \
        "img.qcow2: $WRITING" -r img.qcow2
    if start_nbd "$T/ro-U.sock" -r -U img.qcow2; then
        qemu-img convert -U -O raw img.qcow2 "$T/img.now.raw"
        nbd_reads "served read-write: vdisk-nbd -r -U (--force-share) serves it" "$T/ro-U.sock" \
            "$T/img.now.raw"
        stop_nbd "vdisk-nbd -r -U stops on SIGTERM" "$NBD_PID" "$T/ro-U.sock.log" "$T/ro-U.sock"
    fi
    refused "served read-write: vdisk-mount --rw is refused with a clear message" "$NO_WRITE" \
        "$VDISK_MOUNT" --rw img.qcow2 "$MNT"
    refused "served read-write: vdisk-mount (read-only) is refused and told of --force-share" \
        "$WRITING" "$VDISK_MOUNT" img.qcow2 "$MNT"
    # the backing file: read-locked
    refused "served read-write: qemu-io cannot write its backing file" "$W_LOCK" \
        qemu-io -f qcow2 -c 'write -P 0x44 0 4k' base.qcow2
    check "served read-write: qemu-img info reads its backing file" qemu-img info base.qcow2
    check "served read-write: a reader of ours (bftest info) opens its backing file" \
        "$BFTEST" info base.qcow2
    # the server still serves, and writes go through
    if $TO qemu-io -f raw -c 'write -P 0x66 2M 64k' "$(nbd_uri "$S")" >/dev/null 2>"$T/.err"; then
        ok "served read-write: writes over NBD still work next to the refused openers"
    else
        not_ok "served read-write: writes over NBD work" "$(tail -n 3 "$T/.err")"
    fi
    stop_nbd "read-write server stops on SIGTERM" "$pid" "$S.log" "$S"
    if locked img.qcow2 100 || locked base.qcow2 100; then
        not_ok "the server's locks are gone after it exits" "$(grep OFDLCK /proc/locks)"
    else
        ok "the server's locks are gone after it exits"
    fi
    check "after the server exits: qemu-io writes the image" qemu-io -c 'write -P 0x33 0 4k' img.qcow2
    check "after the server exits: qemu-io writes the backing file" \
        qemu-io -f qcow2 -c 'write -P 0x5a 0 4k' base.qcow2
    cp base.raw "$T/exp.raw"
    qemu-io -f raw -c 'write -P 0x22 1M 64k' -c 'write -P 0x66 2M 64k' -c 'write -P 0x33 0 4k' \
        "$T/exp.raw" >/dev/null
    qemu-img convert -O raw img.qcow2 "$T/img.raw"
    same_file "the image holds the write made over NBD and the one made by qemu-io afterwards" \
        "$T/exp.raw" "$T/img.raw"
fi

# locks released when the server is killed too
if start_nbd "$T/kill.sock" -t img.qcow2; then
    kill -9 "$NBD_PID"
    wait "$NBD_PID" 2>/dev/null
    check "after SIGKILL of the server: qemu-io writes the image" \
        qemu-io -c 'write -P 0x34 4k 4k' img.qcow2
fi

# an external data file is locked like the image
if start_nbd "$T/df.sock" -t df.qcow2; then
    refused "served read-write: qemu-io cannot write the image's external data file" "$W_LOCK" \
        qemu-io -f raw -c 'write -P 0x1 0 4k' df.raw
    stop_nbd "data-file server stops on SIGTERM" "$NBD_PID" "$T/df.sock.log" "$T/df.sock"
    check "after the server exits: qemu-io writes the data file" \
        qemu-io -f raw -c 'write -P 0x1 0 4k' df.raw
fi

# ------------------------------------ qemu-io holds the image for writing
if qemu_io_hold img.qcow2 -f qcow2 && wait_locked img.qcow2 101; then
    ok "qemu-io holds img.qcow2 open for writing (pid $QIO_PID)"
    nbd_refused "qemu-io writing: vdisk-nbd read-write is refused with a clear message" \
        "img.qcow2: another process has the image open and $NO_WRITE" img.qcow2
    nbd_refused "qemu-io writing: vdisk-nbd read-only (-r) is refused and told of --force-share" \
        "img.qcow2: $WRITING" -r img.qcow2
    nbd_refused "qemu-io writing: vdisk-nbd -s (throwaway overlay) is refused too" \
        "img.qcow2: $WRITING" -s img.qcow2
    if start_nbd "$T/qU.sock" -r -U img.qcow2; then
        qemu-img convert -U -O raw img.qcow2 "$T/img.now.raw"
        nbd_reads "qemu-io writing: vdisk-nbd -r -U serves the image" "$T/qU.sock" "$T/img.now.raw"
        stop_nbd "vdisk-nbd -r -U stops on SIGTERM" "$NBD_PID" "$T/qU.sock.log" "$T/qU.sock"
    fi
    check_fails "qemu-io writing: bftest --rw is refused" "$NO_WRITE" \
        "$BFTEST" --rw info img.qcow2
    refused "qemu-io writing: vdisk-mount --rw is refused with a clear message" "$NO_WRITE" \
        "$VDISK_MOUNT" --rw img.qcow2 "$MNT"
    refused "qemu-io writing: vdisk-mount (read-only) is refused and told of --force-share" \
        "$WRITING" "$VDISK_MOUNT" img.qcow2 "$MNT"
    if $TO "$VDISK_MOUNT" --force-share img.qcow2 "$MNT" 2>"$T/.err"; then
        same_file "qemu-io writing: vdisk-mount --force-share shows the disk" "$T/img.now.raw" "$MNT/disk"
        check "vdisk-mount --force-share: unmount" "$VDISK_MOUNT" -u "$MNT"
    else
        not_ok "qemu-io writing: vdisk-mount --force-share mounts" "$(tail -n 3 "$T/.err")"
    fi
    stop_pid "$QIO_PID"
    if start_nbd "$T/after-qio.sock" -t img.qcow2; then
        ok "after qemu-io exits: vdisk-nbd opens the image read-write"
        stop_nbd "... and stops on SIGTERM" "$NBD_PID" "$T/after-qio.sock.log" "$T/after-qio.sock"
    fi
else
    not_ok "qemu-io holds img.qcow2 open for writing" "$(cat "$T/qemu-io.log")"
fi

# a read-only qemu-io does not stop a vdisk-nbd reader, but does stop a writer
if qemu_io_hold img.qcow2 -r -f qcow2; then
    if start_nbd "$T/r-qior.sock" -r img.qcow2; then
        ok "qemu-io -r holding the image: a vdisk-nbd reader opens it"
        stop_nbd "... and stops on SIGTERM" "$NBD_PID" "$T/r-qior.sock.log" "$T/r-qior.sock"
    fi
    nbd_refused "qemu-io -r holding the image: a vdisk-nbd writer is refused (qemu's readers unshare write)" \
        "$NO_WRITE" img.qcow2
    stop_pid "$QIO_PID"
else
    not_ok "qemu-io -r holds img.qcow2 open" "$(cat "$T/qemu-io.log")"
fi

# --------------------------------------------------------------- readers
qemu-img convert -O raw img.qcow2 "$T/img.now.raw"
if start_nbd "$T/r1.sock" -r -t img.qcow2; then
    p1=$NBD_PID
    if start_nbd "$T/r2.sock" -r -t img.qcow2; then
        p2=$NBD_PID
        ok "two vdisk-nbd readers (-r) open one image"
        nbd_reads "reader 1 serves the image" "$T/r1.sock" "$T/img.now.raw"
        nbd_reads "reader 2 serves the image" "$T/r2.sock" "$T/img.now.raw"
        check "next to vdisk-nbd readers: qemu-img info (no -U) reads the image" qemu-img info img.qcow2
        check "next to vdisk-nbd readers: qemu-img convert (no -U) reads the image" \
            qemu-img convert -O raw img.qcow2 "$T/conv.raw"
        same_file "... and reads the same bytes" "$T/img.now.raw" "$T/conv.raw"
        if qemu_io_hold img.qcow2 -r -f qcow2; then
            ok "next to vdisk-nbd readers: qemu-io -r opens the image"
            stop_pid "$QIO_PID"
        else
            not_ok "next to vdisk-nbd readers: qemu-io -r opens the image" "$(cat "$T/qemu-io.log")"
        fi
        nbd_refused "next to vdisk-nbd readers: a vdisk-nbd writer is refused" "$NO_WRITE" img.qcow2
        stop_nbd "reader 2 stops on SIGTERM" "$p2" "$T/r2.sock.log" "$T/r2.sock"
    fi
    stop_nbd "reader 1 stops on SIGTERM" "$p1" "$T/r1.sock.log" "$T/r1.sock"
fi

# ------------------------------------------- two writers starting at once
# Regression: bf_source_lock tested the lock bytes before taking them, so a
# second writer could test and lock between the first one's test and lock:
# both served the image.  qemu locks first, then tests (file-posix.c,
# raw_handle_perm_lock), so racing openers are at worst both refused.  strace
# stretches the first writer's fcntl calls to 150 ms each; the second starts
# at 15 offsets across them (each trial on its own image, all at once).
race_trial() {   # K DELAY-MS
    local k=$1 ms=$2 d=$T/race$1 i
    mkdir -p "$d"
    qemu-img create -q -f qcow2 "$d/i.qcow2" 1M
    # (LeakSanitizer cannot run under ptrace: no leak check for the traced one)
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
        strace -f -o /dev/null -e trace=fcntl -e inject=fcntl:delay_exit=150000 \
        "$VDISK_NBD" -k "$d/a.sock" -t --pid-file "$d/a.pid" "$d/i.qcow2" 2>"$d/a.log" &
    echo $! >"$d/strace.pid"
    sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
    "$VDISK_NBD" -k "$d/b.sock" -t --pid-file "$d/b.pid" "$d/i.qcow2" 2>"$d/b.log" &
    local bpid=$!
    # until each has either listened or exited (A's fcntl calls take ~1.5 s)
    for ((i = 0; i < 100; i++)); do
        { nbd_listening "$d/a.sock" || ! alive "$(cat "$d/strace.pid")"; } &&
            { nbd_listening "$d/b.sock" || ! alive "$bpid"; } && break
        sleep 0.1
    done
    sleep 0.3
    local a=0 b=0
    nbd_listening "$d/a.sock" && a=1
    nbd_listening "$d/b.sock" && b=1
    echo "$a $b" >"$d/result"
    [ -f "$d/a.pid" ] && stop_pid "$(cat "$d/a.pid")"
    stop_pid "$bpid"
    stop_pid "$(cat "$d/strace.pid")"
}
race_cleanup() {
    local f p
    for f in "$T"/race*/*.pid; do
        [ -f "$f" ] || continue
        p=$(cat "$f")
        alive "$p" && tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF "$T/race" &&
            kill -9 "$p" 2>/dev/null
    done
    return 0
}
if command -v strace >/dev/null 2>&1 &&
   strace -o /dev/null -e trace=fcntl -e inject=fcntl:delay_exit=1000 true 2>/dev/null; then
    on_exit race_cleanup
    for ((k = 0; k < 15; k++)); do
        offs[k]=$((k * 100))
        race_trial "$k" "${offs[k]}" &
    done
    wait
    both=0 one=0 none=0 detail=""
    for ((k = 0; k < 15; k++)); do
        read -r a b <"$T/race$k/result" 2>/dev/null || { a=x b=x; }
        detail+="${offs[k]}ms:$a$b "
        if [ "$a$b" = 11 ]; then both=$((both + 1))
        elif [ "$a$b" = 10 ] || [ "$a$b" = 01 ]; then one=$((one + 1))
        else none=$((none + 1)); fi
    done
    diag "two writers racing (second started at offset: first,second served): $detail"
    if [ "$both" -eq 0 ] && [ "$one" -gt 0 ]; then
        ok "regression: two vdisk-nbd writers starting at once never both serve ($one trials: one served, $none: both refused)"
    else
        not_ok "regression: two vdisk-nbd writers starting at once never both serve" \
            "$both of 15 trials had both serving the image" "$(tail -n 2 "$T"/race*/b.log | head -n 6)"
    fi
else
    skip "regression: two vdisk-nbd writers starting at once never both serve" \
        "strace (with syscall fault injection) is not installed"
fi

# ------------------------------------------------- vdisk-mount --rw (qcow2)
if $TO "$VDISK_MOUNT" --rw img.qcow2 "$MNT" 2>"$T/.err"; then
    ok "vdisk-mount --rw mounts a qcow2"
    if printf 'vdisk-mount-rw' | dd of="$MNT/disk" bs=1 seek=$((3 << 20)) conv=notrunc status=none 2>"$T/.err"; then
        ok "vdisk-mount --rw: a write to disk succeeds"
    else
        not_ok "vdisk-mount --rw: a write to disk succeeds" "$(cat "$T/.err")"
    fi
    nbd_refused "vdisk-mount --rw holding the image: vdisk-nbd read-write is refused" \
        "img.qcow2: another process has the image open and $NO_WRITE" img.qcow2
    nbd_refused "vdisk-mount --rw holding the image: vdisk-nbd -r is refused" "img.qcow2: $WRITING" \
        -r img.qcow2
    refused "vdisk-mount --rw holding the image: qemu-io cannot write it" "$W_LOCK" \
        qemu-io -c 'write -P 0x33 0 4k' img.qcow2
    refused "vdisk-mount --rw holding the image: qemu-img info without -U refuses" "$SH_LOCK" \
        qemu-img info img.qcow2
    refused "vdisk-mount --rw holding the image: qemu-io cannot write its backing file" "$W_LOCK" \
        qemu-io -f qcow2 -c 'write -P 0x44 0 4k' base.qcow2
    refused "vdisk-mount --rw holding the image: a second vdisk-mount --rw is refused" "$NO_WRITE" \
        "$VDISK_MOUNT" --rw img.qcow2 "$MNT2"
    check "vdisk-mount --rw: unmount" "$VDISK_MOUNT" -u "$MNT"
    check "after unmount: qemu-img check is clean" qemu-img check -q img.qcow2
    qemu-img convert -O raw img.qcow2 "$T/img.raw"
    got=$(dd if="$T/img.raw" bs=1 skip=$((3 << 20)) count=14 status=none)
    if [ "$got" = vdisk-mount-rw ]; then
        ok "after unmount: the write made through vdisk-mount is in the image"
    else
        not_ok "after unmount: the write made through vdisk-mount is in the image" "read back: '$got'"
    fi
    check "after unmount: qemu-io writes the image" qemu-io -c 'write -P 0x35 8k 4k' img.qcow2
else
    not_ok "vdisk-mount --rw mounts a qcow2" "$(tail -n 3 "$T/.err")"
fi

done_testing
