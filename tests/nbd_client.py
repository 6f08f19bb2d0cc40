#!/usr/bin/env python3
"""nbd_client.py — a small raw-socket NBD client (python3 standard library
only) for the protocol corners that no installed client can produce.

libnbd (nbdinfo, nbdcopy, nbdsh) and qemu are well-behaved clients: they
never send an unknown option, STARTTLS to a server they expect to refuse it,
NBD_OPT_LIST with data, a 32-byte extended request (libnbd 1.14 and qemu 7.2
predate extended headers), a write without its payload, a 33 MiB payload, a
request header followed by a hang-up, a bad magic number, or nothing at all.
This client does, and checks what vdisk-nbd answers (doc/proto.md).  Use the
real clients for everything else (tests/test-nbd-protocol.sh does).

    nbd_client.py SOCKET SCENARIO [IMAGE]

SOCKET is the server's Unix socket; IMAGE, when a scenario reads data, is the
file the server exports (the expected bytes).  Exit status 0 when the
scenario passed; 1 with the reason on stderr when it failed; 2 on usage.
Scenarios: see SCENARIOS at the end (`nbd_client.py --list`).
"""
import os
import socket
import struct
import sys
import time

NBD_MAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
EXT_REQUEST_MAGIC = 0x21E41C71
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
EXT_REPLY_MAGIC = 0x6E8A278C

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META, OPT_SET_META, OPT_EXTENDED_HEADERS = 8, 9, 10, 11

REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR = 1 << 31
REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID = REP_ERR | 1, REP_ERR | 2, REP_ERR | 3
REP_ERR_UNKNOWN, REP_ERR_TOO_BIG = REP_ERR | 6, REP_ERR | 9

INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES = 1, 2
TFLAG_READ_ONLY = 1 << 1

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE = 0, 1, 2, 3, 4, 5
CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 6, 7
CMD_FLAG_FUA, CMD_FLAG_DF, CMD_FLAG_REQ_ONE, CMD_FLAG_PAYLOAD_LEN = 1, 4, 8, 32

REPLY_FLAG_DONE = 1
REPLY_NONE, REPLY_OFFSET_DATA, REPLY_OFFSET_HOLE = 0, 1, 2
REPLY_BLOCK_STATUS, REPLY_BLOCK_STATUS_EXT = 5, 6
REPLY_ERROR, REPLY_ERROR_OFFSET = 0x8001, 0x8002

EPERM, EIO, EINVAL, ENOSPC = 1, 5, 22, 28
MAX_PAYLOAD = 32 << 20

TIMEOUT = float(os.environ.get("NBD_CLIENT_TIMEOUT", "30"))


