/* vhd.c — the "vpc" driver (qemu's name): Microsoft Virtual PC / Hyper-V VHD
 * images, read-only.  Layout: Microsoft "Virtual Hard Disk Image Format
 * Specification" (the 512-byte footer, the 1024-byte dynamic disk header
 * "cxsparse", the block allocation table of big-endian sector numbers, each
 * block a sector bitmap padded to 512 bytes followed by its data).
 *
 * What is read, and why, follows qemu 7.2's block/vpc.c, so that every
 * image qemu opens reads here as the same bytes with the same size:
 *  - a file that starts with the "conectix" cookie is a dynamic disk and
 *    the copy of the footer at offset 0 is the one used; qemu never looks
 *    at the end of such a file, so neither do we (the end copy may be
 *    missing or stale without changing what qemu reads);
 *  - otherwise the footer must be at the end and say "fixed" (type 2): the
 *    disk is the file's first bytes.  The probe never claims such files:
 *    qemu's probe calls them raw, so they open as vpc only by name;
 *  - the virtual size is qemu's: cylinders x heads x sectors, unless the
 *    creator application is one that sizes disks by the footer's current
 *    size ("win ", "qem2", "d2v ", "CTXS", "tap\0") or the geometry is the
 *    largest CHS (65535 x 16 x 255), where current size / 512 sectors is
 *    used; more than 0xff000000 sectors (2040 GiB) is refused (EFBIG);
 *  - a differencing disk (type 4) is read as qemu reads it: as a dynamic
 *    disk whose parent is ignored, so unallocated blocks read as zero and
 *    an allocated block reads its data area whole;
 *  - sector bitmaps are never read: qemu treats every sector of an
 *    allocated block as data, and so do we;
 *  - a damaged footer (bad checksum) is refused: qemu refuses it too, and
 *    it never falls back to the other copy.
 *
 * Stricter than qemu, on purpose (refused with a message where qemu reads
 * something or guesses): a bad dynamic header checksum; the start copy
 * saying "fixed" (qemu would read the footer as disk data) or a disk type
 * other than fixed, dynamic or differencing; a fixed disk longer than its
 * file; blocks smaller than 4 KiB (qemu computes a zero-byte bitmap for
 * them, where the specification pads it to 512 bytes: the two disagree on
 * where the data is) or larger than 256 MiB; a block that overlaps the
 * footer copy, the dynamic header, the BAT or the trailing footer.  Like
 * qemu, we refuse a BAT or a block that lies past the end of the file (a
 * truncated image) rather than read zeros for it.
 *
 * Thread model: everything is read and checked during open and never
 * changes after; map() only reads the in-memory BAT.
 */
#include "internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#define VHD_SECTOR        ((uint64_t)512)
#define VHD_FOOTER_SIZE   512u
#define VHD_HEADER_SIZE   1024u

enum { VHD_FIXED = 2, VHD_DYNAMIC = 3, VHD_DIFFERENCING = 4 };

/* qemu's bounds: a disk of at most 0xff000000 sectors (2040 GiB), and the
 * geometry qemu writes when the size has no exact CHS form (force_size). */
#define VHD_MAX_SECTORS   0xff000000ull
#define VHD_MAX_GEOMETRY  (65535ull * 16 * 255)

/* Ours: far above what Virtual PC, Hyper-V and qemu write (2 MiB blocks,
 * and 1 Mi BAT entries for the largest disk), low enough that a hostile
 * header cannot make us allocate without limit. */
#define VHD_MIN_BLOCK     4096u
#define VHD_MAX_BLOCK     (256u << 20)
#define VHD_MAX_BAT       (32u << 20)
#define VHD_UNALLOCATED   0xffffffffu

/* footer fields (big-endian) */
#define F_DATA_OFFSET   16
#define F_CREATOR_APP   28
#define F_CREATOR_VER   32
#define F_CURRENT_SIZE  48
#define F_GEOMETRY      56
#define F_TYPE          60
#define F_CHECKSUM      64

/* dynamic disk header fields (big-endian) */
#define H_TABLE_OFFSET  16
#define H_MAX_ENTRIES   28
#define H_BLOCK_SIZE    32
#define H_CHECKSUM      36

