/* io.c — the one generic loop that turns a driver's maps into reads, writes,
 * zero fill, backing fall-through, decompression and block status, so every
 * format gets these right once.
 *
 * Thread model: every entry point may run on many threads at once.  Drivers'
 * map() functions lock their own metadata; data reads and decompression here
 * run without any lock.  Decompressed units are shared through a per-source
 * cache so small sequential reads do not inflate the same unit again.
 */
#include "internal.h"

#include <inttypes.h>
#include <stdlib.h>

#define UCACHE_BYTES (16u << 20)   /* decompressed units kept per image */

static int check_range(struct bf_image *img, uint64_t off, uint64_t len, const char *what)
{
    if (!img->drv)
        return bf_err(img, -EBADF, "image is not open");
    if (!bf_range_within(off, len, img->size))
        return bf_err(img, -EINVAL, "%s of %" PRIu64 " bytes at offset %" PRIu64
                      " is beyond the end of the disk (%" PRIu64 " bytes)",
                      what, len, off, img->size);
    return 0;
}

/* Ask the driver for the run at @off and check what it says. */
static int do_map(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags,
                  struct bf_map *m)
{
    memset(m, 0, sizeof *m);
    int r = img->drv->map(img, off, len, flags, m);
    if (r < 0)
        return r;
    if (m->len == 0 || m->len > len)
        return bf_err(img, -EIO, "%s: internal error: %s map returned a run of %" PRIu64
                      " bytes for a request of %" PRIu64, img->filename, img->drv->name,
                      m->len, len);
    return 0;
}

/* The driver's read bracket (qcow2 opened writable: a writer may not free
 * clusters under a read or block status). */
static void io_enter(struct bf_image *img)
{
    if (img->drv->io_begin)
        img->drv->io_begin(img);
}

static void io_leave(struct bf_image *img)
{
    if (img->drv->io_end)
        img->drv->io_end(img);
}

/* ---------------------------------------------------------------- reads */

/* Where a read reports the ranges it knows read as zero (bf_pread_zeros):
 * offsets are the top-level image's. */
struct zeros {
    bf_zero_fn fn;
    void *ctx;
};

static void zero_fill(void *buf, uint64_t len, uint64_t top, const struct zeros *z)
{
    memset(buf, 0, len);
    if (z && len)
        z->fn(z->ctx, top, len);
}

static int pread_top(struct bf_image *img, void *buf, size_t len, uint64_t off,
                     const struct zeros *z, uint64_t top);

static int read_backing(struct bf_image *img, void *buf, uint64_t len, uint64_t off,
                        const struct zeros *z, uint64_t top)
{
    struct bf_image *b = img->backing;
    uint64_t n = 0;
    if (b && off < b->size) {
        n = bf_min64(len, b->size - off);
        int r = pread_top(b, buf, n, off, z, top);
        if (r < 0)
            return bf_err_from(img, b, r, "");
    }
    zero_fill((uint8_t *)buf + n, len - n, top + n, z);   /* past a shorter backing file */
    return 0;
}

struct unit_load {
    struct bf_image *img;
    const struct bf_map *m;
};

/* Read and inflate the unit described by @ul->m into @out. */
static int load_unit(void *ctx, uint64_t key, void *out)
{
    (void)key;
    const struct unit_load *ul = ctx;
    const struct bf_map *m = ul->m;
    struct bf_image *img = ul->img;
    uint8_t *in = malloc(m->comp_len ? m->comp_len : 1);
    if (!in)
        return bf_err(img, -ENOMEM, "out of memory");
    int r = bf_source_pread(m->src, in, m->comp_len, m->comp_off);
    if (r < 0) {
        free(in);
        return bf_err(img, r, "%s: read error at offset %" PRIu64 ": %s",
                      m->src->name, m->comp_off, strerror(-r));
    }
    r = bf_decompress(m->codec, in, m->comp_len, out, m->unit_len);
    free(in);
    if (r < 0)
        return bf_err(img, r, "%s: compressed data at offset %" PRIu64 " (%" PRIu64
                      " bytes, %s) for guest offset %" PRIu64 " cannot be decompressed",
                      m->src->name, m->comp_off, m->comp_len, bf_codec_name(m->codec),
                      m->unit_guest_off);
    return 0;
}

