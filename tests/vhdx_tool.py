#!/usr/bin/env python3
"""vhdx_tool.py — an independent reading of VHDX images for tests/test-vhdx.sh
(standard library only): the allocation map the BAT describes, checks of a
map against raw bytes, and edits that damage or reshape an image (with the
CRC-32C checksums fixed up where the edit should pass them).

    vhdx_tool.py map IMAGE              JSON map in `qemu-img map` shape
    vhdx_tool.py zerocheck MAP.json RAW every range MAP calls zero is zero in RAW
    vhdx_tool.py edit IMAGE WHAT        damage/reshape IMAGE in place (see EDITS)

Only images without a pending log are read (the tests replay nothing here).
"""
import json
import struct
import sys

MiB = 1 << 20
BAT_GUID = bytes.fromhex("6677c22d23f600429d64115e9bfd4a08")
MD_GUID = bytes.fromhex("06a27c8b90479a4bb8fe575f050f886e")
FILE_PARAMS = bytes.fromhex("3767a1ca36fa434db3b633f0aa44e76b")
DISK_SIZE = bytes.fromhex("2442a52f1bcd7648b2115dbed83bf4b8")
LOGICAL = bytes.fromhex("1dbf41816fa90947ba47f233a8faab5f")

_T = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    _T.append(c)


