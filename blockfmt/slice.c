/* slice.c — a byte range of another image (a partition) opened as an image
 * of its own.  Every operation is forwarded to the parent at an offset, so
 * the parent's format, backing chain and locking all apply unchanged.
 *
 * Thread model: no state of its own beyond the fixed range; the parent is
 * held by a reference so the two can be closed in either order.
 */
#include "internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

struct slice {
    struct bf_image *parent;
    uint64_t start;
};

static int slice_map(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags,
                     struct bf_map *m)
{
    (void)flags;
    struct slice *s = img->priv;
    m->kind = BF_MAP_IMAGE;
    m->image = s->parent;
    m->image_off = s->start + off;
    m->len = len;
    return 0;
}

static int slice_alloc(struct bf_image *img, uint64_t off, uint64_t len, struct bf_map *m)
{
    return slice_map(img, off, len, 0, m);
}

static int slice_zero(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags)
{
    struct slice *s = img->priv;
    int r = bf_zero(s->parent, s->start + off, len, flags);
    return r < 0 ? bf_err_from(img, s->parent, r, "") : 0;
}

static int slice_discard(struct bf_image *img, uint64_t off, uint64_t len)
{
    struct slice *s = img->priv;
    int r = bf_discard(s->parent, s->start + off, len);
    return r < 0 ? bf_err_from(img, s->parent, r, "") : 0;
}

static int slice_flush(struct bf_image *img)
{
    struct slice *s = img->priv;
    int r = bf_flush(s->parent);
    return r < 0 ? bf_err_from(img, s->parent, r, "") : 0;
}

static void slice_close(struct bf_image *img)
{
    struct slice *s = img->priv;
    bf_close(s->parent);
    free(s);
}

const struct bf_driver bf_driver_slice = {
    .name = "slice",
    .map = slice_map,
    .alloc = slice_alloc,
    .zero = slice_zero,
    .discard = slice_discard,
    .flush = slice_flush,
    .close = slice_close,
};

int bf_open_slice(struct bf_image *parent, uint64_t off, uint64_t len, struct bf_image **imgp)
{
    struct bf_image *img = bf_image_alloc(parent->filename);
    *imgp = img;
    if (!img)
        return -ENOMEM;
    if (!parent->drv)
        return bf_err(img, -EBADF, "the parent image is not open");
    if (!bf_range_within(off, len, parent->size))
        return bf_err(img, -EINVAL, "%s: range of %" PRIu64 " bytes at %" PRIu64
                      " lies outside the disk (%" PRIu64 " bytes)",
                      parent->filename, len, off, parent->size);
    struct slice *s = malloc(sizeof *s);
    if (!s)
        return bf_err(img, -ENOMEM, "out of memory");
    bf_image_ref(parent);
    s->parent = parent;
    s->start = off;
    img->priv = s;
    img->drv = &bf_driver_slice;
    img->size = len;
    img->writable = parent->writable;
    img->open_flags = parent->open_flags;
    img->info.format = "slice";
    return 0;
}
