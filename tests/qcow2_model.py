#!/usr/bin/env python3
"""qcow2_model.py — model-checked random NBD workloads for the qcow2 write
tests (tests/test-qcow2-write-model.sh, tests/test-qcow2-crash.sh).

Needs libnbd's python module (`nbd`, package python3-libnbd); run it with the
interpreter lib.sh's require_nbd_python finds.

  qcow2_model.py run SOCKET --init RAW --out RAW [options]
      A random workload (writes, FUA writes, write-zeroes with and without
      NO_HOLE and FAST_ZERO, trims, flushes, reads) over --conns connections
      with up to --depth requests in flight in all, against an in-memory
      model that starts as RAW (qemu-img convert of the image).  Requests in
      flight never overlap (an op whose range overlaps one in flight waits,
      so the op sequence and the final model depend on the seed alone).
      Every read is compared with the model; a trim, and a FAST_ZERO that
      failed with ENOTSUP, are followed by a read of their range whose bytes
      become the model (their contents are unspecified).  At the end: a flush,
      the whole disk read over NBD equals the model; the model is written
      to --out.  --poison flips one model byte first (the comparison must
      then fail: exit 1).  Exit 0 ok, 1 mismatch or error.

  qcow2_model.py crash SOCKET --init RAW --out PREFIX [options]
      Like run (no reads, no read-backs), until the server goes away
      (killed) or --secs pass.  Records what was acknowledged before each
      FLUSH was sent; from the completed flush that covers the most, writes
      PREFIX.exp (expected bytes) and PREFIX.unknown (JSON list of [start,
      end) ranges whose contents are not guaranteed: trimmed, written again
      later by any request, finished or not, failed).  Also PREFIX.all.exp /
      PREFIX.all.unknown: everything acknowledged at all (a stronger check:
      vdisk-nbd writes through, so a SIGKILL should lose nothing
      acknowledged; reported as a diagnostic only).  Prints "ops=N acked=N
      flushes=N covered=N" on stdout.

  qcow2_model.py verify EXP UNKNOWN ACTUAL
      ACTUAL (raw) equals EXP outside the UNKNOWN ranges.  Exit 0, or 1 with
      the first differences and the count of differing bytes.

  qcow2_model.py pick EXP UNKNOWN MAP SEED
      Print "GUEST HOST": a guest offset whose contents are known and that
      `qemu-img map --output=json` (the file MAP) puts in a data cluster of
      the image itself at file offset HOST (for the test that the checker
      catches a lost write).

  qcow2_model.py rcinfo IMAGE
      Print "OFFSET CLUSTERS BLOCKS": where the refcount table is, its size
      and how many refcount blocks it points to.

  qcow2_model.py pwrites TRACE
      The pwrite64 calls of an `strace -e trace=pwrite64` log, one a line:
      "LEN OFFSET RESULT" (RESULT "?": the process died at that call).

Common options: --seed N, --ops N, --conns N, --depth N, --cluster BYTES,
--l2span BYTES (guest bytes one L2 table maps: offsets crowd around its
multiples), --maxlen BYTES, --secs S, --bigwrites (crash: sequential big
writes that grow the file fast, so refcount blocks and tables are added).

Thread model: one thread, one poll loop over all connections.
"""
import argparse
import bisect
import json
import random
import select
import sys
import time

try:
    import nbd
except ImportError:             # only verify/pick work without libnbd
    nbd = None

W, WFUA, ZERO, TRIM, FLUSH, READ = "write", "write+fua", "zero", "trim", "flush", "read"


# --------------------------------------------------------------- intervals

