/* vmdk-sparse.c — headers and grain directories of the three sparse extent
 * kinds:
 *
 *  - hosted sparse "KDMV" (VMware Virtual Disk Format 1.1/5.0, §"Hosted
 *    Sparse Extents"): header versions 1-3, the redundant grain directory,
 *    zeroed-grain entries (flag bit 2), and stream-optimized extents
 *    (compressed grains with markers; when the header's gdOffset is
 *    GD_AT_END the footer three sectors before the end holds the real
 *    header, as qemu reads it);
 *  - ESX sparse "COWD" (§"ESX Server Sparse Extents"): 4096 entries a table;
 *  - ESXi seSparse: the constant and volatile headers checked exactly as
 *    strictly as qemu's block/vmdk.c does, since no public spec exists.
 *
 * Every grain-directory entry is resolved to a byte offset here and checked
 * against the file size; an entry that points outside the file is marked
 * VMDK_GT_BAD.  When a redundant directory exists, a damaged primary entry
 * (or a primary 0 where the redundant copy has a table) is replaced by the
 * redundant entry, and an unreadable primary directory by the whole
 * redundant one.  Reads that still need a damaged entry fail with EIO in
 * vmdk-map.c.
 *
 * Thread model: runs during open only.
 */
#include "vmdk.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#define KDMV_FLAG_NL_DETECT  (1u << 0)
#define KDMV_FLAG_RGD        (1u << 1)
#define KDMV_FLAG_ZERO_GRAIN (1u << 2)
#define KDMV_FLAG_MARKERS    (1u << 17)
#define KDMV_GD_AT_END       UINT64_MAX
#define KDMV_MARKER_EOS      0
#define KDMV_MARKER_FOOTER   3

#define COWD_GT_ENTRIES 4096u

#define SE_VOLATILE_MAGIC 0xcafecafeull
#define SE_VERSION        0x0000000200000001ull
#define SE_GRAIN_SECTORS  8
#define SE_GT_SECTORS     64

struct kdmv_hdr {
    uint32_t version, flags;
    uint64_t capacity, grain, desc_off, desc_size;
    uint32_t gtes;
    uint64_t rgd, gd, overhead;
    uint8_t nl[4];
    uint16_t compress;
};

/* @b points at the magic of a 512-byte header sector. */
static void kdmv_parse(const uint8_t *b, struct kdmv_hdr *h)
{
    h->version = bf_le32(b + 4);
    h->flags = bf_le32(b + 8);
    h->capacity = bf_le64(b + 12);
    h->grain = bf_le64(b + 20);
    h->desc_off = bf_le64(b + 28);
    h->desc_size = bf_le64(b + 36);
    h->gtes = bf_le32(b + 44);
    h->rgd = bf_le64(b + 48);
    h->gd = bf_le64(b + 56);
    h->overhead = bf_le64(b + 64);
    memcpy(h->nl, b + 73, 4);
    h->compress = bf_le16(b + 77);
}

void vmdk_extent_free(struct vmdk_extent *e)
{
    free(e->gd);
    free(e->rgd);
    if (e->own_src)
        bf_source_close(e->src);
    e->gd = e->rgd = NULL;
    e->src = NULL;
}

/* Read [off, off+n) of the extent file, which must lie wholly inside it. */
static int read_at(struct bf_image *img, struct vmdk_extent *e, void *buf, size_t n,
                   uint64_t off, const char *what)
{
    if (!bf_range_within(off, n, e->file_size))
        return bf_err(img, -EINVAL, "%s: %s (%zu bytes at offset %" PRIu64 ") lies past the "
                      "end of the file (%" PRIu64 " bytes)", e->src->name, what, n, off,
                      e->file_size);
    int r = bf_source_pread(e->src, buf, n, off);
    if (r < 0)
        return bf_err(img, r, "%s: cannot read %s: %s", e->src->name, what, strerror(-r));
    return 0;
}