class Fail(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Fail(what)


class Closed(Exception):
    """The server closed the connection."""


class Client:
    def __init__(self, path, timeout=TIMEOUT):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.extended = False
        self.structured = False
        self.cookie = 0
        self.reads = {}          # cookie -> length, to parse simple read replies

    # ------------------------------------------------------------ bytes
    def send(self, data):
        self.s.sendall(data)

    def recv(self, n):
        buf = bytearray()
        while len(buf) < n:
            part = self.s.recv(min(n - len(buf), 1 << 20))
            if not part:
                raise Closed(f"connection closed after {len(buf)} of {n} bytes")
            buf += part
        return bytes(buf)

    def closed_by_server(self, wait=TIMEOUT):
        """True when the server closes the connection (EOF or reset) within
        @wait seconds; any bytes it sends first are skipped."""
        self.s.settimeout(wait)
        try:
            while True:
                if not self.s.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()

    # -------------------------------------------------------- handshake
    def greeting(self, flags=FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
        magic, opt, hflags = struct.unpack(">QQH", self.recv(18))
        expect(magic == NBD_MAGIC and opt == IHAVEOPT,
               f"bad greeting {magic:#x} {opt:#x}")
        expect(hflags & 1, "the server does not offer fixed newstyle")
        if flags is not None:
            self.send(struct.pack(">I", flags))
        return hflags

    def send_opt(self, code, data=b"", magic=IHAVEOPT, length=None):
        n = len(data) if length is None else length
        self.send(struct.pack(">QII", magic, code, n) + data)

    def opt_reply(self, code):
        magic, rcode, rtype, n = struct.unpack(">QIII", self.recv(20))
        expect(magic == REP_MAGIC, f"bad option reply magic {magic:#x}")
        expect(rcode == code, f"reply for option {rcode}, sent {code}")
        return rtype, self.recv(n)

    def opt(self, code, data=b""):
        """Send one option; return every reply up to the final one, as
        [(type, data)]."""
        self.send_opt(code, data)
        out = []
        while True:
            rtype, rdata = self.opt_reply(code)
            out.append((rtype, rdata))
            if rtype == REP_ACK or rtype & REP_ERR:
                return out

    @staticmethod
    def info_data(name, reqs=()):
        n = name.encode()
        return struct.pack(">I", len(n)) + n + struct.pack(">H", len(reqs)) + \
            b"".join(struct.pack(">H", r) for r in reqs)

    def go(self, name="", reqs=(), code=OPT_GO):
        """NBD_OPT_GO (or INFO); returns {info type: data} or raises Fail."""
        replies = self.opt(code, self.info_data(name, reqs))
        last = replies[-1]
        expect(last[0] == REP_ACK, f"option {code} for '{name}' failed: {last[0]:#x} {last[1]!r}")
        infos = {}
        for t, d in replies[:-1]:
            expect(t == REP_INFO, f"unexpected reply type {t:#x}")
            infos[struct.unpack(">H", d[:2])[0]] = d[2:]
        expect(INFO_EXPORT in infos, "no NBD_INFO_EXPORT")
        self.size, self.tflags = struct.unpack(">QH", infos[INFO_EXPORT])
        return infos

    def start(self, name="", structured=False, extended=False, meta=()):
        """Greeting, the requested extensions, GO: ready for requests."""
        self.greeting()
        if extended:
            expect(self.opt(OPT_EXTENDED_HEADERS)[-1][0] == REP_ACK, "EXTENDED_HEADERS refused")
            self.extended = self.structured = True
        elif structured:
            expect(self.opt(OPT_STRUCTURED_REPLY)[-1][0] == REP_ACK, "STRUCTURED_REPLY refused")
            self.structured = True
        self.contexts = {}
        if meta:
            n = name.encode()
            data = struct.pack(">I", len(n)) + n + struct.pack(">I", len(meta))
            for q in meta:
                data += struct.pack(">I", len(q)) + q.encode()
            for t, d in self.opt(OPT_SET_META, data):
                if t == REP_META_CONTEXT:
                    self.contexts[d[4:].decode()] = struct.unpack(">I", d[:4])[0]
                else:
                    expect(t == REP_ACK, f"SET_META_CONTEXT failed: {t:#x}")
        self.go(name)
        return self

    # ----------------------------------------------------- transmission
    def request(self, typ, offset=0, length=0, payload=b"", flags=0, cookie=None):
        if cookie is None:
            self.cookie += 1
            cookie = self.cookie
        if self.extended:
            hdr = struct.pack(">IHHQQQ", EXT_REQUEST_MAGIC, flags, typ, cookie, offset, length)
        else:
            hdr = struct.pack(">IHHQQI", REQUEST_MAGIC, flags, typ, cookie, offset, length)
        if typ == CMD_READ:
            self.reads[cookie] = length
        self.send(hdr + payload)
        return cookie

    def reply(self):
        """One reply message: a simple reply, or one structured/extended
        chunk.  Returns dict(cookie, error, type, flags, data, offset)."""
        magic = struct.unpack(">I", self.recv(4))[0]
        if magic == SIMPLE_REPLY_MAGIC:
            expect(not self.extended, "simple reply with extended headers")
            err, cookie = struct.unpack(">IQ", self.recv(12))
            n = self.reads.pop(cookie, 0)
            if err:
                n = 0                      # an error reply carries no data
            return dict(cookie=cookie, error=err, type=None, flags=REPLY_FLAG_DONE,
                        data=self.recv(n), magic=magic)
        if magic == STRUCTURED_REPLY_MAGIC:
            expect(self.structured and not self.extended,
                   "structured reply chunk without structured replies (or with extended)")
            flags, typ, cookie, n = struct.unpack(">HHQI", self.recv(16))
            off = None
        elif magic == EXT_REPLY_MAGIC:
            expect(self.extended, "extended reply chunk without extended headers")
            flags, typ, cookie, off, n = struct.unpack(">HHQQQ", self.recv(28))
            expect(n <= MAX_PAYLOAD + 64, f"absurd chunk payload length {n}")
        else:
            raise Fail(f"bad reply magic {magic:#x}")
        data = self.recv(n)
        err = 0
        if typ & 0x8000:
            err = struct.unpack(">I", data[:4])[0]
        if flags & REPLY_FLAG_DONE:
            self.reads.pop(cookie, None)
        return dict(cookie=cookie, error=err, type=typ, flags=flags, data=data,
                    offset=off, magic=magic)

    def full_reply(self, cookie):
        """All messages of the reply to @cookie (no other request may be in
        flight).  Returns (error, [chunks])."""
        chunks, err = [], 0
        while True:
            r = self.reply()
            expect(r["cookie"] == cookie, f"reply for cookie {r['cookie']}, expected {cookie}")
            chunks.append(r)
            err = err or r["error"]
            if r["flags"] & REPLY_FLAG_DONE:
                return err, chunks

    def cmd(self, typ, offset=0, length=0, payload=b"", flags=0):
        return self.full_reply(self.request(typ, offset, length, payload, flags))

    def read(self, offset, length, flags=0):
        """READ; returns the bytes (assembled from chunks) or raises Fail."""
        err, chunks = self.cmd(CMD_READ, offset, length, flags=flags)
        expect(err == 0, f"read {offset}+{length} failed with error {err}")
        return assemble(chunks, offset, length)


def assemble(chunks, offset, length):
    buf = bytearray(length)
    covered = 0
    for c in chunks:
        if c["type"] is None:
            expect(len(c["data"]) == length, "short simple read reply")
            return c["data"]
        if c["type"] == REPLY_OFFSET_DATA:
            o = struct.unpack(">Q", c["data"][:8])[0]
            d = c["data"][8:]
            expect(offset <= o and o + len(d) <= offset + length, "data chunk outside the request")
            buf[o - offset:o - offset + len(d)] = d
            covered += len(d)
        elif c["type"] == REPLY_OFFSET_HOLE:
            o, n = struct.unpack(">QI", c["data"][:12])
            expect(offset <= o and o + n <= offset + length, "hole chunk outside the request")
            buf[o - offset:o - offset + n] = bytes(n)
            covered += n
        else:
            expect(c["type"] == REPLY_NONE, f"unexpected chunk type {c['type']} in a read reply")
    expect(covered == length, f"read chunks cover {covered} of {length} bytes")
    return bytes(buf)


def image_bytes(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


# ---------------------------------------------------------------- scenarios
# Each takes (socket path, image path or None) and raises Fail on a problem.

def sc_unknown_option(sock, img):
    """Unknown option codes get NBD_REP_ERR_UNSUP; negotiation goes on."""
    c = Client(sock)
    c.greeting()
    for code in (0, 4, 12, 0x7777, 0xFFFFFFFF):
        r = c.opt(code, b"some data")
        expect(r == [(REP_ERR_UNSUP, r[0][1])], f"option {code}: {r[0][0]:#x}, wanted ERR_UNSUP")
    c.go("")
    expect(c.read(0, 4096) == image_bytes(img, 0, 4096), "read after unknown options")
    c.request(CMD_DISC)
    expect(c.closed_by_server(), "the server did not close after NBD_CMD_DISC")


def sc_starttls(sock, img):
    """STARTTLS without TLS support: an error reply (UNSUP or POLICY), the
    session goes on."""
    c = Client(sock)
    c.greeting()
    (t, _), = c.opt(OPT_STARTTLS)
    expect(t in (REP_ERR_UNSUP, REP_ERR_POLICY), f"STARTTLS answered {t:#x}")
    c.go("")
    expect(c.read(512, 512) == image_bytes(img, 512, 512), "read after STARTTLS")


def sc_list(sock, img):
    """NBD_OPT_LIST with data is ERR_INVALID; without, it lists the exports."""
    c = Client(sock)
    c.greeting()
    r = c.opt(OPT_LIST, b"\0\0\0\0")
    expect(len(r) == 1 and r[0][0] == REP_ERR_INVALID, f"LIST with data: {r[0][0]:#x}")
    r = c.opt(OPT_LIST)
    expect(r[-1][0] == REP_ACK, "LIST failed")
    names = []
    for t, d in r[:-1]:
        expect(t == REP_SERVER, f"LIST reply type {t:#x}")
        n = struct.unpack(">I", d[:4])[0]
        expect(n <= len(d) - 4, "LIST: name length past the reply")
        names.append(d[4:4 + n].decode())
    expect("" in names, f"LIST does not name the default export: {names}")
    c.go("")


def sc_info_unknown(sock, img):
    """INFO and GO for an unknown export: ERR_UNKNOWN with a message; the
    session goes on; INFO for the real one answers, including the name and
    description on request and block sizes."""
    c = Client(sock)
    c.greeting()
    for code in (OPT_INFO, OPT_GO):
        r = c.opt(code, Client.info_data("no-such-export", [INFO_NAME]))
        expect(len(r) == 1 and r[0][0] == REP_ERR_UNKNOWN, f"option {code}: {r[-1][0]:#x}")
        expect(len(r[0][1]) > 0, "the error carries no message")
    r = c.opt(OPT_INFO, b"\0\0\0\0\0")        # malformed: count cut short
    expect(r[-1][0] == REP_ERR_INVALID, f"malformed INFO: {r[-1][0]:#x}")
    r = c.opt(OPT_GO, Client.info_data("x" * 5000))   # a name over the 4096-byte limit
    expect(r[-1][0] & REP_ERR, f"GO with a 5000-byte name: {r[-1][0]:#x}")
    # Unknown and repeated information requests are ignored, not refused.
    infos = c.go("", [INFO_NAME, 99, INFO_DESCRIPTION, INFO_BLOCK_SIZE, INFO_NAME, 0xFFFF],
                 code=OPT_INFO)
    expect(infos.get(INFO_NAME) == b"", f"INFO_NAME {infos.get(INFO_NAME)!r}")
    expect(INFO_BLOCK_SIZE in infos, "no NBD_INFO_BLOCK_SIZE")
    mn, pref, mx = struct.unpack(">III", infos[INFO_BLOCK_SIZE])
    expect(mn == 1 and pref >= mn and mx == MAX_PAYLOAD, f"block sizes {mn} {pref} {mx}")
    c.go("")
    expect(c.read(0, 1) == image_bytes(img, 0, 1), "read after INFO")


def sc_option_too_big(sock, img):
    """An option longer than the server takes: ERR_TOO_BIG, data skipped,
    negotiation goes on."""
    c = Client(sock)
    c.greeting()
    r = c.opt(OPT_INFO, Client.info_data("x" * 100, []) + b"\0" * (100 << 10))
    expect(r[-1][0] in (REP_ERR_TOO_BIG, REP_ERR_INVALID), f"100 KiB option: {r[-1][0]:#x}")
    c.go("")
    expect(c.read(0, 512) == image_bytes(img, 0, 512), "read after an oversized option")


def sc_abort(sock, img):
    """NBD_OPT_ABORT: ACK, then the server closes."""
    c = Client(sock)
    c.greeting()
    r = c.opt(OPT_ABORT)
    expect(r == [(REP_ACK, b"")], f"ABORT: {r}")
    expect(c.closed_by_server(), "the server did not close after ABORT")


def sc_export_name(sock, img):
    """NBD_OPT_EXPORT_NAME: the old way in (10 bytes with NO_ZEROES, 134
    without); an unknown name closes the connection."""
    for flags, n in ((FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES, 10), (FLAG_C_FIXED_NEWSTYLE, 134)):
        c = Client(sock)
        c.greeting(flags)
        c.send_opt(OPT_EXPORT_NAME, b"")
        b = c.recv(n)
        size = struct.unpack(">Q", b[:8])[0]
        expect(size == os.path.getsize(img), f"EXPORT_NAME size {size}")
        expect(c.read(100, 100) == image_bytes(img, 100, 100), "read after EXPORT_NAME")
        c.request(CMD_DISC)
        expect(c.closed_by_server(), "no close after DISC")
    c = Client(sock)
    c.greeting()
    c.send_opt(OPT_EXPORT_NAME, b"no-such-export")
    expect(c.closed_by_server(), "EXPORT_NAME of an unknown export did not close")


def sc_bad_client_flags(sock, img):
    """Unknown client flags: the server MUST close."""
    c = Client(sock)
    c.greeting(flags=0x80000001)
    expect(c.closed_by_server(), "unknown client flags were accepted")


def sc_extended(sock, img):
    """EXTENDED_HEADERS: 32-byte requests, extended reply chunks for read,
    write with PAYLOAD_LEN, block status as BLOCK_STATUS_EXT; a write
    without PAYLOAD_LEN is EINVAL and the connection goes on.  (Needs a
    writable export of @img.)"""
    c = Client(sock).start(extended=True, meta=("base:allocation",))
    expect("base:allocation" in c.contexts, f"contexts {c.contexts}")
    expect(not c.tflags & TFLAG_READ_ONLY, "the export is read-only (needs a writable one)")
    want = image_bytes(img, 4096, 65536)
    err, chunks = c.cmd(CMD_READ, 4096, 65536)
    expect(err == 0, f"extended read: error {err}")
    expect(all(ch["magic"] == EXT_REPLY_MAGIC for ch in chunks), "non-extended reply chunk")
    expect(all(ch["offset"] == 4096 for ch in chunks), "chunk headers do not echo the offset")
    expect(assemble(chunks, 4096, 65536) == want, "extended read: wrong data")

    # A read across data and a hole of the (raw) image file: extended data
    # and hole chunks that tile the request.
    with open(img, "rb") as f:
        hole = os.lseek(f.fileno(), 0, os.SEEK_HOLE)
        hole_end = os.lseek(f.fileno(), hole, os.SEEK_DATA) if hole < c.size else hole
    expect(hole >= 4096 and hole_end - hole >= 65536, f"the image has no hole after data ({hole})")
    off, n = hole - 4096, 4096 + 65536
    err, chunks = c.cmd(CMD_READ, off, n)
    expect(err == 0, f"extended read over a hole: error {err}")
    expect(REPLY_OFFSET_HOLE in [ch["type"] for ch in chunks], f"no hole chunk over the hole at {hole}")
    expect(assemble(chunks, off, n) == image_bytes(img, off, n), "extended read over a hole: wrong data")

    data = bytes((i * 7) & 255 for i in range(12288))
    err, chunks = c.cmd(CMD_WRITE, 1 << 20, len(data), data, flags=CMD_FLAG_PAYLOAD_LEN)
    expect(err == 0, f"write with PAYLOAD_LEN: error {err}")
    expect(len(chunks) == 1 and chunks[0]["type"] == REPLY_NONE and chunks[0]["magic"] == EXT_REPLY_MAGIC,
           "write reply is not one extended NONE chunk")
    expect(c.read(1 << 20, len(data)) == data, "extended write did not read back")
    err, _ = c.cmd(CMD_WRITE, 1 << 20, len(data), data, flags=CMD_FLAG_PAYLOAD_LEN | CMD_FLAG_FUA)
    expect(err == 0, f"write with PAYLOAD_LEN|FUA: error {err}")

    err, chunks = c.cmd(CMD_BLOCK_STATUS, 0, c.size)
    expect(err == 0, f"block status: error {err}")
    expect(len(chunks) == 1 and chunks[0]["type"] == REPLY_BLOCK_STATUS_EXT,
           f"block status chunk types {[ch['type'] for ch in chunks]}")
    d = chunks[0]["data"]
    ctx, count = struct.unpack(">II", d[:8])
    expect(ctx == c.contexts["base:allocation"], "block status for an unknown context id")
    expect(len(d) == 8 + 16 * count and count >= 1, "block status descriptor count")
    total = sum(struct.unpack(">QII", d[8 + 16 * i:24 + 16 * i])[0] for i in range(count))
    expect(0 < total <= c.size, f"extents cover {total} bytes of {c.size}")

    # A write without PAYLOAD_LEN: no payload follows; EINVAL.
    err, chunks = c.cmd(CMD_WRITE, 0, 512)
    expect(err == EINVAL, f"write without PAYLOAD_LEN: error {err}, wanted EINVAL")
    expect(chunks[-1]["type"] == REPLY_ERROR, "the error is not an error chunk")
    # A flush with a (bogus) payload: consumed, EINVAL.
    err, _ = c.cmd(CMD_FLUSH, 0, 8, b"12345678", flags=CMD_FLAG_PAYLOAD_LEN)
    expect(err == EINVAL, f"flush with a payload: error {err}, wanted EINVAL")
    expect(c.read(1 << 20, 512) == data[:512], "the connection is unusable after the errors")
    # 64-bit lengths: a read past the end and a huge one are refused, not cut.
    err, _ = c.cmd(CMD_READ, 0, 1 << 40)
    expect(err == EINVAL, f"read of 1 TiB: error {err}")
    err, _ = c.cmd(CMD_BLOCK_STATUS, 0, 1 << 40)
    expect(err == EINVAL, f"block status of 1 TiB: error {err}")
    c.request(CMD_DISC)
    expect(c.closed_by_server(), "no close after DISC")


def sc_extended_no_export_name(sock, img):
    """After EXTENDED_HEADERS, NBD_OPT_EXPORT_NAME is forbidden: the server
    hangs up."""
    c = Client(sock)
    c.greeting()
    expect(c.opt(OPT_EXTENDED_HEADERS)[-1][0] == REP_ACK, "EXTENDED_HEADERS refused")
    c.send_opt(OPT_EXPORT_NAME, b"")
    expect(c.closed_by_server(), "EXPORT_NAME after extended headers was accepted")


def sc_big_write(sock, img):
    """Compact headers, a write whose payload is over 32 MiB: the server
    reads past it and answers EINVAL; the connection stays usable."""
    for structured in (False, True):
        c = Client(sock).start(structured=structured)
        n = MAX_PAYLOAD + (1 << 20)
        err, _ = c.cmd(CMD_WRITE, 0, n, b"\xa5" * n)
        expect(err == EINVAL, f"33 MiB write: error {err}, wanted EINVAL")
        expect(c.read(0, 4096) == image_bytes(img, 0, 4096),
               "read after the refused write (or the write went through)")
        c.close()


def sc_pipeline(sock, img):
    """Many requests sent before any reply is read: every cookie answered
    once, data right; an unknown command and bad flags are EINVAL without
    harming the rest; DISC after them still gets every reply first."""
    c = Client(sock).start(structured=True)
    want = {}
    for i in range(100):
        off, n = (i * 37 * 4096) % (c.size - 65536), 512 + i * 300
        want[c.request(CMD_READ, off, n)] = (off, image_bytes(img, off, n))
    bad = {c.request(99, 0, 0): "unknown command",
           c.request(CMD_READ, 0, 512, flags=CMD_FLAG_REQ_ONE): "a flag READ does not take",
           c.request(CMD_FLUSH, 512, 0): "flush with an offset",
           c.request(CMD_BLOCK_STATUS, 0, 512): "block status without a context"}
    c.request(CMD_DISC)
    done, chunks = {}, {}
    while len(done) < len(want) + len(bad):
        r = c.reply()
        ck = r["cookie"]
        expect(ck in want or ck in bad, f"reply for unknown cookie {ck}")
        expect(ck not in done, f"cookie {ck} answered after its final chunk")
        chunks.setdefault(ck, []).append(r)
        if r["flags"] & REPLY_FLAG_DONE:
            done[ck] = max(x["error"] for x in chunks[ck])
    for ck, (off, data) in want.items():
        expect(done[ck] == 0, f"read {ck} failed with error {done[ck]}")
        expect(assemble(chunks[ck], off, len(data)) == data, f"read {ck}: wrong data")
    for ck, what in bad.items():
        expect(done[ck] == EINVAL, f"{what}: error {done[ck]}, wanted EINVAL")
    expect(c.closed_by_server(), "no close after DISC")


def sc_vanish(sock, img):
    """Clients that vanish: mid-option, after a read header, halfway
    through a write payload, with reads in flight.  The server must carry
    on (the next scenario connects again)."""
    c = Client(sock)
    c.greeting()
    c.send(struct.pack(">QII", IHAVEOPT, OPT_GO, 100) + b"\0\0")
    c.close()
    c = Client(sock).start()
    c.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, 1, 0, 1 << 20))
    c.close()
    c = Client(sock).start(structured=True)
    c.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, 2, 0, 1 << 20) + b"x" * 1000)
    c.close()
    c = Client(sock).start(structured=True)
    for i in range(64):
        c.request(CMD_READ, i * 65536, 65536)
    c.close()
    c = Client(sock).start()
    expect(c.read(0, 4096) == image_bytes(img, 0, 4096), "the server does not serve after vanished clients")


