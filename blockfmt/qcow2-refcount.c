/* qcow2-refcount.c — host cluster reference counts for writing qcow2:
 * reading and changing a cluster's count, finding free clusters (reusing
 * freed ones, else growing the file), adding refcount blocks and growing the
 * refcount table.  Layout: qemu docs/interop/qcow2.txt, "Host cluster
 * management".
 *
 * Crash safety (what a SIGKILL at any instant may leave): every change is
 * written through at once, and always in the order "count a cluster, then
 * reference it" / "unreference it, then uncount it", so an interruption
 * can only leak clusters (a count with no reference), never let one cluster
 * be used twice.  Refcount blocks are written complete before the table
 * entry that points at them; a new table is written complete, with the
 * blocks that count it, before the header switches to it.
 *
 * Thread model: every function here is called with the image's lock held
 * exclusively (qcow2-write.c); nothing here locks.
 */
#include "qcow2.h"

#include <inttypes.h>
#include <stdlib.h>
#include <unistd.h>

/* ------------------------------------------------------- entry helpers */

static unsigned rc_bits(const struct qcow2 *q) { return 1u << q->refcount_order; }

static uint64_t rc_max(const struct qcow2 *q)
{
    return rc_bits(q) == 64 ? UINT64_MAX : (1ull << rc_bits(q)) - 1;
}

static uint64_t rc_read_entry(const struct qcow2 *q, const uint8_t *blk, uint64_t i)
{
    unsigned bits = rc_bits(q);
    if (bits < 8)
        return (blk[i * bits / 8] >> (i * bits % 8)) & ((1u << bits) - 1);
    const uint8_t *p = blk + i * (bits / 8);
    switch (bits) {
    case 8: return p[0];
    case 16: return bf_be16(p);
    case 32: return bf_be32(p);
    default: return bf_be64(p);
    }
}

/* Store @v as entry @i of @blk; *boff and *blen: the bytes that changed. */
static void rc_write_entry(const struct qcow2 *q, uint8_t *blk, uint64_t i, uint64_t v,
                           uint64_t *boff, size_t *blen)
{
    unsigned bits = rc_bits(q);
    if (bits < 8) {
        uint64_t byte = i * bits / 8;
        unsigned shift = (unsigned)(i * bits % 8);
        uint8_t mask = (uint8_t)(((1u << bits) - 1) << shift);
        blk[byte] = (uint8_t)((blk[byte] & ~mask) | ((v << shift) & mask));
        *boff = byte;
        *blen = 1;
        return;
    }
    size_t n = bits / 8;
    uint8_t *p = blk + i * n;
    for (size_t k = 0; k < n; k++)
        p[k] = (uint8_t)(v >> (8 * (n - 1 - k)));
    *boff = i * n;
    *blen = n;
}

/* ------------------------------------------------------------ cache */

struct rb_load {
    struct bf_image *img;
    struct qcow2 *q;
};

static int load_rb(void *ctx, uint64_t off, void *buf)
{
    struct rb_load *l = ctx;
    int r = bf_source_pread(l->img->src, buf, l->q->cluster_size, off);
    if (r < 0)
        return bf_err(l->img, r, "%s: cannot read refcount block at %#" PRIx64 ": %s",
                      l->img->filename, off, strerror(-r));
    return 0;
}

static int get_block(struct bf_image *img, struct qcow2 *q, uint64_t off, uint8_t **blk,
                     struct bf_cache_ent **ent)
{
    struct rb_load l = { img, q };
    const void *d = NULL;
    int r = bf_cache_get(q->rb_cache, off, load_rb, &l, &d, ent);
    if (r < 0)
        return r == -ENOMEM ? bf_err(img, r, "out of memory") : r;
    *blk = (uint8_t *)d;           /* only changed under the exclusive lock */
    return 0;
}

/* Write metadata to the image file; the file may grow. */
int qcow2_write_meta(struct bf_image *img, const void *buf, size_t len, uint64_t off,
                     const char *what)
{
    struct qcow2 *q = img->priv;
    int r = bf_source_pwrite(img->src, buf, len, off);
    if (r < 0)
        return bf_err(img, r, "%s: cannot write %s at %#" PRIx64 ": %s", img->filename, what,
                      off, strerror(-r));
    if (off + len > q->file_size)
        q->file_size = off + len;
    return 0;
}

/* ------------------------------------------------------------- opening */