struct vhd {
    bool fixed;
    uint32_t type;              /* as the footer says */
    uint64_t file_size;
    uint32_t block_size;
    uint32_t bitmap_size;       /* bytes before each block's data */
    uint32_t n_bat;
    uint32_t *bat;              /* sector numbers, VHD_UNALLOCATED for none */
    char version_str[128];
};

static int vhd_probe(const uint8_t *head, size_t len)
{
    /* Only dynamic and differencing disks start with the footer copy; a
     * fixed disk is raw data up to its footer, and probes as raw (qemu). */
    return len >= 8 && memcmp(head, "conectix", 8) == 0 ? 100 : 0;
}

static void vhd_close(struct bf_image *img)
{
    struct vhd *v = img->priv;
    if (v)
        free(v->bat);
    free(v);
    img->priv = NULL;
}

/* The specification's checksum: the one's complement of the sum of every
 * byte of the structure, its own 4-byte field counted as zero. */
static uint32_t vhd_checksum(const uint8_t *p, size_t len, size_t field)
{
    uint32_t sum = 0;
    for (size_t i = 0; i < len; i++)
        if (i < field || i >= field + 4)
            sum += p[i];
    return ~sum;
}

/* Read [off, off+n) of the image file, which must lie wholly inside it. */
static int read_in_file(struct bf_image *img, const struct vhd *v, void *buf, size_t n,
                        uint64_t off, const char *what)
{
    if (!bf_range_within(off, n, v->file_size))
        return bf_err(img, -EINVAL, "%s: the VHD %s (%zu bytes at offset %" PRIu64 ") lies past "
                      "the end of the file (%" PRIu64 " bytes): the image is truncated or "
                      "damaged", img->filename, what, n, off, v->file_size);
    int r = bf_source_pread(img->src, buf, n, off);
    if (r < 0)
        return bf_err(img, r, "%s: cannot read the VHD %s: %s", img->filename, what,
                      strerror(-r));
    return 0;
}

/* Does the creator application size its disks by the footer's current
 * size rather than by its geometry?  qemu's list, compared as 4 bytes. */
static bool sized_by_current_size(const uint8_t *app)
{
    static const char apps[][4] = { "win ", "qem2", "d2v ", "CTXS", { 't', 'a', 'p', 0 } };
    for (size_t i = 0; i < sizeof apps / sizeof apps[0]; i++)
        if (memcmp(app, apps[i], 4) == 0)
            return true;
    return false;
}

/* The virtual size qemu gives the disk the footer @f describes. */
static int virtual_size(struct bf_image *img, const uint8_t *f, uint64_t *size)
{
    uint64_t sectors = (uint64_t)bf_be16(f + F_GEOMETRY) * f[F_GEOMETRY + 2] * f[F_GEOMETRY + 3];
    uint64_t current = bf_be64(f + F_CURRENT_SIZE);
    if (sized_by_current_size(f + F_CREATOR_APP) || sectors == VHD_MAX_GEOMETRY)
        sectors = current / VHD_SECTOR;
    if (sectors > VHD_MAX_SECTORS)
        return bf_err(img, -EFBIG, "%s: the VHD footer gives a disk of %" PRIu64 " sectors "
                      "(geometry %u/%u/%u, current size %" PRIu64 "), more than the %llu "
                      "(2040 GiB) a VHD can hold", img->filename, sectors,
                      bf_be16(f + F_GEOMETRY), f[F_GEOMETRY + 2], f[F_GEOMETRY + 3], current,
                      VHD_MAX_SECTORS);
    *size = sectors * VHD_SECTOR;
    return 0;
}

/* Find and check the footer: the copy at offset 0 of a dynamic or
 * differencing disk, else the footer at the end of a fixed disk. */