def sc_garbage(sock, img):
    """Garbage instead of a request (or of an option): the server closes
    that connection and serves the next client."""
    c = Client(sock).start()
    c.send(b"\xde\xad\xbe\xef" * 7)
    expect(c.closed_by_server(), "garbage request magic was not refused")
    c = Client(sock)
    c.greeting()
    c.send(b"GARBAGE!" * 2)
    expect(c.closed_by_server(), "garbage option magic was not refused")
    c = Client(sock).start(extended=True)
    # a compact request (padded to the 32 bytes the server reads) after extended headers
    c.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, 1, 0, 512) + b"\0" * 4)
    expect(c.closed_by_server(), "a compact request with extended headers was not refused")
    c = Client(sock).start()
    expect(c.read(0, 4096) == image_bytes(img, 0, 4096), "the server does not serve after garbage")


def sc_extended_big_payload(sock, img):
    """Extended headers, a payload over 32 MiB announced: the server may
    hang up (it cannot be expected to read it); it must not crash."""
    c = Client(sock).start(extended=True)
    c.send(struct.pack(">IHHQQQ", EXT_REQUEST_MAGIC, CMD_FLAG_PAYLOAD_LEN, CMD_WRITE, 1, 0, 1 << 40))
    try:
        c.send(b"\0" * 65536)
    except (BrokenPipeError, ConnectionResetError):
        pass
    ok = c.closed_by_server()
    if not ok:
        raise Fail("the server neither answered nor closed")
    c = Client(sock).start()
    expect(c.read(0, 512) == image_bytes(img, 0, 512), "the server does not serve afterwards")


