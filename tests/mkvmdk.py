#!/usr/bin/env python3
"""mkvmdk.py — build vmdk images that qemu-img cannot write, together with
the bytes they must read as (known by construction).

    mkvmdk.py OUTDIR CASE      CASE: one of CASES below, or "bad" for all
                               the damaged images (listed in OUTDIR/bad.tsv)

A good case writes its files into OUTDIR and OUTDIR/CASE.expect (the whole
virtual disk as raw bytes); its top image is OUTDIR/CASE.vmdk.  The bad set
writes OUTDIR/bad-*.vmdk (plus extent files) and OUTDIR/bad.tsv, one
"image<TAB>command<TAB>regex" a line: the command (open = bftest info,
read = bftest cat) must fail with a message matching the regex.

Where the layouts come from:
  - descriptor text, the hosted sparse extent header ("KDMV",
    SparseExtentHeader), grain directory / grain tables, the redundant grain
    directory, zeroed-grain entries (GTE 1, flag bit 2), stream-optimized
    grain markers / metadata markers / footer, and the ESX Server sparse
    extent ("COWD", COWDisk_Header, 4096-entry grain tables): VMware
    "Virtual Disk Format 1.1" and "Virtual Disk Format 5.0" technical notes;
  - seSparse (ESXi 6.5+; no public spec): the constant and volatile headers
    and the grain-directory / grain-table entry encodings that qemu's
    block/vmdk.c reads (VMDKSESparseConstHeader, get_cluster_offset).
Everything is little-endian; offsets are in 512-byte sectors.
"""
import os
import random
import struct
import sys
import zlib

S = 512
ZERO = "zero"          # a zeroed grain (KDMV GTE 1) / seSparse zero grain
UNMAPPED = "unmapped"  # seSparse "SCSI unmapped" grain: reads as zero
GD_AT_END = 0xFFFFFFFFFFFFFFFF


