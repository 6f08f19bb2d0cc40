/* vhdx-log.c — the vhdx metadata log, replayed in memory.  A header whose
 * LogGuid is not zero names a log that may hold updates (BAT, metadata,
 * region table pages) not yet written to their places; until they are, the
 * file's structures cannot be trusted.  qemu replays the log only when it
 * opens an image read-write and refuses a read-only open; we never write,
 * so we replay it into memory: the replayed 4 KiB pages and zeroed ranges
 * become a sorted list laid over the file by a private byte source, which
 * the rest of the driver reads the file through.
 *
 * Finding what to replay follows [MS-VHDX] 2.3.3: every 4 KiB sector of the
 * circular log that starts a valid entry (signature, LogGuid, CRC-32C over
 * the whole entry, descriptors and data sectors carrying its sequence
 * number) is a candidate; the active sequence ends at the valid entry with
 * the highest sequence number whose Tail field leads, entry by entry with
 * sequence numbers one apart, to it.  Its entries are applied from the
 * tail to the head, later writes winning.  qemu takes the first valid run
 * found scanning from the start of the log instead; for the one-entry logs
 * qemu writes, both choose the same entry.
 *
 * Thread model: everything is built during open; the replay source is
 * read-only afterwards and may be read from any number of threads.
 */
#include "vhdx.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#define SEC VHDX_LOG_SECTOR
#define MAX_FILE_OFFSET ((uint64_t)1 << 62)   /* far past any real file; keeps sums exact */

struct entry {
    uint64_t pos, len;        /* in the log */
    uint64_t seq;
    uint32_t tail;
    uint64_t flushed, last;   /* FlushedFileOffset, LastFileOffset */
    uint32_t n_desc, desc_sectors;
};

struct log {
    struct bf_image *img;
    struct vhdx *v;
    uint8_t *buf;             /* the log twice over: an entry is contiguous at buf + pos */
    uint64_t len;
    uint64_t crc_budget;      /* bytes a damaged log may make us checksum */
};

static bool guid_zero(const uint8_t g[16])
{
    for (int i = 0; i < 16; i++)
        if (g[i])
            return false;
    return true;
}

/* Is there a valid entry at @pos?  Fills @e.  -errno only when the search
 * costs more than a log can legitimately need. */
static int entry_at(struct log *l, uint64_t pos, struct entry *e, bool *valid)
{
    const uint8_t *p = l->buf + pos;
    *valid = false;
    uint64_t len = bf_le32(p + 8), n_desc = bf_le32(p + 24);
    e->pos = pos;
    e->len = len;
    e->tail = bf_le32(p + 12);
    e->seq = bf_le64(p + 16);
    e->flushed = bf_le64(p + 48);
    e->last = bf_le64(p + 56);
    /* 64-byte header, then 32-byte descriptors, filling 4 KiB sectors */
    uint64_t desc_sectors = (n_desc * 32 + 64 + SEC - 1) / SEC;
    if (memcmp(p, "loge", 4) != 0 || len == 0 || len % SEC || len > l->len || e->seq == 0 ||
        memcmp(p + 32, l->v->hdr.log_guid, 16) != 0 || desc_sectors * SEC > len)
        return 0;
    if (l->crc_budget < len)
        return bf_err(l->img, -EINVAL, "%s: the vhdx log is too damaged to search (too many "
                      "entries fail their checksum)", l->img->filename);
    l->crc_budget -= len;
    if (vhdx_crc32c(p, len, 4) != bf_le32(p + 4))
        return 0;
    uint64_t data = desc_sectors;
    for (uint64_t i = 0; i < n_desc; i++) {
        const uint8_t *d = p + 64 + i * 32;
        if (bf_le64(d + 24) != e->seq || bf_le64(d + 16) % SEC)
            return 0;
        if (memcmp(d, "zero", 4) == 0) {
            if (bf_le64(d + 8) % SEC)
                return 0;
        } else if (memcmp(d, "desc", 4) == 0) {
            if (data >= len / SEC)
                return 0;
            const uint8_t *s = p + data * SEC;
            uint64_t sseq = (uint64_t)bf_le32(s + 4) << 32 | bf_le32(s + 4092);
            if (memcmp(s, "data", 4) != 0 || sseq != e->seq)
                return 0;
            data++;
        } else {
            return 0;
        }
    }
    e->n_desc = (uint32_t)n_desc;
    e->desc_sectors = (uint32_t)desc_sectors;
    *valid = true;
    return 0;
}

