#!/usr/bin/env bash
# test-nbd-protocol.sh — the NBD protocol corners of vdisk-nbd
# (NetworkBlockDevice doc/proto.md).
#
#   nbdsh (libnbd, strict checks off where libnbd would refuse client-side):
#     every INFO request (name, description, block sizes) for the disk and
#     its partitions, NBD_OPT_LIST, LIST_META_CONTEXT; REQ_ONE block status;
#     out-of-range reads (EINVAL), writes and zeroes (ENOSPC), trims
#     (EINVAL); writes, zeroes and trims on a read-only export (EPERM); a
#     read and a write over the 32 MiB maximum (EINVAL); 64 (and 200)
#     requests in flight with aio; structured reads of a sparse image as
#     hole chunks, and DF; simple replies; FAST_ZERO; block status on an
#     8 GiB export (32-bit extents capped, REQ_ONE at the end).
#   tests/nbd_client.py (raw sockets, for what no installed client sends):
#     unknown options, STARTTLS, LIST with data, INFO/GO of an unknown
#     export, an oversized option, ABORT, EXPORT_NAME, bad client flags,
#     metadata contexts (queries, per export, before structured replies),
#     EXTENDED_HEADERS (32-byte requests, PAYLOAD_LEN, BLOCK_STATUS_EXT,
#     64-bit extents on 8 GiB), zero-length requests, a 33 MiB compact
#     write, 100 pipelined requests then DISC, clients that vanish
#     mid-request or send garbage, an idle client dropped by the handshake
#     timeout (10 s; run in the background while the rest runs), and a
#     client that never reads its replies while the server gets SIGTERM.
#
# After each group the server must still be alive, and at the end SIGTERM
# must stop it with exit status 0 and no sanitizer report.
. "$(dirname "$0")/lib.sh"
require qemu-img qemu-io sfdisk python3 timeout strace
require_nbdsh
require_vdisk_nbd

TO="timeout 120"
CLIENT="python3 $VDISK_TOP/tests/nbd_client.py"
cd "${T:?}" || exit 1

# nbdsh_check DESC SCRIPT.py: run SCRIPT under nbdsh (with $SOCK, $IMG etc.
# in the environment); it passes when it exits 0.
nbdsh_check() { check "$1" sh -c "$TO $NBDSH -n -c - <'$2'"; }

# scenario DESC SOCK NAME [IMAGE]: one tests/nbd_client.py scenario.
scenario() { check "$1" $TO $CLIENT "$2" "$3" ${4:+"$4"}; }

# still_serving DESC PID: the server is alive after what came before.
still_serving() { if alive "$2"; then ok "$1"; else not_ok "$1" "server $2 is gone"; fi; }

# ------------------------------------------------------------ images

# rw.raw: 16 MiB, random data with holes (served read-write).
python3 -c '
import random, sys
r = random.Random(7)
sys.stdout.buffer.write(r.randbytes(4 << 20))' >rw.raw
truncate -s 16M rw.raw
dd if=rw.raw of=rw.raw bs=1M count=2 seek=10 conv=notrunc status=none
# sp.qcow2: 8 MiB, 64 KiB clusters, sparse: data, holes, a zero cluster.
qemu-img create -q -f qcow2 -o cluster_size=65536 sp.qcow2 8M
qemu-io -f qcow2 -c 'write -P 0x61 0 64k' -c 'write -P 0x62 1M 128k' -c 'write -z 2M 64k' \
    -c 'write -P 0x63 4M 4k' -c 'write -P 0x64 8128k 64k' sp.qcow2 >/dev/null
qemu-img convert -O raw sp.qcow2 sp.raw
# mbr.raw: two partitions.
truncate -s 8M mbr.raw
printf 'label: dos\nstart=2048, size=4096, type=83\nstart=6144, size=8192, type=7\n' |
    sfdisk -q mbr.raw >/dev/null 2>&1
qemu-io -f raw -c 'write -P 0x51 1M 64k' -c 'write -P 0x52 3M 64k' mbr.raw >/dev/null

# huge.qcow2: 8 GiB, one 64 KiB cluster of data at 6 GiB.
qemu-img create -q -f qcow2 -o cluster_size=65536 huge.qcow2 8G
qemu-io -f qcow2 -c 'write -P 0x68 6G 64k' huge.qcow2 >/dev/null

# ------------------------------------------------------------ servers

