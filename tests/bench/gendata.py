#!/usr/bin/python3
"""gendata.py SIZE_MIB OUT — write SIZE_MIB MiB of text-like, compressible data.

The data is English-looking text with no meaning: a vocabulary of 20 000
"words" (1-11 letters drawn with English letter frequencies), used with a
Zipf-like frequency (weight 1/rank^1.15), arranged into a pool of 65 536 lines
of 3-15 words; the output is lines drawn uniformly from the pool.  Each 64 KiB
cluster compresses about 3:1 with zlib level 6 (the bench prints the ratio
qemu-img actually achieved).  Seeded, so every run makes the same bytes.

Thread model: none.  Needs numpy (Debian's python3-numpy, pulled in by
python3-matplotlib); run with /usr/bin/python3.
"""
import random
import sys

import numpy as np


def main():
    size = int(sys.argv[1]) << 20
    out_path = sys.argv[2]
    rng = np.random.default_rng(8)
    nwords, nlines, zipf_a = 20000, 65536, 1.15
    letters = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz", dtype=np.uint8)
    freq = np.array([12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8,
                     2.4, 2.4, 2.2, 2.0, 2.0, 1.9, 1.5, 1.0, .8, .15, .15, .1, .07])
    freq /= freq.sum()
    wlen = rng.integers(1, 12, nwords)
    chars = rng.choice(letters, int(wlen.sum()), p=freq).tobytes()
    words, o = [], 0
    for n in wlen:
        words.append(chars[o:o + n])
        o += n
    weight = 1.0 / np.arange(1, nwords + 1) ** zipf_a
    weight /= weight.sum()
    nper = rng.integers(3, 16, nlines)
    pick = rng.choice(nwords, int(nper.sum()), p=weight)
    lines, o = [], 0
    for n in nper:
        lines.append(b" ".join(words[i] for i in pick[o:o + n]) + b"\n")
        o += n
    r = random.Random(8)
    idxs = range(nlines)
    written = 0
    with open(out_path, "wb") as f:
        buf = bytearray()
        while written < size:
            while len(buf) < (16 << 20):
                buf += b"".join([lines[i] for i in r.choices(idxs, k=50000)])
            n = min(16 << 20, size - written)
            f.write(buf[:n])
            del buf[:n]
            written += n


if __name__ == "__main__":
    main()
