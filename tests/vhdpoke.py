#!/usr/bin/env python3
"""vhdpoke.py — look at and damage VHD ("vpc") images for tests/test-vhd.sh.

    vhdpoke.py info FILE                  shell assignments (v_*=...): file
                                          size, footer fields, the dynamic
                                          header's BAT offset, entries and
                                          block size, the first allocated
                                          BAT index and its sector
    vhdpoke.py footer FILE WHERE FIELD VALUE [--keep-sum]
                                          set a footer field in the copy at
                                          the start, at the end, or both
                                          (WHERE: start | end | both) and
                                          fix its checksum (unless
                                          --keep-sum).  FIELD: cookie (text),
                                          app (text, \\xNN escapes), orig,
                                          cur, chs (C,H,S), type, offset
                                          (data offset), checksum
    vhdpoke.py header FILE FIELD VALUE [--keep-sum]
                                          set a dynamic-header field and fix
                                          its checksum: cookie, table,
                                          entries, block, checksum
    vhdpoke.py bat FILE INDEX VALUE       set BAT entry INDEX (a sector
                                          number, 0xffffffff unallocated)
    vhdpoke.py fuzz FILE SEED             damage FILE in place, seeded: one to
                                          four of: a byte of the footer copy,
                                          of the dynamic header or of the
                                          trailing footer changed (mostly
                                          with the checksum fixed, so that
                                          the damage gets past it), a BAT
                                          entry set to a hostile sector, the
                                          file cut short

Layout: Microsoft "Virtual Hard Disk Image Format Specification" (footer,
dynamic disk header, BAT; big-endian; checksum = one's complement of the
byte sum with the checksum field taken as zero).  Thread model: none.
"""
import os
import random
import struct
import sys

FOOTER = {            # field: (offset, struct format)
    "offset": (16, ">Q"),
    "orig": (40, ">Q"),
    "cur": (48, ">Q"),
    "type": (60, ">I"),
    "checksum": (64, ">I"),
}
HEADER = {
    "table": (16, ">Q"),
    "entries": (28, ">I"),
    "block": (32, ">I"),
    "checksum": (36, ">I"),
}


def checksum(buf, at):
    b = bytearray(buf)
    b[at:at + 4] = bytes(4)
    return ~sum(b) & 0xffffffff


def num(s):
    return int(s, 0)


class Image:
    """Reads and writes pieces of the file in place (images may be large
    and sparse: never read or rewrite them whole)."""

    def __init__(self, path):
        self.f = open(path, "r+b")
        self.f.seek(0, 2)
        self.size = self.f.tell()

    def read(self, off, n):
        self.f.seek(off)
        return bytearray(self.f.read(n).ljust(n, b"\0"))

    def write(self, off, b):
        self.f.seek(off)
        self.f.write(b)

    def footer_at(self):
        """The footer qemu reads: the copy at 0 when it has the cookie, else the end."""
        return 0 if self.read(0, 8) == b"conectix" else self.size - 512

    def header_at(self):
        return struct.unpack(">Q", self.read(self.footer_at() + 16, 8))[0]


def set_field(d, table, field, value):
    if field == "cookie":
        d[0:8] = value.encode().ljust(8, b"\0")[:8]
    elif field == "app":
        d[28:32] = value.encode("latin1").decode("unicode_escape").encode("latin1")
    elif field == "chs":
        c, h, s = (num(x) for x in value.split(","))
        d[56:60] = struct.pack(">HBB", c, h, s)
    else:
        off, fmt = table[field]
        d[off:off + struct.calcsize(fmt)] = struct.pack(fmt, num(value))


def fuzz(img, r):
    hdr = img.header_at()
    table, = struct.unpack(">Q", img.read(hdr + 16, 8))
    entries, = struct.unpack(">I", img.read(hdr + 28, 4))
    for _ in range(r.randint(1, 4)):
        k = r.random()
        if k < 0.55:
            # a structure with a checksum: footer copy, header, trailing footer
            base, size, at = r.choice([(0, 512, 64), (hdr, 1024, 36),
                                       (img.size - 512, 512, 64)])
            d = img.read(base, size)
            i = r.choice([r.randrange(size), r.randrange(16, 72)])  # the fields, mostly
            d[i] = r.choice([0, 0xff, 1, 0x80, r.randrange(256)])
            if r.random() < 0.85:
                d[at:at + 4] = struct.pack(">I", checksum(d, at))
            img.write(base, d)
        elif k < 0.9 and entries:
            n = min(entries, 64)
            bat = [struct.unpack(">I", img.read(table + 4 * i, 4))[0] for i in range(n)]
            used = [e for e in bat if e != 0xffffffff] or [0]
            v = r.choice([0, 1, 2, 3, 4, r.randrange(1 << 32),
                          img.size // 512 - r.randrange(1, 4200), 0xfffffffe, 0xffffffff,
                          r.choice(used), r.choice(used) + r.randrange(-8, 9)])
            img.write(table + 4 * r.randrange(n), struct.pack(">I", v & 0xffffffff))
        else:
            img.f.flush()
            img.size = r.randrange(img.size)
            os.ftruncate(img.f.fileno(), img.size)
            if img.size < 1024:
                return


def main(argv):
    cmd, img = argv[1], Image(argv[2])
    keep = "--keep-sum" in argv
    if cmd == "info":
        f = img.read(img.footer_at(), 512)
        hdr = struct.unpack(">Q", f[16:24])[0]
        print(f"v_fsize={img.size}")
        print(f"v_type={struct.unpack('>I', f[60:64])[0]}")
        print(f"v_cur={struct.unpack('>Q', f[48:56])[0]}")
        print(f"v_hdr={hdr}")
        if f[60:64] != b"\0\0\0\2" and hdr + 1024 <= img.size:
            h = img.read(hdr, 1024)
            table, = struct.unpack(">Q", h[16:24])
            entries, block = struct.unpack(">II", h[28:36])
            print(f"v_bat={table}")
            print(f"v_entries={entries}")
            print(f"v_block={block}")
            bat = img.read(table, 4 * entries)
            first = next((i for i in range(entries) if bat[4 * i:4 * i + 4] != b"\xff" * 4), -1)
            print(f"v_first={first}")
            if first >= 0:
                print(f"v_first_sector={struct.unpack('>I', bat[4 * first:4 * first + 4])[0]}")
    elif cmd == "footer":
        where, field, value = argv[3], argv[4], argv[5]
        bases = ([0] if where in ("start", "both") else []) + \
                ([img.size - 512] if where in ("end", "both") else [])
        for base in bases:
            d = img.read(base, 512)
            set_field(d, FOOTER, field, value)
            if not keep and field != "checksum":
                d[64:68] = struct.pack(">I", checksum(d, 64))
            img.write(base, d)
    elif cmd == "header":
        field, value = argv[3], argv[4]
        base = img.header_at()
        d = img.read(base, 1024)
        set_field(d, HEADER, field, value)
        if not keep and field != "checksum":
            d[36:40] = struct.pack(">I", checksum(d, 36))
        img.write(base, d)
    elif cmd == "bat":
        table, = struct.unpack(">Q", img.read(img.header_at() + 16, 8))
        img.write(table + 4 * num(argv[3]), struct.pack(">I", num(argv[4])))
    elif cmd == "fuzz":
        fuzz(img, random.Random(num(argv[3])))
    else:
        print(f"vhdpoke.py: unknown command {cmd}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
