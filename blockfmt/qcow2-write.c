/* qcow2-write.c — writing qcow2 images: data writes (in place, or into a
 * newly allocated cluster with copy-on-write of the untouched part from what
 * the guest sees now: backing file, compressed cluster, snapshot-shared
 * cluster, zero), subclusters with extended L2 entries, external data files,
 * write-zeroes (zero flag or deallocation), discard, flush.
 *
 * Ordering, so that a crash at any instant leaves an image qemu-img check
 * finds free of corruption (leaks at worst): a new cluster is counted
 * (qcow2-refcount.c), then its whole content is written, then the L2 entry
 * pointing at it; a cluster is unreferenced (L2 entry) before it is
 * uncounted.  New and copied L2 tables are written before the L1 entry that
 * points at them.  Metadata is written through at once; FLUSH is fdatasync.
 *
 * Thread model: q->lock (a rwlock) is held shared by reads, block status and
 * data writes into clusters this image alone owns; a write that must
 * allocate, and write-zeroes/discard, take it exclusively and run one at a
 * time.  So nothing can free or reuse a cluster while anyone reads or writes
 * through an old mapping of it.
 */
#include "qcow2.h"

#include <inttypes.h>
#include <stdlib.h>

/* ------------------------------------------------------------ locking */

void qcow2_io_begin(struct bf_image *img)
{
    struct qcow2 *q = img->priv;
    if (q->writable)
        pthread_rwlock_rdlock(&q->lock);
}

void qcow2_io_end(struct bf_image *img)
{
    struct qcow2 *q = img->priv;
    if (q->writable)
        pthread_rwlock_unlock(&q->lock);
}

/* ------------------------------------------------------------- opening */

int qcow2_open_writable(struct bf_image *img, struct qcow2 *q, uint64_t l1_off,
                        uint64_t rt_off, uint32_t rt_clusters)
{
    if (q->incompat & QCOW2_INCOMPAT_CORRUPT)
        return bf_err(img, -EROFS, "%s: the image is marked corrupt; repair it with "
                      "'qemu-img check -r all' before writing", img->filename);
    if (q->incompat & QCOW2_INCOMPAT_DIRTY)
        return bf_err(img, -EROFS, "%s: the image is marked dirty (lazy refcounts were in "
                      "use when it was last closed); run 'qemu-img check -r all' before "
                      "writing", img->filename);
    q->l1_offset = l1_off;
    int r = qcow2_rc_open(img, q, rt_off, rt_clusters);
    if (r < 0)
        return r;
    /* Persistent dirty bitmaps (for incremental backups) would go stale
     * under our writes; clearing their bit makes qemu drop them all.  Do
     * not destroy them silently. */
    if (q->autoclear & QCOW2_AUTOCLEAR_BITMAPS)
        return bf_err(img, -EROFS, "%s: the image has persistent dirty bitmaps, which vdisk "
                      "cannot keep up to date; writing would make qemu discard them (remove "
                      "them with 'qemu-img bitmap --remove' first)", img->filename);
    /* Other auto-clear features we do not maintain must be cleared before
     * the first write; the raw-data-file bit we keep true. */
    uint64_t keep = q->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    if (q->version >= 3 && keep != q->autoclear) {
        uint8_t b[8];
        for (int k = 0; k < 8; k++)
            b[k] = (uint8_t)(keep >> (56 - 8 * k));
        if ((r = qcow2_write_meta(img, b, 8, 88, "the header")) < 0)
            return r;
        q->autoclear = keep;
    }
    pthread_rwlock_init(&q->lock, NULL);
    q->writable = true;
    return 0;
}

/* --------------------------------------------------------- table helpers */

static bool has_data_file(const struct qcow2 *q)
{
    return (q->incompat & QCOW2_INCOMPAT_DATA_FILE) != 0;
}

static bool data_file_raw(const struct qcow2 *q)
{
    return has_data_file(q) && (q->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW);
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int k = 0; k < 8; k++)
        p[k] = (uint8_t)(v >> (56 - 8 * k));
}