SA=$T/rw.sock SB=$T/sp.sock SC=$T/mbr.sock
start_nbd "$SA" -t -e 0 rw.raw || done_testing
PA=$NBD_PID
start_nbd "$SB" -r -t -e 0 sp.qcow2 || done_testing
PB=$NBD_PID
start_nbd "$SC" -r -t -e 0 --partitions -D "the whole disk" mbr.raw || done_testing
PC=$NBD_PID
SD=$T/huge.sock
start_nbd "$SD" -r -t -e 0 huge.qcow2 || done_testing
PD=$NBD_PID

# The idle clients take 10+ s: they run in the background meanwhile.
$TO $CLIENT "$SA" idle >idle.out 2>&1 &
idle1=$!
$TO $CLIENT "$SA" idle_options >idle2.out 2>&1 &
idle2=$!
on_exit "kill $idle1 $idle2 2>/dev/null"

# ------------------------------------------------------ nbdsh: INFO etc.

cat >info.py <<'EOF'
import nbd, os
h = nbd.NBD()
h.set_opt_mode(True)
h.set_full_info(True)
h.connect_unix(os.environ["SOCK"])
exports = []
h.opt_list(lambda name, desc: exports.append((name, desc)))
assert sorted(n for n, _ in exports) == ["", "p1", "p2"], exports
assert dict(exports)[""] == "the whole disk", exports
ctx = []
h.opt_list_meta_context(lambda name: ctx.append(name))
assert set(ctx) == {"base:allocation", "qemu:allocation-depth"}, ctx
sizes = {"": 8 << 20, "p1": 4096 * 512, "p2": 8192 * 512}
for name in ["", "p1", "p2"]:
    h.set_export_name(name)
    h.opt_info()
    assert h.get_canonical_export_name() == name, (name, h.get_canonical_export_name())
    desc = h.get_export_description()
    if name:
        assert desc.startswith("partition " + name[1:]), desc
    else:
        assert desc == "the whole disk", desc
    assert h.get_size() == sizes[name], (name, h.get_size())
    assert (h.get_block_size(nbd.SIZE_MINIMUM), h.get_block_size(nbd.SIZE_PREFERRED),
            h.get_block_size(nbd.SIZE_MAXIMUM)) == (1, 4096, 32 << 20)
    assert h.is_read_only() and h.can_flush() and h.can_fua() and h.can_cache()
    assert not h.can_trim() and not h.can_zero()
for bad in ["nope", "p3", "P1", "p1 "]:
    h.set_export_name(bad)
    try:
        h.opt_info()
        raise AssertionError("INFO of unknown export %r succeeded" % bad)
    except nbd.Error:
        pass
h.set_export_name("p2")
h.opt_go()
assert h.get_size() == 8192 * 512
assert h.pread(65536, (3 << 20) - (6144 * 512)) == b"\x52" * 65536
print("ok")
EOF
SOCK=$SC nbdsh_check "nbdsh: LIST, LIST_META_CONTEXT, INFO with name/description/block sizes per export" info.py

cat >info2.py <<'EOF'
import nbd, os
# Without full info, the server still sends the size, flags and block sizes.
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_unix(os.environ["SOCK"])
h.set_export_name("p1")
h.opt_info()
assert h.get_size() == 4096 * 512
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 << 20
h.opt_go()
assert h.pread(65536, (1 << 20) - (2048 * 512)) == b"\x51" * 65536
print("ok")
EOF
SOCK=$SC nbdsh_check "nbdsh: INFO without full info, then GO p1" info2.py

# --------------------------------------------- nbdsh: block status, REQ_ONE

cat >status.py <<'EOF'
import nbd, os
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.add_meta_context("qemu:allocation-depth")
h.connect_unix(os.environ["SOCK"])
size = h.get_size()
assert h.can_meta_context("base:allocation") and h.can_meta_context("qemu:allocation-depth")
K = 65536
def collect(off, length, flags=0):
    got = {}
    def cb(meta, offset, entries, err):
        assert offset == off, (offset, off)
        got.setdefault(meta, []).append(list(entries))
        return 0
    h.block_status(length, off, cb, flags)
    return got
# REQ_ONE: exactly one extent per context, not longer than asked.
for off, length in [(0, size), (64 * 1024, size - 65536), (2 << 20, 65536), (4 << 20, 100)]:
    got = collect(off, length, nbd.CMD_FLAG_REQ_ONE)
    assert set(got) == {"base:allocation", "qemu:allocation-depth"}, got
    for meta, calls in got.items():
        assert len(calls) == 1 and len(calls[0]) == 2, (meta, off, calls)
        assert 0 < calls[0][0] <= length, (meta, off, calls)