int qcow2_rc_open(struct bf_image *img, struct qcow2 *q, uint64_t rt_off, uint32_t rt_clusters)
{
    q->rb_entries = (q->cluster_size * 8) >> q->refcount_order;
    q->rt_offset = rt_off;
    q->rt_size = ((uint64_t)rt_clusters << q->cluster_bits) / 8;
    q->rt = malloc(q->rt_size * 8);
    q->rb_cache = bf_cache_new(q->cluster_size, 4u << 20);
    if (!q->rt || !q->rb_cache)
        return bf_err(img, -ENOMEM, "out of memory");
    int r = bf_source_pread(img->src, q->rt, q->rt_size * 8, rt_off);
    if (r < 0)
        return bf_err(img, r, "%s: cannot read the refcount table: %s", img->filename,
                      strerror(-r));
    for (uint64_t i = 0; i < q->rt_size; i++) {
        uint64_t e = bf_be64(&q->rt[i]);
        q->rt[i] = e & QCOW2_OFFSET_MASK;
        if (q->rt[i] & (q->cluster_size - 1))
            return bf_err(img, -EINVAL, "%s: refcount block %" PRIu64 " is not aligned to a "
                          "cluster; run 'qemu-img check -r all' before writing", img->filename, i);
        if (q->rt[i] && !bf_range_within(q->rt[i], q->cluster_size, q->file_size))
            return bf_err(img, -EINVAL, "%s: refcount block %" PRIu64 " lies past the end of "
                          "the file; run 'qemu-img check -r all' before writing",
                          img->filename, i);
    }
    q->free_hint = 0;
    return 0;
}

void qcow2_rc_close(struct qcow2 *q)
{
    free(q->rt);
    bf_cache_free(q->rb_cache);
}

/* ---------------------------------------------------------- reading */

int qcow2_rc_get(struct bf_image *img, struct qcow2 *q, uint64_t cluster, uint64_t *rc)
{
    uint64_t ti = cluster / q->rb_entries;
    if (ti >= q->rt_size || q->rt[ti] == 0) {
        *rc = 0;
        return 0;
    }
    uint8_t *blk;
    struct bf_cache_ent *ent;
    int r = get_block(img, q, q->rt[ti], &blk, &ent);
    if (r < 0)
        return r;
    *rc = rc_read_entry(q, blk, cluster % q->rb_entries);
    bf_cache_put(q->rb_cache, ent);
    return 0;
}

/* ------------------------------------------------ refcount structures */

static int grow_table(struct bf_image *img, struct qcow2 *q, uint64_t need_entries);
static int set_rc(struct bf_image *img, struct qcow2 *q, uint64_t cluster, uint64_t v);

/* Clusters the file has (or has reserved): where appended clusters go. */
static uint64_t file_clusters(const struct qcow2 *q)
{
    return (q->file_size + q->cluster_size - 1) >> q->cluster_bits;
}

/* Make clusters below @c unavailable to end-of-file allocation (they are
 * about to be written). */
static void reserve_to(struct qcow2 *q, uint64_t c)
{
    if ((c << q->cluster_bits) > q->file_size)
        q->file_size = c << q->cluster_bits;
}

/* A new refcount block for table entry @ti, at the end of the file.  If the
 * block counts itself, its own entry is in the block as written; otherwise
 * its count goes into another block first (which may itself be new: the
 * cluster is reserved before that recursion so it is not handed out twice). */
static int add_block(struct bf_image *img, struct qcow2 *q, uint64_t ti)
{
    uint64_t c = file_clusters(q);
    reserve_to(q, c + 1);
    uint8_t *blk = calloc(1, q->cluster_size);
    if (!blk)
        return bf_err(img, -ENOMEM, "out of memory");
    int r = 0;
    if (c / q->rb_entries == ti) {
        uint64_t bo;
        size_t bl;
        rc_write_entry(q, blk, c % q->rb_entries, 1, &bo, &bl);
    } else {
        r = set_rc(img, q, c, 1);
    }
    uint64_t off = c << q->cluster_bits;
    if (r == 0)
        r = qcow2_write_meta(img, blk, q->cluster_size, off, "a refcount block");
    free(blk);
    if (r < 0)
        return r;
    bf_cache_drop(q->rb_cache, off);
    uint8_t e[8];
    for (int k = 0; k < 8; k++)
        e[k] = (uint8_t)(off >> (56 - 8 * k));
    r = qcow2_write_meta(img, e, 8, q->rt_offset + ti * 8, "the refcount table");
    if (r < 0)
        return r;
    q->rt[ti] = off;
    return 0;
}