static struct bf_cache *unit_cache(struct bf_source *src, uint32_t unit_len)
{
    pthread_mutex_lock(&src->ucache_lock);
    if (!src->ucache)
        src->ucache = bf_cache_new(unit_len, UCACHE_BYTES);
    struct bf_cache *c = src->ucache;
    pthread_mutex_unlock(&src->ucache_lock);
    return c;
}

static int read_compressed(struct bf_image *img, const struct bf_map *m, void *buf, uint64_t off)
{
    uint64_t in_unit = off - m->unit_guest_off;
    if (off < m->unit_guest_off || in_unit > m->unit_len || m->len > m->unit_len - in_unit)
        return bf_err(img, -EIO, "%s: internal error: bad compressed run", img->filename);
    struct unit_load ul = { img, m };
    if (in_unit == 0 && m->len == m->unit_len)       /* whole unit: inflate in place */
        return load_unit(&ul, 0, buf);

    struct bf_cache *c = unit_cache(m->src, m->unit_len);
    if (!c)
        return bf_err(img, -ENOMEM, "out of memory");
    /* A unit of another size than the first one seen in this source would
     * not fit the cache's blocks: inflate it privately. */
    const void *data;
    struct bf_cache_ent *ent;
    int r;
    uint8_t *tmp = NULL;
    if (m->unit_len == bf_cache_block_size(c)) {
        r = bf_cache_get(c, m->comp_off, load_unit, &ul, &data, &ent);
        if (r < 0)
            return r;
    } else {
        tmp = malloc(m->unit_len);
        if (!tmp)
            return bf_err(img, -ENOMEM, "out of memory");
        r = load_unit(&ul, 0, tmp);
        if (r < 0) {
            free(tmp);
            return r;
        }
        data = tmp;
    }
    memcpy(buf, (const uint8_t *)data + in_unit, m->len);
    if (tmp)
        free(tmp);
    else
        bf_cache_put(c, ent);
    return 0;
}

static int pread_impl(struct bf_image *img, void *buf, size_t len, uint64_t off,
                      const struct zeros *z, uint64_t top)
{
    int r;
    uint8_t *p = buf;
    while (len > 0) {
        struct bf_map m;
        r = do_map(img, off, len, z ? BF_MAPF_ZEROS : 0, &m);
        if (r < 0)
            return r;
        switch (m.kind) {
        case BF_MAP_DATA:
            r = bf_source_pread(m.src, p, m.len, m.host_off);
            if (r < 0)
                r = bf_err(img, r, "%s: read error at offset %" PRIu64 ": %s",
                           m.src->name, m.host_off, strerror(-r));
            break;
        case BF_MAP_ZERO:
            zero_fill(p, m.len, top, z);
            break;
        case BF_MAP_UNALLOC:
            r = read_backing(img, p, m.len, off, z, top);
            break;
        case BF_MAP_COMPRESSED:
            r = read_compressed(img, &m, p, off);
            break;
        case BF_MAP_IMAGE:
            r = pread_top(m.image, p, m.len, m.image_off, z, top);
            if (r < 0)
                r = bf_err_from(img, m.image, r, "");
            break;
        default:
            r = bf_err(img, -EIO, "internal error: unknown map kind %d", m.kind);
        }
        if (r < 0)
            return r;
        p += m.len;
        off += m.len;
        top += m.len;
        len -= m.len;
    }
    return 0;
}