got = collect(0, size, nbd.CMD_FLAG_REQ_ONE)
assert got["base:allocation"][0] == [K, 0], got          # data
assert got["qemu:allocation-depth"][0] == [K, 1], got
got = collect(K, size - K, nbd.CMD_FLAG_REQ_ONE)
assert got["base:allocation"][0] == [(1 << 20) - K, 3], got   # hole, zero
assert got["qemu:allocation-depth"][0] == [(1 << 20) - K, 0], got
got = collect(2 << 20, K, nbd.CMD_FLAG_REQ_ONE)
assert got["base:allocation"][0] == [K, 3], got          # zero cluster
assert got["qemu:allocation-depth"][0] == [K, 1], got    # ... allocated here
# Without REQ_ONE: the whole map, extents covering the request.
got = collect(0, size)
ext = got["base:allocation"][0]
pairs = list(zip(ext[0::2], ext[1::2]))
assert sum(n for n, _ in pairs) == size, pairs
want = [(K, 0), ((1 << 20) - K, 3), (2 * K, 0), ((4 << 20) - (1 << 20) - 2 * K, 3),
        (K, 0), ((8 << 20) - (4 << 20) - 2 * K, 3), (K, 0)]
assert pairs == want, pairs
# An unaligned request: extents start at the offset asked for.
got = collect(1000, 5000)
assert got["base:allocation"][0] == [5000, 0], got
print("ok")
EOF
SOCK=$SB nbdsh_check "nbdsh: block status with REQ_ONE (one extent per context) and without" status.py

# ------------------------------------------ nbdsh: errors, read-only export

cat >errors_ro.py <<'EOF'
import errno, nbd, os
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.set_strict_mode(0)          # let the requests reach the server
h.connect_unix(os.environ["SOCK"])
size = h.get_size()
assert h.is_read_only()
def fails(want, what, f, *args):
    try:
        f(*args)
    except nbd.Error as e:
        assert e.errnum == want, "%s: %s, wanted %s" % (what, e, errno.errorcode[want])
        return
    raise AssertionError("%s succeeded" % what)
cb = lambda *a: 0
fails(errno.EINVAL, "read past the end", h.pread, 512, size - 256)
fails(errno.EINVAL, "read starting at the end", h.pread, 1, size)
fails(errno.EINVAL, "read at 2^64-512", h.pread, 1024, (1 << 64) - 512)
fails(errno.EINVAL, "read over 32 MiB", h.pread, (32 << 20) + 1, 0)
fails(errno.EINVAL, "cache past the end", h.cache, 4096, size)
fails(errno.EINVAL, "block status past the end", h.block_status, 4096, size, cb)
fails(errno.EINVAL, "block status at 2^64-512", h.block_status, 4096, (1 << 64) - 512, cb)
fails(errno.EPERM, "write to a read-only export", h.pwrite, b"x" * 512, 0)
fails(errno.EPERM, "write zeroes to a read-only export", h.zero, 512, 0)
fails(errno.EPERM, "trim on a read-only export", h.trim, 512, 0)
fails(errno.EPERM, "FUA write to a read-only export", h.pwrite, b"x", 0, nbd.CMD_FLAG_FUA)
# What is allowed still works, the connection survived every error.
h.flush()
h.cache(size, 0)
assert h.pread(4096, 0) == b"\x61" * 4096
assert h.pread(0, 0) == b""
assert h.pread(512, size - 512) == b"\x64" * 512
print("ok")
EOF
SOCK=$SB nbdsh_check "nbdsh: out of range EINVAL, read-only EPERM, read over 32 MiB EINVAL" errors_ro.py

cat >errors_rw.py <<'EOF'
import errno, nbd, os
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_unix(os.environ["SOCK"])
size = h.get_size()
assert not h.is_read_only() and h.can_trim() and h.can_zero() and h.can_fast_zero()
def fails(want, what, f, *args):
    try:
        f(*args)
    except nbd.Error as e:
        assert e.errnum == want, "%s: %s, wanted %s" % (what, e, errno.errorcode[want])
        return
    raise AssertionError("%s succeeded" % what)
