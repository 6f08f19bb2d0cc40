#!/usr/bin/env python3
"""vdipoke.py — look at and damage VDI images for tests/test-vdi.sh.

  vdipoke.py info FILE               shell assignments: v_bmap (block map
                                     offset), v_data (data offset), v_blocks
                                     (map entries), v_first (first allocated
                                     block, by disk order), v_first_at (its
                                     number in the file), v_fsize
  vdipoke.py set FILE FIELD VALUE    write a header field (little-endian):
                                     version, type, bmap, data, sector, size,
                                     block, extra, blocks, allocated
  vdipoke.py uuid FILE WHICH HEX     set a UUID (32 hex digits): create (the
                                     image's), modify, link (a differencing
                                     image's parent's create UUID) or parent
                                     (that parent's modify UUID)
  vdipoke.py getuuid FILE WHICH      print a UUID as 32 hex digits
  vdipoke.py compose CHILD CHILD_RAW PARENT_RAW OUT
                                     what a differencing CHILD reads: its
                                     allocated blocks from CHILD_RAW (its
                                     bytes read as a base image), discarded
                                     ones as zeros, free ones from PARENT_RAW
                                     (zeros past its end)
  vdipoke.py bmap FILE INDEX VALUE   write block map entry INDEX
  vdipoke.py fuzz FILE SEED          damage FILE in place, seeded: one to
                                     three header fields or block map entries
                                     set to values near the edges, or the
                                     file cut short

Layout: the VDI 1.1 header as VirtualBox and qemu's block/vdi.c write it.
Thread model: none.
"""
import os
import random
import struct
import sys

FIELDS = {  # name: (offset, struct format)
    "signature": (0x40, "<I"), "version": (0x44, "<I"), "type": (0x4c, "<I"),
    "bmap": (0x154, "<I"), "data": (0x158, "<I"), "sector": (0x168, "<I"),
    "size": (0x170, "<Q"), "block": (0x178, "<I"), "extra": (0x17c, "<I"),
    "blocks": (0x180, "<I"), "allocated": (0x184, "<I"),
}
UUIDS = {"create": 0x188, "modify": 0x198, "link": 0x1a8, "parent": 0x1b8}


def num(s):
    return int(s, 0)


def get(f, name):
    off, fmt = FIELDS[name]
    f.seek(off)
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def put(f, name, value):
    off, fmt = FIELDS[name]
    f.seek(off)
    f.write(struct.pack(fmt, value & ((1 << (8 * struct.calcsize(fmt))) - 1)))


def info(path):
    with open(path, "rb") as f:
        bmap, data, blocks = get(f, "bmap"), get(f, "data"), get(f, "blocks")
        f.seek(bmap)
        raw = f.read(4 * blocks)
    entries = struct.unpack("<%dI" % (len(raw) // 4), raw)
    first = next((i for i, e in enumerate(entries) if e < 0xfffffffe), -1)
    print("v_bmap=%d v_data=%d v_blocks=%d v_first=%d v_first_at=%d v_fsize=%d" %
          (bmap, data, blocks, first, entries[first] if first >= 0 else -1,
           os.path.getsize(path)))


def fuzz(path, r):
    with open(path, "r+b") as f:
        blocks = get(f, "blocks")
        bmap = get(f, "bmap")
        for _ in range(r.randint(1, 3)):
            what = r.random()
            if what < 0.5:
                name = r.choice(sorted(FIELDS))
                size = 8 * struct.calcsize(FIELDS[name][1])
                value = r.choice([0, 1, 511, 512, 4096, 1 << 20, (1 << 20) + 1,
                                  (1 << size) - 1, (1 << size) - 2, 1 << (size - 1),
                                  get(f, name) + r.randint(-3, 3), r.getrandbits(size)])
                put(f, name, value)
            elif what < 0.9 and blocks:
                f.seek(bmap + 4 * r.randrange(min(blocks, 1 << 16)))
                value = r.choice([0, 1, blocks - 1, blocks, 0xfffffffe, 0xffffffff,
                                  0x7fffffff, r.getrandbits(32)])
                f.write(struct.pack("<I", value & 0xffffffff))
            else:
                size = os.fstat(f.fileno()).st_size
                f.truncate(r.randrange(size + 1))


def compose(child, child_raw, parent_raw, out):
    with open(child, "rb") as f:
        bmap, blocks = get(f, "bmap"), get(f, "blocks")
        f.seek(bmap)
        entries = struct.unpack("<%dI" % blocks, f.read(4 * blocks))
    bs = 1 << 20
    with open(child_raw, "rb") as c, open(parent_raw, "rb") as p, open(out, "wb") as o:
        size = os.fstat(c.fileno()).st_size
        for i in range((size + bs - 1) // bs):
            n = min(bs, size - i * bs)
            if entries[i] < 0xfffffffe:
                c.seek(i * bs)
                data = c.read(n)
            elif entries[i] == 0xfffffffe:
                data = bytes(n)
            else:
                p.seek(i * bs)
                data = p.read(n)
                data += bytes(n - len(data))
            o.write(data)


def main(argv):
    cmd, path = argv[1], argv[2]
    if cmd == "info":
        info(path)
    elif cmd == "set":
        with open(path, "r+b") as f:
            put(f, argv[3], num(argv[4]))
    elif cmd == "uuid":
        with open(path, "r+b") as f:
            f.seek(UUIDS[argv[3]])
            f.write(bytes.fromhex(argv[4]))
    elif cmd == "getuuid":
        with open(path, "rb") as f:
            f.seek(UUIDS[argv[3]])
            print(f.read(16).hex())
    elif cmd == "compose":
        compose(path, argv[3], argv[4], argv[5])
    elif cmd == "bmap":
        with open(path, "r+b") as f:
            f.seek(get(f, "bmap") + 4 * num(argv[3]))
            f.write(struct.pack("<I", num(argv[4]) & 0xffffffff))
    elif cmd == "fuzz":
        fuzz(path, random.Random(num(argv[3])))
    else:
        sys.exit("vdipoke.py: unknown command %r" % cmd)


if __name__ == "__main__":
    main(sys.argv)