static int set_l1(struct bf_image *img, struct qcow2 *q, uint64_t i, uint64_t v)
{
    uint8_t b[8];
    put_be64(b, v);
    int r = qcow2_write_meta(img, b, 8, q->l1_offset + i * 8, "the L1 table");
    if (r == 0)
        q->l1[i] = v;
    return r;
}

struct l2ref {
    uint64_t off;
    uint8_t *tbl;                  /* cached copy; changed only under the exclusive lock */
    struct bf_cache_ent *ent;
};

static int pin_l2(struct bf_image *img, struct qcow2 *q, uint64_t off, struct l2ref *t)
{
    t->off = off;
    return qcow2_l2_get(img, q, off, &t->tbl, &t->ent);
}

/* The L2 table for guest offset @off, ready to be written: allocated when
 * missing, copied when shared with a snapshot. */
static int l2_for_write(struct bf_image *img, struct qcow2 *q, uint64_t off, struct l2ref *t)
{
    uint64_t i = off >> (q->cluster_bits + q->l2_bits);
    if (i >= q->l1_size)
        return bf_err(img, -EIO, "%s: internal error: no L1 entry for %#" PRIx64,
                      img->filename, off);
    uint64_t e = q->l1[i], old = e & QCOW2_OFFSET_MASK, neu;
    int r;
    if (old == 0) {
        uint8_t *z = calloc(1, q->cluster_size);
        if (!z)
            return bf_err(img, -ENOMEM, "out of memory");
        r = qcow2_alloc_clusters(img, q, 1, &neu);
        if (r == 0)
            r = qcow2_write_meta(img, z, q->cluster_size, neu, "a new L2 table");
        free(z);
        if (r == 0) {
            bf_cache_drop(q->l2_cache, neu);          /* a stale copy of a reused cluster */
            r = set_l1(img, q, i, neu | QCOW2_OFLAG_COPIED);
        }
        return r < 0 ? r : pin_l2(img, q, neu, t);
    }
    if (e & QCOW2_OFLAG_COPIED)
        return pin_l2(img, q, old, t);
    uint64_t rc;
    if ((r = qcow2_rc_get(img, q, old >> q->cluster_bits, &rc)) < 0)
        return r;
    if (rc == 1) {                                    /* ours alone: just fix the flag */
        r = set_l1(img, q, i, old | QCOW2_OFLAG_COPIED);
        return r < 0 ? r : pin_l2(img, q, old, t);
    }
    /* Shared with a snapshot: write a copy, point the L1 at it, then drop
     * our reference to the original. */
    struct l2ref src;
    if ((r = pin_l2(img, q, old, &src)) < 0)
        return r;
    r = qcow2_alloc_clusters(img, q, 1, &neu);
    if (r == 0)
        r = qcow2_write_meta(img, src.tbl, q->cluster_size, neu, "a copied L2 table");
    bf_cache_put(q->l2_cache, src.ent);
    if (r == 0) {
        bf_cache_drop(q->l2_cache, neu);
        r = set_l1(img, q, i, neu | QCOW2_OFLAG_COPIED);
    }
    if (r == 0)
        r = qcow2_rc_update(img, q, old >> q->cluster_bits, -1);
    return r < 0 ? r : pin_l2(img, q, neu, t);
}

static unsigned l2_index(const struct qcow2 *q, uint64_t off)
{
    return (unsigned)((off >> q->cluster_bits) & ((1ull << q->l2_bits) - 1));
}

static void get_entry(const struct qcow2 *q, const struct l2ref *t, unsigned idx, uint64_t *e,
                      uint64_t *bm)
{
    const uint8_t *p = t->tbl + (size_t)idx * q->l2_entry_size;
    *e = bf_be64(p);
    *bm = q->extended_l2 ? bf_be64(p + 8) : 0;
}

static int set_entry(struct bf_image *img, struct qcow2 *q, struct l2ref *t, unsigned idx,
                     uint64_t e, uint64_t bm)
{
    uint8_t *p = t->tbl + (size_t)idx * q->l2_entry_size;
    put_be64(p, e);
    if (q->extended_l2)
        put_be64(p + 8, bm);
    int r = qcow2_write_meta(img, p, q->l2_entry_size, t->off + (uint64_t)idx * q->l2_entry_size,
                             "an L2 entry");
    if (r < 0)
        bf_cache_drop(q->l2_cache, t->off);    /* the cached copy is ahead of the file */
    return r;
}

