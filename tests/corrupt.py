#!/usr/bin/env python3
"""corrupt.py — poke and fuzz qcow2 images for tests/test-qcow2-bad.sh.

  corrupt.py info FILE                 shell assignments (q_*=...) describing
                                       the header and where its tables are
  corrupt.py l2entry FILE GUEST_OFF    file offset of the L2 entry for GUEST_OFF
  corrupt.py poke FILE OFF TYPE VALUE  write VALUE at OFF; TYPE is u8, be16,
                                       be32, be64 or hex (VALUE = hex bytes)
  corrupt.py addfeature FILE TYPE BIT NAME
                                       append a feature-name-table header
                                       extension (0x6803f857) in the header
                                       cluster, before the end marker
  corrupt.py fuzz --bftest PATH --seed N --count N --timeout S --work DIR IMAGE
                                       corrupt copies of IMAGE COUNT times
                                       (seeded, deterministic), run "bftest
                                       info", "cat" and "map" on each; print
                                       one line per problem and a summary;
                                       exit 1 when any run crashed, hung,
                                       exited other than 0/1 or made a
                                       sanitizer report

Layout: qemu docs/interop/qcow2.txt.  Thread model: none.
"""
import os
import random
import re
import shutil
import struct
import subprocess
import sys

OFFSET_MASK = 0x00fffffffffffe00


def be(data, off, n):
    return int.from_bytes(data[off:off + n], "big")


def header(path):
    with open(path, "rb") as f:
        h = f.read(1 << 21)
    fsize = os.path.getsize(path)
    q = {
        "version": be(h, 4, 4),
        "backing_file_offset": be(h, 8, 8),
        "backing_file_size": be(h, 16, 4),
        "cluster_bits": be(h, 20, 4),
        "size": be(h, 24, 8),
        "crypt_method": be(h, 32, 4),
        "l1_size": be(h, 36, 4),
        "l1_offset": be(h, 40, 8),
        "refcount_table_offset": be(h, 48, 8),
        "refcount_table_clusters": be(h, 56, 4),
        "nb_snapshots": be(h, 60, 4),
        "snapshots_offset": be(h, 64, 8),
        "file_size": fsize,
    }
    q["cluster_size"] = 1 << min(q["cluster_bits"], 30)
    if q["version"] >= 3:
        q["incompat"] = be(h, 72, 8)
        q["header_length"] = be(h, 100, 4)
    else:
        q["incompat"] = 0
        q["header_length"] = 72
    # walk the header extensions to the end marker
    off = q["header_length"]
    end = q["backing_file_offset"] or q["cluster_size"]
    exts = []
    while off + 8 <= end:
        t, n = be(h, off, 4), be(h, off + 4, 4)
        if t == 0:
            break
        exts.append((t, off))
        off += 8 + ((n + 7) & ~7)
    q["ext_end"] = off
    q["first_ext"] = exts[0][1] if exts else 0
    q["extended_l2"] = 1 if q["incompat"] & (1 << 4) else 0
    q["l2_entry_size"] = 16 if q["extended_l2"] else 8
    if q["nb_snapshots"]:
        s = q["snapshots_offset"]
        with open(path, "rb") as f:
            f.seek(s)
            e = f.read(40)
        q["snap0_l1_offset"] = be(e, 0, 8)
        q["snap0_l1_size"] = be(e, 8, 4)
        q["snap0_extra_off"] = s + 36       # extra_data_size field
    return q


def l2entry(path, guest):
    q = header(path)
    cb = q["cluster_bits"]
    l2_bits = cb - (4 if q["extended_l2"] else 3)
    idx1 = guest >> (cb + l2_bits)
    with open(path, "rb") as f:
        f.seek(q["l1_offset"] + 8 * idx1)
        l2 = int.from_bytes(f.read(8), "big") & OFFSET_MASK
    if not l2:
        sys.exit("no L2 table for guest offset %d" % guest)
    idx2 = (guest >> cb) & ((1 << l2_bits) - 1)
    return l2 + idx2 * q["l2_entry_size"], idx1