/* Read @n directory entries of @esize bytes (little-endian) at @off. */
static int read_dir(struct bf_image *img, struct vmdk_extent *e, uint64_t off, uint32_t n,
                    unsigned esize, const char *what, uint64_t **out)
{
    uint64_t bytes = (uint64_t)n * esize;
    if (!bf_range_within(off, bytes, e->file_size))
        return bf_err(img, -EINVAL, "%s: %s (%" PRIu32 " entries at offset %" PRIu64 ") lies "
                      "past the end of the file (%" PRIu64 " bytes)", e->src->name, what, n,
                      off, e->file_size);
    uint8_t *raw = malloc(bytes ? bytes : 1);
    uint64_t *t = malloc(n ? (size_t)n * sizeof *t : 1);
    if (!raw || !t) {
        free(raw);
        free(t);
        return bf_err(img, -ENOMEM, "out of memory");
    }
    int r = bytes ? read_at(img, e, raw, bytes, off, what) : 0;
    if (r < 0) {
        free(raw);
        free(t);
        return r;
    }
    for (uint32_t i = 0; i < n; i++)
        t[i] = esize == 8 ? bf_le64(raw + (size_t)i * 8) : bf_le32(raw + (size_t)i * 4);
    free(raw);
    *out = t;
    return 0;
}

/* A grain table at byte offset @off: usable, or VMDK_GT_BAD. */
static uint64_t gt_checked(const struct vmdk_extent *e, uint64_t off)
{
    uint64_t bytes = (uint64_t)e->gt_entries * e->gte_size;
    if (off >= 1ull << VMDK_GT_KEY_BITS || !bf_range_within(off, bytes, e->file_size))
        return VMDK_GT_BAD;
    return off;
}

/* KDMV and COWD directory entries are sector numbers, 0 for "no table". */
static uint64_t resolve_sector_entry(const struct vmdk_extent *e, uint64_t v)
{
    return v == 0 ? 0 : gt_checked(e, v * VMDK_SECTOR);
}

/* Read the primary directory at sector @gd and, when @rgd is non-zero, the
 * redundant one; resolve both and fill e->gd (falling back entry by entry to
 * the redundant directory where the primary one is damaged) and e->rgd. */
static int load_dirs(struct bf_image *img, struct vmdk_extent *e, uint64_t gd, uint64_t rgd)
{
    uint64_t *pri = NULL, *red = NULL;
    int rp, rr = -ENOENT;
    char saved[BF_ERRMSG_MAX];
    if (gd == 0 || gd > VMDK_MAX_SECTORS)
        rp = bf_err(img, -EINVAL, "%s: grain directory offset %" PRIu64 " is invalid",
                    e->src->name, gd);
    else
        rp = read_dir(img, e, gd * VMDK_SECTOR, e->n_gd, 4, "grain directory", &pri);
    snprintf(saved, sizeof saved, "%s", bf_errmsg(img));
    if (rgd != 0 && rgd <= VMDK_MAX_SECTORS)
        rr = read_dir(img, e, rgd * VMDK_SECTOR, e->n_gd, 4, "redundant grain directory", &red);
    if (rp < 0 && rr < 0)
        return bf_err(img, rp, "%s", saved);

    for (uint32_t i = 0; i < e->n_gd; i++) {
        uint64_t p = pri ? resolve_sector_entry(e, pri[i]) : VMDK_GT_BAD;
        uint64_t q = red ? resolve_sector_entry(e, red[i]) : VMDK_GT_BAD;
        if (red)
            red[i] = q;
        /* Directory entries only ever go from 0 to a table, and both copies
         * are written together: a damaged primary entry, or a primary 0
         * where the redundant copy has a table, means the primary copy is
         * the broken one. */
        if (p == VMDK_GT_BAD || (p == 0 && q != 0 && q != VMDK_GT_BAD))
            p = q;
        if (pri)
            pri[i] = p;
    }
    if (pri) {
        e->gd = pri;
        e->rgd = red;
    } else {
        e->gd = red;       /* the primary directory is unusable as a whole */
    }
    bf_err(img, 0, "%s", "");
    return 0;
}

/* Stream-optimized extents written in one pass put the grain directory at
 * the end: the header says GD_AT_END and the real header is in the footer,
 * in the second of the last three sectors (footer marker, footer, end-of-
 * stream marker).  Like qemu, take the whole header from the footer. */
