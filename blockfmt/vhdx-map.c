/* vhdx-map.c — map a guest range of a vhdx image to its first run through
 * the BAT.  Block numbers become BAT indices with the sector-bitmap entries
 * interleaved: after every chunk_ratio data blocks comes one bitmap entry.
 *
 * Block states are read as qemu reads them (vhdx_co_readv in block/vhdx.c):
 * FULLY_PRESENT is data at the entry's file offset; ZERO reads as zero;
 * NOT_PRESENT, UNDEFINED and UNMAPPED hold nothing and, as this driver opens
 * no differencing disks, read as zero too (unallocated); PARTIALLY_PRESENT
 * (only meaningful with a parent) and unknown states fail the read with
 * EIO, as in qemu.  qemu 7.2 has no block status for vhdx and calls the
 * whole disk data; we report what the BAT says.
 *
 * Data pages the log replay changed are read through the replay source;
 * everything else straight from the file (so bf_locate can hand it out).
 *
 * Thread model: the BAT is fixed after open and only read here.
 */
#include "vhdx.h"

#include <inttypes.h>

#define MAX_RUN_BLOCKS 4096u       /* blocks one map call looks at */

struct units {
    struct bf_image *img;
    const struct vhdx *v;
};

static int vhdx_unit(void *ctx, uint64_t start, struct bf_unit *u)
{
    const struct units *c = ctx;
    const struct vhdx *v = c->v;
    uint64_t blk = start / v->block_size;
    uint64_t idx = blk + blk / v->chunk_ratio;
    if (idx >= v->n_bat)
        return bf_err(c->img, -EIO, "%s: internal error: no BAT entry for guest offset %"
                      PRIu64, c->img->filename, start);
    uint64_t e = v->bat[idx];
    u->host = 0;
    switch (VHDX_BAT_STATE(e)) {
    case VHDX_PAYLOAD_FULLY_PRESENT:
        u->kind = BF_UNIT_DATA;
        u->host = VHDX_BAT_OFFSET(e);   /* checked against the file at open */
        return 0;
    case VHDX_PAYLOAD_ZERO:
        u->kind = BF_UNIT_ZERO;
        return 0;
    case VHDX_PAYLOAD_NOT_PRESENT:
    case VHDX_PAYLOAD_UNDEFINED:
    case VHDX_PAYLOAD_UNMAPPED:
    case VHDX_PAYLOAD_UNMAPPED_V095:
        u->kind = BF_UNIT_UNALLOC;
        return 0;
    case VHDX_PAYLOAD_PARTIALLY_PRESENT:
        return bf_err(c->img, -EIO, "%s: vhdx block %" PRIu64 " (guest offset %" PRIu64 ") is "
                      "partially present, which only a differencing disk may be; the image is "
                      "damaged", c->img->filename, blk, blk * v->block_size);
    default:
        return bf_err(c->img, -EIO, "%s: the BAT entry of vhdx block %" PRIu64 " (guest offset "
                      "%" PRIu64 ") has the unknown state %u; the image is damaged",
                      c->img->filename, blk, blk * v->block_size, VHDX_BAT_STATE(e));
    }
}

int vhdx_map(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags,
             struct bf_map *m)
{
    (void)flags;
    const struct vhdx *v = img->priv;
    if (off >= img->size)
        return bf_err(img, -EIO, "%s: internal error: guest offset %" PRIu64 " is past the "
                      "end of the disk", img->filename, off);
    uint64_t span = (uint64_t)MAX_RUN_BLOCKS * v->block_size - off % v->block_size;
    len = bf_min64(len, bf_min64(span, img->size - off));
    struct units c = { img, v };
    struct bf_unit first;
    int r = bf_map_units(off, len, v->block_size, vhdx_unit, &c, img->src, m, &first);
    if (r < 0)
        return r;
    if (m->kind == BF_MAP_DATA && vhdx_replayed(v, m->host_off, m->len))
        m->src = v->replay;
    return 0;
}
