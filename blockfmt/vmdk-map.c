/* vmdk-map.c — map a guest range of a vmdk image to its first run: data at
 * an offset in one extent file, zero (ZERO and NOACCESS extents, zeroed
 * grains), unallocated (the parent of a delta disk, else zero) or one
 * compressed grain of a stream-optimized extent.
 *
 * Grain table entries are read as qemu reads them (get_cluster_offset in
 * block/vmdk.c): KDMV/COWD entries are sector numbers, 0 is unallocated and
 * 1 is a zeroed grain when the header enables that; seSparse entries carry a
 * type in their top nibble.  An entry that points past the end of its file is
 * damaged: the redundant grain table is tried, else the read fails with EIO
 * (qemu would read zeros there).
 *
 * Thread model: the extent list and grain directories are fixed after open;
 * grain tables come from the shared, self-locking cache and are only read.
 * In a disk open for writing, grain tables are read from the file for each
 * lookup instead (a private copy): the cache loads outside its lock, so a
 * table read before a writer's update could be put back into it after (see
 * vmdk-write.c), and the extent sizes are loaded atomically.
 */
#include "vmdk.h"

#include <inttypes.h>
#include <stdlib.h>

enum unit_kind { U_DATA, U_ZERO, U_UNALLOC, U_COMPRESSED, U_BAD };

struct unit {
    enum unit_kind kind;
    uint64_t host;       /* U_DATA: the grain's first byte; U_COMPRESSED: its marker */
};

struct gt_load {
    struct bf_image *img;
    const struct vmdk_extent *e;
    size_t block;
};

static int load_gt(void *ctx, uint64_t key, void *buf)
{
    const struct gt_load *l = ctx;
    uint64_t off = key & ((1ull << VMDK_GT_KEY_BITS) - 1);
    size_t n = (size_t)l->e->gt_entries * l->e->gte_size;
    int r = bf_source_pread(l->e->src, buf, n, off);
    if (r < 0)
        return bf_err(l->img, r, "%s: cannot read grain table at offset %" PRIu64 ": %s",
                      l->e->src->name, off, strerror(-r));
    memset((uint8_t *)buf + n, 0, l->block - n);
    return 0;
}

static int get_gt(struct bf_image *img, struct vmdk *v, const struct vmdk_extent *e,
                  uint64_t gt_off, const void **gt, struct bf_cache_ent **ent)
{
    struct gt_load l = { img, e, bf_cache_block_size(v->gt_cache) };
    uint64_t key = (uint64_t)e->index << VMDK_GT_KEY_BITS | gt_off;
    if (v->gt_uncached) {
        void *buf = malloc(l.block);
        if (!buf)
            return bf_err(img, -ENOMEM, "out of memory");
        int r = load_gt(&l, key, buf);
        if (r < 0) {
            free(buf);
            return r;
        }
        *gt = buf;
        *ent = NULL;
        return 0;
    }
    int r = bf_cache_get(v->gt_cache, key, load_gt, &l, gt, ent);
    return r == -ENOMEM ? bf_err(img, r, "out of memory") : r;
}

static void put_gt(struct vmdk *v, const void *gt, struct bf_cache_ent *ent)
{
    if (ent)
        bf_cache_put(v->gt_cache, ent);
    else
        free((void *)gt);
}

static struct unit classify(const struct vmdk_extent *e, const uint8_t *gt, uint32_t idx)
{
    struct unit u = { U_UNALLOC, 0 };
    uint64_t file_size = __atomic_load_n(&e->file_size, __ATOMIC_ACQUIRE);
    if (e->kind == VMDK_SESPARSE) {
        uint64_t x = bf_le64(gt + (size_t)idx * 8);
        switch (x >> 60) {
        case 0:                         /* unallocated; anything else set is damage */
            u.kind = x ? U_BAD : U_UNALLOC;
            break;
        case 1:                         /* unmapped by the guest (SCSI UNMAP) */
        case 2:                         /* zeroed */
            u.kind = U_ZERO;
            break;
        case 3: {                       /* allocated: a grain number, split in two */
            uint64_t g = ((x & 0x0fff000000000000ull) >> 48) | ((x & 0x0000ffffffffffffull) << 12);
            uint64_t host;
            if (__builtin_mul_overflow(g, e->grain, &host) ||
                !bf_add_ok(host, e->se_grains, &host) || host >= file_size) {
                u.kind = U_BAD;
            } else {
                u.kind = U_DATA;
                u.host = host;
            }
            break;
        }
        default:
            u.kind = U_BAD;
        }
        return u;
    }
    uint64_t s = bf_le32(gt + (size_t)idx * 4);
    if (s == 0)
        return u;
    if (s == 1 && e->zero_grain) {
        u.kind = U_ZERO;
        return u;
    }
    u.host = s * VMDK_SECTOR;
    u.kind = u.host >= file_size ? U_BAD : e->compressed ? U_COMPRESSED : U_DATA;
    return u;
}