static int read_footer(struct bf_image *img, struct vhd *v, uint8_t *f)
{
    if (v->file_size < VHD_FOOTER_SIZE)
        return bf_err(img, -EINVAL, "%s: the file (%" PRIu64 " bytes) is too small to hold a "
                      "VHD footer (512 bytes)", img->filename, v->file_size);
    int r = read_in_file(img, v, f, VHD_FOOTER_SIZE, 0, "footer copy");
    if (r < 0)
        return r;
    const char *where = "footer copy at the start of the file";
    if (memcmp(f, "conectix", 8) != 0) {
        r = read_in_file(img, v, f, VHD_FOOTER_SIZE, v->file_size - VHD_FOOTER_SIZE, "footer");
        if (r < 0)
            return r;
        if (memcmp(f, "conectix", 8) != 0)
            return bf_err(img, -EINVAL, "%s: not a VHD image: neither the start nor the end of "
                          "the file holds a VHD footer (cookie \"conectix\")", img->filename);
        where = "footer at the end of the file";
        v->fixed = true;
    }
    uint32_t want = bf_be32(f + F_CHECKSUM);
    uint32_t got = vhd_checksum(f, VHD_FOOTER_SIZE, F_CHECKSUM);
    if (want != got)
        return bf_err(img, -EINVAL, "%s: the VHD %s is damaged: its checksum is %08" PRIx32
                      ", its bytes give %08" PRIx32, img->filename, where, want, got);
    v->type = bf_be32(f + F_TYPE);
    if (v->fixed && v->type != VHD_FIXED)
        return bf_err(img, -EINVAL, "%s: the VHD %s says disk type %" PRIu32 ", but only a "
                      "fixed disk (type 2) has no copy of its footer at the start",
                      img->filename, where, v->type);
    if (!v->fixed && v->type == VHD_FIXED && v->file_size == VHD_FOOTER_SIZE)
        return bf_err(img, -EINVAL, "%s: the file is only a VHD footer, a fixed disk of no "
                      "bytes; qemu cannot open it either (it reads a footer at the start as "
                      "that of a dynamic disk)", img->filename);
    if (!v->fixed && v->type == VHD_FIXED)
        return bf_err(img, -EINVAL, "%s: the VHD %s says the disk is fixed (type 2), but a "
                      "fixed disk has its footer only at the end: the image is damaged",
                      img->filename, where);
    if (v->type != VHD_FIXED && v->type != VHD_DYNAMIC && v->type != VHD_DIFFERENCING)
        return bf_err(img, -ENOTSUP, "%s: the VHD %s gives the unknown disk type %" PRIu32
                      " (known: 2 fixed, 3 dynamic, 4 differencing)", img->filename, where,
                      v->type);
    return 0;
}

/* Do [a, a+alen) and [b, b+blen) overlap?  (No sums wrap: every range was
 * checked to lie inside the file.) */
static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

/* Read the BAT and check every allocated block against the file and its
 * metadata.  Entries past the end of the disk are checked too: qemu
 * refuses a truncated image whichever entry shows it. */