def poke(path, off, typ, value):
    if typ == "hex":
        data = bytes.fromhex(value)
    else:
        n = {"u8": 1, "be16": 2, "be32": 4, "be64": 8}[typ]
        v = int(value, 0) & ((1 << (8 * n)) - 1)    # shells give 2^63 as negative
        data = v.to_bytes(n, "big")
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def addfeature(path, ftype, bit, name):
    q = header(path)
    off = q["ext_end"]
    entry = bytes([ftype, bit]) + name.encode()[:46].ljust(46, b"\0")
    ext = struct.pack(">II", 0x6803f857, len(entry)) + entry + b"\0" * 8
    limit = q["backing_file_offset"] or q["cluster_size"]
    if off + len(ext) > limit:
        sys.exit("no room for a feature table in the header cluster")
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(ext)


# ---------------------------------------------------------------- fuzzing

SAN_RE = re.compile(rb"ERROR: (Address|Leak)Sanitizer|runtime error:|"
                    rb"SUMMARY: UndefinedBehaviorSanitizer")

INTERESTING32 = [0, 1, 0x7f, 0x80, 0xff, 0x100, 0x200, 0x1000, 0x7fff, 0x8000, 0xffff,
                 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff]


def regions(path):
    """Where metadata lives: header area, L1, L2 tables, snapshot table,
    refcount table — (start, length) pairs inside the file."""
    q = header(path)
    cs = q["cluster_size"] if q["cluster_bits"] <= 21 else 512
    fsize = q["file_size"]
    reg = [(0, min(512, fsize)), (0, min(cs, fsize))]
    for key, ln in (("l1_offset", q["l1_size"] * 8),
                    ("refcount_table_offset", 8 * 64),
                    ("snapshots_offset", 512)):
        o = q[key]
        if 0 < o < fsize and ln:
            reg.append((o, min(ln, fsize - o)))
    if 0 < q["l1_offset"] < fsize:
        with open(path, "rb") as f:
            f.seek(q["l1_offset"])
            l1 = f.read(min(q["l1_size"], 64) * 8)
        for i in range(0, len(l1), 8):
            l2 = be(l1, i, 8) & OFFSET_MASK
            if 0 < l2 < fsize:
                reg.append((l2, min(cs, fsize - l2)))
                reg.extend(compressed_units(path, q, l2, cs))
    return reg


def compressed_units(path, q, l2, cs):
    """(offset, length) of the compressed data an L2 table points to, so the
    decompressors see damaged input too."""
    cb = q["cluster_bits"]
    if not 9 <= cb <= 21:
        return []
    shift = 62 - (cb - 8)
    out = []
    with open(path, "rb") as f:
        f.seek(l2)
        t = f.read(cs)
    for i in range(0, len(t) - 7, q["l2_entry_size"]):
        e = be(t, i, 8)
        if e & (1 << 62):
            off = e & ((1 << shift) - 1)
            n = (((e >> shift) & ((1 << (cb - 8)) - 1)) + 1) * 512 - (off & 511)
            if off < q["file_size"]:
                out.append((off, min(n, q["file_size"] - off)))
    return out[:16]


def mutate(data, rng, reg):
    start, ln = rng.choice(reg)
    if ln <= 0:
        return
    off = start + rng.randrange(ln)
    kind = rng.randrange(6)
    if kind == 0:                                   # random byte
        data[off] = rng.randrange(256)
    elif kind == 1:                                 # one bit flipped
        data[off] ^= 1 << rng.randrange(8)
    elif kind == 2:                                 # 0x00 or 0xff run
        n = rng.choice((1, 2, 4, 8))
        b = rng.choice((0, 0xff))
        for i in range(off, min(off + n, len(data))):
            data[i] = b
    elif kind == 3:                                 # interesting 32-bit value, aligned
        off &= ~3
        v = rng.choice(INTERESTING32)
        data[off:off + 4] = v.to_bytes(4, "big")[:len(data) - off]
    elif kind == 4:                                 # interesting 64-bit value, aligned
        off &= ~7
        hi = rng.choice(INTERESTING32)
        lo = rng.choice(INTERESTING32)
        v = (hi << 32 | lo) if rng.randrange(2) else (rng.randrange(1 << 64))
        data[off:off + 8] = v.to_bytes(8, "big")[:len(data) - off]
    else:                                           # flag bits of a table entry
        off &= ~7
        b = rng.choice((0x80, 0x40, 0xc0, 0x01))
        i = off if b != 0x01 else off + 7
        if i < len(data):
            data[i] ^= b