static int kdmv_footer(struct bf_image *img, struct vmdk_extent *e, struct kdmv_hdr *h)
{
    uint8_t f[3 * VMDK_SECTOR];
    uint64_t end = (e->file_size + VMDK_SECTOR - 1) & ~(VMDK_SECTOR - 1);
    if (end < 4 * VMDK_SECTOR)
        return bf_err(img, -EINVAL, "%s: the header says the grain directory is at the end "
                      "of the file, but the file is too short for a footer", e->src->name);
    int r = bf_source_pread(e->src, f, sizeof f, end - sizeof f);
    if (r < 0)
        return bf_err(img, r, "%s: cannot read the stream footer: %s", e->src->name,
                      strerror(-r));
    if (bf_le32(f + 8) != 0 || bf_le32(f + 12) != KDMV_MARKER_FOOTER ||
        bf_be32(f + 512) != VMDK_KDMV_MAGIC || bf_le64(f + 1024) != 0 ||
        bf_le32(f + 1032) != 0 || bf_le32(f + 1036) != KDMV_MARKER_EOS)
        return bf_err(img, -EINVAL, "%s: the header says the grain directory is at the end "
                      "of the file, but there is no valid footer there (a truncated "
                      "stream-optimized file?)", e->src->name);
    kdmv_parse(f + 512, h);
    if (h->gd == KDMV_GD_AT_END)
        return bf_err(img, -EINVAL, "%s: the stream footer does not say where the grain "
                      "directory is", e->src->name);
    return 0;
}

/* Grain-directory entries needed for @capacity sectors with @span sectors a
 * table; bounded. */
static int dir_entries(struct bf_image *img, struct vmdk_extent *e, uint64_t capacity,
                       uint64_t span, uint32_t *n)
{
    uint64_t need = capacity / span + (capacity % span != 0);
    if (need > VMDK_MAX_GD_ENTRIES)
        return bf_err(img, -EFBIG, "%s: a grain directory of %" PRIu64 " entries is larger "
                      "than any valid image has (limit %u); the header is damaged",
                      e->src->name, need, VMDK_MAX_GD_ENTRIES);
    *n = (uint32_t)need;
    return 0;
}

static int check_grain(struct bf_image *img, struct vmdk_extent *e, uint64_t sectors, uint64_t max)
{
    if (sectors == 0 || sectors > max)
        return bf_err(img, -EINVAL, "%s: grain size of %" PRIu64 " sectors is out of range "
                      "(1 to %" PRIu64 ")", e->src->name, sectors, max);
    e->grain = sectors * VMDK_SECTOR;
    return 0;
}

static int kdmv_open(struct bf_image *img, struct vmdk_extent *e, const uint8_t *hdr,
                     char **desc, size_t *desc_len)
{
    const char *fn = e->src->name;
    struct kdmv_hdr h;
    kdmv_parse(hdr, &h);
    int r;
    if (h.gd == KDMV_GD_AT_END && (r = kdmv_footer(img, e, &h)) < 0)
        return r;
    if (h.version < 1 || h.version > 3)
        return bf_err(img, -ENOTSUP, "%s: sparse extent header version %" PRIu32 " is not "
                      "supported (1 to 3 are)", fn, h.version);
    if ((h.flags & KDMV_FLAG_NL_DETECT) && memcmp(h.nl, "\n \r\n", 4) != 0)
        return bf_err(img, -EINVAL, "%s: the newline check bytes of the header are altered "
                      "(was the file copied in text mode?)", fn);
    if (h.compress > 1)
        return bf_err(img, -ENOTSUP, "%s: unknown grain compression algorithm %u", fn,
                      h.compress);
    e->kind = VMDK_KDMV;
    e->version = h.version;
    e->compressed = h.compress == 1;
    e->markers = (h.flags & KDMV_FLAG_MARKERS) != 0;
    e->zero_grain = (h.flags & KDMV_FLAG_ZERO_GRAIN) != 0;
    e->overhead = h.overhead <= VMDK_MAX_SECTORS ? h.overhead * VMDK_SECTOR : 0;
    if (h.capacity > VMDK_MAX_SECTORS)
        return bf_err(img, -EFBIG, "%s: capacity of %" PRIu64 " sectors is too large; the "
                      "header is damaged", fn, h.capacity);
    e->capacity = h.capacity * VMDK_SECTOR;

    if (desc && h.desc_off && h.desc_size) {
        if (h.desc_size > VMDK_MAX_DESC_BYTES / VMDK_SECTOR || h.desc_off > VMDK_MAX_SECTORS)
            return bf_err(img, -EINVAL, "%s: embedded descriptor of %" PRIu64 " sectors at "
                          "sector %" PRIu64 " is out of range (at most %u bytes)", fn,
                          h.desc_size, h.desc_off, VMDK_MAX_DESC_BYTES);
        size_t n = (size_t)h.desc_size * VMDK_SECTOR;
        char *t = malloc(n);
        if (!t)
            return bf_err(img, -ENOMEM, "out of memory");
        if ((r = read_at(img, e, t, n, h.desc_off * VMDK_SECTOR, "embedded descriptor")) < 0) {
            free(t);
            return r;
        }
        *desc = t;
        *desc_len = n;
        e->desc_off = h.desc_off * VMDK_SECTOR;
        e->desc_bytes = n;
    }
    if (h.capacity == 0)
        return 0;              /* nothing to map (or a descriptor in a sparse file) */

    if ((r = check_grain(img, e, h.grain, e->compressed ? VMDK_MAX_ZGRAIN_SECTORS
                                                          : VMDK_MAX_GRAIN_SECTORS)) < 0)
        return r;
    if (h.gtes == 0 || h.gtes > VMDK_MAX_GTES)
        return bf_err(img, -EINVAL, "%s: %" PRIu32 " grain table entries a table is out of "
                      "range (1 to %u)", fn, h.gtes, VMDK_MAX_GTES);
    if (h.overhead > VMDK_MAX_SECTORS || e->file_size < h.overhead * VMDK_SECTOR)
        return bf_err(img, -EINVAL, "%s: the file is truncated: its header says grains start "
                      "at sector %" PRIu64 " but the file is %" PRIu64 " bytes", fn,
                      h.overhead, e->file_size);
    e->gt_entries = h.gtes;
    e->gte_size = 4;
    e->gt_span = e->grain * h.gtes;
    if ((r = dir_entries(img, e, h.capacity, h.grain * h.gtes, &e->n_gd)) < 0)
        return r;
    return load_dirs(img, e, h.gd, (h.flags & KDMV_FLAG_RGD) ? h.rgd : 0);
}