before = h.pread(4096, size - 4096)
fails(errno.ENOSPC, "write past the end", h.pwrite, b"y" * 4096, size - 2048)
fails(errno.ENOSPC, "write at the end", h.pwrite, b"y", size)
fails(errno.ENOSPC, "write zeroes past the end", h.zero, 4096, size - 2048)
fails(errno.EINVAL, "trim past the end", h.trim, 4096, size - 2048)
fails(errno.EINVAL, "write over 32 MiB", h.pwrite, b"z" * ((32 << 20) + 4096), 0)
assert h.pread(4096, size - 4096) == before, "a refused write changed the disk"
assert h.pread(4096, 0) != b"z" * 4096, "a refused write changed the disk"
# FAST_ZERO: done (and reads as zero) or refused with ENOTSUP.
try:
    h.zero(65536, 1 << 20, nbd.CMD_FLAG_FAST_ZERO)
    assert h.pread(65536, 1 << 20) == bytes(65536)
except nbd.Error as e:
    assert e.errnum == errno.ENOTSUP, e
h.zero(65536, 2 << 20, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
assert h.pread(65536, 2 << 20) == bytes(65536)
h.trim(65536, 3 << 20, nbd.CMD_FLAG_FUA)
h.pwrite(b"w" * 1000, size - 1000, nbd.CMD_FLAG_FUA)
assert h.pread(1000, size - 1000) == b"w" * 1000
h.flush()
print("ok")
EOF
SOCK=$SA nbdsh_check "nbdsh: writes out of range ENOSPC, trim EINVAL, write over 32 MiB EINVAL, FAST_ZERO" \
    errors_rw.py
if [ "$(tail -c 1000 rw.raw)" = "$(printf 'w%.0s' $(seq 1000))" ]; then
    ok "the FUA write at the last byte reached the file"
else
    not_ok "the FUA write at the last byte reached the file"
fi

# ---------------------------------------------- nbdsh: requests in flight

cat >aio.py <<'EOF'
import nbd, os, random
h = nbd.NBD()
h.connect_unix(os.environ["SOCK"])
data = open(os.environ["ORACLE"], "rb").read()
size = h.get_size()
assert size == len(data)
rnd = random.Random(int(os.environ.get("SEED", "1")))
for n in (64, 200):
    reqs = []
    for i in range(n):
        length = rnd.choice([1, 512, 4096, 65536, 1 << 20, rnd.randrange(1, 300000)])
        off = rnd.randrange(0, size - length + 1)
        buf = nbd.Buffer(length)
        reqs.append((h.aio_pread(buf, off), buf, off, length))
    assert h.aio_in_flight() == n, (n, h.aio_in_flight())
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for cookie, buf, off, length in reqs:
        assert h.aio_command_completed(cookie)
        assert buf.to_bytearray() == data[off:off + length], (off, length)
print("ok")
EOF
SOCK=$SB ORACLE=sp.raw nbdsh_check "nbdsh: 64 then 200 reads in flight (aio), data verified" aio.py

cat >aio_write.py <<'EOF'
import nbd, os
h = nbd.NBD()
h.connect_unix(os.environ["SOCK"])
# 64 writes in flight to distinct 64 KiB blocks, then 64 reads of them.
cookies = []
for i in range(64):
    block = bytes([i]) * 65536
    cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(block)), (4 << 20) + i * 65536))
assert h.aio_in_flight() == 64
while h.aio_in_flight() > 0:
    h.poll(-1)
assert all(h.aio_command_completed(c) for c in cookies)
h.flush()
bufs = [(nbd.Buffer(65536), i) for i in range(64)]
cookies = [h.aio_pread(b, (4 << 20) + i * 65536) for b, i in bufs]
while h.aio_in_flight() > 0:
    h.poll(-1)
for (b, i), c in zip(bufs, cookies):
    assert h.aio_command_completed(c)
    assert b.to_bytearray() == bytes([i]) * 65536, i
print("ok")
EOF
SOCK=$SA nbdsh_check "nbdsh: 64 writes in flight, then read back" aio_write.py
if python3 -c '
import sys
d = open("rw.raw", "rb").read()
sys.exit(0 if all(d[(4 << 20) + i * 65536:(4 << 20) + (i + 1) * 65536] == bytes([i]) * 65536
                  for i in range(64)) else 1)'; then
    ok "the 64 aio writes are in the file"
else
    not_ok "the 64 aio writes are in the file"
fi

# ------------------------------------------- nbdsh: structured reads, holes