def fuzz(args):
    import argparse
    p = argparse.ArgumentParser(prog="corrupt.py fuzz")
    p.add_argument("--bftest", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--timeout", type=float, default=20)
    p.add_argument("--work", required=True)
    p.add_argument("image")
    a = p.parse_args(args)
    rng = random.Random(a.seed)
    with open(a.image, "rb") as f:
        orig = f.read()
    reg = regions(a.image)
    os.makedirs(a.work, exist_ok=True)
    # Next to the image, so that a backing file it names still resolves.
    work = os.path.join(os.path.dirname(os.path.abspath(a.image)),
                        "fuzz-" + os.path.basename(a.image))
    problems = 0
    counts = {0: 0, 1: 0}
    for i in range(a.count):
        data = bytearray(orig)
        for _ in range(1 + rng.randrange(4)):
            mutate(data, rng, reg)
        with open(work, "wb") as f:
            f.write(data)
        big = False
        for cmd in (["info"], ["cat"], ["map"]):
            argv = [a.bftest] + cmd + [work]
            if cmd == ["cat"] and big:
                # A corrupted but legal virtual size can be huge: read both
                # ends instead of the whole disk.
                argv = None
            if argv is None:
                runs = [[a.bftest, "read", work, "0", str(16 << 20)],
                        [a.bftest, "read", work, str(size - (1 << 20)), str(1 << 20)]]
            else:
                runs = [argv]
            for r in runs:
                try:
                    pr = subprocess.run(r, stdout=subprocess.PIPE if cmd == ["info"]
                                        else subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, timeout=a.timeout)
                except subprocess.TimeoutExpired:
                    problems += 1
                    print("case %d: %s timed out after %gs" % (i, " ".join(r[1:2]), a.timeout))
                    keep(work, a.work, i)
                    continue
                rc = pr.returncode
                bad = rc not in (0, 1) or SAN_RE.search(pr.stderr)
                if rc == 1 and not pr.stderr.strip():
                    bad = True          # an error must come with a message
                if bad:
                    problems += 1
                    print("case %d: %s exited %d: %s" % (i, " ".join(r[1:2]), rc,
                          pr.stderr.decode(errors="replace").strip()[-600:]))
                    keep(work, a.work, i)
                else:
                    counts[rc] += 1
                if cmd == ["info"]:
                    if rc != 0:
                        break
                    m = re.search(rb"^size: (\d+)$", pr.stdout, re.M)
                    size = int(m.group(1)) if m else 0
                    big = size > (1 << 30)
            if cmd == ["info"] and rc != 0:
                break           # nothing opens: cat and map would say the same
    print("%d corrupted copies of %s: %d runs succeeded, %d failed cleanly, %d problems"
          % (a.count, os.path.basename(a.image), counts[0], counts[1], problems))
    return 1 if problems else 0


def keep(work, wdir, i):
    """Keep a copy of an image that caused a problem, for diagnosis."""
    dst = os.path.join(wdir, "problem-%d-%s" % (i, os.path.basename(work)))
    shutil.copy(work, dst)
    print("  kept as %s" % dst)


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd = argv[1]
    if cmd == "info":
        for k, v in header(argv[2]).items():
            print("q_%s=%d" % (k, v))
    elif cmd == "l2entry":
        off, _ = l2entry(argv[2], int(argv[3], 0))
        print(off)
    elif cmd == "poke":
        poke(argv[2], int(argv[3], 0), argv[4], argv[5])
    elif cmd == "addfeature":
        addfeature(argv[2], int(argv[3], 0), int(argv[4], 0), argv[5])
    elif cmd == "fuzz":
        return fuzz(argv[2:])
    else:
        sys.exit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