static int cowd_open(struct bf_image *img, struct vmdk_extent *e, const uint8_t *hdr)
{
    e->kind = VMDK_COWD;
    e->version = bf_le32(hdr + 4);
    uint64_t capacity = bf_le32(hdr + 12);
    uint64_t grain = bf_le32(hdr + 16);
    uint64_t gd = bf_le32(hdr + 20);
    uint32_t gd_entries = bf_le32(hdr + 24);
    e->capacity = capacity * VMDK_SECTOR;
    if (capacity == 0)
        return 0;
    int r = check_grain(img, e, grain, VMDK_MAX_GRAIN_SECTORS);
    if (r < 0)
        return r;
    e->gt_entries = COWD_GT_ENTRIES;
    e->gte_size = 4;
    e->gt_span = e->grain * COWD_GT_ENTRIES;
    if ((r = dir_entries(img, e, capacity, grain * COWD_GT_ENTRIES, &e->n_gd)) < 0)
        return r;
    if (gd_entries < e->n_gd)
        return bf_err(img, -EINVAL, "%s: the grain directory has %" PRIu32 " entries, too few "
                      "for a capacity of %" PRIu64 " sectors (needs %" PRIu32 ")",
                      e->src->name, gd_entries, capacity, e->n_gd);
    return load_dirs(img, e, gd, 0);
}

/* seSparse: the checks qemu makes (it is the only public reader), since a
 * field we do not understand could change the layout. */