/* What an entry maps. */
struct old {
    bool compressed, has_host, zero_flag, owned;
    uint64_t host;
};

static int inspect(struct bf_image *img, struct qcow2 *q, uint64_t e, struct old *o)
{
    memset(o, 0, sizeof *o);
    o->compressed = (e & QCOW2_OFLAG_COMPRESSED) != 0;
    if (o->compressed)
        return 0;
    o->host = e & QCOW2_OFFSET_MASK;
    o->has_host = o->host != 0 || (has_data_file(q) && (e & QCOW2_OFLAG_COPIED));
    o->zero_flag = !q->extended_l2 && (e & QCOW2_OFLAG_ZERO);
    if (!o->has_host)
        return 0;
    if (o->host & (q->cluster_size - 1))
        return bf_err(img, -EIO, "%s: cluster offset %#" PRIx64 " is not aligned",
                      img->filename, o->host);
    if (has_data_file(q) || (e & QCOW2_OFLAG_COPIED)) {
        o->owned = true;
        return 0;
    }
    uint64_t rc;
    int r = qcow2_rc_get(img, q, o->host >> q->cluster_bits, &rc);
    o->owned = rc == 1;
    return r;
}

/* Drop the reference an entry held (after the entry stopped pointing). */
static int release(struct bf_image *img, struct qcow2 *q, uint64_t e, const struct old *o)
{
    if (o->compressed) {
        uint64_t coff = e & q->coffset_mask;
        uint64_t sectors = ((e >> q->csize_shift) & q->csize_mask) + 1;
        return qcow2_free_range(img, q, coff & ~511ull, sectors * 512);
    }
    if (o->has_host && !has_data_file(q))
        return qcow2_rc_update(img, q, o->host >> q->cluster_bits, -1);
    return 0;
}

static int write_data(struct bf_image *img, struct qcow2 *q, const void *buf, size_t len,
                      uint64_t host)
{
    int r = bf_source_pwrite(q->data_src, buf, len, host);
    if (r < 0)
        return bf_err(img, r, "%s: write error at offset %" PRIu64 ": %s", q->data_src->name,
                      host, strerror(-r));
    if (q->data_src == img->src && host + len > q->file_size)
        q->file_size = host + len;
    return 0;
}

/* ------------------------------------------------------------ writing */

/* Bytes of the cluster at @cstart that lie inside the disk. */
static uint64_t guest_len(const struct bf_image *img, const struct qcow2 *q, uint64_t cstart)
{
    return bf_min64(q->cluster_size, img->size - cstart);
}

/* The guest's current view of [cstart+from, cstart+to) with @data laid over
 * [in, in+len), in a fresh buffer of @to - @from bytes. */
static uint8_t *merged(struct bf_image *img, struct qcow2 *q, uint64_t cstart, uint64_t from,
                       uint64_t to, const uint8_t *data, uint64_t in, uint64_t len, int *err)
{
    uint8_t *b = calloc(1, to - from);
    if (!b) {
        *err = bf_err(img, -ENOMEM, "out of memory");
        return NULL;
    }
    uint64_t glen = guest_len(img, q, cstart);
    bool covered = in <= from && in + len >= bf_min64(to, glen);
    if (!covered && from < glen) {
        *err = bf_pread_nolock(img, b, bf_min64(to, glen) - from, cstart + from);
        if (*err < 0) {
            free(b);
            return NULL;
        }
    }
    memcpy(b + (in - from), data, len);
    *err = 0;
    return b;
}

/* Does the guest see nothing but zeros in this cluster now, so that a new
 * cluster for it needs no copy? */
static bool reads_zero(const struct bf_image *img, const struct qcow2 *q, const struct old *o,
                       uint64_t cstart)
{
    if (o->compressed)
        return false;
    if (!q->extended_l2 && o->zero_flag)
        return true;
    if (o->has_host)
        return false;
    return !img->backing || cstart >= img->backing->size;
}