def sc_idle(sock, img):
    """A client that connects and sends nothing is dropped after the
    handshake timeout (10 s): checked with a bound of 20 s."""
    t0 = time.time()
    c = Client(sock)
    c.greeting(flags=None)        # read the greeting, send nothing
    closed = c.closed_by_server(20)
    dt = time.time() - t0
    expect(closed, f"an idle client was not dropped within {dt:.0f} s")
    expect(dt >= 5, f"an idle client was dropped after only {dt:.1f} s")
    print(f"dropped after {dt:.1f} s")


def sc_idle_options(sock, img):
    """A client that sends flags and one option, then stalls, is dropped too."""
    c = Client(sock)
    c.greeting()
    c.opt(OPT_LIST)
    expect(c.closed_by_server(20), "a client stalled in negotiation was not dropped")


def sc_meta(sock, img):
    """Metadata contexts: LIST answers per query ("base:", "qemu:", exact
    names, unknown namespaces select nothing); SET needs structured replies;
    an unknown export is ERR_UNKNOWN; contexts set for one export do not
    carry over to another (block status is then EINVAL).  (Needs an export
    "p1" next to "".)"""
    def query(name, qs):
        n = name.encode()
        d = struct.pack(">I", len(n)) + n + struct.pack(">I", len(qs))
        for q in qs:
            d += struct.pack(">I", len(q)) + q.encode()
        return d

    c = Client(sock)
    c.greeting()
    r = c.opt(OPT_SET_META, query("", ["base:allocation"]))
    expect(r[-1][0] == REP_ERR_INVALID, f"SET_META_CONTEXT before structured replies: {r[-1][0]:#x}")
    expect(c.opt(OPT_STRUCTURED_REPLY)[-1][0] == REP_ACK, "STRUCTURED_REPLY refused")
    expect(c.opt(OPT_STRUCTURED_REPLY)[-1][0] == REP_ERR_INVALID, "STRUCTURED_REPLY twice accepted")
    for qs, want in ((["base:"], {"base:allocation"}), (["qemu:"], {"qemu:allocation-depth"}),
                     (["qemu:allocation-depth", "base:allocation"],
                      {"base:allocation", "qemu:allocation-depth"}),
                     (["foo:", "base:nothing", "qemu:dirty-bitmap:x"], set()),
                     ([], {"base:allocation", "qemu:allocation-depth"})):
        r = c.opt(OPT_LIST_META, query("", qs))
        expect(r[-1][0] == REP_ACK, f"LIST_META_CONTEXT {qs}: {r[-1][0]:#x}")
        got = {d[4:].decode() for t, d in r[:-1] if t == REP_META_CONTEXT}
        expect(got == want, f"LIST_META_CONTEXT {qs}: {got}, wanted {want}")
    r = c.opt(OPT_SET_META, query("no-such-export", ["base:allocation"]))
    expect(r[-1][0] == REP_ERR_UNKNOWN, f"SET_META_CONTEXT of an unknown export: {r[-1][0]:#x}")
    r = c.opt(OPT_SET_META, query("p1", ["base:allocation"]) + b"junk")
    expect(r[-1][0] == REP_ERR_INVALID, f"SET_META_CONTEXT with trailing bytes: {r[-1][0]:#x}")
    r = c.opt(OPT_SET_META, query("p1", ["base:allocation"]))
    expect(r[-1][0] == REP_ACK and len(r) == 2, f"SET_META_CONTEXT p1: {r}")
    c.structured = True
    c.go("")                          # contexts were set for p1, not for ""
    err, _ = c.cmd(CMD_BLOCK_STATUS, 0, 4096)
    expect(err == EINVAL, f"block status with contexts set for another export: error {err}")
    expect(c.read(0, 512) is not None, "read after the refused block status")

    c = Client(sock)
    c.greeting()
    c.opt(OPT_STRUCTURED_REPLY)
    r = c.opt(OPT_SET_META, query("p1", ["base:allocation"]))
    c.structured = True
    c.go("p1")
    err, chunks = c.cmd(CMD_BLOCK_STATUS, 0, 4096)
    expect(err == 0 and chunks[0]["type"] == REPLY_BLOCK_STATUS, f"block status on p1: error {err}")