/* ------------------------------------------------------ normalising */

struct write {
    uint64_t off, len;
    const uint8_t *data;      /* a 4 KiB page, or NULL for zeros */
};

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Index of @x in the sorted @b[0..n) (present by construction). */
static size_t find_bound(const uint64_t *b, size_t n, uint64_t x)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (b[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static size_t dsu_find(size_t *next, size_t k)
{
    size_t root = k;
    while (next[root] != root)
        root = next[root];
    while (next[k] != root) {
        size_t up = next[k];
        next[k] = root;
        k = up;
    }
    return root;
}

/* Turn the writes (in replay order) into sorted, disjoint segments: cut
 * the file at every write's ends; each piece takes the last write covering
 * it.  Zero writes are painted newest first, each piece once (a
 * union-find skips painted pieces); a data page is one piece and wins when
 * it is newer than the zero write there. */
static int normalise(const struct write *w, size_t n, struct vhdx_seg **out, size_t *nout)
{
    *out = NULL;
    *nout = 0;
    if (n == 0)
        return 0;
    size_t nb = 0;
    uint64_t *b = malloc(2 * n * sizeof *b);
    ssize_t *zorder = NULL, *dorder = NULL;
    size_t *next = NULL;
    struct vhdx_seg *seg = NULL;
    int r = -ENOMEM;
    if (!b)
        goto out;
    for (size_t i = 0; i < n; i++) {
        b[nb++] = w[i].off;
        b[nb++] = w[i].off + w[i].len;
    }
    qsort(b, nb, sizeof *b, cmp_u64);
    size_t m = 0;
    for (size_t i = 0; i < nb; i++)
        if (m == 0 || b[m - 1] != b[i])
            b[m++] = b[i];
    /* pieces [b[k], b[k+1]) for k < m - 1 */
    zorder = malloc(m * sizeof *zorder);
    dorder = malloc(m * sizeof *dorder);
    next = malloc(m * sizeof *next);
    seg = malloc(m * sizeof *seg);
    if (!zorder || !dorder || !next || !seg)
        goto out;
    for (size_t k = 0; k < m; k++) {
        zorder[k] = dorder[k] = -1;
        next[k] = k;
    }
    for (size_t i = n; i-- > 0;) {
        size_t k = find_bound(b, m, w[i].off), end = find_bound(b, m, w[i].off + w[i].len);
        if (w[i].data) {
            if (dorder[k] < 0)
                dorder[k] = (ssize_t)i;      /* newest data write of this page */
            continue;
        }
        for (k = dsu_find(next, k); k < end; k = dsu_find(next, k + 1)) {
            zorder[k] = (ssize_t)i;
            next[k] = k + 1;
        }
    }
    size_t ns = 0;
    for (size_t k = 0; k + 1 < m; k++) {
        uint64_t off = b[k], len = b[k + 1] - b[k];
        if (dorder[k] >= 0 && dorder[k] > zorder[k]) {
            seg[ns++] = (struct vhdx_seg){ off, len, w[dorder[k]].data };
        } else if (zorder[k] >= 0) {
            if (ns && !seg[ns - 1].data && seg[ns - 1].off + seg[ns - 1].len == off)
                seg[ns - 1].len += len;
            else
                seg[ns++] = (struct vhdx_seg){ off, len, NULL };
        }
    }
    *out = seg;
    *nout = ns;
    seg = NULL;
    r = 0;
out:
    free(b);
    free(zorder);
    free(dorder);
    free(next);
    free(seg);
    return r;
}

/* ------------------------------------------------------ the source */

struct replay_src {
    struct bf_source base;
    struct bf_source *file;      /* the image file (not owned) */
    struct vhdx_seg *seg;
    size_t n;
    uint8_t *pages;              /* the replayed data pages the segments point into */
    uint64_t size;
};

/* The first segment that ends after @off. */
static size_t first_seg(const struct vhdx_seg *seg, size_t n, uint64_t off)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (seg[mid].off + seg[mid].len <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int replay_pread(struct bf_source *s, void *buf, size_t len, uint64_t off)
{
    struct replay_src *rs = (struct replay_src *)s;
    int r = bf_source_pread(rs->file, buf, len, off);
    if (r < 0)
        return r;
    uint64_t end = off + len;
    for (size_t i = first_seg(rs->seg, rs->n, off); i < rs->n && rs->seg[i].off < end; i++) {
        const struct vhdx_seg *g = &rs->seg[i];
        uint64_t a = g->off > off ? g->off : off;
        uint64_t z = bf_min64(g->off + g->len, end);
        uint8_t *dst = (uint8_t *)buf + (a - off);
        if (g->data)
            memcpy(dst, g->data + (a - g->off), z - a);
        else
            memset(dst, 0, z - a);
    }
    return 0;
}

static int replay_size(struct bf_source *s, uint64_t *size)
{
    *size = ((struct replay_src *)s)->size;
    return 0;
}

static void replay_close(struct bf_source *s)
{
    struct replay_src *rs = (struct replay_src *)s;
    free(rs->seg);
    free(rs->pages);
}

static const struct bf_source_ops replay_ops = {
    .pread = replay_pread,
    .size = replay_size,
    .close = replay_close,
};

bool vhdx_replayed(const struct vhdx *v, uint64_t off, uint64_t len)
{
    if (!v->replay || len == 0)
        return false;
    const struct replay_src *rs = (const struct replay_src *)v->replay;
    size_t i = first_seg(rs->seg, rs->n, off);
    return i < rs->n && rs->seg[i].off < off + len;
}

int vhdx_read(struct bf_image *img, const struct vhdx *v, void *buf, size_t len, uint64_t off)
{
    struct bf_source *s = v->replay ? v->replay : img->src;
    int r = bf_source_pread(s, buf, len, off);
    if (r < 0)
        return bf_err(img, r, "%s: read error at offset %" PRIu64 ": %s", img->filename, off,
                      strerror(-r));
    return 0;
}

/* ------------------------------------------------------ the replay */

static int cmp_seq_desc(const void *a, const void *b)
{
    const struct entry *x = a, *y = b;
    return x->seq > y->seq ? -1 : x->seq < y->seq;
}

/* The active sequence: its entries in replay order, into @seq (caller
 * frees); *n = 0 when the log holds none. */
static int find_active(struct log *l, struct entry **seqp, size_t *np)
{
    struct bf_image *img = l->img;
    size_t n_sec = l->len / SEC, n = 0;
    struct entry *ents = malloc(n_sec * sizeof *ents);
    struct entry *bypos = malloc(n_sec * sizeof *bypos);   /* by sector; len 0 = none */
    int r = 0;
    *seqp = NULL;
    *np = 0;
    if (!ents || !bypos) {
        r = bf_err(img, -ENOMEM, "out of memory");
        goto out;
    }
    for (size_t k = 0; k < n_sec; k++) {
        bool valid;
        bypos[k].len = 0;
        if ((r = entry_at(l, k * SEC, &bypos[k], &valid)) < 0)
            goto out;
        if (valid)
            ents[n++] = bypos[k];
        else
            bypos[k].len = 0;
    }
    qsort(ents, n, sizeof *ents, cmp_seq_desc);
    uint64_t budget = 4 * (uint64_t)n_sec + 16;     /* chain steps over all heads */
    for (size_t h = 0; h < n; h++) {
        const struct entry *head = &ents[h];
        if (head->tail % SEC || head->tail >= l->len)
            continue;
        const struct entry *t = &bypos[head->tail / SEC];
        if (t->len == 0 || t->seq > head->seq || head->seq - t->seq >= n)
            continue;
        size_t count = (size_t)(head->seq - t->seq) + 1;
        struct entry *chain = malloc(count * sizeof *chain);
        if (!chain) {
            r = bf_err(img, -ENOMEM, "out of memory");
            goto out;
        }
        const struct entry *cur = t;
        size_t got = 0;
        for (;;) {
            chain[got++] = *cur;
            if (got == count || budget == 0)
                break;
            budget--;
            const struct entry *nx = &bypos[(cur->pos + cur->len) % l->len / SEC];
            if (nx->len == 0 || nx->seq != cur->seq + 1)
                break;
            cur = nx;
        }
        if (got == count && cur->pos == head->pos) {
            *seqp = chain;
            *np = count;
            goto out;
        }
        free(chain);
        if (budget == 0) {
            r = bf_err(img, -EINVAL, "%s: the vhdx log is too damaged to search (too many "
                       "broken sequences)", img->filename);
            goto out;
        }
    }
out:
    free(ents);
    free(bypos);
    return r;
}

/* Collect the writes of the active sequence @seq[0..n), in order. */
static int collect(struct log *l, const struct entry *seq, size_t n, struct write **wp,
                   size_t *nwp, uint8_t **pagesp, uint64_t *endp)
{
    struct bf_image *img = l->img;
    size_t nw = 0, nd = 0;
    for (size_t i = 0; i < n; i++) {
        nw += seq[i].n_desc;
        nd += seq[i].len / SEC - seq[i].desc_sectors;   /* at most this many data sectors */
    }
    struct write *w = malloc((nw ? nw : 1) * sizeof *w);
    uint8_t *pages = malloc(nd ? nd * SEC : 1);
    if (!w || !pages) {
        free(w);
        free(pages);
        return bf_err(img, -ENOMEM, "out of memory");
    }
    size_t k = 0, pg = 0;
    uint64_t end = 0;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = l->buf + seq[i].pos;
        uint64_t data = seq[i].desc_sectors;
        for (uint32_t j = 0; j < seq[i].n_desc; j++) {
            const uint8_t *d = p + 64 + (size_t)j * 32;
            uint64_t off = bf_le64(d + 16), len = SEC;
            if (memcmp(d, "zero", 4) == 0) {
                len = bf_le64(d + 8);
                w[k] = (struct write){ off, len, NULL };
            } else {
                /* the page: 8 bytes kept in the descriptor, 4084 in the data
                 * sector between its signature and sequence words, 4 more in
                 * the descriptor */
                uint8_t *pgp = pages + pg++ * SEC;
                const uint8_t *s = p + data++ * SEC;
                memcpy(pgp, d + 8, 8);
                memcpy(pgp + 8, s + 8, 4084);
                memcpy(pgp + 4092, d + 4, 4);
                w[k] = (struct write){ off, len, pgp };
            }
            if (off > MAX_FILE_OFFSET || len > MAX_FILE_OFFSET - off) {
                free(w);
                free(pages);
                return bf_err(img, -EINVAL, "%s: the vhdx log writes %" PRIu64 " bytes at file "
                              "offset %" PRIu64 ", beyond any file", img->filename, len, off);
            }
            if (len == 0)
                continue;
            if (off + len > end)
                end = off + len;
            k++;
        }
    }
    *wp = w;
    *nwp = k;
    *pagesp = pages;
    *endp = end;
    return 0;
}

int vhdx_log_replay(struct bf_image *img, struct vhdx *v)
{
    const struct vhdx_header *h = &v->hdr;
    if (guid_zero(h->log_guid) || h->log_length == 0)
        return 0;                   /* no log, or an empty one */
    if (h->log_length % VHDX_MiB)
        return bf_err(img, -EINVAL, "%s: the vhdx log length %" PRIu32 " is not a multiple of "
                      "1 MiB", img->filename, h->log_length);
    if (h->log_length > VHDX_MAX_LOG_BYTES)
        return bf_err(img, -ENOTSUP, "%s: the vhdx log (%" PRIu32 " bytes) must be replayed "
                      "but is larger than this reader replays in memory; replay it by opening "
                      "the image once read-write (qemu-img check -r all, or Hyper-V)",
                      img->filename, h->log_length);
    if (!bf_range_within(h->log_offset, h->log_length, v->file_size))
        return bf_err(img, -EINVAL, "%s: the vhdx log (offset %" PRIu64 ", %" PRIu32 " bytes) "
                      "lies past the end of the file (%" PRIu64 " bytes); the image is "
                      "truncated or damaged", img->filename, h->log_offset, h->log_length,
                      v->file_size);

    struct log l = { img, v, NULL, h->log_length, 16 * (uint64_t)h->log_length };
    l.buf = malloc(2 * l.len);
    if (!l.buf)
        return bf_err(img, -ENOMEM, "out of memory");
    int r = bf_source_pread(img->src, l.buf, l.len, h->log_offset);
    if (r < 0) {
        free(l.buf);
        return bf_err(img, r, "%s: cannot read the vhdx log: %s", img->filename, strerror(-r));
    }
    memcpy(l.buf + l.len, l.buf, l.len);

    struct entry *seq = NULL;
    size_t n = 0, nw = 0, nseg = 0;
    struct write *w = NULL;
    uint8_t *pages = NULL;
    struct vhdx_seg *segs = NULL;
    uint64_t end = 0, last = 0;
    if ((r = find_active(&l, &seq, &n)) < 0 || n == 0)
        goto out;                   /* no valid sequence: nothing to replay (as qemu) */
    for (size_t i = 0; i < n; i++) {
        /* a file shorter than a size the log recorded as stable was cut */
        if (seq[i].flushed > v->file_size) {
            r = bf_err(img, -EINVAL, "%s: the vhdx log says the file was at least %" PRIu64
                       " bytes, but it is %" PRIu64 ": the image is truncated", img->filename,
                       seq[i].flushed, v->file_size);
            goto out;
        }
        if (seq[i].last > MAX_FILE_OFFSET) {
            r = bf_err(img, -EINVAL, "%s: the vhdx log gives a file size of %" PRIu64
                       " bytes, beyond any file", img->filename, seq[i].last);
            goto out;
        }
        last = seq[i].last > last ? seq[i].last : last;
    }
    if ((r = collect(&l, seq, n, &w, &nw, &pages, &end)) < 0)
        goto out;
    if (normalise(w, nw, &segs, &nseg) < 0) {
        r = bf_err(img, -ENOMEM, "out of memory");
        goto out;
    }
    struct replay_src *rs = calloc(1, sizeof *rs);
    char *name = strdup(img->src->name ? img->src->name : img->filename);
    if (!rs || !name) {
        free(rs);
        free(name);
        r = bf_err(img, -ENOMEM, "out of memory");
        goto out;
    }
    rs->base.ops = &replay_ops;
    rs->base.name = name;
    rs->base.fd = -1;
    rs->base.dev = img->src->dev;
    rs->base.ino = img->src->ino;
    pthread_mutex_init(&rs->base.ucache_lock, NULL);
    rs->file = img->src;
    rs->seg = segs;
    rs->n = nseg;
    rs->pages = pages;
    segs = NULL;
    pages = NULL;
    /* the file as the replay leaves it: extended to the log's LastFileOffset
     * and to the end of anything written */
    if (last > v->file_size)
        v->file_size = last;
    if (end > v->file_size)
        v->file_size = end;
    rs->size = v->file_size;
    v->replay = &rs->base;
out:
    free(l.buf);
    free(seq);
    free(w);
    free(pages);
    free(segs);
    return r;
}