/* Set the count of @cluster to @v (write-through), adding a block or
 * growing the table when the cluster is not covered yet. */
static int set_rc(struct bf_image *img, struct qcow2 *q, uint64_t cluster, uint64_t v)
{
    uint64_t ti = cluster / q->rb_entries;
    int r;
    if (ti >= q->rt_size && (r = grow_table(img, q, ti + 1)) < 0)
        return r;
    if (q->rt[ti] == 0 && (r = add_block(img, q, ti)) < 0)
        return r;
    uint8_t *blk;
    struct bf_cache_ent *ent;
    if ((r = get_block(img, q, q->rt[ti], &blk, &ent)) < 0)
        return r;
    uint64_t bo;
    size_t bl;
    rc_write_entry(q, blk, cluster % q->rb_entries, v, &bo, &bl);
    r = qcow2_write_meta(img, blk + bo, bl, q->rt[ti] + bo, "a refcount");
    bf_cache_put(q->rb_cache, ent);
    if (r == 0 && v == 0 && cluster < q->free_hint)
        q->free_hint = cluster;
    return r;
}

/* A bigger refcount table at the end of the file, followed by the new blocks
 * that count it (and themselves).  Written whole, made durable, then the
 * header switches to it in one write; the old table is freed last. */
static int grow_table(struct bf_image *img, struct qcow2 *q, uint64_t need_entries)
{
    uint64_t per_cluster = q->cluster_size / 8;
    uint64_t entries = q->rt_size * 2 > need_entries ? q->rt_size * 2 : need_entries;
    uint64_t tstart = file_clusters(q), tclusters, nblocks;
    /* Fixed point: the table and its new blocks must all be covered by it. */
    for (;;) {
        entries = (entries + per_cluster - 1) / per_cluster * per_cluster;
        tclusters = entries / per_cluster;
        if ((tclusters << q->cluster_bits) > QCOW2_MAX_REFTABLE_BYTES)
            return bf_err(img, -EFBIG, "%s: the refcount table would exceed %u bytes",
                          img->filename, QCOW2_MAX_REFTABLE_BYTES);
        /* blocks for table entries that have none, among those the table and
         * the blocks themselves need */
        nblocks = 0;
        for (int iter = 0; iter < 64; iter++) {
            uint64_t end = tstart + tclusters + nblocks;
            uint64_t first = tstart / q->rb_entries, last = (end - 1) / q->rb_entries;
            uint64_t n = 0;
            for (uint64_t t = first; t <= last; t++)
                if (t >= q->rt_size || q->rt[t] == 0)
                    n++;
            if (n == nblocks)
                break;
            nblocks = n;
        }
        uint64_t end = tstart + tclusters + nblocks;
        if ((end - 1) / q->rb_entries < entries && need_entries <= entries)
            break;
        entries = ((end - 1) / q->rb_entries + 1) * 2;
    }

    uint64_t *nt = calloc(entries, 8);
    uint8_t *blk = malloc(q->cluster_size);
    if (!nt || !blk) {
        free(nt);
        free(blk);
        return bf_err(img, -ENOMEM, "out of memory");
    }
    memcpy(nt, q->rt, q->rt_size * 8);
    uint64_t bstart = tstart + tclusters, end = bstart + nblocks, nb = 0;
    reserve_to(q, end);
    int r = 0;
    /* the new blocks, each counting whatever of [tstart, end) it covers */
    for (uint64_t t = tstart / q->rb_entries; r == 0 && t <= (end - 1) / q->rb_entries; t++) {
        if (t < q->rt_size && q->rt[t] != 0)
            continue;
        memset(blk, 0, q->cluster_size);
        for (uint64_t c = tstart > t * q->rb_entries ? tstart : t * q->rb_entries;
             c < end && c < (t + 1) * q->rb_entries; c++) {
            uint64_t bo;
            size_t bl;
            rc_write_entry(q, blk, c % q->rb_entries, 1, &bo, &bl);
        }
        nt[t] = (bstart + nb) << q->cluster_bits;
        r = qcow2_write_meta(img, blk, q->cluster_size, nt[t], "a refcount block");
        bf_cache_drop(q->rb_cache, nt[t]);
        nb++;
    }
    /* clusters of the new region counted by blocks that already existed */
    for (uint64_t c = tstart; r == 0 && c < end; c++) {
        uint64_t t = c / q->rb_entries;
        if (t < q->rt_size && q->rt[t] != 0)
            r = set_rc(img, q, c, 1);
    }
    free(blk);
    if (r == 0) {
        uint8_t *raw = malloc(tclusters << q->cluster_bits);
        if (!raw) {
            r = bf_err(img, -ENOMEM, "out of memory");
        } else {
            memset(raw, 0, tclusters << q->cluster_bits);
            for (uint64_t i = 0; i < entries; i++)
                for (int k = 0; k < 8; k++)
                    raw[i * 8 + k] = (uint8_t)(nt[i] >> (56 - 8 * k));
            r = qcow2_write_meta(img, raw, tclusters << q->cluster_bits, tstart << q->cluster_bits,
                         "the new refcount table");
            free(raw);
        }
    }
    if (r == 0 && (r = bf_source_flush(img->src)) < 0)
        r = bf_err(img, r, "%s: flush failed: %s", img->filename, strerror(-r));
    if (r == 0) {
        uint8_t h[12];
        uint64_t off = tstart << q->cluster_bits;
        for (int k = 0; k < 8; k++)
            h[k] = (uint8_t)(off >> (56 - 8 * k));
        for (int k = 0; k < 4; k++)
            h[8 + k] = (uint8_t)(tclusters >> (24 - 8 * k));
        r = qcow2_write_meta(img, h, sizeof h, 48, "the header");
        if (r == 0 && (r = bf_source_flush(img->src)) < 0)
            r = bf_err(img, r, "%s: flush failed: %s", img->filename, strerror(-r));
    }
    if (r < 0) {
        free(nt);
        return r;
    }
    uint64_t old_off = q->rt_offset, old_clusters = (q->rt_size * 8) >> q->cluster_bits;
    free(q->rt);
    q->rt = nt;
    q->rt_size = entries;
    q->rt_offset = tstart << q->cluster_bits;
    /* the old table is garbage now */
    for (uint64_t c = 0; r == 0 && c < old_clusters; c++)
        r = qcow2_rc_update(img, q, (old_off >> q->cluster_bits) + c, -1);
    return r;
}