def sc_zero_length(sock, img):
    """Zero-length requests (the spec leaves them unspecified): each gets a
    reply, success or EINVAL, and the connection goes on.  (Needs a
    writable export.)"""
    for mode in ("simple", "structured", "extended"):
        c = Client(sock).start(structured=mode == "structured", extended=mode == "extended",
                               meta=("base:allocation",) if mode != "simple" else ())
        for typ in (CMD_READ, CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES, CMD_CACHE, CMD_BLOCK_STATUS,
                    CMD_FLUSH):
            for off in (0, c.size):
                flags = CMD_FLAG_PAYLOAD_LEN if typ == CMD_WRITE and c.extended else 0
                err, _ = c.cmd(typ, off, 0, flags=flags)
                expect(err in (0, EINVAL), f"{mode}: command {typ} of 0 bytes at {off}: error {err}")
        expect(c.read(0, 4096) == image_bytes(img, 0, 4096), f"{mode}: read after zero-length requests")
        c.close()


def sc_extended_huge(sock, img):
    """Extended headers on an export over 4 GiB: block status may describe
    it in one 64-bit extent; reads and block status past the end fail."""
    c = Client(sock).start(extended=True, meta=("base:allocation", "qemu:allocation-depth"))
    expect(c.size > 1 << 32, f"the export has {c.size} bytes (needs > 4 GiB)")
    err, chunks = c.cmd(CMD_BLOCK_STATUS, 0, c.size)
    expect(err == 0 and len(chunks) == 2, f"block status: error {err}, {len(chunks)} chunks")
    for ch in chunks:
        expect(ch["type"] == REPLY_BLOCK_STATUS_EXT, f"chunk type {ch['type']}")
        d = ch["data"]
        n = struct.unpack(">I", d[4:8])[0]
        ext = [struct.unpack(">QQ", d[8 + 16 * i:24 + 16 * i]) for i in range(n)]
        expect(sum(e[0] for e in ext) == c.size, f"extents {ext} do not cover {c.size} bytes")
    err, _ = c.cmd(CMD_BLOCK_STATUS, 1 << 32, c.size)
    expect(err == EINVAL, f"block status past the end: error {err}")
    expect(c.read(c.size - 512, 512) == bytes(512), "read at the end of a 8 GiB export")


