/* fmt-raw.c — raw images: the virtual disk is the file.  Holes in a sparse
 * file are reported as zero in block status (as qemu's file driver does);
 * zeroing and discarding punch holes where the file system can.
 *
 * Thread model: no state beyond the size, fixed at open.
 */
#include "internal.h"

#include <inttypes.h>

#define RAW_HOLE_READ_MIN (64u << 10)

static int raw_probe(const uint8_t *head, size_t len)
{
    (void)head;
    (void)len;
    return 1;       /* anything is a raw image, as a last resort */
}

static int raw_open(struct bf_image *img, const struct bf_open_opts *opts)
{
    if (opts->snapshot)
        return bf_err(img, -ENOTSUP, "%s: raw images have no internal snapshots",
                      img->filename);
    int r = bf_source_size(img->src, &img->size);
    if (r < 0)
        return bf_err(img, r, "%s: cannot get size: %s", img->filename, strerror(-r));
    img->info.format_version = NULL;
    return 0;
}

static int raw_map(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags,
                   struct bf_map *m)
{
    m->kind = BF_MAP_DATA;
    m->src = img->src;
    m->host_off = off;
    m->len = len;
    /* Holes cost a system call or two to find: worth it for block status,
     * and for reads that report zeros when the read is large. */
    bool look = (flags & BF_MAPF_STATUS) || ((flags & BF_MAPF_ZEROS) && len >= RAW_HOLE_READ_MIN);
    if (look && img->src->ops->extent) {
        bool hole;
        uint64_t run;
        int r = img->src->ops->extent(img->src, off, len, &hole, &run);
        if (r < 0)
            return bf_err(img, r, "%s: cannot query allocation at %" PRIu64 ": %s",
                          img->filename, off, strerror(-r));
        if (run > 0 && run <= len) {
            m->len = run;
            if (hole)
                m->kind = BF_MAP_ZERO;
        }
    }
    return 0;
}

static int raw_alloc(struct bf_image *img, uint64_t off, uint64_t len, struct bf_map *m)
{
    return raw_map(img, off, len, 0, m);
}

static int raw_zero(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags)
{
    if (!img->src->ops->punch)
        return -ENOTSUP;
    int r = img->src->ops->punch(img->src, off, len, !(flags & BF_ZERO_MAY_UNMAP));
    if (r == -ENOTSUP || r == -EOPNOTSUPP || r == -ENODEV)
        return -ENOTSUP;      /* io.c writes zeroes instead */
    if (r < 0)
        return bf_err(img, r, "%s: cannot zero %" PRIu64 " bytes at %" PRIu64 ": %s",
                      img->filename, len, off, strerror(-r));
    return 0;
}

static int raw_discard(struct bf_image *img, uint64_t off, uint64_t len)
{
    /* Discard is a hint; a file system that cannot punch holes ignores it. */
    int r = raw_zero(img, off, len, BF_ZERO_MAY_UNMAP);
    return r == -ENOTSUP ? 0 : r;
}

const struct bf_driver bf_driver_raw = {
    .name = "raw",
    .probe = raw_probe,
    .open = raw_open,
    .map = raw_map,
    .alloc = raw_alloc,
    .zero = raw_zero,
    .discard = raw_discard,
};
