#!/usr/bin/env python3
"""qio_ops.py — seeded data for the format tests' qemu-io writes.

  qio_ops.py patterns DIR SEED
      DIR/pat1: 4093 seeded random bytes; DIR/pat2: 65521 bytes of a slow
      pattern (sizes prime, so writes of them are never aligned).
  qio_ops.py ops SEED SIZE COUNT UNIT ZERO [ALIGNED] PAT...
      COUNT qemu-io write commands, one a line, at scattered offsets and
      lengths (short, up to 3 UNITs, 1 to 9 UNITs: unaligned and crossing
      the format's allocation units) into a disk of SIZE bytes: a fraction
      ZERO (0..1) writes zeros (write -z; with ALIGNED=1 half of those on
      UNIT boundaries), the rest data from the PAT files or a byte pattern;
      then the first 1000 and the last 1536 bytes of the disk.
"""
import random
import sys


def patterns(d, seed):
    r = random.Random(int(seed))
    open(f"{d}/pat1", "wb").write(r.randbytes(4093))
    open(f"{d}/pat2", "wb").write(bytes((i * 13 + i // 241) & 0xff for i in range(65521)))


def ops(seed, size, count, unit, zero, aligned, pats):
    r = random.Random(seed)
    for _ in range(count):
        k = r.random()
        ln = min(size, r.choice([r.randint(1, 700), r.randint(1, 3 * unit),
                                 r.randint(unit, 9 * unit)]))
        off = r.randint(0, size - ln)
        if k < zero:
            if aligned and k < zero / 2:
                a = off // unit * unit
                print(f"write -q -z {a} {min(size - a, (ln // unit + 1) * unit)}")
            else:
                print(f"write -q -z {off} {ln}")
        elif k < zero + (1 - zero) / 2:
            print(f"write -q -s {r.choice(pats)} {off} {ln}")
        else:
            print(f"write -q -P {r.randint(1, 255)} {off} {ln}")
    print(f"write -q -P 0x5a 0 {min(size, 1000)}")
    print(f"write -q -P 0xa5 {size - min(size, 1536)} {min(size, 1536)}")


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[:1] == ["patterns"] and len(a) == 3:
        patterns(a[1], a[2])
    elif a[:1] == ["ops"] and len(a) >= 7:
        ops(int(a[1]), int(a[2]), int(a[3]), int(a[4]), float(a[5]), a[6] == "1", a[7:])
    else:
        sys.exit(__doc__)