def check_reads(c, mode, img, base, reads, whole=()):
    """Pipelined READs of (offset, length) on @c; each reply equals @img at
    @base + offset; those in @whole must come as one data message (the
    sendfile path: no hole chunks for ranges that are all data)."""
    cookies = {c.request(CMD_READ, o, n): (o, n) for o, n in reads}
    got = {k: [] for k in cookies}
    while any(not ch or not ch[-1]["flags"] & REPLY_FLAG_DONE for ch in got.values()):
        r = c.reply()
        expect(r["cookie"] in got, f"{mode}: reply for unknown cookie {r['cookie']}")
        got[r["cookie"]].append(r)
    for k, (o, n) in cookies.items():
        ch = got[k]
        expect(all(x["error"] == 0 for x in ch), f"{mode}: read {o}+{n} failed")
        expect(assemble(ch, o, n) == image_bytes(img, base + o, n), f"{mode}: read {o}+{n}: wrong data")
        if (o, n) in whole:
            expect(len(ch) == 1, f"{mode}: read {o}+{n} of data came in {len(ch)} messages")


def sc_large_reads(sock, img):
    """Large reads of a read-only qcow2 (sent from the file with sendfile
    where all data, as chunks where holes): right bytes in every reply
    style, pipelined, at the end of the export; ranges that are all data
    come as one message.  (Needs sp.qcow2 served read-only, sp.raw.)"""
    data = [(1 << 20, 128 << 10), (8128 << 10, 64 << 10), (0, 64 << 10)]
    mixed = [(0, 2 << 20), (960 << 10, 4 << 20), (0, 8 << 20), (4 << 20, 4096)]
    for mode in ("simple", "structured", "extended"):
        c = Client(sock).start(structured=mode == "structured", extended=mode == "extended")
        check_reads(c, mode, img, 0, data + mixed, whole=data)
        check_reads(c, mode, img, 0, [(o, 256 << 10) for o in range(0, 8 << 20, 256 << 10)])
        c.close()