class Intervals:
    """A set of byte ranges, kept as sorted disjoint [a, b) lists."""

    def __init__(self, items=()):
        self.a, self.b = [], []
        for a, b in items:
            self.add(a, b)

    def add(self, a, b):
        if a >= b:
            return
        i = bisect.bisect_left(self.b, a)        # first range ending at/after a
        j = bisect.bisect_right(self.a, b)       # ranges starting at/before b
        if i < j:
            a = min(a, self.a[i])
            b = max(b, self.b[j - 1])
        self.a[i:j] = [a]
        self.b[i:j] = [b]

    def remove(self, a, b):
        if a >= b:
            return
        i = bisect.bisect_right(self.b, a)       # first range ending after a
        j = bisect.bisect_left(self.a, b)        # ranges starting before b
        if i >= j:
            return
        na, nb = [], []
        if self.a[i] < a:
            na.append(self.a[i]); nb.append(a)
        if self.b[j - 1] > b:
            na.append(b); nb.append(self.b[j - 1])
        self.a[i:j] = na
        self.b[i:j] = nb

    def copy(self):
        c = Intervals()
        c.a, c.b = list(self.a), list(self.b)
        return c

    def items(self):
        return list(zip(self.a, self.b))

    def total(self):
        return sum(b - a for a, b in zip(self.a, self.b))

    def complement(self, size):
        out, pos = [], 0
        for a, b in zip(self.a, self.b):
            if a > pos:
                out.append((pos, min(a, size)))
            pos = max(pos, b)
        if pos < size:
            out.append((pos, size))
        return out


# ------------------------------------------------------------- workload

class Op:
    __slots__ = ("n", "kind", "off", "len", "flags", "seed", "data", "buf", "conn",
                 "ack", "err", "acked_before", "followup", "origin")

    def __init__(self, n, kind, off=0, length=0, flags=0, seed=0, conn=0):
        self.n, self.kind, self.off, self.len, self.flags = n, kind, off, length, flags
        self.seed, self.conn = seed, conn
        self.data = self.buf = None
        self.ack = None            # index in acknowledgement order
        self.err = None
        self.acked_before = 0      # flush: acknowledgements seen when it was sent
        self.followup = False      # a read-back of a trim / failed fast zero
        self.origin = None         # ... of which op

    def __repr__(self):
        fl = []
        if self.flags & 1:
            fl.append("FUA")
        if self.flags & 2:
            fl.append("NO_HOLE")
        if self.flags & 16:
            fl.append("FAST_ZERO")
        return "op#%d %s %d+%d%s" % (self.n, self.kind, self.off, self.len,
                                     (" [" + ",".join(fl) + "]") if fl else "")