def crc32c(b):
    c = 0xFFFFFFFF
    for x in b:
        c = _T[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def fix_crc(buf, off, size):
    """Recompute the checksum (at +4) of the structure at @off, @size bytes."""
    buf[off + 4:off + 8] = b"\0\0\0\0"
    buf[off + 4:off + 8] = struct.pack("<I", crc32c(bytes(buf[off:off + size])))


class Image:
    def __init__(self, path):
        self.path = path
        self.b = bytearray(open(path, "rb").read())
        b = self.b
        seqs = []
        for h in (64 << 10, 128 << 10):
            ok = b[h:h + 4] == b"head" and crc32c(bytes(b[h:h + 4] + b"\0" * 4 + b[h + 8:h + 4096])) == \
                struct.unpack_from("<I", b, h + 4)[0]
            seqs.append(struct.unpack_from("<Q", b, h + 8)[0] if ok else -1)
        self.cur = (64 << 10) if seqs[0] >= seqs[1] else (128 << 10)
        rt = 192 << 10
        n = struct.unpack_from("<I", b, rt + 8)[0]
        for i in range(n):
            e = rt + 16 + 32 * i
            off, ln = struct.unpack_from("<QI", b, e + 16)
            if b[e:e + 16] == BAT_GUID:
                self.bat_off, self.bat_len, self.bat_rt = off, ln, e
            elif b[e:e + 16] == MD_GUID:
                self.md_off = off
        self.items = {}
        n = struct.unpack_from("<H", b, self.md_off + 10)[0]
        for i in range(n):
            e = self.md_off + 32 + 32 * i
            self.items[bytes(b[e:e + 16])] = self.md_off + struct.unpack_from("<I", b, e + 16)[0]
        self.block = struct.unpack_from("<I", b, self.items[FILE_PARAMS])[0]
        self.size = struct.unpack_from("<Q", b, self.items[DISK_SIZE])[0]
        self.lsec = struct.unpack_from("<I", b, self.items[LOGICAL])[0]

    def chunk(self, lsec=None):
        return (1 << 23) * (lsec or self.lsec) // self.block

    def nblocks(self):
        return (self.size + self.block - 1) // self.block

    def bat_index(self, blk, lsec=None):
        return blk + blk // self.chunk(lsec)

    def entry(self, blk):
        return struct.unpack_from("<Q", self.b, self.bat_off + 8 * self.bat_index(blk))[0]

    def set_entry(self, blk, v, lsec=None):
        struct.pack_into("<Q", self.b, self.bat_off + 8 * self.bat_index(blk, lsec), v)

    def save(self):
        open(self.path, "r+b").write(self.b)


def cmd_map(path):
    img = Image(path)
    out = []
    for blk in range(img.nblocks()):
        st = img.entry(blk) & 7
        start = blk * img.block
        ln = min(img.block, img.size - start)
        if st == 6:
            key = (True, False, True)
        elif st == 2:
            key = (True, True, False)
        else:
            key = (False, True, False)
        if out and out[-1]["key"] == key:
            out[-1]["length"] += ln
        else:
            out.append({"start": start, "length": ln, "key": key})
    print(json.dumps([{"start": e["start"], "length": e["length"], "depth": 0,
                       "present": e["key"][0], "zero": e["key"][1], "data": e["key"][2]}
                      for e in out]))


def cmd_zerocheck(mapfile, raw):
    m = json.load(open(mapfile))
    with open(raw, "rb") as f:
        for e in m:
            if not e["zero"]:
                continue
            f.seek(e["start"])
            left = e["length"]
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    break
                if chunk.count(0) != len(chunk):
                    print(f"range {e['start']}+{e['length']} is called zero but holds data")
                    sys.exit(1)
                left -= len(chunk)


def first_present(img):
    for blk in range(img.nblocks()):
        if img.entry(blk) & 7 == 6:
            return blk
    sys.exit("no present block")


def edit(path, what):
    img = Image(path)
    b = img.b
    other = (128 << 10) if img.cur == (64 << 10) else (64 << 10)
    if what == "hdr-cur-crc":          # damage the current header: the other is used
        b[img.cur + 1000] ^= 0xFF
    elif what == "hdr-both-crc":
        b[(64 << 10) + 1000] ^= 0xFF
        b[(128 << 10) + 1000] ^= 0xFF
    elif what == "hdr-same-seq":       # both valid, same sequence number, different content
        struct.pack_into("<Q", b, other + 8, struct.unpack_from("<Q", b, img.cur + 8)[0])
        b[other + 2000] ^= 1
        fix_crc(b, other, 4096)
    elif what == "rt1-crc":            # first region table damaged: the copy is used
        b[(192 << 10) + 5000] ^= 0xFF
    elif what == "rt-both-crc":
        b[(192 << 10) + 5000] ^= 0xFF
        b[(256 << 10) + 5000] ^= 0xFF
    elif what in ("bat-region-eof", "bat-region-header", "rt-count"):
        for rt in (192 << 10, 256 << 10):
            e = rt + (img.bat_rt - (192 << 10))
            if what == "bat-region-eof":
                struct.pack_into("<Q", b, e + 16, (len(b) + 64 * MiB) // MiB * MiB)
            elif what == "bat-region-header":
                struct.pack_into("<Q", b, e + 16, 0)
            else:
                struct.pack_into("<I", b, rt + 8, 5000)
            fix_crc(b, rt, 64 << 10)
    elif what == "bat-eof":
        blk = first_present(img)
        img.set_entry(blk, ((len(b) + 16 * MiB) // MiB << 20) | 6)
    elif what == "bat-huge":
        blk = first_present(img)
        img.set_entry(blk, (0xFFFFFFFFFFF << 20) | 6)
    elif what == "bat-header":
        blk = first_present(img)
        img.set_entry(blk, (0 << 20) | 6)
    elif what == "bat-bat":
        blk = first_present(img)
        img.set_entry(blk, img.bat_off | 6)
    elif what == "bat-state4":
        blk = first_present(img)
        img.set_entry(blk, img.entry(blk) & ~7 | 4)
    elif what == "bat-partial":
        blk = first_present(img)
        img.set_entry(blk, img.entry(blk) | 7)
    elif what == "block-3m":
        struct.pack_into("<I", b, img.items[FILE_PARAMS], 3 * MiB)
    elif what == "block-512m":
        struct.pack_into("<I", b, img.items[FILE_PARAMS], 512 * MiB)
    elif what == "block-0":
        struct.pack_into("<I", b, img.items[FILE_PARAMS], 0)
    elif what == "size-huge":
        struct.pack_into("<Q", b, img.items[DISK_SIZE], 1 << 62)
    elif what == "size-bat-short":       # a disk larger than its BAT region can map
        struct.pack_into("<Q", b, img.items[DISK_SIZE], img.bat_len // 8 * img.block * 2)
    elif what == "size-odd":
        struct.pack_into("<Q", b, img.items[DISK_SIZE], img.size - 100)
    elif what == "lsec-1024":
        struct.pack_into("<I", b, img.items[LOGICAL], 1024)
    elif what == "md-count":
        struct.pack_into("<H", b, img.md_off + 10, 65535)
    elif what == "md-item-outside":
        struct.pack_into("<I", b, img.md_off + 32 + 16, 0xFFFFFF00)
    elif what == "log-crc":               # damage every log entry: no valid sequence
        log_off = struct.unpack_from("<Q", b, img.cur + 72)[0]
        log_len = struct.unpack_from("<I", b, img.cur + 68)[0]
        for p in range(log_off, log_off + log_len, 4096):
            if b[p:p + 4] == b"loge":
                b[p + 200] ^= 0xFF
    elif what == "has-parent":
        p = img.items[FILE_PARAMS] + 4
        struct.pack_into("<I", b, p, struct.unpack_from("<I", b, p)[0] | 2)
    elif what == "sector4k":              # reshape as a 4096-byte logical sector disk
        ents = [img.entry(blk) for blk in range(img.nblocks())]
        b[img.bat_off:img.bat_off + img.bat_len] = bytes(img.bat_len)
        for blk, v in enumerate(ents):
            img.set_entry(blk, v, 4096)
        struct.pack_into("<I", b, img.items[LOGICAL], 4096)
    else:
        sys.exit(f"unknown edit {what}")
    img.save()


def main():
    a = sys.argv[1:]
    if len(a) == 2 and a[0] == "map":
        cmd_map(a[1])
    elif len(a) == 3 and a[0] == "zerocheck":
        cmd_zerocheck(a[1], a[2])
    elif len(a) == 3 and a[0] == "edit":
        edit(a[1], a[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