def sc_large_reads_partition(sock, img):
    """Large reads of partitions of a read-only raw disk (--partitions):
    the slice's file offsets are the disk's; a hole in the sparse file
    still reads as zeros.  (Needs mbr.raw.)"""
    for mode in ("simple", "structured", "extended"):
        for name, start, size in (("p1", 2048 * 512, 4096 * 512), ("p2", 6144 * 512, 8192 * 512)):
            c = Client(sock).start(name=name, structured=mode == "structured",
                                   extended=mode == "extended")
            expect(c.size == size, f"{name}: size {c.size}")
            check_reads(c, f"{mode} {name}", img, start,
                        [(0, size), (0, 64 << 10), (size - (128 << 10), 128 << 10)])
            c.close()


def sc_stall_replies(sock, img):
    """Sends 64 reads of 32 MiB and never reads a reply; prints "sent" and
    waits (up to 60 s) for the server to hang up.  The test stops the server
    meanwhile: it must still exit."""
    c = Client(sock).start()
    for _ in range(64):
        c.request(CMD_READ, 0, 32 << 20)
    print("sent", flush=True)
    try:
        time.sleep(60)
    finally:
        c.close()


SCENARIOS = {name[3:]: f for name, f in sorted(globals().items()) if name.startswith("sc_")}


def main(argv):
    if len(argv) == 1 and argv[0] == "--list":
        for name, f in SCENARIOS.items():
            print(f"{name}: {f.__doc__.splitlines()[0]}")
        return 0
    if len(argv) not in (2, 3) or argv[1] not in SCENARIOS:
        print("usage: nbd_client.py SOCKET SCENARIO [IMAGE]; scenarios: " + " ".join(SCENARIOS),
              file=sys.stderr)
        return 2
    try:
        SCENARIOS[argv[1]](argv[0], argv[2] if len(argv) == 3 else None)
    except Fail as e:
        print(f"nbd_client: {argv[1]}: {e}", file=sys.stderr)
        return 1
    except (Closed, OSError) as e:
        print(f"nbd_client: {argv[1]}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