class Gen:
    """The op sequence: a function of the seed and the options alone."""

    def __init__(self, a, size, mode):
        self.r = random.Random(a.seed)
        self.a, self.size, self.mode = a, size, mode
        cs = a.cluster
        pts = {0, size}
        span = a.l2span or 0
        if span and span < size:
            k = span
            while k < size and len(pts) < 64:
                pts.add(k)
                k += span
        pts.add(size // 2 // cs * cs)
        self.hot = sorted(p for p in pts if p <= size)
        self.n = 0
        self.seq = 0               # crash --bigwrites: sequential cursor

    def length(self):
        r, cs = self.r, self.a.cluster
        k = r.randrange(100)
        if k < 22:
            n = r.randint(1, 600)
        elif k < 37:
            n = 512 * r.randint(1, 16)
        elif k < 45:               # whole subclusters (extended L2)
            n = cs // 32 * r.randint(1, 70)
        elif k < 70:
            n = cs * r.randint(1, 3) + r.choice((0, 0, -512, 512, r.randint(-300, 300)))
        elif k < 90:
            n = r.randint(1, max(1, min(self.a.maxlen, 4 * cs)))
        else:
            n = r.randint(1, self.a.maxlen)
        return max(1, n)

    def offset(self, n):
        r, cs, size = self.r, self.a.cluster, self.size
        k = r.randrange(100)
        if k < 25:
            off = r.randrange(size)
        elif k < 45:
            off = r.randrange(size) // 512 * 512
        elif k < 55:
            off = r.randrange(size) // cs * cs
        elif k < 65:
            off = r.randrange(size) // (cs // 32) * (cs // 32)
        else:                      # around an L2 boundary, the middle, or the end
            p = r.choice(self.hot)
            d = r.randint(-2 * cs - 700, 2 * cs + 700)
            if r.randrange(3) == 0:
                d = d // 512 * 512
            off = p + d - (n if r.randrange(2) else 0)
        return min(max(off, 0), size - 1)

    def next(self):
        r, a = self.r, self.a
        self.n += 1
        conn = r.randrange(a.conns)
        k = r.randrange(100)
        crash = self.mode == "crash"
        if k < 4 or (crash and k < 9):
            return Op(self.n, FLUSH, conn=conn)
        if crash and a.bigwrites and k < 45:
            ln = min(r.choice((256, 512, 1024)) * 1024, self.size)
            if self.seq + ln > self.size:
                self.seq = 0
            off = self.seq
            self.seq += ln
            return Op(self.n, W, off, ln, 0, r.getrandbits(63), conn)
        n = self.length()
        off = self.offset(n)
        n = min(n, self.size - off)
        if k < 40:
            return Op(self.n, W, off, n, 0, r.getrandbits(63), conn)
        if k < 46:
            return Op(self.n, WFUA, off, n, nbd.CMD_FLAG_FUA, r.getrandbits(63), conn)
        if k < 70:
            fl = 0
            z = r.randrange(6)
            if z in (1, 2):
                fl |= nbd.CMD_FLAG_NO_HOLE
            if z in (2, 3):
                fl |= nbd.CMD_FLAG_FAST_ZERO
            if r.randrange(10) == 0:
                fl |= nbd.CMD_FLAG_FUA
            return Op(self.n, ZERO, off, n, fl, 0, conn)
        if k < 80:
            return Op(self.n, TRIM, off, n, 0, 0, conn)
        if crash:
            return Op(self.n, W, off, n, 0, r.getrandbits(63), conn)
        return Op(self.n, READ, off, n, 0, 0, conn)


def payload(op):
    return random.Random(op.seed).randbytes(op.len)


class Fail(Exception):
    pass


class Runner:
    def __init__(self, a, mode, model):
        self.a, self.mode = a, mode
        self.hs = []
        for i in range(a.conns):
            h = nbd.NBD()
            h.set_handle_name("conn%d" % i)
            h.connect_unix(a.socket)
            self.hs.append(h)
        self.size = self.hs[0].get_size()
        if a.conns > 1 and not self.hs[0].can_multi_conn():
            raise Fail("the server does not advertise NBD_FLAG_CAN_MULTI_CONN: a flush on "
                       "one connection need not cover writes on the others")
        if len(model) != self.size:
            raise Fail("the model has %d bytes, the export %d" % (len(model), self.size))
        self.model = model
        self.inflight = [dict() for _ in self.hs]      # cookie -> op
        self.ranges = {}                               # op.n -> (a, b)
        self.nin = 0
        self.acks = []             # ops in acknowledgement order
        self.stats = {}
        self.dead = None
        self.errors = []
        self.issued = 0

    # -- issuing
    def overlaps(self, a, b):
        for x, y in self.ranges.values():
            if a < y and x < b:
                return True
        return False

    def issue(self, op, key=None):
        h = self.hs[op.conn]
        if op.kind in (W, WFUA):
            op.data = payload(op)
            op.buf = nbd.Buffer.from_bytearray(bytearray(op.data))
            c = h.aio_pwrite(op.buf, op.off, flags=op.flags)
        elif op.kind == ZERO:
            c = h.aio_zero(op.len, op.off, flags=op.flags)
        elif op.kind == TRIM:
            c = h.aio_trim(op.len, op.off)
        elif op.kind == READ:
            op.buf = nbd.Buffer(op.len)
            c = h.aio_pread(op.buf, op.off)
        else:
            op.acked_before = len(self.acks)
            c = h.aio_flush()
        self.inflight[op.conn][c] = op
        if op.len:
            self.ranges[op.n] = (op.off, op.off + op.len)
        self.nin += 1

    # -- completing
    def harvest(self):
        for ci, h in enumerate(self.hs):
            while self.inflight[ci]:
                try:
                    c = h.aio_peek_command_completed()
                except nbd.Error:
                    break
                if c <= 0:
                    break
                op = self.inflight[ci].pop(c)
                self.nin -= 1
                try:
                    h.aio_command_completed(c)
                except nbd.Error as e:
                    op.err = e
                self.done(op)

    def done(self, op):
        name = op.kind + ("" if op.err is None else " failed")
        self.stats[name] = self.stats.get(name, 0) + 1
        keep_range = False
        if op.err is not None and self.mode == "crash":
            self.ranges.pop(op.n, None)
            op.ack = len(self.acks)
            self.acks.append(op)
            return
        if op.err is not None:
            en = str(getattr(op.err, "errno", ""))
            if op.kind == ZERO and op.flags & nbd.CMD_FLAG_FAST_ZERO and \
                    en in ("ENOTSUP", "EOPNOTSUPP", "95"):
                keep_range = True      # read it back: contents unspecified
            else:
                self.errors.append("%r: %s" % (op, op.err))
        elif self.mode == "run":
            if op.kind in (W, WFUA):
                self.model[op.off:op.off + op.len] = op.data
            elif op.kind == ZERO:
                self.model[op.off:op.off + op.len] = bytes(op.len)
            elif op.kind == TRIM:
                keep_range = True
            elif op.kind == READ:
                got = op.buf.to_bytearray()
                want = self.model[op.off:op.off + op.len]
                if op.followup == "zero" and got != want:
                    # NBD: a refused FAST_ZERO "SHOULD NOT alter the contents"
                    self.errors.append("%s was refused (ENOTSUP) but changed the contents: %s"
                                       % (op.origin, first_diff(want, got, op.off)))
                elif op.followup:
                    self.model[op.off:op.off + op.len] = got
                elif got != want:
                    self.errors.append("%r read back differs from the model: %s"
                                       % (op, first_diff(want, got, op.off)))
        if op.err is None:
            op.ack = len(self.acks)
            self.acks.append(op)
        op.data = op.buf = None        # crash mode regenerates payloads from op.seed
        if keep_range:                 # a read-back of the same range, issued at once
            rb = Op(op.n, READ, op.off, op.len, 0, 0, op.conn)
            rb.followup = "zero" if op.kind == ZERO else "trim"
            rb.origin = repr(op)
            self.ranges.pop(op.n, None)
            self.issue(rb)
        else:
            self.ranges.pop(op.n, None)

    # -- the loop
    def wait(self, timeout=-1):
        p = select.poll()
        fds = {}
        for h in self.hs:
            d = h.aio_get_direction()
            ev = 0
            if d & nbd.AIO_DIRECTION_READ:
                ev |= select.POLLIN
            if d & nbd.AIO_DIRECTION_WRITE:
                ev |= select.POLLOUT
            fd = h.aio_get_fd()
            fds[fd] = h
            p.register(fd, ev)
        for fd, ev in p.poll(timeout):
            h = fds[fd]
            if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                h.aio_notify_read()
            if ev & select.POLLOUT:
                h.aio_notify_write()
        self.harvest()

    def drive(self, gen, max_ops, deadline=None):
        depth = self.a.depth
        per_conn = max(1, (depth + len(self.hs) - 1) // len(self.hs))
        pending = None
        issued = self.issued = 0
        while True:
            while issued < max_ops and self.nin < depth:
                if deadline is not None and time.monotonic() > deadline:
                    max_ops = issued
                    break
                if pending is None:
                    pending = gen.next()
                op = pending
                if len(self.inflight[op.conn]) >= per_conn:
                    break
                if op.len and self.overlaps(op.off, op.off + op.len):
                    break
                self.issue(op)
                pending = None
                issued += 1
                self.issued = issued
            if self.nin == 0 and (issued >= max_ops):
                return issued
            if self.errors and self.mode == "run":
                return issued
            self.wait(1000)


def first_diff(want, got, base):
    n = min(len(want), len(got))
    for i in range(n):
        if want[i] != got[i]:
            return "first difference at offset %d: expected %#04x, got %#04x" % (
                base + i, want[i], got[i])
    return "lengths differ (%d, %d)" % (len(want), len(got))


def compare_ranges(exp, act, ranges, limit=5):
    bad, msgs = 0, []
    for a, b in ranges:
        if exp[a:b] == act[a:b]:
            continue
        step = 65536
        for s in range(a, b, step):
            e = min(b, s + step)
            if exp[s:e] == act[s:e]:
                continue
            for i in range(s, e):
                if exp[i] != act[i]:
                    bad += 1
                    if len(msgs) < limit:
                        msgs.append("offset %d: expected %#04x, got %#04x" % (i, exp[i], act[i]))
    return bad, msgs


# ------------------------------------------------------------------ modes

def mode_run(a):
    model = bytearray(open(a.init, "rb").read())
    print("# seed %d: %d ops, %d connections, %d in flight" % (a.seed, a.ops, a.conns, a.depth))
    r = Runner(a, "run", model)
    gen = Gen(a, r.size, "run")
    t0 = time.monotonic()
    r.drive(gen, a.ops)
    secs = time.monotonic() - t0
    print("# %s in %.1fs" % (", ".join("%s %d" % kv for kv in sorted(r.stats.items())), secs))
    if r.errors:
        for e in r.errors[:10]:
            print("error: " + e, file=sys.stderr)
        return 1
    # a final flush on every connection, then the whole disk
    for i in range(len(r.hs)):
        r.issue(Op(0, FLUSH, conn=i))
    while r.nin:
        r.wait(1000)
    if r.errors:
        for e in r.errors[:10]:
            print("error: " + e, file=sys.stderr)
        return 1
    got = bytearray()
    chunk = 4 << 20
    for off in range(0, r.size, chunk):
        got += r.hs[(off // chunk) % len(r.hs)].pread(min(chunk, r.size - off), off)
    for h in r.hs:
        h.shutdown()
    if a.poison:
        p = random.Random(a.seed ^ 0x5EED).randrange(r.size)
        model[p] ^= 0x40
        print("# poisoned the model at offset %d" % p)
    with open(a.out, "wb") as f:
        f.write(model)
    if got != model:
        bad, msgs = compare_ranges(model, got, [(0, r.size)])
        print("error: the disk read over NBD differs from the model in %d bytes (seed %d)"
              % (bad, a.seed), file=sys.stderr)
        for m in msgs:
            print("  " + m, file=sys.stderr)
        return 1
    return 0


def mode_crash(a):
    init = bytearray(open(a.init, "rb").read())
    r = Runner(a, "crash", bytearray(len(init)))
    gen = Gen(a, r.size, "crash")
    if a.ready:
        open(a.ready, "w").close()
    deadline = time.monotonic() + a.secs
    r.issued = 0
    try:
        r.drive(gen, a.ops, deadline)
    except nbd.Error as e:         # the server went away
        r.dead = str(e)
    issued = r.issued
    # Complete what can still complete (nothing, after a kill).
    # Everything not acknowledged stays uncertain.
    flushes = [op for op in r.acks if op.kind == FLUSH and op.err is None]
    covered = max((f.acked_before for f in flushes), default=0)
    exp = bytearray(init)
    unknown = Intervals()
    for op in r.acks[:covered]:
        apply(op, exp, unknown)
    exp_all = bytearray(exp)
    unk_all = unknown.copy()
    for op in r.acks[covered:]:
        if op.len:
            unknown.add(op.off, op.off + op.len)
        apply(op, exp_all, unk_all)
    pending = [op for d in r.inflight for op in d.values()]
    for op in pending:
        if op.len:
            unknown.add(op.off, op.off + op.len)
            unk_all.add(op.off, op.off + op.len)
    for suffix, e, u in (("", exp, unknown), (".all", exp_all, unk_all)):
        with open(a.out + suffix + ".exp", "wb") as f:
            f.write(e)
        with open(a.out + suffix + ".unknown", "w") as f:
            json.dump(u.items(), f)
    print("ops=%d acked=%d flushes=%d covered=%d inflight=%d known=%d" % (
        issued, len(r.acks), len(flushes), covered, len(pending),
        len(init) - unknown.total()))
    print("# %s" % ", ".join("%s %d" % kv for kv in sorted(r.stats.items())))
    if r.dead:
        print("# connection ended: %s" % r.dead.splitlines()[0][:120])
    return 0


def apply(op, img, unknown):
    if not op.len:
        return
    a, b = op.off, op.off + op.len
    if op.err is not None or op.kind == TRIM:
        unknown.add(a, b)
    elif op.kind in (W, WFUA):
        img[a:b] = payload(op)
        unknown.remove(a, b)
    elif op.kind == ZERO:
        img[a:b] = bytes(op.len)
        unknown.remove(a, b)


def mode_verify(a):
    exp = open(a.exp, "rb").read()
    act = open(a.actual, "rb").read()
    unknown = Intervals(json.load(open(a.unknown)))
    if len(act) < len(exp):
        print("error: %s has %d bytes, expected %d" % (a.actual, len(act), len(exp)),
              file=sys.stderr)
        return 1
    bad, msgs = compare_ranges(exp, act, unknown.complement(len(exp)))
    if bad:
        print("error: %d byte(s) acknowledged before the last completed flush did not read "
              "back" % bad, file=sys.stderr)
        for m in msgs:
            print("  " + m, file=sys.stderr)
        print("bad=%d" % bad)
        return 1
    print("bad=0 known=%d" % (len(exp) - unknown.total()))
    return 0


def mode_pick(a):
    """A known guest byte stored in a data cluster of the image itself
    (qemu-img map --output=json MAP: depth 0, data, with a host offset);
    prints "GUEST HOST"."""
    exp = open(a.exp, "rb").read()
    unknown = Intervals(json.load(open(a.unknown)))
    known = unknown.complement(len(exp))
    cand = []
    for e in json.load(open(a.map)):
        if e.get("depth") != 0 or not e.get("data") or "offset" not in e:
            continue
        s0, s1 = e["start"], e["start"] + e["length"]
        for x, y in known:
            lo, hi = max(x, s0), min(y, s1)
            if lo < hi:
                cand.append((lo, hi, e["offset"] - e["start"]))
    if not cand:
        return 1
    r = random.Random(a.seed)
    lo, hi, delta = r.choice(cand)
    g = r.randrange(lo, hi)
    print(g, g + delta)
    return 0


def mode_rcinfo(a):
    """The refcount table of a qcow2 image: offset, clusters, blocks in use."""
    import struct
    with open(a.image, "rb") as f:
        h = f.read(104)
        cbits = struct.unpack(">I", h[20:24])[0]
        rt_off, rt_cl = struct.unpack(">QI", h[48:60])
        f.seek(rt_off)
        t = f.read(rt_cl << cbits)
    n = sum(1 for i in range(0, len(t), 8) if t[i:i + 8] != bytes(8))
    print(rt_off, rt_cl, n)
    return 0


def mode_pwrites(a):
    """The pwrite64 calls of an strace -e trace=pwrite64 log, one per line:
    "LEN OFFSET RESULT" (RESULT "?" for a call the process died in)."""
    import re
    pat = re.compile(r'pwrite64\(\d+, ".*"(?:\.\.\.)?, (\d+), (\d+)\)\s+= (\S+)')
    for line in open(a.trace, errors="replace"):
        m = pat.search(line)
        if m:
            print(m.group(1), m.group(2), m.group(3))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    for m in ("run", "crash"):
        s = sub.add_parser(m)
        s.add_argument("socket")
        s.add_argument("--init", required=True)
        s.add_argument("--out", required=True)
        s.add_argument("--seed", type=int, default=1)
        s.add_argument("--ops", type=int, default=2000 if m == "run" else 10 ** 9)
        s.add_argument("--conns", type=int, default=4)
        s.add_argument("--depth", type=int, default=32)
        s.add_argument("--cluster", type=int, default=65536)
        s.add_argument("--l2span", type=int, default=0)
        s.add_argument("--maxlen", type=int, default=1 << 20)
        s.add_argument("--secs", type=float, default=30)
        s.add_argument("--bigwrites", action="store_true")
        s.add_argument("--poison", action="store_true")
        s.add_argument("--ready", help="crash: create this file once connected")
    s = sub.add_parser("verify")
    s.add_argument("exp")
    s.add_argument("unknown")
    s.add_argument("actual")
    s = sub.add_parser("pick")
    s.add_argument("exp")
    s.add_argument("unknown")
    s.add_argument("map")
    s.add_argument("seed", type=int)
    s = sub.add_parser("pwrites")
    s.add_argument("trace")
    s = sub.add_parser("rcinfo")
    s.add_argument("image")
    a = p.parse_args()
    try:
        return {"run": mode_run, "crash": mode_crash, "verify": mode_verify,
                "pick": mode_pick, "rcinfo": mode_rcinfo, "pwrites": mode_pwrites}[a.mode](a)
    except Fail as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    except nbd.Error if nbd else () as e:
        print("error: %s" % e, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