/* The unit for grain @idx of table @gd_idx, whose (primary) table is @gt.
 * A damaged entry falls back to the redundant table. */
static int unit_at(struct bf_image *img, struct vmdk *v, const struct vmdk_extent *e,
                   const uint8_t *gt, uint32_t gd_idx, uint32_t idx, uint64_t guest,
                   struct unit *u)
{
    *u = classify(e, gt, idx);
    if (u->kind != U_BAD)
        return 0;
    uint64_t r_off = e->rgd ? e->rgd[gd_idx] : 0;
    if (r_off != 0 && r_off != VMDK_GT_BAD && r_off != e->gd[gd_idx]) {
        const void *rgt;
        struct bf_cache_ent *ent;
        int r = get_gt(img, v, e, r_off, &rgt, &ent);
        if (r < 0)
            return r;
        *u = classify(e, rgt, idx);
        put_gt(v, rgt, ent);
        if (u->kind != U_BAD)
            return 0;
    }
    return bf_err(img, -EIO, "%s: the grain table entry for guest offset %" PRIu64 " is "
                  "damaged (it points outside the file)", e->src->name, guest);
}

struct vmdk_units {
    struct bf_image *img;
    struct vmdk *v;
    const struct vmdk_extent *e;
    const uint8_t *gt;          /* the grain table covering the run, pinned */
    uint32_t gd_idx;
    uint64_t tbl_start;         /* extent offset the table starts at */
};

static int vmdk_unit(void *ctx, uint64_t start, struct bf_unit *out)
{
    const struct vmdk_units *c = ctx;
    struct unit u;
    uint32_t idx = (uint32_t)((start - c->tbl_start) / c->e->grain);
    int r = unit_at(c->img, c->v, c->e, c->gt, c->gd_idx, idx, c->e->start + start, &u);
    if (r < 0)
        return r;
    static const enum bf_unit_kind kinds[] = {
        [U_DATA] = BF_UNIT_DATA, [U_ZERO] = BF_UNIT_ZERO,
        [U_UNALLOC] = BF_UNIT_UNALLOC, [U_COMPRESSED] = BF_UNIT_COMPRESSED,
    };
    out->kind = kinds[u.kind];
    out->host = u.host;
    return 0;
}

static int map_compressed(struct bf_image *img, const struct vmdk_extent *e, uint64_t marker,
                          uint64_t gstart, uint64_t rel, uint64_t len, struct bf_map *m)
{
    uint64_t guest = e->start + gstart;
    uint64_t comp_off = marker, comp_len;
    if (e->markers) {
        /* grain marker: u64 sector of the grain, u32 compressed size, data */
        uint8_t mk[12];
        if (!bf_range_within(marker, sizeof mk, e->file_size))
            return bf_err(img, -EIO, "%s: the grain marker for guest offset %" PRIu64
                          " lies past the end of the file", e->src->name, guest);
        int r = bf_source_pread(e->src, mk, sizeof mk, marker);
        if (r < 0)
            return bf_err(img, r, "%s: cannot read the grain marker at offset %" PRIu64 ": %s",
                          e->src->name, marker, strerror(-r));
        comp_len = bf_le32(mk + 8);
        comp_off = marker + sizeof mk;
        if (comp_len == 0)
            return bf_err(img, -EIO, "%s: the grain table entry for guest offset %" PRIu64
                          " points at a metadata marker, not a grain", e->src->name, guest);
    } else {
        /* no marker: the stream starts at the entry and ends where it ends */
        comp_len = bf_min64(2 * e->grain, e->file_size - marker);
    }
    /* zlib never grows data by more than a small fraction: twice the grain
     * is qemu's bound as well */
    if (comp_len > 2 * e->grain)
        return bf_err(img, -EIO, "%s: the compressed grain for guest offset %" PRIu64 " claims "
                      "%" PRIu64 " bytes, more than twice the grain size", e->src->name, guest,
                      comp_len);
    if (!bf_range_within(comp_off, comp_len, e->file_size))
        return bf_err(img, -EIO, "%s: the compressed grain for guest offset %" PRIu64 " (%"
                      PRIu64 " bytes at offset %" PRIu64 ") runs past the end of the file (%"
                      PRIu64 " bytes)", e->src->name, guest, comp_len, comp_off, e->file_size);
    uint64_t unit = bf_min64(e->grain, e->size - gstart);   /* the last grain may be short */
    m->kind = BF_MAP_COMPRESSED;
    m->src = e->src;
    m->codec = BF_CODEC_ZLIB;
    m->comp_off = comp_off;
    m->comp_len = comp_len;
    m->unit_guest_off = guest;
    m->unit_len = (uint32_t)unit;
    m->len = bf_min64(len, gstart + unit - rel);
    return 0;
}