def cdiv(a, b):
    return -(-a // b)


def pad(b, n=S):
    return b + bytes(-len(b) % n)


def rbytes(rng, n):
    return bytes(rng.getrandbits(8) for _ in range(n)) if n < 4096 else rng.randbytes(n)


# ------------------------------------------------------------ descriptor

def descriptor(create_type, extents, cid=0x12345678, parent_cid=0xFFFFFFFF, parent=None,
               nl="\n", extra=""):
    """extents: (access, sectors, type, file or None, offset or None)"""
    lines = ["# Disk DescriptorFile", "version=1", 'encoding="UTF-8"', f"CID={cid:08x}",
             f"parentCID={parent_cid:08x}", f'createType="{create_type}"']
    if parent is not None:
        lines.append(f'parentFileNameHint="{parent}"')
    lines += ["", "# Extent description"]
    for acc, n, typ, f, off in extents:
        ln = f"{acc} {n} {typ}"
        if f is not None:
            ln += f' "{f}"'
        if off is not None:
            ln += f" {off}"
        lines.append(ln)
    lines += ["", "# The Disk Data Base", "#DDB", "", 'ddb.virtualHWVersion = "4"',
              'ddb.adapterType = "ide"']
    return (nl.join(lines) + nl + extra).encode()


# ------------------------------------------------------ KDMV sparse extent

def kdmv_header(version, flags, cap, grain, desc_off, desc_size, gtes, rgd, gd, overhead,
                compress, nl_bytes=b"\n \r\n"):
    h = b"KDMV" + struct.pack("<IIQQQQIQQQ", version, flags, cap, grain, desc_off, desc_size,
                              gtes, rgd, gd, overhead)
    h += b"\0" + nl_bytes + struct.pack("<H", compress)
    return pad(h)


def marker(val, size, typ):
    return pad(struct.pack("<QII", val, size, typ))


def kdmv(cap, grains, grain=128, gtes=512, version=1, desc=None, desc_sectors=20, rgd=True,
         zero_grain=False, compress=False, markers=False, stream=False, zlevel=6,
         damage=None):
    """A hosted sparse extent of @cap sectors.  @grains maps a grain index to its
    bytes (the last grain may be short) or ZERO.  @stream: stream-optimized
    layout with the grain directory at the end and a footer (implies compress
    and markers).  Returns the file bytes; @damage(layout, buf) may poke it."""
    if stream:
        compress = markers = True
        rgd = False
    flags = 0x1 | (0x2 if rgd else 0) | (0x4 if zero_grain else 0) | \
        (0x10000 if compress else 0) | (0x20000 if markers else 0)
    n_gd = cdiv(cap, grain * gtes) if cap else 0
    gt_sec = cdiv(gtes * 4, S)
    gd_sec = cdiv(n_gd * 4, S)
    desc_off = 1 if desc is not None else 0
    if desc is not None:
        desc_sectors = max(desc_sectors, cdiv(len(desc), S))
    else:
        desc_sectors = 0
    pos = 1 + desc_sectors
    lay = {"n_gd": n_gd, "gt_sec": gt_sec}
    gts = [[0] * gtes for _ in range(n_gd)]
    out = bytearray()
    if not stream:
        if rgd:
            lay["rgd"] = pos
            pos += gd_sec
            lay["rgt"] = pos
            pos += n_gd * gt_sec
        lay["gd"] = pos
        pos += gd_sec
        lay["gt"] = pos
        pos += n_gd * gt_sec
        overhead = cdiv(pos, grain) * grain
    else:
        overhead = cdiv(pos, 128) * 128
    lay["overhead"] = overhead
    out += bytes(overhead * S)
    for gi in sorted(grains):
        data = grains[gi]
        t, k = divmod(gi, gtes)
        if data == ZERO:
            gts[t][k] = 1
            continue
        sec = len(out) // S
        if compress:
            z = zlib.compress(data, zlevel)
            if markers:
                out += pad(struct.pack("<QI", gi * grain, len(z)) + z)
            else:
                out += pad(z)
        else:
            out += pad(data, grain * S)
        gts[t][k] = sec
    if stream:
        gt_at = []
        for t in range(n_gd):
            if not any(gts[t]):
                gt_at.append(0)
                continue
            out += marker(gt_sec, 0, 1)
            gt_at.append(len(out) // S)
            out += pad(struct.pack(f"<{gtes}I", *gts[t]))
        out += marker(gd_sec, 0, 2)
        lay["gd"] = len(out) // S
        out += pad(struct.pack(f"<{n_gd}I", *gt_at))
        out += marker(1, 0, 3)
        out += kdmv_header(3, flags, cap, grain, desc_off, desc_sectors, gtes, 0, lay["gd"],
                           overhead, 1)
        out += marker(0, 0, 0)
        hdr = kdmv_header(3, flags, cap, grain, desc_off, desc_sectors, gtes, 0, GD_AT_END,
                          overhead, 1)
    else:
        for which in (["rgd", "gd"] if rgd else ["gd"]):
            base = lay["rgt" if which == "rgd" else "gt"]
            ents = [base + t * gt_sec for t in range(n_gd)]
            o = lay[which] * S
            out[o:o + n_gd * 4] = struct.pack(f"<{n_gd}I", *ents)
            for t in range(n_gd):
                o = (base + t * gt_sec) * S
                out[o:o + gtes * 4] = struct.pack(f"<{gtes}I", *gts[t])
        hdr = kdmv_header(version, flags, cap, grain, desc_off, desc_sectors, gtes,
                          lay.get("rgd", 0), lay["gd"], overhead, 1 if compress else 0)
    out[0:S] = hdr
    if desc is not None:
        out[S:S + len(desc)] = desc
    if damage:
        damage(lay, out)
    return bytes(out)


# ---------------------------------------------------- COWD (ESX) extent

def cowd(cap, grains, grain=16):
    """ESX Server sparse extent: 2048-byte header, grain directory at sector
    4, then 4096-entry grain tables, then grains."""
    gtes = 4096
    n_gd = cdiv(cap, grain * gtes)
    gd_sec = cdiv(n_gd * 4, S)
    gt_sec = gtes * 4 // S
    gd_off = 4
    gt_off = gd_off + gd_sec
    pos = gt_off + n_gd * gt_sec
    out = bytearray(pos * S)
    gts = [[0] * gtes for _ in range(n_gd)]
    for gi in sorted(grains):
        t, k = divmod(gi, gtes)
        gts[t][k] = len(out) // S
        out += pad(grains[gi], grain * S)
    hdr = b"COWD" + struct.pack("<IIIIIII", 1, 3, cap, grain, gd_off, n_gd, len(out) // S)
    hdr += struct.pack("<III", 0, 0, 0)          # root geometry (unused here)
    out[0:len(hdr)] = hdr
    out[gd_off * S:gd_off * S + n_gd * 4] = struct.pack(f"<{n_gd}I",
                                                       *[gt_off + t * gt_sec for t in range(n_gd)])
    for t in range(n_gd):
        o = (gt_off + t * gt_sec) * S
        out[o:o + gtes * 4] = struct.pack(f"<{gtes}I", *gts[t])
    return bytes(out)


# ------------------------------------------------------ seSparse extent

def sesparse(cap, grains, version=0x200000001, replay=0, bad_gd=False):
    """seSparse: 4 KiB grains, 4096-entry tables of u64.  GD entry
    0x1000000000000000 | table index; GT entry 0 unallocated, 0x1.. unmapped,
    0x2.. zero, 0x3.. allocated with the grain number split as qemu reads it."""
    grain, gtes = 8, 4096
    n_gd = cdiv(cap, grain * gtes)
    gd_off, gd_size = 4, cdiv(n_gd * 8, S)
    gt_off = gd_off + gd_size
    tables = sorted({gi // gtes for gi in grains})
    gt_size = len(tables) * 64
    grains_off = gt_off + gt_size
    gd = [0] * n_gd
    gts = {}
    for i, t in enumerate(tables):
        gd[t] = 0x1000000000000000 | i
        gts[t] = [0] * gtes
    data = bytearray()
    nxt = 0
    for gi in sorted(grains):
        t, k = divmod(gi, gtes)
        v = grains[gi]
        if v == ZERO:
            gts[t][k] = 0x2000000000000000
        elif v == UNMAPPED:
            gts[t][k] = 0x1000000000000000
        else:
            g = nxt
            nxt += 1
            gts[t][k] = 0x3000000000000000 | ((g & 0xFFF) << 48) | (g >> 12)
            data += pad(v, grain * S)
    if bad_gd and tables:
        gd[tables[0]] = 0x2000000000000000 | 0
    const = struct.pack("<QQQQQQQQQQ", 0xCAFEBABE, version, cap, grain, 64, 0, 0, 0, 0, 0)
    const += struct.pack("<QQQQQQ", 1, 1, 2, 1, 3, 1)                 # volatile, journal hdr, journal
    const += struct.pack("<QQQQ", gd_off, gd_size, gt_off, gt_size)
    const += struct.pack("<QQQQ", 0, 0, 0, 0)                         # free bitmap, backmap
    const += struct.pack("<QQ", grains_off, len(data) // S)
    vol = struct.pack("<QQQQ", 0xCAFECAFE, len(tables), 1, replay)
    out = bytearray(grains_off * S)
    out[0:S] = pad(const)
    out[S:2 * S] = pad(vol)
    out[gd_off * S:gd_off * S + n_gd * 8] = struct.pack(f"<{n_gd}Q", *gd)
    for i, t in enumerate(tables):
        o = (gt_off + i * 64) * S
        out[o:o + gtes * 8] = struct.pack(f"<{gtes}Q", *gts[t])
    return bytes(out + data)


# ------------------------------------------------------------ disk model

def overlay(disk, grains, grain_bytes, start=0, zero_means_zero=True):
    """Apply @grains (index -> bytes or ZERO/UNMAPPED) of an extent starting
    at byte @start to the expected disk."""
    for gi, v in grains.items():
        o = start + gi * grain_bytes
        n = min(grain_bytes, len(disk) - o)
        if v in (ZERO, UNMAPPED):
            disk[o:o + n] = bytes(n)
        else:
            disk[o:o + len(v)] = v


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def random_grains(rng, cap, grain, count, zero=0, last_short=True):
    """@count data grains and @zero zeroed grains at random indices."""
    n = cdiv(cap, grain)
    idx = rng.sample(range(n), min(n, count + zero))
    g = {}
    for k, gi in enumerate(idx):
        if k >= count:
            g[gi] = ZERO
            continue
        size = min(grain, cap - gi * grain) * S if last_short else grain * S
        g[gi] = rbytes(rng, size)
    return g


# ------------------------------------------------------------------ cases

def case_cowd(d, rng):
    """vmfsSparse delta (COWD extent) over a vmfs base (VMFS flat extent)."""
    cap = 40960                         # 20 MiB: five grain tables of 4096 1-KiB grains
    base = bytearray(rbytes(rng, cap * S))
    write(f"{d}/cowd-base-flat.vmdk", bytes(base))
    write(f"{d}/cowd-base.vmdk", descriptor("vmfs", [("RW", cap, "VMFS", "cowd-base-flat.vmdk", None)],
                                            cid=0xA1B2C3D4))
    grain = 2
    g = {gi: rbytes(rng, grain * S) for gi in rng.sample(range(cap // grain), 300)}
    g[cap // grain - 1] = rbytes(rng, grain * S)
    write(f"{d}/cowd-delta.vmdk", cowd(cap, g, grain))
    write(f"{d}/cowd.vmdk", descriptor("vmfsSparse", [("RW", cap, "VMFSSPARSE", "cowd-delta.vmdk", None)],
                                       cid=0x0BADF00D, parent_cid=0xA1B2C3D4,
                                       parent="cowd-base.vmdk"))
    overlay(base, g, grain * S)
    return bytes(base)


def case_sesparse(d, rng):
    """seSparse delta over a monolithicFlat base: data, zero and unmapped
    grains (both read as zero, not as the parent), across two grain tables."""
    cap = 2 * 32768 + 4096              # 32 MiB + 2 MiB: three grain tables
    base = bytearray(rbytes(rng, cap * S))
    write(f"{d}/se-base-flat.vmdk", bytes(base))
    write(f"{d}/se-base.vmdk", descriptor("monolithicFlat", [("RW", cap, "FLAT", "se-base-flat.vmdk", 0)],
                                          cid=0x5E5E5E5E))
    n = cap // 8
    idx = rng.sample(range(n), 120)
    g = {}
    for k, gi in enumerate(idx):
        g[gi] = ZERO if k % 7 == 0 else UNMAPPED if k % 11 == 0 else rbytes(rng, 4096)
    g[4096] = rbytes(rng, 4096)         # first grain of the second table
    g[4095] = rbytes(rng, 4096)         # last grain of the first
    write(f"{d}/se-sesparse.vmdk", sesparse(cap, g))
    write(f"{d}/sesparse.vmdk", descriptor("seSparse", [("RW", cap, "SESPARSE", "se-sesparse.vmdk", None)],
                                           cid=0x600D600D, parent_cid=0x5E5E5E5E,
                                           parent="se-base.vmdk"))
    overlay(base, g, 4096)
    return bytes(base)


def case_extents(d, rng):
    """A descriptor with every access mode and plain extent type, CRLF line
    ends, a zero-sized line, two extents in one file and a missing file
    behind a NOACCESS line (never opened)."""
    disk = bytearray()
    ext = []
    shared = rbytes(rng, 3000 * S)
    write(f"{d}/ext-shared.bin", shared)
    ext.append(("RW", 1000, "FLAT", "ext-shared.bin", 2000))          # second half first
    disk += shared[2000 * S:3000 * S]
    ext.append(("RDONLY", 1500, "FLAT", "ext-shared.bin", 100))
    disk += shared[100 * S:1600 * S]
    ext.append(("RW", 0, "FLAT", "ext-shared.bin", 0))                 # maps nothing
    ext.append(("NOACCESS", 777, "FLAT", "ext-does-not-exist.bin", 0))
    disk += bytes(777 * S)
    ext.append(("RW", 2048, "ZERO", None, None))
    disk += bytes(2048 * S)
    sp_cap = 3000                       # not a multiple of the grain: last grain short
    g = random_grains(rng, sp_cap, 128, 8, zero=2)
    write(f"{d}/ext-sparse.vmdk", kdmv(sp_cap, g, zero_grain=True, version=2))
    part = bytearray(sp_cap * S)
    overlay(part, g, 128 * S)
    ext.append(("RDONLY", sp_cap, "SPARSE", "ext-sparse.vmdk", None))
    disk += part
    vm = rbytes(rng, 1234 * S)
    write(f"{d}/ext vmfs.bin", vm)                                    # a space in the name
    ext.append(("RW", 1234, "VMFS", "ext vmfs.bin", None))
    disk += vm
    write(f"{d}/extents.vmdk", descriptor("monolithicFlat", ext, nl="\r\n"))
    return bytes(disk)


def rgd_image(rng, damage):
    cap = 8192 * 4                      # 16 MiB: four grain tables of 64 64-KiB grains
    g = random_grains(rng, cap, 128, 40)
    disk = bytearray(cap * S)
    overlay(disk, g, 128 * S)
    desc = descriptor("monolithicSparse", [("RW", cap, "SPARSE", "x.vmdk", None)])
    return kdmv(cap, g, gtes=64, desc=desc, damage=damage), bytes(disk)


def case_rgd(d, rng):
    """The primary grain directory holds garbage (offsets past the end of the
    file): the redundant one is used."""
    def damage(lay, out):
        o = lay["gd"] * S
        out[o:o + lay["n_gd"] * 4] = struct.pack(f"<{lay['n_gd']}I", *[0xFFFFFF00 + i for i in range(lay["n_gd"])])
    img, disk = rgd_image(rng, damage)
    write(f"{d}/rgd.vmdk", img)
    return disk


def case_rgd_zeroed(d, rng):
    """The primary grain directory sector was zeroed."""
    def damage(lay, out):
        o = lay["gd"] * S
        out[o:o + S] = bytes(S)
    img, disk = rgd_image(rng, damage)
    write(f"{d}/rgd-zeroed.vmdk", img)
    return disk


def case_rgd_gdoff(d, rng):
    """The header's primary grain directory offset points past the end."""
    def damage(lay, out):
        out[56:64] = struct.pack("<Q", 0x7FFFFFFF)
    img, disk = rgd_image(rng, damage)
    write(f"{d}/rgd-gdoff.vmdk", img)
    return disk


def case_rgd_gt(d, rng):
    """The primary grain tables hold garbage entries: each damaged entry is
    read from the redundant grain table."""
    def damage(lay, out):
        o = lay["gt"] * S
        n = lay["n_gd"] * lay["gt_sec"] * S // 4
        out[o:o + n * 4] = struct.pack(f"<{n}I", *[0xFFFFF000 + (i & 0xFFF) for i in range(n)])
    img, disk = rgd_image(rng, damage)
    write(f"{d}/rgd-gt.vmdk", img)
    return disk


def case_renamed(d, rng):
    """A monolithicSparse file renamed after creation: its embedded
    descriptor still names the old file."""
    cap = 4096
    g = random_grains(rng, cap, 128, 10)
    desc = descriptor("monolithicSparse", [("RW", cap, "SPARSE", "original-name.vmdk", None)])
    write(f"{d}/renamed.vmdk", kdmv(cap, g, desc=desc))
    disk = bytearray(cap * S)
    overlay(disk, g, 128 * S)
    return bytes(disk)


def case_cid(d, rng):
    """A delta disk whose parentCID does not match its parent's CID; the
    expected bytes are what it reads as when the check is skipped."""
    cap = 4096
    pg = random_grains(rng, cap, 128, 20)
    write(f"{d}/cid-parent.vmdk", kdmv(cap, pg, desc=descriptor(
        "monolithicSparse", [("RW", cap, "SPARSE", "cid-parent.vmdk", None)], cid=0x11111111)))
    cg = random_grains(rng, cap, 128, 6)
    write(f"{d}/cid.vmdk", kdmv(cap, cg, desc=descriptor(
        "monolithicSparse", [("RW", cap, "SPARSE", "cid.vmdk", None)], cid=0x33333333,
        parent_cid=0x22222222, parent="cid-parent.vmdk")))
    disk = bytearray(cap * S)
    overlay(disk, pg, 128 * S)
    overlay(disk, cg, 128 * S)
    return bytes(disk)


def case_stream(d, rng):
    """Stream-optimized as VMware writes it: header gdOffset GD_AT_END, the
    real header in the footer, markers everywhere, zlib grains; the capacity
    ends inside a grain; some grains hold zeros, some incompressible data."""
    cap = 20000
    g = random_grains(rng, cap, 128, 30)
    g[cap // 128] = rbytes(rng, (cap % 128) * S)          # the short last grain
    for k in list(g)[:3]:
        g[k] = bytes(len(g[k]))
    desc = descriptor("streamOptimized", [("RW", cap, "SPARSE", "stream.vmdk", None)])
    write(f"{d}/stream.vmdk", kdmv(cap, g, desc=desc, stream=True))
    disk = bytearray(cap * S)
    overlay(disk, g, 128 * S)
    return bytes(disk)


def case_geometry(d, rng):
    """Grain sizes and table sizes the header allows but qemu never writes:
    12 KiB grains (not a power of two), 100 entries a table, version 3
    uncompressed, capacity ending inside a grain; plus a compressed extent
    without markers."""
    cap = 7777
    g = random_grains(rng, cap, 24, 90)
    write(f"{d}/geo-a.vmdk", kdmv(cap, g, grain=24, gtes=100, version=3))
    cap2 = 5000
    g2 = random_grains(rng, cap2, 8, 60, zero=5)
    for k, v in g2.items():             # compressible, so that qemu (which passes only
        if v != ZERO:                   # one grain of input without markers) reads it too
            g2[k] = (v[:100] * 41)[:len(v)]
    write(f"{d}/geo-b.vmdk", kdmv(cap2, g2, grain=8, gtes=7, zero_grain=True, version=2,
                                  compress=True, markers=False, rgd=False))
    write(f"{d}/geometry.vmdk", descriptor("twoGbMaxExtentSparse", [
        ("RW", cap, "SPARSE", "geo-a.vmdk", None), ("RW", cap2, "SPARSE", "geo-b.vmdk", None)]))
    disk = bytearray((cap + cap2) * S)
    overlay(disk, g, 24 * S)
    overlay(disk, g2, 8 * S, start=cap * S)
    return bytes(disk)


CASES = {
    "cowd": case_cowd, "sesparse": case_sesparse, "extents": case_extents, "rgd": case_rgd,
    "rgd-zeroed": case_rgd_zeroed, "rgd-gdoff": case_rgd_gdoff, "rgd-gt": case_rgd_gt,
    "renamed": case_renamed, "cid": case_cid, "stream": case_stream, "geometry": case_geometry,
}


# -------------------------------------------------------------- bad set

def bad_set(d, rng):
    rows = []

    def bad(name, data, cmd, regex):
        write(f"{d}/{name}", data)
        rows.append((name, cmd, regex))

    cap = 4096
    g = random_grains(rng, cap, 128, 8)
    good_desc = descriptor("monolithicSparse", [("RW", cap, "SPARSE", "x.vmdk", None)])

    def poke(fn):
        def damage(lay, out):
            fn(lay, out)
        return kdmv(cap, g, desc=good_desc, rgd=False, damage=damage)

    def hdr_field(off, fmt, val):
        return poke(lambda lay, out: out.__setitem__(slice(off, off + struct.calcsize(fmt)),
                                                     struct.pack(fmt, val)))

    bad("bad-gd-past-eof.vmdk", hdr_field(56, "<Q", 0x100000), "open",
        "grain directory .* past the end of the file")
    bad("bad-gd-offset-zero.vmdk", hdr_field(56, "<Q", 0), "open",
        "grain directory offset 0 is invalid")
    bad("bad-gt-past-eof.vmdk",
        poke(lambda lay, out: out.__setitem__(slice(lay["gd"] * S, lay["gd"] * S + 4),
                                              struct.pack("<I", 0x00FFFFFF))),
        "read", "grain directory entry .* damaged")
    first_gi = min(g)

    def bad_gte(lay, out):
        o = lay["gt"] * S + first_gi * 4
        out[o:o + 4] = struct.pack("<I", 0x7FFFFFFF)
    bad("bad-grain-past-eof.vmdk", poke(bad_gte), "read", "grain table entry .* damaged")
    bad("bad-grain-size-0.vmdk", hdr_field(20, "<Q", 0), "open", "grain size of 0 sectors")
    bad("bad-grain-size-huge.vmdk", hdr_field(20, "<Q", 1 << 40), "open",
        "grain size of [0-9]+ sectors is out of range")
    bad("bad-gtes-0.vmdk", hdr_field(44, "<I", 0), "open", "grain table entries .* out of range")
    bad("bad-gtes-huge.vmdk", hdr_field(44, "<I", 1 << 20), "open",
        "grain table entries .* out of range")
    bad("bad-capacity-huge.vmdk", hdr_field(12, "<Q", 1 << 62), "open", "capacity .* too large")
    bad("bad-gd-too-big.vmdk",
        poke(lambda lay, out: (out.__setitem__(slice(12, 20), struct.pack("<Q", 1 << 50)),
                               out.__setitem__(slice(20, 28), struct.pack("<Q", 1)),
                               out.__setitem__(slice(44, 48), struct.pack("<I", 1)))),
        "open", "larger than any valid image")
    bad("bad-version-4.vmdk", hdr_field(4, "<I", 4), "open", "version 4 is not supported")
    bad("bad-compress-7.vmdk", hdr_field(77, "<H", 7), "open",
        "unknown grain compression algorithm 7")
    bad("bad-newline.vmdk", hdr_field(73, "<I", 0x0A0A0A0A), "open", "newline check bytes")
    bad("bad-overhead.vmdk", hdr_field(64, "<Q", 1 << 30), "open", "file is truncated")
    bad("bad-desc-huge.vmdk", hdr_field(36, "<Q", 1 << 30), "open",
        "embedded descriptor .* out of range")
    bad("bad-desc-past-eof.vmdk", hdr_field(28, "<Q", 1 << 20), "open",
        "embedded descriptor .* past the end")
    full = kdmv(cap, g, desc=good_desc)
    bad("bad-truncated-header.vmdk", full[:300], "open", "too short for a sparse extent header")
    bad("bad-truncated-tables.vmdk", full[:4 * S], "open",
        "(truncated|past the end of the file)")
    bad("bad-embedded-size.vmdk", kdmv(cap, g, desc=descriptor(
        "monolithicSparse", [("RW", cap * 2, "SPARSE", "x.vmdk", None)])), "open",
        "extent sizes do not add up")
    bad("bad-embedded-flat.vmdk", kdmv(cap, g, desc=descriptor(
        "monolithicSparse", [("RW", cap, "FLAT", "x.vmdk", 0)])), "open",
        "is one sparse extent")
    bad("bad-cid-syntax.vmdk", kdmv(cap, g, desc=descriptor(
        "monolithicSparse", [("RW", cap, "SPARSE", "x.vmdk", None)]).replace(b"CID=12345678", b"CID=xyz")),
        "open", "CID 'xyz' is not a 32-bit hexadecimal number")

    # stream-optimized: compressed grains that lie
    sg = random_grains(rng, cap, 128, 6)
    sdesc = descriptor("streamOptimized", [("RW", cap, "SPARSE", "s.vmdk", None)])
    stream = bytearray(kdmv(cap, sg, desc=sdesc, stream=True))
    first = 128 * S                     # the first grain marker (overhead 128)
    def overrun(lay, out):
        # the grain stored last: its marker's length runs 100 bytes past the end
        gts = struct.unpack_from(f"<{cap // 128}I", out, lay["gt"] * S)
        at = max(gts) * S
        out[at + 8:at + 12] = struct.pack("<I", len(out) - at - 12 + 100)
    bad("bad-zgrain-overrun.vmdk", kdmv(cap, sg, desc=sdesc, compress=True, markers=True,
                                        rgd=False, damage=overrun),
        "read", "runs past the end of the file")
    big = bytearray(stream)
    big[first + 8:first + 12] = struct.pack("<I", 0x7FFFFFF0)
    bad("bad-zgrain-size.vmdk", bytes(big), "read", "more than twice the grain size")
    # a length that stays inside the file but covers the grains after it
    runs = bytearray(stream)
    runs[first + 8:first + 12] = struct.pack("<I", len(stream) - first)
    bad("bad-zgrain-past-end.vmdk", bytes(runs), "read", "(runs past the end|twice the grain)")
    corrupt = bytearray(stream)
    corrupt[first + 14:first + 40] = bytes(rng.getrandbits(8) for _ in range(26))
    bad("bad-zgrain-corrupt.vmdk", bytes(corrupt), "read", "cannot be decompressed")
    zmark = bytearray(stream)
    zmark[first + 8:first + 12] = struct.pack("<I", 0)
    bad("bad-zgrain-marker.vmdk", bytes(zmark), "read", "metadata marker")
    bad("bad-stream-truncated.vmdk", bytes(stream[:-1024]), "open", "no valid footer")

    # descriptors
    def desc_bad(name, text, cmd, regex, files=()):
        for f, data in files:
            write(f"{d}/{f}", data)
        bad(name, text, cmd, regex)
    flat = rbytes(rng, 100 * S)
    write(f"{d}/bad-flat.bin", flat)
    desc_bad("bad-missing-extent.vmdk", descriptor("twoGbMaxExtentSparse", [
        ("RW", 100, "FLAT", "bad-flat.bin", 0), ("RW", 4096, "SPARSE", "bad-missing-s002.vmdk", None)]),
        "open", "extent 'bad-missing-s002.vmdk'.*No such file")
    write(f"{d}/bad-sparse-4096.vmdk", kdmv(cap, g))
    desc_bad("bad-size-mismatch.vmdk", descriptor("twoGbMaxExtentSparse", [
        ("RW", 2048, "SPARSE", "bad-sparse-4096.vmdk", None)]), "open",
        "extent sizes do not add up.*2048.*4096")
    desc_bad("bad-flat-short.vmdk", descriptor("monolithicFlat", [
        ("RW", 200, "FLAT", "bad-flat.bin", 0)]), "open", "too short")
    desc_bad("bad-flat-offset.vmdk", descriptor("monolithicFlat", [
        ("RW", 100, "FLAT", "bad-flat.bin", 1)]), "open", "too short")
    desc_bad("bad-not-sparse.vmdk", descriptor("twoGbMaxExtentSparse", [
        ("RW", 100, "SPARSE", "bad-flat.bin", None)]), "open", "not a sparse extent")
    desc_bad("bad-extent-type.vmdk", descriptor("monolithicFlat", [
        ("RW", 100, "FANCY", "bad-flat.bin", None)]), "open", "unknown extent type 'FANCY'")
    desc_bad("bad-extent-rdm.vmdk", descriptor("vmfs", [
        ("RW", 100, "VMFSRDM", "bad-flat.bin", None)]), "open",
        "raw device mapping extent type 'VMFSRDM'")
    desc_bad("bad-create-type.vmdk", descriptor("hyperSparse", [
        ("RW", 100, "FLAT", "bad-flat.bin", 0)]), "open", "unknown vmdk createType 'hyperSparse'")
    desc_bad("bad-create-rdm.vmdk", descriptor("fullDevice", [
        ("RW", 100, "FLAT", "/dev/sda", 0)]), "open", "createType 'fullDevice' \\(a raw device mapping\\)")
    desc_bad("bad-no-create-type.vmdk", descriptor("x", [("RW", 100, "FLAT", "bad-flat.bin", 0)])
             .replace(b'createType="x"', b""), "open", "no createType")
    desc_bad("bad-extent-line.vmdk", descriptor("monolithicFlat", [
        ("RW", "lots", "FLAT", "bad-flat.bin", 0)]), "open", "invalid extent line .*not a number")
    desc_bad("bad-extent-quote.vmdk", descriptor("monolithicFlat", [])
             .replace(b"# Extent description", b'RW 100 FLAT "bad-flat.bin 0'), "open",
             "no closing quote")
    desc_bad("bad-extent-offset.vmdk", descriptor("twoGbMaxExtentSparse", [
        ("RW", 4096, "SPARSE", "bad-sparse-4096.vmdk", 7)]), "open", "only flat extents take an offset")
    desc_bad("bad-too-many-extents.vmdk", descriptor("monolithicFlat", [
        ("RW", 1, "ZERO", None, None)] * 5000), "open", "more than 4096 extents")
    desc_bad("bad-extents-overflow.vmdk", descriptor("monolithicFlat", [
        ("RW", (1 << 54) - 1, "ZERO", None, None)] * 3), "open", "add up to more than")
    desc_bad("bad-extent-huge.vmdk", descriptor("monolithicFlat", [
        ("RW", 1 << 60, "ZERO", None, None)]), "open", "size is too large")
    desc_bad("bad-desc-huge.txt.vmdk", b"# Disk DescriptorFile\n" + b"#" * (2 << 20) + b"\n",
             "open", "larger than any valid descriptor")
    desc_bad("bad-desc-long-line.vmdk", b"# Disk DescriptorFile\nversion=1\n" + b"x" * 10000 + b"\n",
             "open", "line 3 is longer than")
    desc_bad("bad-parent-missing.vmdk", descriptor("monolithicFlat", [
        ("RW", 100, "FLAT", "bad-flat.bin", 0)], parent_cid=0x1234, parent="bad-no-such-parent.vmdk"),
        "open", "bad-no-such-parent.vmdk.*No such file")
    desc_bad("bad-parent-unnamed.vmdk", descriptor("monolithicFlat", [
        ("RW", 100, "FLAT", "bad-flat.bin", 0)], parent_cid=0x1234), "open", "names no parent")
    desc_bad("bad-parent-loop.vmdk", descriptor("monolithicFlat", [
        ("RW", 100, "FLAT", "bad-flat.bin", 0)], parent_cid=0x12345678, parent="bad-parent-loop.vmdk"),
        "open", "loops")
    write(f"{d}/bad-se-v.vmdk", sesparse(8192, {0: rbytes(rng, 4096)}, version=0x300000001))
    desc_bad("bad-sesparse-version.vmdk", descriptor("seSparse", [
        ("RW", 8192, "SESPARSE", "bad-se-v.vmdk", None)]), "open", "seSparse version")
    write(f"{d}/bad-se-j.vmdk", sesparse(8192, {0: rbytes(rng, 4096)}, replay=1))
    desc_bad("bad-sesparse-journal.vmdk", descriptor("seSparse", [
        ("RW", 8192, "SESPARSE", "bad-se-j.vmdk", None)]), "open", "journal needs replaying")
    write(f"{d}/bad-se-gd.vmdk", sesparse(8192, {0: rbytes(rng, 4096)}, bad_gd=True))
    desc_bad("bad-sesparse-gd.vmdk", descriptor("seSparse", [
        ("RW", 8192, "SESPARSE", "bad-se-gd.vmdk", None)]), "read", "damaged")
    desc_bad("bad-sesparse-as-sparse.vmdk", descriptor("seSparse", [
        ("RW", 8192, "SPARSE", "bad-se-gd.vmdk", None)]), "open", "not a sparse extent")
    bad("bad-sesparse-alone.vmdk", sesparse(8192, {}), "open", "seSparse extent, not a whole disk")
    cw = bytearray(cowd(8192, {0: rbytes(rng, 16 * S)}))
    cw[24:28] = struct.pack("<I", 0)
    bad("bad-cowd-gd-small.vmdk", bytes(cw), "open", "too few")
    cw = bytearray(cowd(8192, {0: rbytes(rng, 16 * S)}))
    cw[16:20] = struct.pack("<I", 0)
    bad("bad-cowd-grain-0.vmdk", bytes(cw), "open", "grain size of 0")

    with open(f"{d}/bad.tsv", "w") as f:
        for r in rows:
            f.write("\t".join(r) + "\n")


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    d, case = argv
    os.makedirs(d, exist_ok=True)
    rng = random.Random(f"mkvmdk-{case}")
    if case == "bad":
        bad_set(d, rng)
        return 0
    if case not in CASES:
        print(f"mkvmdk.py: unknown case {case}; known: {' '.join(CASES)} bad", file=sys.stderr)
        return 2
    write(f"{d}/{case}.expect", CASES[case](d, rng))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