/* A read of a whole image: range check and its driver's read bracket. */
static int pread_top(struct bf_image *img, void *buf, size_t len, uint64_t off,
                     const struct zeros *z, uint64_t top)
{
    int r = check_range(img, off, len, "read");
    if (r < 0)
        return r;
    io_enter(img);
    r = pread_impl(img, buf, len, off, z, top);
    io_leave(img);
    return r;
}

int bf_pread(struct bf_image *img, void *buf, size_t len, uint64_t off)
{
    return pread_top(img, buf, len, off, NULL, off);
}

int bf_pread_zeros(struct bf_image *img, void *buf, size_t len, uint64_t off, bf_zero_fn fn,
                   void *ctx)
{
    struct zeros z = { fn, ctx };
    return pread_top(img, buf, len, off, fn ? &z : NULL, off);
}

int bf_pread_nolock(struct bf_image *img, void *buf, size_t len, uint64_t off)
{
    return pread_impl(img, buf, len, off, NULL, off);
}

/* --------------------------------------------------------------- writes */

static int check_writable(struct bf_image *img)
{
    if (!img->writable)
        return bf_err(img, -EROFS, "%s: the image is open read-only", img->filename);
    return 0;
}

int bf_pwrite(struct bf_image *img, const void *buf, size_t len, uint64_t off)
{
    int r = check_range(img, off, len, "write");
    if (r < 0 || (r = check_writable(img)) < 0)
        return r;
    if (img->drv->pwrite)
        return img->drv->pwrite(img, buf, len, off);
    const uint8_t *p = buf;
    while (len > 0) {
        struct bf_map m;
        memset(&m, 0, sizeof m);
        r = img->drv->alloc(img, off, len, &m);
        if (r < 0)
            return r;
        if (m.len == 0 || m.len > len)
            return bf_err(img, -EIO, "internal error: bad allocation run");
        if (m.kind == BF_MAP_DATA) {
            r = bf_source_pwrite(m.src, p, m.len, m.host_off);
            if (r < 0)
                r = bf_err(img, r, "%s: write error at offset %" PRIu64 ": %s",
                           m.src->name, m.host_off, strerror(-r));
        } else if (m.kind == BF_MAP_IMAGE) {
            r = bf_pwrite(m.image, p, m.len, m.image_off);
            if (r < 0)
                r = bf_err_from(img, m.image, r, "");
        } else {
            r = bf_err(img, -EIO, "internal error: allocation gave map kind %d", m.kind);
        }
        if (r < 0)
            return r;
        p += m.len;
        off += m.len;
        len -= m.len;
    }
    return 0;
}

static const uint8_t zero_block[64 * 1024];

int bf_zero(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags)
{
    int r = check_range(img, off, len, "write zeroes");
    if (r < 0 || (r = check_writable(img)) < 0)
        return r;
    if (img->drv->zero) {
        r = img->drv->zero(img, off, len, flags);
        if (r != -ENOTSUP)
            return r;
    }
    if (flags & BF_ZERO_FAST)
        return bf_err(img, -ENOTSUP, "%s: zeroing this range would be slow", img->filename);
    while (len > 0) {
        size_t n = (size_t)bf_min64(len, sizeof zero_block);
        r = bf_pwrite(img, zero_block, n, off);
        if (r < 0)
            return r;
        off += n;
        len -= n;
    }
    return 0;
}

int bf_discard(struct bf_image *img, uint64_t off, uint64_t len)
{
    int r = check_range(img, off, len, "discard");
    if (r < 0 || (r = check_writable(img)) < 0)
        return r;
    return img->drv->discard ? img->drv->discard(img, off, len) : 0;
}

int bf_flush(struct bf_image *img)
{
    if (!img->drv)
        return bf_err(img, -EBADF, "image is not open");
    if (!img->writable)
        return 0;
    if (img->drv->flush)
        return img->drv->flush(img);
    int r = img->src ? img->src->ops->flush(img->src) : 0;
    if (r < 0)
        return bf_err(img, r, "%s: flush failed: %s", img->filename, strerror(-r));
    return 0;
}