static int sesparse_open(struct bf_image *img, struct vmdk_extent *e, const uint8_t *c)
{
    const char *fn = e->src->name;
    e->kind = VMDK_SESPARSE;
    uint64_t version = bf_le64(c + 8), capacity = bf_le64(c + 16);
    uint64_t grain = bf_le64(c + 24), gt_size = bf_le64(c + 32), flags = bf_le64(c + 40);
    uint64_t vh_off = bf_le64(c + 80);
    uint64_t gd_off = bf_le64(c + 128), gd_size = bf_le64(c + 136);
    uint64_t gt_off = bf_le64(c + 144), grains_off = bf_le64(c + 192);
    if (version != SE_VERSION)
        return bf_err(img, -ENOTSUP, "%s: seSparse version %#" PRIx64 " is not supported",
                      fn, version);
    if (grain != SE_GRAIN_SECTORS || gt_size != SE_GT_SECTORS)
        return bf_err(img, -ENOTSUP, "%s: seSparse grain size %" PRIu64 " / grain table size %"
                      PRIu64 " (sectors) are not supported (8 and 64 are)", fn, grain, gt_size);
    if (flags != 0)
        return bf_err(img, -ENOTSUP, "%s: unsupported seSparse flags %#" PRIx64, fn, flags);
    for (unsigned i = 48; i < 80; i++)
        if (c[i])
            return bf_err(img, -ENOTSUP, "%s: seSparse reserved header fields are set", fn);
    for (unsigned i = 208; i < 512; i++)
        if (c[i])
            return bf_err(img, -ENOTSUP, "%s: seSparse header padding is not zero", fn);
    if (capacity > VMDK_MAX_SECTORS || vh_off > VMDK_MAX_SECTORS || gd_off > VMDK_MAX_SECTORS ||
        gd_size > VMDK_MAX_SECTORS || gt_off > VMDK_MAX_SECTORS || grains_off > VMDK_MAX_SECTORS)
        return bf_err(img, -EINVAL, "%s: seSparse header field out of range; the header is "
                      "damaged", fn);

    uint8_t v[512];
    int r = read_at(img, e, v, sizeof v, vh_off * VMDK_SECTOR, "seSparse volatile header");
    if (r < 0)
        return r;
    if (bf_le64(v) != SE_VOLATILE_MAGIC)
        return bf_err(img, -EINVAL, "%s: bad seSparse volatile header magic %#" PRIx64, fn,
                      bf_le64(v));
    if (bf_le64(v + 24) != 0)
        return bf_err(img, -ENOTSUP, "%s: the seSparse journal needs replaying (the image "
                      "was not closed cleanly); that is not supported", fn);
    for (unsigned i = 32; i < 512; i++)
        if (v[i])
            return bf_err(img, -ENOTSUP, "%s: seSparse volatile header padding is not zero", fn);

    e->capacity = capacity * VMDK_SECTOR;
    e->grain = SE_GRAIN_SECTORS * VMDK_SECTOR;
    e->gte_size = 8;
    e->gt_entries = SE_GT_SECTORS * VMDK_SECTOR / 8;
    e->gt_span = e->grain * e->gt_entries;
    e->se_grains = grains_off * VMDK_SECTOR;
    if ((r = dir_entries(img, e, capacity, e->gt_span / VMDK_SECTOR, &e->n_gd)) < 0)
        return r;
    if (gd_size * (VMDK_SECTOR / 8) < e->n_gd)
        return bf_err(img, -EINVAL, "%s: the seSparse grain directory (%" PRIu64 " sectors) "
                      "is too small for the capacity", fn, gd_size);
    if ((r = read_dir(img, e, gd_off * VMDK_SECTOR, e->n_gd, 8, "grain directory", &e->gd)) < 0)
        return r;
    /* An allocated entry is 0x1000000 in the top 32 bits and a table index
     * in the low 32; tables are consecutive from grain_tables_offset. */
    uint64_t gt_bytes = (uint64_t)e->gt_entries * 8;
    for (uint32_t i = 0; i < e->n_gd; i++) {
        uint64_t x = e->gd[i];
        if (x == 0)
            continue;
        if ((x >> 32) != 0x10000000u) {
            e->gd[i] = VMDK_GT_BAD;
            continue;
        }
        uint64_t at;
        e->gd[i] = bf_add_ok(gt_off * VMDK_SECTOR, (x & 0xffffffffu) * gt_bytes, &at)
                       ? gt_checked(e, at) : VMDK_GT_BAD;
    }
    return 0;
}

int vmdk_sparse_open(struct bf_image *img, struct vmdk_extent *e, enum vmdk_etype type,
                     char **desc, size_t *desc_len)
{
    int r = bf_source_size(e->src, &e->file_size);
    if (r < 0)
        return bf_err(img, r, "%s: cannot get size: %s", e->src->name, strerror(-r));
    uint8_t hdr[VMDK_SECTOR];
    if (e->file_size < sizeof hdr)
        return bf_err(img, -EINVAL, "%s: the file (%" PRIu64 " bytes) is too short for a "
                      "sparse extent header", e->src->name, e->file_size);
    if ((r = read_at(img, e, hdr, sizeof hdr, 0, "sparse extent header")) < 0)
        return r;
    if (type == VMDK_ET_SESPARSE) {
        if (bf_le64(hdr) != VMDK_SESPARSE_MAGIC)
            return bf_err(img, -EINVAL, "%s: not a seSparse extent (bad magic %#" PRIx64 ")",
                          e->src->name, bf_le64(hdr));
        return sesparse_open(img, e, hdr);
    }
    switch (bf_be32(hdr)) {
    case VMDK_KDMV_MAGIC:
        return kdmv_open(img, e, hdr, desc, desc_len);
    case VMDK_COWD_MAGIC:
        return cowd_open(img, e, hdr);
    }
    return bf_err(img, -EINVAL, "%s: not a sparse extent (no KDMV or COWD magic)", e->src->name);
}