/* ---------------------------------------------------------- changing */

int qcow2_rc_update(struct bf_image *img, struct qcow2 *q, uint64_t cluster, int delta)
{
    uint64_t rc;
    int r = qcow2_rc_get(img, q, cluster, &rc);
    if (r < 0)
        return r;
    if (delta < 0 && rc == 0)
        return bf_err(img, -EIO, "%s: refcount of cluster %#" PRIx64 " would drop below zero "
                      "(the image is damaged; run 'qemu-img check')", img->filename,
                      cluster << q->cluster_bits);
    if (delta > 0 && rc == rc_max(q))
        return bf_err(img, -ERANGE, "%s: refcount of cluster %#" PRIx64 " overflows",
                      img->filename, cluster << q->cluster_bits);
    return set_rc(img, q, cluster, delta > 0 ? rc + 1 : rc - 1);
}

int qcow2_alloc_clusters(struct bf_image *img, struct qcow2 *q, uint64_t n, uint64_t *off)
{
    /* Reuse the first free run inside the file, else append.  Everything
     * below the first free cluster seen is in use: the hint moves there. */
    uint64_t fc = file_clusters(q), start = fc, run = 0;
    bool seen_free = false;
    for (uint64_t c = q->free_hint; c < fc && run < n; c++) {
        uint64_t rc;
        int r = qcow2_rc_get(img, q, c, &rc);
        if (r < 0)
            return r;
        if (rc != 0) {
            run = 0;
            continue;
        }
        if (!seen_free) {
            q->free_hint = c;
            seen_free = true;
        }
        if (run++ == 0)
            start = c;
    }
    if (!seen_free)
        q->free_hint = fc;
    if (run < n && start + run != fc)
        start = fc;                        /* no run inside: append */
    /* Reserve the run before counting it: counting may add refcount blocks
     * at the end of the file, which must land after it. */
    reserve_to(q, start + n);
    for (uint64_t i = 0; i < n; i++) {
        int r = set_rc(img, q, start + i, 1);
        if (r < 0)
            return r;
    }
    *off = start << q->cluster_bits;
    return 0;
}

int qcow2_free_range(struct bf_image *img, struct qcow2 *q, uint64_t off, uint64_t bytes)
{
    if (bytes == 0)
        return 0;
    uint64_t first = off >> q->cluster_bits, last = (off + bytes - 1) >> q->cluster_bits;
    for (uint64_t c = first; c <= last; c++) {
        int r = qcow2_rc_update(img, q, c, -1);
        if (r < 0)
            return r;
    }
    return 0;
}