/* Make [host, host+len) of the data file read as zero: a metadata operation
 * where the file system has one, zero bytes written where not. */
static int zero_host(struct bf_image *img, struct qcow2 *q, uint64_t host, uint64_t len)
{
    if (len == 0)
        return 0;
    struct bf_source *s = q->data_src;
    int r = s->ops->punch ? s->ops->punch(s, host, len, true) : -ENOTSUP;
    if (r == 0) {
        if (s == img->src && host + len > q->file_size)
            q->file_size = host + len;
        return 0;
    }
    static const uint8_t zeros[65536];
    for (uint64_t done = 0; done < len;) {
        uint64_t n = bf_min64(len - done, sizeof zeros);
        r = write_data(img, q, zeros, n, host + done);
        if (r < 0)
            return r;
        done += n;
    }
    return 0;
}

/* Write [off, off+len) inside one cluster, holding the lock exclusively. */
static int write_cluster(struct bf_image *img, struct qcow2 *q, const uint8_t *data,
                         uint64_t off, uint64_t len)
{
    uint64_t cs = q->cluster_size, cstart = off & ~(cs - 1), in = off - cstart;
    struct l2ref t;
    int r = l2_for_write(img, q, off, &t);
    if (r < 0)
        return r;
    unsigned idx = l2_index(q, off);
    uint64_t e, bm;
    get_entry(q, &t, idx, &e, &bm);
    struct old o;
    if ((r = inspect(img, q, e, &o)) < 0)
        goto out;
    uint64_t scs = cs / 32, s0 = in / scs, s1 = (in + len - 1) / scs;
    uint64_t scmask = ((s1 - s0 + 1 == 64) ? ~0ull : ((1ull << (s1 - s0 + 1)) - 1)) << s0;

    if (!o.compressed && o.has_host && o.owned) {
        if (!q->extended_l2 && !o.zero_flag) {           /* plain overwrite */
            r = write_data(img, q, data, len, o.host + in);
            if (r == 0 && !(e & QCOW2_OFLAG_COPIED))
                r = set_entry(img, q, &t, idx, e | QCOW2_OFLAG_COPIED, bm);
            goto out;
        }
        if (!q->extended_l2) {                           /* preallocated zero cluster */
            uint8_t *b = merged(img, q, cstart, 0, cs, data, in, len, &r);
            if (b) {
                r = write_data(img, q, b, cs, o.host);
                free(b);
            }
            if (r == 0)
                r = set_entry(img, q, &t, idx, o.host | QCOW2_OFLAG_COPIED, 0);
            goto out;
        }
        if ((bm & scmask) == scmask) {                  /* subclusters all allocated */
            r = write_data(img, q, data, len, o.host + in);
            goto out;
        }
    }
    if (q->extended_l2 && !o.compressed && (!o.has_host || o.owned)) {
        /* Subclusters: write only the touched ones into the (new) cluster. */
        uint64_t host = o.host;
        if (!o.has_host) {
            if (has_data_file(q))
                host = cstart;
            else if ((r = qcow2_alloc_clusters(img, q, 1, &host)) < 0)
                goto out;
        }
        uint8_t *b = merged(img, q, cstart, s0 * scs, (s1 + 1) * scs, data, in, len, &r);
        if (b) {
            r = write_data(img, q, b, (s1 - s0 + 1) * scs, host + s0 * scs);
            free(b);
        }
        if (r == 0) {
            uint64_t nbm = (bm | scmask) & ~(scmask << 32);
            r = set_entry(img, q, &t, idx, host | QCOW2_OFLAG_COPIED, nbm);
        }
        goto out;
    }
    /* A new cluster holding what the guest sees now, with the new data. */
    uint64_t host;
    if (has_data_file(q))
        host = cstart;
    else if ((r = qcow2_alloc_clusters(img, q, 1, &host)) < 0)
        goto out;
    if (reads_zero(img, q, &o, cstart)) {
        /* Nothing to copy: zero the rest of the cluster cheaply (a 2 MiB
         * cluster must not cost a 2 MiB write per small write), then the
         * data.  Both land before the L2 entry points at the cluster. */
        r = zero_host(img, q, host, in);
        if (r == 0)
            r = zero_host(img, q, host + in + len, cs - in - len);
        if (r == 0)
            r = write_data(img, q, data, len, host + in);
    } else {
        uint8_t *b = merged(img, q, cstart, 0, cs, data, in, len, &r);
        if (b) {
            r = write_data(img, q, b, cs, host);
            free(b);
        }
    }
    if (r == 0)
        r = set_entry(img, q, &t, idx, host | QCOW2_OFLAG_COPIED,
                      q->extended_l2 ? 0xffffffffull : 0);
    if (r == 0 && !(has_data_file(q) && o.has_host))
        r = release(img, q, e, &o);
out:
    bf_cache_put(q->l2_cache, t.ent);
    return r;
}

