/* qcow2-map.c — map a guest range of a qcow2 image to its first run: data
 * at a host offset, zero, unallocated, or one compressed cluster.  Handles
 * standard and extended (subcluster) L2 entries and external data files the
 * way qemu reads them (qcow2_get_subcluster_type and friends): the zero flag
 * is honoured in any version without subclusters, an entry with both the
 * allocated and zero bits for one subcluster is corrupt.
 *
 * Thread model: L1 is fixed after open; L2 tables come from the shared,
 * self-locking cache and are only read here.
 */
#include "qcow2.h"

#include <inttypes.h>

struct l2_load {
    struct bf_image *img;
    struct qcow2 *q;
};

static int load_l2(void *ctx, uint64_t off, void *buf)
{
    struct l2_load *l = ctx;
    int r = bf_source_pread(l->img->src, buf, l->q->cluster_size, off);
    if (r < 0)
        return bf_err(l->img, r, "%s: cannot read L2 table at %#" PRIx64 ": %s",
                      l->img->filename, off, strerror(-r));
    return 0;
}

int qcow2_l2_get(struct bf_image *img, struct qcow2 *q, uint64_t off, uint8_t **tbl,
                 struct bf_cache_ent **ent)
{
    if (off & (q->cluster_size - 1))
        return bf_err(img, -EIO, "%s: L2 table offset %#" PRIx64 " is not aligned to a "
                      "cluster", img->filename, off);
    if (!bf_range_within(off, q->cluster_size, q->file_size))
        return bf_err(img, -EIO, "%s: L2 table at offset %#" PRIx64 " lies past the end of "
                      "the file (%" PRIu64 " bytes)", img->filename, off, q->file_size);
    struct l2_load l = { img, q };
    const void *d;
    int r = bf_cache_get(q->l2_cache, off, load_l2, &l, &d, ent);
    if (r < 0)
        return r == -ENOMEM ? bf_err(img, r, "out of memory") : r;
    *tbl = (uint8_t *)d;       /* changed only by writers holding the lock exclusively */
    return 0;
}

/* Classify guest (sub)cluster @idx of the L2 table @l2 covering guest offset
 * @guest_cluster (its cluster start).  @sc is the subcluster index (0 when
 * there are none). */
static int classify(struct bf_image *img, struct qcow2 *q, const uint8_t *l2, unsigned idx,
                    unsigned sc, uint64_t guest_cluster, struct bf_unit *u)
{
    uint64_t e = bf_be64(l2 + (size_t)idx * q->l2_entry_size);
    bool data_file = (q->incompat & QCOW2_INCOMPAT_DATA_FILE) != 0;
    if (e & QCOW2_OFLAG_COMPRESSED) {
        if (data_file)
            return bf_err(img, -EIO, "%s: compressed cluster at guest offset %#" PRIx64
                          " in an image with an external data file", img->filename,
                          guest_cluster);
        u->kind = BF_UNIT_COMPRESSED;
        u->aux = e;                /* the compressed cluster descriptor */
        return 0;
    }
    uint64_t host = e & QCOW2_OFFSET_MASK;
    /* With an external data file offset 0 is valid; the COPIED bit marks it. */
    bool has_host = host != 0 || (data_file && (e & QCOW2_OFLAG_COPIED));
    bool zero, alloc;
    if (!q->extended_l2) {
        zero = (e & QCOW2_OFLAG_ZERO) != 0;
        alloc = has_host;
    } else {
        uint64_t bm = bf_be64(l2 + (size_t)idx * 16 + 8);
        if (((bm >> 32) & bm & 0xffffffffu) || (!has_host && (bm & 0xffffffffu)))
            return bf_err(img, -EIO, "%s: invalid subcluster bitmap %#" PRIx64 " for guest "
                          "offset %#" PRIx64, img->filename, bm, guest_cluster);
        zero = (bm >> (32 + sc)) & 1;
        alloc = (bm >> sc) & 1;
    }
    if (zero) {
        u->kind = BF_UNIT_ZERO;
        return 0;
    }
    if (!alloc) {
        u->kind = BF_UNIT_UNALLOC;
        return 0;
    }
    if (host & (q->cluster_size - 1))
        return bf_err(img, -EIO, "%s: cluster offset %#" PRIx64 " for guest offset %#" PRIx64
                      " is not aligned to a cluster", img->filename, host, guest_cluster);
    if (data_file && host != guest_cluster)
        return bf_err(img, -EIO, "%s: external data file offset %#" PRIx64 " does not match "
                      "guest offset %#" PRIx64, img->filename, host, guest_cluster);
    u->kind = BF_UNIT_DATA;
    u->host = host + ((uint64_t)sc << (q->cluster_bits - 5));
    return 0;
}