static int map_sparse(struct bf_image *img, struct vmdk *v, const struct vmdk_extent *e,
                      uint64_t rel, uint64_t len, struct bf_map *m)
{
    uint64_t gd_idx = rel / e->gt_span;
    if (gd_idx >= e->n_gd)
        return bf_err(img, -EIO, "%s: internal error: no grain directory entry for extent "
                      "offset %" PRIu64, e->src->name, rel);
    uint64_t tbl_start = gd_idx * e->gt_span;
    len = bf_min64(len, bf_min64(tbl_start + e->gt_span, e->size) - rel);
    uint64_t gt_off = e->gd[gd_idx];
    if (gt_off == 0) {
        m->kind = BF_MAP_UNALLOC;
        m->len = len;
        return 0;
    }
    if (gt_off == VMDK_GT_BAD)
        return bf_err(img, -EIO, "%s: the grain directory entry for guest offset %" PRIu64
                      " is damaged (it points outside the file)", e->src->name, e->start + rel);

    const void *gt;
    struct bf_cache_ent *ent;
    int r = get_gt(img, v, e, gt_off, &gt, &ent);
    if (r < 0)
        return r;

    /* Runs are built one grain at a time, by the shared walker. */
    struct vmdk_units uc = { img, v, e, gt, (uint32_t)gd_idx, tbl_start };
    struct bf_unit first;
    r = bf_map_units(rel, len, e->grain, vmdk_unit, &uc, e->src, m, &first);
    if (r == 0 && first.kind == BF_UNIT_COMPRESSED)
        r = map_compressed(img, e, first.host, rel - rel % e->grain, rel, len, m);
    put_gt(v, gt, ent);
    return r;
}

/* Flat extents are data throughout.  Holes in the extent file are not
 * looked for: like qcow2 data clusters (and qemu, which answers "data" for
 * them), block status says data. */
static void map_flat(const struct vmdk_extent *e, uint64_t rel, uint64_t len, struct bf_map *m)
{
    m->kind = BF_MAP_DATA;
    m->src = e->src;
    m->host_off = e->flat_off + rel;
    m->len = len;
}

struct vmdk_extent *vmdk_extent_at(const struct vmdk *v, uint64_t off)
{
    size_t lo = 0, hi = v->n_ext;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (v->ext[mid].start <= off)
            lo = mid;
        else
            hi = mid;
    }
    return &v->ext[lo];
}

int vmdk_map(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags,
             struct bf_map *m)
{
    (void)flags;
    struct vmdk *v = img->priv;
    const struct vmdk_extent *e = v->n_ext ? vmdk_extent_at(v, off) : NULL;
    if (!e || off < e->start || off - e->start >= e->size)
        return bf_err(img, -EIO, "%s: internal error: no extent holds guest offset %" PRIu64,
                      img->filename, off);
    uint64_t rel = off - e->start;
    len = bf_min64(len, e->size - rel);
    switch (e->kind) {
    case VMDK_ZERO:
        m->kind = BF_MAP_ZERO;
        m->len = len;
        return 0;
    case VMDK_FLAT:
        map_flat(e, rel, len, m);
        return 0;
    default:
        return map_sparse(img, v, e, rel, len, m);
    }
}