/* Under the shared lock: write [off, off+len) (one cluster) if it can go
 * straight into a cluster this image owns.  1 done, 0 not possible. */
static int write_in_place(struct bf_image *img, struct qcow2 *q, const uint8_t *data,
                          uint64_t off, uint64_t len)
{
    uint64_t i = off >> (q->cluster_bits + q->l2_bits);
    if (i >= q->l1_size || !(q->l1[i] & QCOW2_OFLAG_COPIED))
        return 0;
    uint64_t l2 = q->l1[i] & QCOW2_OFFSET_MASK;
    struct l2ref t;
    if (!l2 || pin_l2(img, q, l2, &t) < 0)
        return 0;              /* the exclusive path will report the damage */
    int r;
    uint64_t e, bm;
    get_entry(q, &t, l2_index(q, off), &e, &bm);
    bf_cache_put(q->l2_cache, t.ent);
    uint64_t host = e & QCOW2_OFFSET_MASK;
    if (!(e & QCOW2_OFLAG_COPIED) || (e & QCOW2_OFLAG_COMPRESSED) ||
        (!host && !has_data_file(q)) || (host & (q->cluster_size - 1)))
        return 0;
    uint64_t in = off & (q->cluster_size - 1);
    if (q->extended_l2) {
        uint64_t scs = q->cluster_size / 32, s0 = in / scs, s1 = (in + len - 1) / scs;
        for (uint64_t s = s0; s <= s1; s++)
            if (!((bm >> s) & 1))
                return 0;
    } else if (e & QCOW2_OFLAG_ZERO) {
        return 0;
    }
    r = bf_source_pwrite(q->data_src, data, len, host + in);
    if (r < 0)
        return bf_err(img, r, "%s: write error at offset %" PRIu64 ": %s", q->data_src->name,
                      host + in, strerror(-r));
    return 1;
}

int qcow2_pwrite(struct bf_image *img, const void *buf, size_t len, uint64_t off)
{
    struct qcow2 *q = img->priv;
    const uint8_t *p = buf;
    int r = 1;
    pthread_rwlock_rdlock(&q->lock);
    while (len > 0) {
        uint64_t n = bf_min64(len, q->cluster_size - (off & (q->cluster_size - 1)));
        r = write_in_place(img, q, p, off, n);
        if (r <= 0)
            break;
        p += n;
        off += n;
        len -= n;
    }
    pthread_rwlock_unlock(&q->lock);
    if (r < 0 || len == 0)
        return r < 0 ? r : 0;
    pthread_rwlock_wrlock(&q->lock);
    r = 0;
    while (len > 0 && r == 0) {
        uint64_t n = bf_min64(len, q->cluster_size - (off & (q->cluster_size - 1)));
        r = write_cluster(img, q, p, off, n);
        p += n;
        off += n;
        len -= n;
    }
    pthread_rwlock_unlock(&q->lock);
    return r;
}

/* ------------------------------------------------- zeroes and discard */

/* Make units [u0, u1) of the cluster at @cstart read as zero through
 * metadata alone (units: subclusters with extended L2, else the cluster).
 * @keep: a cluster this image owns stays allocated under a zero flag.
 * @discard: a discard, which may leave backing data visible (v2 cannot say
 * "zero" at all).  Returns 0 done, 1 when it cannot be done without writing
 * zero bytes (part of a compressed cluster), or -errno. */
