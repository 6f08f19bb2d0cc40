/* overlay.c — a throwaway writable layer over a read-only image (what
 * `vdisk-nbd -s` and `vdisk-mount -s` give): writes land in an unlinked
 * temporary file at the same offsets as in the disk; a state byte per 64 KiB
 * block says whether the block is still the base's, holds data here, or
 * reads as zero.  The base is this image's backing file, so the generic I/O
 * loop reads through to it and block status reports it as depth 2.
 *
 * Thread model: state bytes are atomics, read without a lock.  Turning a
 * block into a data block (copying the rest of it from the base first) takes
 * the mutex, so two writers to one block copy it once.  Data writes and reads
 * run without the lock; concurrent writes to the same bytes are the client's
 * race, as on a real disk.
 */
#include "internal.h"

#include <inttypes.h>
#include <stdlib.h>

#define OV_BLOCK_BITS 16
#define OV_BLOCK (1u << OV_BLOCK_BITS)

enum { OV_BASE = 0, OV_DATA = 1, OV_ZERO = 2 };

struct overlay {
    struct bf_source *tmp;
    uint64_t nblocks;
    _Atomic uint8_t *state;    /* calloc'd: pages appear only when touched */
    pthread_mutex_t lock;
};

static uint8_t get_state(struct overlay *o, uint64_t b)
{
    return atomic_load_explicit(&o->state[b], memory_order_acquire);
}

static int ov_map(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags,
                  struct bf_map *m)
{
    (void)flags;
    struct overlay *o = img->priv;
    uint64_t b = off >> OV_BLOCK_BITS;
    uint8_t st = get_state(o, b);
    uint64_t end = off + len, run_end = (b + 1) << OV_BLOCK_BITS;
    while (run_end < end && get_state(o, run_end >> OV_BLOCK_BITS) == st)
        run_end += OV_BLOCK;
    m->len = bf_min64(run_end, end) - off;
    switch (st) {
    case OV_DATA:
        m->kind = BF_MAP_DATA;
        m->src = o->tmp;
        m->host_off = off;
        break;
    case OV_ZERO:
        m->kind = BF_MAP_ZERO;
        break;
    default:
        m->kind = BF_MAP_UNALLOC;
        break;
    }
    return 0;
}

/* Make block @b a data block.  Unless the caller overwrites all of it, copy
 * what it reads as now (base data, or zeros) into the temporary file first. */
static int make_data(struct bf_image *img, struct overlay *o, uint64_t b, bool whole)
{
    if (get_state(o, b) == OV_DATA)
        return 0;
    pthread_mutex_lock(&o->lock);
    int r = 0;
    uint8_t st = get_state(o, b);
    if (st != OV_DATA && !whole) {
        uint64_t start = b << OV_BLOCK_BITS;
        size_t n = (size_t)bf_min64(OV_BLOCK, img->size - start);
        uint8_t *buf = calloc(1, n);
        if (!buf) {
            r = bf_err(img, -ENOMEM, "out of memory");
        } else {
            if (st == OV_BASE)
                r = bf_pread(img, buf, n, start);      /* reads through to the base */
            if (r == 0) {
                r = bf_source_pwrite(o->tmp, buf, n, start);
                if (r < 0)
                    r = bf_err(img, r, "temporary overlay: write failed: %s", strerror(-r));
            }
            free(buf);
        }
    }
    if (r == 0)
        atomic_store_explicit(&o->state[b], OV_DATA, memory_order_release);
    pthread_mutex_unlock(&o->lock);
    return r;
}

static int ov_alloc(struct bf_image *img, uint64_t off, uint64_t len, struct bf_map *m)
{
    struct overlay *o = img->priv;
    uint64_t end = off + len;
    for (uint64_t b = off >> OV_BLOCK_BITS; (b << OV_BLOCK_BITS) < end; b++) {
        uint64_t bs = b << OV_BLOCK_BITS, be = bf_min64(bs + OV_BLOCK, img->size);
        int r = make_data(img, o, b, off <= bs && end >= be);
        if (r < 0)
            return r;
    }
    m->kind = BF_MAP_DATA;
    m->src = o->tmp;
    m->host_off = off;
    m->len = len;
    return 0;
}