cat >structured.py <<'EOF'
import nbd, os
h = nbd.NBD()
h.connect_unix(os.environ["SOCK"])
assert h.get_structured_replies_negotiated() and h.can_df()
data = open(os.environ["ORACLE"], "rb").read()
size = h.get_size()
def read(off, length, flags=0):
    chunks = []
    def cb(subbuf, offset, status, err):
        chunks.append((offset, len(subbuf), status))
        return 0
    buf = h.pread_structured(length, off, cb, flags)
    assert buf == data[off:off + length], (off, length)
    # libnbd does not check coverage: the chunks must tile the request.
    pos = off
    for o, n, st in sorted(chunks):
        assert o == pos and n > 0 and st in (nbd.READ_DATA, nbd.READ_HOLE), chunks
        pos += n
    assert pos == off + length, chunks
    return chunks
c = read(0, size)
holes = [x for x in c if x[2] == nbd.READ_HOLE]
assert len(holes) == 3, c            # 64k..1M, 1.125M..4M (with the zero cluster), 4M+64k..8M-64k
assert sorted(c)[1] == (65536, (1 << 20) - 65536, nbd.READ_HOLE), c
c = read(65536, 4096)
assert c == [(65536, 4096, nbd.READ_HOLE)], c
c = read(0, size, nbd.CMD_FLAG_DF)
assert c == [(0, size, nbd.READ_DATA)], c
read(1000, 3 << 20)
read(size - 1, 1)
print("ok")
EOF
SOCK=$SB ORACLE=sp.raw nbdsh_check "nbdsh: structured reads of a sparse image come as hole chunks; DF gives one" \
    structured.py

cat >simple.py <<'EOF'
import nbd, os
h = nbd.NBD()
h.set_request_structured_replies(False)
h.connect_unix(os.environ["SOCK"])
assert not h.get_structured_replies_negotiated()
data = open(os.environ["ORACLE"], "rb").read()
assert h.pread(len(data), 0) == data
h.set_strict_mode(0)
try:
    h.pread(512, len(data))
    raise AssertionError("read past the end succeeded")
except nbd.Error as e:
    assert e.errnum == 22, e
assert h.pread(512, 0) == data[:512]
print("ok")
EOF
SOCK=$SB ORACLE=sp.raw nbdsh_check "nbdsh: simple replies (no structured replies): data and errors" simple.py
cat >huge.py <<'EOF'
import nbd, os
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.add_meta_context("qemu:allocation-depth")
h.connect_unix(os.environ["SOCK"])
G = 1 << 30
assert h.get_size() == 8 * G
got = {}
def cb(meta, offset, entries, err):
    got[meta] = list(zip(entries[0::2], entries[1::2]))
    return 0
# The largest compact request: 32-bit extent lengths, none past the request.
h.block_status((1 << 32) - 1, 0, cb)
for meta, ext in got.items():
    assert all(0 < n <= (1 << 32) - 1 for n, _ in ext), (meta, ext)
    assert sum(n for n, _ in ext) == (1 << 32) - 1, (meta, ext)
    assert all(f == (3 if meta == "base:allocation" else 0) for _, f in ext), (meta, ext)
h.block_status(8 * G - 6 * G, 6 * G, cb)
assert got["base:allocation"][0] == (65536, 0), got
assert got["qemu:allocation-depth"][0] == (65536, 1), got
h.block_status(4096, 8 * G - 4096, cb, nbd.CMD_FLAG_REQ_ONE)
assert got["base:allocation"] == [(4096, 3)], got
assert h.pread(65536, 6 * G) == b"\x68" * 65536
print("ok")
EOF
SOCK=$SD nbdsh_check "nbdsh: block status on an 8 GiB export (32-bit extents, data at 6 GiB)" huge.py
if timeout 60 nbdinfo --json --map "$(nbd_uri "$SD")" >huge.map 2>&1 && python3 -c '
import json, sys
m = json.load(open("huge.map"))
assert sum(e["length"] for e in m) == 8 << 30, m
assert [(e["offset"], e["length"]) for e in m if e["type"] == 0] == [(6 << 30, 65536)], m'; then
    ok "nbdinfo --map of an 8 GiB export covers it, data at 6 GiB"
else
    not_ok "nbdinfo --map of an 8 GiB export covers it, data at 6 GiB" "$(head -c 600 huge.map)"
fi
still_serving "the servers are alive after the nbdsh tests" "$PA"

# ------------------------------------------------- raw-socket corners