static int zero_units(struct bf_image *img, struct qcow2 *q, uint64_t cstart, unsigned u0,
                      unsigned u1, bool keep, bool discard)
{
    uint64_t i = cstart >> (q->cluster_bits + q->l2_bits);
    if ((i >= q->l1_size || !(q->l1[i] & QCOW2_OFFSET_MASK)) && (discard || !img->backing))
        return 0;                /* no table: reads as zero, or may show the backing */
    struct l2ref t;
    int r = l2_for_write(img, q, cstart, &t);
    if (r < 0)
        return r;
    unsigned idx = l2_index(q, cstart);
    uint64_t e, bm, ne, nbm = 0;
    get_entry(q, &t, idx, &e, &bm);
    struct old o;
    if ((r = inspect(img, q, e, &o)) < 0)
        goto out;
    bool drop;                   /* the entry lets go of its cluster */
    if (!q->extended_l2) {
        bool keep_host = (keep && o.has_host && o.owned && !o.compressed) ||
                         (has_data_file(q) && o.has_host);     /* identity mapped */
        if (q->version < 3) {
            ne = 0;              /* no zero flag: deallocate (no backing, or a discard) */
            drop = true;
        } else {
            drop = !keep_host;
            ne = keep_host ? o.host | QCOW2_OFLAG_COPIED | QCOW2_OFLAG_ZERO : QCOW2_OFLAG_ZERO;
        }
    } else {
        bool whole = u0 == 0 && u1 == 32;
        if (o.compressed && !whole) {
            r = 1;               /* no subclusters in a compressed cluster */
            goto out;
        }
        uint64_t mask = (u1 - u0 == 32 ? 0xffffffffull : (1ull << (u1 - u0)) - 1) << u0;
        nbm = (bm & ~mask) | (mask << 32);
        bool all_zero = (nbm >> 32) == 0xffffffffull;
        drop = o.compressed ||
               (all_zero && !keep && o.has_host && o.owned && !has_data_file(q));
        ne = drop ? 0 : e;
    }
    r = set_entry(img, q, &t, idx, ne, nbm);
    if (r == 0 && drop)
        r = release(img, q, e, &o);
out:
    bf_cache_put(q->l2_cache, t.ent);
    return r;
}

struct ranges {
    uint64_t (*r)[2];
    size_t n, cap;
};

static int add_range(struct bf_image *img, struct ranges *rs, uint64_t a, uint64_t b)
{
    if (a >= b)
        return 0;
    if (rs->n == rs->cap) {
        size_t cap = rs->cap ? rs->cap * 2 : 8;
        void *n = realloc(rs->r, cap * sizeof *rs->r);
        if (!n)
            return bf_err(img, -ENOMEM, "out of memory");
        rs->r = n;
        rs->cap = cap;
    }
    rs->r[rs->n][0] = a;
    rs->r[rs->n++][1] = b;
    return 0;
}

/* Units of @len bytes at @off that are not whole (need zero bytes written),
 * without changing anything: for FAST requests. */
static bool has_partial_units(const struct bf_image *img, const struct qcow2 *q, uint64_t off,
                              uint64_t len)
{
    uint64_t unit = q->extended_l2 ? q->cluster_size / 32 : q->cluster_size;
    uint64_t end = off + len;
    return off % unit != 0 || (end % unit != 0 && end != img->size);
}

/* Walk [off, off+len): whole units through zero_units; the rest (and what
 * zero_units declined) into @rs for ordinary writes of zeroes. */
static int zero_walk(struct bf_image *img, struct qcow2 *q, uint64_t off, uint64_t len,
                     bool keep, bool discard, struct ranges *rs)
{
    uint64_t cs = q->cluster_size, unit = q->extended_l2 ? cs / 32 : cs, end = off + len;
    for (uint64_t cstart = off & ~(cs - 1); cstart < end; cstart += cs) {
        uint64_t glen = guest_len(img, q, cstart);
        uint64_t a = off > cstart ? off - cstart : 0, b = bf_min64(end - cstart, glen);
        /* a unit is whole when covered, or cut only by the end of the disk */
        uint64_t ua = (a + unit - 1) / unit * unit;
        uint64_t ub = b == glen ? b : b / unit * unit;
        int r = 0;
        if (ua < ub) {
            r = zero_units(img, q, cstart, (unsigned)(ua / unit),
                           (unsigned)((ub + unit - 1) / unit), keep, discard);
            if (r < 0)
                return r;
        }
        if (r == 1 || ua >= ub) {
            r = add_range(img, rs, cstart + a, cstart + b);
        } else {
            r = add_range(img, rs, cstart + a, cstart + ua);
            if (r == 0)
                r = add_range(img, rs, cstart + ub, cstart + b);
        }
        if (r < 0)
            return r;
    }
    return 0;
}