/* Set block @b to @st, releasing its space in the temporary file. */
static void set_block(struct overlay *o, uint64_t b, uint64_t bytes, uint8_t st)
{
    pthread_mutex_lock(&o->lock);
    if (get_state(o, b) == OV_DATA && o->tmp->ops->punch)
        o->tmp->ops->punch(o->tmp, b << OV_BLOCK_BITS, bytes, false);
    atomic_store_explicit(&o->state[b], st, memory_order_release);
    pthread_mutex_unlock(&o->lock);
}

/* Walk [off, off+len): blocks wholly inside get state @st; the partial
 * blocks at the edges are zeroed with ordinary writes when @zero_edges (the
 * last block of a disk whose size is not a block multiple counts as whole). */
static int set_range(struct bf_image *img, uint64_t off, uint64_t len, uint8_t st,
                     bool zero_edges)
{
    static const uint8_t zeros[OV_BLOCK];
    struct overlay *o = img->priv;
    uint64_t end = off + len;
    for (uint64_t b = off >> OV_BLOCK_BITS; (b << OV_BLOCK_BITS) < end; b++) {
        uint64_t bs = b << OV_BLOCK_BITS, be = bf_min64(bs + OV_BLOCK, img->size);
        uint64_t s = bf_min64(bs > off ? bs : off, end), e = bf_min64(be, end);
        if (s == bs && e == be) {
            set_block(o, b, be - bs, st);
        } else if (zero_edges) {
            int r = bf_pwrite(img, zeros, e - s, s);
            if (r < 0)
                return r;
        }
    }
    return 0;
}

static int ov_zero(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags)
{
    (void)flags;     /* edges are under 64 KiB each: cheap even for FAST */
    return set_range(img, off, len, OV_ZERO, true);
}

static int ov_discard(struct bf_image *img, uint64_t off, uint64_t len)
{
    /* Whole blocks show the base again; partial blocks keep their data (a
     * discard is only a hint). */
    return set_range(img, off, len, OV_BASE, false);
}

static int ov_flush(struct bf_image *img)
{
    (void)img;      /* nothing here outlives the process: no need to sync */
    return 0;
}

static void ov_close(struct bf_image *img)
{
    struct overlay *o = img->priv;
    if (!o)
        return;
    bf_source_close(o->tmp);
    free((void *)o->state);
    pthread_mutex_destroy(&o->lock);
    free(o);
}

const struct bf_driver bf_driver_overlay = {
    .name = "overlay",
    .map = ov_map,
    .alloc = ov_alloc,
    .zero = ov_zero,
    .discard = ov_discard,
    .flush = ov_flush,
    .close = ov_close,
};

int bf_open_overlay(struct bf_image *base, struct bf_image **imgp)
{
    struct bf_image *img = bf_image_alloc(base->filename);
    *imgp = img;
    if (!img) {
        bf_close(base);
        return -ENOMEM;
    }
    img->backing = base;               /* owned from here on */
    base->overlay = img;
    img->size = base->size;
    struct overlay *o = calloc(1, sizeof *o);
    if (!o)
        return bf_err(img, -ENOMEM, "out of memory");
    o->nblocks = (base->size + OV_BLOCK - 1) >> OV_BLOCK_BITS;
    o->state = calloc(o->nblocks ? o->nblocks : 1, 1);
    pthread_mutex_init(&o->lock, NULL);
    img->priv = o;
    if (!o->state) {
        ov_close(img);
        img->priv = NULL;
        return bf_err(img, -ENOMEM, "out of memory for the overlay of a %" PRIu64
                      "-byte disk", base->size);
    }
    char msg[BF_ERRMSG_MAX];
    int r = bf_source_open_tmpfile(NULL, &o->tmp, msg, sizeof msg);
    if (r < 0) {
        ov_close(img);
        img->priv = NULL;
        return bf_err(img, r, "%s", msg);
    }
    img->drv = &bf_driver_overlay;
    img->writable = true;
    img->info.format = "overlay";
    return 0;
}
