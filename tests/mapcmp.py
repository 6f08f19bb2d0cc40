#!/usr/bin/env python3
"""mapcmp.py — compare two allocation maps in the shape of
`qemu-img map --output=json`: the oracle (qemu's) and ours (`bftest map`).

    mapcmp.py [--size N] ORACLE.json OURS.json

Both lists are coalesced first: adjacent entries (one starting where the
previous ends) with equal (depth, present, zero, data) become one, because
qemu splits runs where its L2 tables or host offsets change and bftest does
not.  "offset" (and any other key) is ignored.  Each list must cover the disk
from 0 without gaps (to --size when given).

One qemu habit is undone in the oracle (the first file) before comparing:
qemu reports an allocated data cluster as "data": true, "zero": true when the
cluster's host range is a hole in the image file (it looks into the file when
it believes the image was preallocated, a heuristic that depends on how
sparse the file is and on the file system).  bftest does not look into the
file under a qcow2 cluster, so such entries count as "zero": false.  The
combination data+zero cannot mean anything else in qemu's output.

Exit status 0 when the maps are equal; 1 with the first difference on stdout;
2 on unreadable input.
"""
import json
import sys

KEYS = ("depth", "present", "zero", "data")


def load(path):
    try:
        with open(path) as f:
            text = f.read()
        entries = json.loads(text) if text.strip() else []
    except (OSError, ValueError) as e:
        print(f"mapcmp: {path}: {e}")
        sys.exit(2)
    if not isinstance(entries, list):
        print(f"mapcmp: {path}: not a JSON list")
        sys.exit(2)
    return entries


def coalesce(path, entries, size, oracle=False):
    out = []
    pos = 0
    for i, e in enumerate(entries):
        try:
            start, length = int(e["start"]), int(e["length"])
            key = tuple(e[k] for k in KEYS)
            if oracle and e["present"] and e["data"] and e["zero"]:
                key = (e["depth"], True, False, True)
        except (KeyError, TypeError, ValueError) as err:
            print(f"mapcmp: {path}: entry {i} is malformed ({err}): {e}")
            sys.exit(1)
        if start != pos:
            print(f"mapcmp: {path}: entry {i} starts at {start}, expected {pos} "
                  f"(gap or overlap): {e}")
            sys.exit(1)
        if length <= 0:
            print(f"mapcmp: {path}: entry {i} has length {length}: {e}")
            sys.exit(1)
        if out and out[-1][2] == key:
            out[-1][1] += length
        else:
            out.append([start, length, key])
        pos = start + length
    if size is not None and pos != size:
        print(f"mapcmp: {path}: the map covers {pos} bytes, the disk has {size}")
        sys.exit(1)
    return out


def show(ent):
    if ent is None:
        return "(nothing)"
    start, length, key = ent
    return (f"start {start} length {length} end {start + length}: "
            + ", ".join(f"{k}={json.dumps(v)}" for k, v in zip(KEYS, key)))


def main(argv):
    size = None
    if len(argv) >= 2 and argv[0] == "--size":
        size = int(argv[1], 0)
        argv = argv[2:]
    if len(argv) != 2:
        print("usage: mapcmp.py [--size N] ORACLE.json OURS.json")
        return 2
    a = coalesce(argv[0], load(argv[0]), size, oracle=True)
    b = coalesce(argv[1], load(argv[1]), size)
    for i in range(max(len(a), len(b))):
        ea = a[i] if i < len(a) else None
        eb = b[i] if i < len(b) else None
        if ea != eb:
            print(f"maps differ at run {i}:")
            print(f"  {argv[0]}: {show(ea)}")
            print(f"  {argv[1]}: {show(eb)}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