struct qcow2_units {
    struct bf_image *img;
    struct qcow2 *q;
    const uint8_t *l2;          /* the L2 table covering the run, pinned */
};

static int qcow2_unit(void *ctx, uint64_t start, struct bf_unit *u)
{
    const struct qcow2_units *c = ctx;
    const struct qcow2 *q = c->q;
    unsigned idx = (unsigned)((start >> q->cluster_bits) & ((1ull << q->l2_bits) - 1));
    unsigned sc = q->extended_l2 ? (unsigned)((start >> (q->cluster_bits - 5)) & 31) : 0;
    return classify(c->img, c->q, c->l2, idx, sc, start & ~(q->cluster_size - 1), u);
}

static int map_compressed(struct bf_image *img, struct qcow2 *q, uint64_t e,
                          uint64_t cluster_start, uint64_t off, uint64_t len, struct bf_map *m)
{
    uint64_t coff = e & q->coffset_mask;
    uint64_t sectors = ((e >> q->csize_shift) & q->csize_mask) + 1;
    uint64_t clen = sectors * 512 - (coff & 511);
    if (coff >= q->file_size)
        return bf_err(img, -EIO, "%s: compressed cluster for guest offset %#" PRIx64
                      " points past the end of the file (offset %#" PRIx64 ", file %" PRIu64
                      " bytes)", img->filename, cluster_start, coff, q->file_size);
    m->kind = BF_MAP_COMPRESSED;
    m->src = img->src;
    m->codec = q->codec;
    m->comp_off = coff;
    m->comp_len = clen;
    m->unit_guest_off = cluster_start;
    m->unit_len = (uint32_t)q->cluster_size;
    m->len = bf_min64(len, cluster_start + q->cluster_size - off);
    return 0;
}

int qcow2_map(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags,
              struct bf_map *m)
{
    (void)flags;
    struct qcow2 *q = img->priv;
    unsigned span_bits = q->cluster_bits + q->l2_bits;    /* bytes one L2 table maps */
    uint64_t l1_index = off >> span_bits;
    uint64_t span_end = (l1_index + 1) << span_bits;
    len = bf_min64(len, span_end - off);

    uint64_t l2_off = l1_index < q->l1_size ? q->l1[l1_index] & QCOW2_OFFSET_MASK : 0;
    if (!l2_off) {
        m->kind = BF_MAP_UNALLOC;
        m->len = len;
        return 0;
    }
    uint8_t *l2;
    struct bf_cache_ent *ent;
    int r = qcow2_l2_get(img, q, l2_off, &l2, &ent);
    if (r < 0)
        return r;

    /* Runs are built one (sub)cluster at a time, by the shared walker. */
    struct qcow2_units uc = { img, q, l2 };
    uint64_t unit = q->extended_l2 ? q->cluster_size / 32 : q->cluster_size;
    struct bf_unit first;
    r = bf_map_units(off, len, unit, qcow2_unit, &uc, q->data_src, m, &first);
    if (r == 0 && first.kind == BF_UNIT_COMPRESSED)
        r = map_compressed(img, q, first.aux, off & ~(q->cluster_size - 1), off, len, m);
    bf_cache_put(q->l2_cache, ent);
    return r;
}