/* Is the cluster holding guest offset @off compressed?  A look-up only
 * (nothing allocated or copied); false when it cannot tell. */
static bool compressed_at(struct bf_image *img, struct qcow2 *q, uint64_t off)
{
    uint64_t i = off >> (q->cluster_bits + q->l2_bits);
    uint64_t l2 = i < q->l1_size ? q->l1[i] & QCOW2_OFFSET_MASK : 0;
    struct l2ref t;
    if (!l2 || (l2 & (q->cluster_size - 1)) ||
        !bf_range_within(l2, q->cluster_size, q->file_size) || pin_l2(img, q, l2, &t) < 0)
        return false;
    uint64_t e, bm;
    get_entry(q, &t, l2_index(q, off), &e, &bm);
    bf_cache_put(q->l2_cache, t.ent);
    return (e & QCOW2_OFLAG_COMPRESSED) != 0;
}

int qcow2_zero(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags)
{
    struct qcow2 *q = img->priv;
    /* Where metadata cannot say "zero", io.c writes zero bytes. */
    if (data_file_raw(q) || (q->version < 3 && img->backing))
        return -ENOTSUP;
    if ((flags & BF_ZERO_FAST) && has_partial_units(img, q, off, len))
        return -ENOTSUP;
    struct ranges rs = { 0 };
    pthread_rwlock_wrlock(&q->lock);
    /* A FAST request refused must leave the disk as it was (NBD: "SHOULD
     * NOT alter the contents"): refuse before changing anything when the
     * first or last cluster, cut by the range, is compressed (zero_units
     * declines part of a compressed cluster). */
    uint64_t cs = q->cluster_size, end = off + len;
    if ((flags & BF_ZERO_FAST) && q->extended_l2 &&
        (((off & (cs - 1)) && compressed_at(img, q, off)) ||
         ((end & (cs - 1)) && compressed_at(img, q, end - 1)))) {
        pthread_rwlock_unlock(&q->lock);
        return -ENOTSUP;
    }
    int r = zero_walk(img, q, off, len, !(flags & BF_ZERO_MAY_UNMAP), false, &rs);
    pthread_rwlock_unlock(&q->lock);
    if (r == 0 && rs.n && (flags & BF_ZERO_FAST))
        r = -ENOTSUP;
    static const uint8_t zeros[65536];
    for (size_t i = 0; r == 0 && i < rs.n; i++)
        for (uint64_t p = rs.r[i][0]; r == 0 && p < rs.r[i][1];) {
            uint64_t k = bf_min64(rs.r[i][1] - p, sizeof zeros);
            r = qcow2_pwrite(img, zeros, k, p);
            p += k;
        }
    free(rs.r);
    return r;
}

int qcow2_discard(struct bf_image *img, uint64_t off, uint64_t len)
{
    struct qcow2 *q = img->priv;
    if (data_file_raw(q))
        return 0;                /* the raw data file must keep showing the disk */
    struct ranges rs = { 0 };    /* partial units: a discard may ignore them */
    pthread_rwlock_wrlock(&q->lock);
    int r = zero_walk(img, q, off, len, false, true, &rs);
    pthread_rwlock_unlock(&q->lock);
    free(rs.r);
    return r;
}

int qcow2_flush(struct bf_image *img)
{
    struct qcow2 *q = img->priv;
    int r = bf_source_flush(img->src);
    if (r == 0 && q->data_src != img->src)
        r = bf_source_flush(q->data_src);
    return r < 0 ? bf_err(img, r, "%s: flush failed: %s", img->filename, strerror(-r)) : 0;
}