static int read_bat(struct bf_image *img, struct vhd *v, uint64_t bat_off, uint64_t hdr_off)
{
    uint64_t bytes = (uint64_t)v->n_bat * 4;
    /* qemu places the first block at the BAT's end rounded up to a sector,
     * and refuses a file that does not reach it (the sum cannot wrap once
     * the BAT is known to lie inside the file) */
    if (!bf_range_within(bat_off, bytes, v->file_size) ||
        (bat_off + bytes + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR > v->file_size)
        return bf_err(img, -EINVAL, "%s: the VHD block allocation table (%" PRIu32 " entries at "
                      "offset %" PRIu64 ") lies past the end of the file (%" PRIu64 " bytes): "
                      "the image is truncated or damaged", img->filename, v->n_bat, bat_off,
                      v->file_size);
    uint8_t *raw = malloc(bytes ? bytes : 1);
    v->bat = malloc(v->n_bat ? (size_t)v->n_bat * sizeof *v->bat : 1);
    if (!raw || !v->bat) {
        free(raw);
        return bf_err(img, -ENOMEM, "out of memory");
    }
    int r = read_in_file(img, v, raw, bytes, bat_off, "block allocation table");
    if (r < 0) {
        free(raw);
        return r;
    }
    for (uint32_t i = 0; i < v->n_bat; i++)
        v->bat[i] = bf_be32(raw + (size_t)i * 4);
    free(raw);

    /* the trailing footer, when there is one, is not block data either */
    uint8_t tail[8];
    if ((r = read_in_file(img, v, tail, sizeof tail, v->file_size - VHD_FOOTER_SIZE,
                          "footer")) < 0)
        return r;
    bool has_tail = memcmp(tail, "conectix", 8) == 0;
    uint64_t span = (uint64_t)v->bitmap_size + v->block_size;
    for (uint32_t i = 0; i < v->n_bat; i++) {
        if (v->bat[i] == VHD_UNALLOCATED)
            continue;
        uint64_t start = v->bat[i] * VHD_SECTOR;    /* < 2^41: no overflow */
        if (!bf_range_within(start, span, v->file_size))
            return bf_err(img, -EINVAL, "%s: VHD block %" PRIu32 " (%" PRIu64 " bytes at offset "
                          "%" PRIu64 ") lies past the end of the file (%" PRIu64 " bytes): the "
                          "image is truncated or its block allocation table is damaged",
                          img->filename, i, span, start, v->file_size);
        const char *what = overlaps(start, span, 0, VHD_FOOTER_SIZE) ? "footer copy"
            : overlaps(start, span, hdr_off, VHD_HEADER_SIZE) ? "dynamic disk header"
            : overlaps(start, span, bat_off, bytes) ? "block allocation table"
            : has_tail && overlaps(start, span, v->file_size - VHD_FOOTER_SIZE, VHD_FOOTER_SIZE)
              ? "footer" : NULL;
        if (what)
            return bf_err(img, -EINVAL, "%s: VHD block %" PRIu32 " (at offset %" PRIu64 ") "
                          "overlaps the %s: the block allocation table is damaged",
                          img->filename, i, start, what);
    }
    return 0;
}

/* The dynamic disk header at @hdr_off and the BAT it points to. */
static int open_dynamic(struct bf_image *img, struct vhd *v, uint64_t hdr_off)
{
    uint8_t h[VHD_HEADER_SIZE];
    int r = read_in_file(img, v, h, sizeof h, hdr_off, "dynamic disk header");
    if (r < 0)
        return r;
    if (memcmp(h, "cxsparse", 8) != 0)
        return bf_err(img, -EINVAL, "%s: the VHD footer points at offset %" PRIu64 " for the "
                      "dynamic disk header, but there is no header there (cookie "
                      "\"cxsparse\")", img->filename, hdr_off);
    uint32_t want = bf_be32(h + H_CHECKSUM);
    uint32_t got = vhd_checksum(h, sizeof h, H_CHECKSUM);
    if (want != got)
        return bf_err(img, -EINVAL, "%s: the VHD dynamic disk header is damaged: its checksum "
                      "is %08" PRIx32 ", its bytes give %08" PRIx32, img->filename, want, got);

    uint32_t bs = bf_be32(h + H_BLOCK_SIZE);
    if (bs < VHD_SECTOR || (bs & (bs - 1)) != 0)
        return bf_err(img, -EINVAL, "%s: the VHD block size %" PRIu32 " is not a power of two "
                      "of at least 512 bytes", img->filename, bs);
    if (bs < VHD_MIN_BLOCK || bs > VHD_MAX_BLOCK)
        return bf_err(img, -ENOTSUP, "%s: VHD blocks of %" PRIu32 " bytes are not supported "
                      "(%u to %u bytes are)", img->filename, bs, VHD_MIN_BLOCK, VHD_MAX_BLOCK);
    v->block_size = bs;
    /* one bit a sector, padded to whole sectors */
    v->bitmap_size = (uint32_t)((bs / VHD_SECTOR / 8 + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR);

    v->n_bat = bf_be32(h + H_MAX_ENTRIES);
    uint64_t need = img->size / bs + (img->size % bs != 0);
    if (v->n_bat < need)
        return bf_err(img, -EINVAL, "%s: the VHD block allocation table has %" PRIu32 " entries, "
                      "too few for a disk of %" PRIu64 " bytes in blocks of %" PRIu32,
                      img->filename, v->n_bat, img->size, bs);
    if (v->n_bat > VHD_MAX_BAT)
        return bf_err(img, -ENOTSUP, "%s: the VHD block allocation table has %" PRIu32
                      " entries, more than the %u supported", img->filename, v->n_bat,
                      VHD_MAX_BAT);
    return read_bat(img, v, bf_be64(h + H_TABLE_OFFSET), hdr_off);
}

/* "dynamic (creator 'win ' 10.0)": the creator application is free text,
 * shown only where printable. */
static void fill_info(struct bf_image *img, struct vhd *v, const uint8_t *f)
{
    char app[5];
    for (int i = 0; i < 4; i++) {
        uint8_t c = f[F_CREATOR_APP + i];
        app[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    app[4] = 0;
    uint32_t ver = bf_be32(f + F_CREATOR_VER);
    const char *type = v->type == VHD_FIXED ? "fixed" : v->type == VHD_DYNAMIC ? "dynamic"
                     : "differencing (its parent is not read: unallocated blocks read as zero)";
    snprintf(v->version_str, sizeof v->version_str, "%s, creator '%s' %u.%u", type, app,
             ver >> 16, ver & 0xffff);
    img->info.format_version = v->version_str;
    img->info.cluster_size = v->fixed ? 0 : v->block_size;
}

static int vhd_open(struct bf_image *img, const struct bf_open_opts *opts)
{
    if (opts->snapshot)
        return bf_err(img, -ENOTSUP, "%s: VHD images have no internal snapshots", img->filename);
    if (img->writable)
        return bf_err(img, -EROFS, "%s: VHD (vpc) images cannot be written yet; open read-only",
                      img->filename);
    struct vhd *v = calloc(1, sizeof *v);
    if (!v)
        return bf_err(img, -ENOMEM, "out of memory");
    img->priv = v;

    uint8_t f[VHD_FOOTER_SIZE];
    int r = bf_source_size(img->src, &v->file_size);
    if (r < 0)
        r = bf_err(img, r, "%s: cannot get size: %s", img->filename, strerror(-r));
    if (r == 0)
        r = read_footer(img, v, f);
    if (r == 0)
        r = virtual_size(img, f, &img->size);
    if (r == 0 && v->fixed && img->size > v->file_size - VHD_FOOTER_SIZE)
        r = bf_err(img, -EINVAL, "%s: the VHD footer gives a fixed disk of %" PRIu64 " bytes, "
                   "but the file holds only %" PRIu64 " bytes before its footer: the image is "
                   "truncated", img->filename, img->size, v->file_size - VHD_FOOTER_SIZE);
    if (r == 0 && !v->fixed)
        r = open_dynamic(img, v, bf_be64(f + F_DATA_OFFSET));
    if (r < 0) {
        vhd_close(img);
        return r;
    }
    fill_info(img, v, f);
    return 0;
}

struct vhd_units {
    struct bf_image *img;
    const struct vhd *v;
};

/* What the block starting at guest offset @start holds. */
static int vhd_unit(void *ctx, uint64_t start, struct bf_unit *u)
{
    const struct vhd_units *c = ctx;
    uint64_t idx = start / c->v->block_size;
    if (idx >= c->v->n_bat)         /* open checked the BAT covers the disk */
        return bf_err(c->img, -EIO, "%s: internal error: no VHD block holds guest offset %"
                      PRIu64, c->img->filename, start);
    uint32_t e = c->v->bat[idx];
    if (e == VHD_UNALLOCATED) {
        u->kind = BF_UNIT_ZERO;     /* no parent is read, even for a differencing disk */
    } else {
        u->kind = BF_UNIT_DATA;
        u->host = e * VHD_SECTOR + c->v->bitmap_size;
    }
    return 0;
}

static int vhd_map(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags,
                   struct bf_map *m)
{
    (void)flags;
    const struct vhd *v = img->priv;
    if (v->fixed) {
        /* one run of data; holes in the file are not looked for (qemu
         * reports them as allocated data too) */
        m->kind = BF_MAP_DATA;
        m->src = img->src;
        m->host_off = off;
        m->len = len;
        return 0;
    }
    /* blocks are never contiguous (a bitmap lies between), so data runs end
     * at block boundaries; unallocated blocks run together */
    struct vhd_units c = { img, v };
    struct bf_unit first;
    return bf_map_units(off, len, v->block_size, vhd_unit, &c, img->src, m, &first);
}

const struct bf_driver bf_driver_vpc = {
    .name = "vpc",
    .probe = vhd_probe,
    .open = vhd_open,
    .close = vhd_close,
    .map = vhd_map,
};