/* --------------------------------------------------------- block status */

static int status_at(struct bf_image *img, uint64_t off, uint64_t len, unsigned level,
                     struct bf_status *st)
{
    struct bf_map m;
    int r = do_map(img, off, len, BF_MAPF_STATUS, &m);
    if (r < 0)
        return r;
    st->len = m.len;
    st->depth = level;
    switch (m.kind) {
    case BF_MAP_DATA:
    case BF_MAP_COMPRESSED:
        st->flags = BF_STATUS_DATA | BF_STATUS_ALLOCATED;
        return 0;
    case BF_MAP_ZERO:
        st->flags = BF_STATUS_ZERO | BF_STATUS_ALLOCATED;
        return 0;
    case BF_MAP_IMAGE:
        r = status_at(m.image, m.image_off, m.len, level, st);
        return r < 0 ? bf_err_from(img, m.image, r, "") : 0;
    case BF_MAP_UNALLOC:
        if (img->backing && off < img->backing->size) {
            r = status_at(img->backing, off, bf_min64(m.len, img->backing->size - off),
                          level + 1, st);
            return r < 0 ? bf_err_from(img, img->backing, r, "") : 0;
        }
        st->flags = BF_STATUS_ZERO;   /* fell off the bottom of the chain */
        return 0;
    }
    return bf_err(img, -EIO, "internal error: unknown map kind %d", m.kind);
}

int bf_block_status(struct bf_image *img, uint64_t off, uint64_t len, struct bf_status *st)
{
    int r = check_range(img, off, len, "block status");
    if (r < 0)
        return r;
    if (len == 0)
        return bf_err(img, -EINVAL, "block status of an empty range");
    io_enter(img);
    r = status_at(img, off, len, 1, st);
    io_leave(img);
    return r;
}

/* -------------------------------------------------------------- locate */

static int locate_at(struct bf_image *img, uint64_t off, uint64_t len, struct bf_location *loc)
{
    struct bf_map m;
    /* as a read that reports zeros: holes in a raw file come back as zero
     * runs, so callers can send them as holes rather than pages of zeros */
    int r = do_map(img, off, len, BF_MAPF_ZEROS, &m);
    if (r < 0)
        return r;
    *loc = (struct bf_location){ .len = m.len, .fd = -1 };
    struct bf_image *next = NULL;
    uint64_t next_off = off, next_len = m.len;
    switch (m.kind) {
    case BF_MAP_DATA: {
        uint64_t size;
        if (m.src->remote || m.src->fd < 0 || bf_source_size(m.src, &size) < 0 ||
            m.host_off >= size)
            return 0;
        /* Bytes past the end of the file read as zero (source.c), which a
         * descriptor would not give: the file run stops at its end. */
        loc->len = bf_min64(m.len, size - m.host_off);
        loc->fd = m.src->fd;
        loc->fd_off = m.host_off;
        return 0;
    }
    case BF_MAP_IMAGE:
        next = m.image;
        next_off = m.image_off;
        break;
    case BF_MAP_UNALLOC:
        if (!img->backing || off >= img->backing->size)
            return 0;
        next = img->backing;
        next_len = bf_min64(m.len, img->backing->size - off);
        break;
    default:
        return 0;
    }
    r = bf_locate(next, next_off, next_len, loc);
    return r < 0 ? bf_err_from(img, next, r, "") : 0;
}

/* Range check and the driver's read bracket, as pread_top; also entered
 * again for the image a run continues in (slice parent, backing file). */
int bf_locate(struct bf_image *img, uint64_t off, uint64_t len, struct bf_location *loc)
{
    int r = check_range(img, off, len, "locate");
    if (r < 0)
        return r;
    if (len == 0)
        return bf_err(img, -EINVAL, "locating an empty range");
    io_enter(img);
    r = locate_at(img, off, len, loc);
    io_leave(img);
    return r;
}