scenario "unknown option codes get NBD_REP_ERR_UNSUP; GO after them works" "$SA" unknown_option rw.raw
scenario "NBD_OPT_STARTTLS gets an error reply; the session goes on" "$SA" starttls rw.raw
scenario "NBD_OPT_LIST with data gets ERR_INVALID; without, lists exports" "$SC" list
scenario "INFO/GO of an unknown export get ERR_UNKNOWN; INFO of '' answers every request" \
    "$SA" info_unknown rw.raw
scenario "an option over the size limit gets ERR_TOO_BIG; negotiation goes on" "$SA" option_too_big rw.raw
scenario "NBD_OPT_ABORT gets an ACK, then the server closes" "$SA" abort
scenario "NBD_OPT_EXPORT_NAME (with and without NO_ZEROES); unknown name closes" "$SA" export_name rw.raw
scenario "unknown client flags: the server closes" "$SA" bad_client_flags
scenario "EXTENDED_HEADERS: read, write with PAYLOAD_LEN, BLOCK_STATUS_EXT, write without it EINVAL" \
    "$SA" extended rw.raw
scenario "EXTENDED_HEADERS: EXPORT_NAME afterwards is refused by hanging up" "$SA" extended_no_export_name
scenario "a compact write with a 33 MiB payload: consumed, EINVAL, connection usable" "$SA" big_write rw.raw
scenario "100 pipelined requests, bad ones EINVAL, then DISC: every reply, right data" \
    "$SA" pipeline rw.raw
scenario "extended headers, a 1 TiB payload announced: the server hangs up and carries on" \
    "$SA" extended_big_payload rw.raw
scenario "clients that vanish mid-option, mid-request, mid-payload: the next one is served" \
    "$SA" vanish rw.raw
scenario "garbage magic (request, option): dropped; the next client is served" "$SA" garbage rw.raw
scenario "metadata contexts: LIST per query, SET needs structured replies, per-export" "$SC" meta
scenario "zero-length requests of every kind (simple, structured, extended) get a reply" \
    "$SA" zero_length rw.raw
scenario "EXTENDED_HEADERS on an 8 GiB export: 64-bit extents cover it" "$SD" extended_huge
scenario "large reads of a read-only qcow2, every reply style, pipelined: right bytes; all-data ranges in one message" \
    "$SB" large_reads sp.raw
scenario "large reads of the partitions of a read-only sparse raw disk: right bytes" \
    "$SC" large_reads_partition mbr.raw
# ...and those of all-data ranges went out with sendfile(2) (commands.c)
syscall_seen "large reads of a read-only image are sent with sendfile(2)" "$PB" sendfile \
    $TO $CLIENT "$SB" large_reads sp.raw
still_serving "the server survived the raw-socket clients" "$PA"

# --------------------------------------------------------- idle clients

wait_bg() {
    local desc=$1 pid=$2 out=$3 rc=0
    wait "$pid" || rc=$?
    if [ "$rc" -eq 0 ]; then ok "$desc ($(cat "$out"))"; else not_ok "$desc" "$(cat "$out")"; fi
}
wait_bg "a client that sends nothing is dropped after the handshake timeout" "$idle1" idle.out
wait_bg "a client stalled in negotiation is dropped after the handshake timeout" "$idle2" idle2.out

# A client that sends 64 reads of 32 MiB and never reads the replies: the
# server's workers block in send(); SIGTERM must still stop the server.
SE=$T/stall.sock
if start_nbd "$SE" -r huge.qcow2; then
    PE=$NBD_PID
    $TO $CLIENT "$SE" stall_replies >stall.out 2>&1 &
    stall=$!
    on_exit "kill $stall 2>/dev/null"
    for ((i = 0; i < 200; i++)); do grep -q sent stall.out 2>/dev/null && break; sleep 0.1; done
    stop_nbd "SIGTERM with a client that does not read its replies: the server still ends" \
        "$PE" "$SE.log" "$SE"
    kill "$stall" 2>/dev/null
    wait "$stall" 2>/dev/null
fi

# ------------------------------------------------------------ shutdown

stop_nbd "SIGTERM stops the read-write server: exit 0, no sanitizer report" "$PA" "$SA.log" "$SA"
stop_nbd "SIGTERM stops the qcow2 server: exit 0, no sanitizer report" "$PB" "$SB.log" "$SB"
stop_nbd "SIGTERM stops the --partitions server: exit 0, no sanitizer report" "$PC" "$SC.log" "$SC"
stop_nbd "SIGTERM stops the 8 GiB server: exit 0, no sanitizer report" "$PD" "$SD.log" "$SD"

done_testing
