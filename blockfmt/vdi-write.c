/* vdi-write.c — writing VDI base images (dynamic and fixed), as qemu and
 * VirtualBox do: a write to an allocated block goes to its place; a write
 * to a free or discarded block appends a new 1 MiB block after the highest
 * block in use, then records it.
 *
 * Order, so that an interrupted write never makes the disk read anything
 * but its old or new bytes: the whole new block (the written bytes, zeros
 * around them) is written first, then its block map entry, then the
 * header's count of allocated blocks; until the entry is in place the
 * block is unreferenced and the guest block still reads as zeros.  (Across
 * a power loss only a flush orders these, as in qemu.)  Writes to a
 * differencing image are refused at open: a new block would need its
 * parent's bytes around the written ones.
 *
 * Thread model: writes to allocated blocks run in parallel without a lock;
 * allocation is serialised by v->alloc_lock, and a new entry is published
 * (atomic store) only after its block is written, so readers and writers
 * that load it see a block with data in it.
 */
#include "internal.h"
#include "vdi.h"

#include <inttypes.h>
#include <stdlib.h>

static int write_error(struct bf_image *img, int r, const char *what, uint64_t off)
{
    return bf_err(img, r, "%s: cannot write the VDI %s at offset %" PRIu64 ": %s",
                  img->filename, what, off, strerror(-r));
}

/* Give guest block @idx a new block holding @n bytes of @buf at @in (zeros
 * elsewhere).  Called with alloc_lock held and the entry still free. */
static int allocate_block(struct bf_image *img, struct vdi *v, uint32_t idx, const void *buf,
                          size_t n, uint32_t in)
{
    uint32_t nb = v->next_block;
    if (nb >= v->n_blocks)
        return bf_err(img, -ENOSPC, "%s: the VDI has room for %" PRIu32 " blocks and all are "
                      "in use", img->filename, v->n_blocks);
    uint64_t start = v->offset_data + (uint64_t)nb * VDI_BLOCK_SIZE;
    uint64_t map_end = v->offset_bmap + (uint64_t)v->n_blocks * 4;
    if (start < VDI_HEADER_BYTES || (start < map_end && v->offset_bmap < start + VDI_BLOCK_SIZE))
        return bf_err(img, -EIO, "%s: a new VDI block at offset %" PRIu64 " would overlap the "
                      "header or the block map (data offset %" PRIu64 "): the header is damaged",
                      img->filename, start, v->offset_data);
    uint8_t *block = calloc(1, VDI_BLOCK_SIZE);
    if (!block)
        return bf_err(img, -ENOMEM, "out of memory");
    memcpy(block + in, buf, n);
    int r = bf_source_pwrite(img->src, block, VDI_BLOCK_SIZE, start);
    free(block);
    if (r < 0)
        return write_error(img, r, "new block", start);

    uint8_t le[4];
    bf_put_le32(le, nb);
    uint64_t at = v->offset_bmap + (uint64_t)idx * 4;
    if ((r = bf_source_pwrite(img->src, le, 4, at)) < 0)
        return write_error(img, r, "block map entry", at);
    __atomic_store_n(&v->bmap[idx], nb, __ATOMIC_RELEASE);
    v->next_block = nb + 1;
    v->n_allocated++;
    bf_put_le32(le, v->n_allocated);
    if ((r = bf_source_pwrite(img->src, le, 4, VDI_H_BLOCKS_ALLOCATED)) < 0)
        return write_error(img, r, "header", VDI_H_BLOCKS_ALLOCATED);
    return 0;
}

int bf_vdi_pwrite(struct bf_image *img, const void *buf, size_t len, uint64_t off)
{
    struct vdi *v = img->priv;
    const uint8_t *p = buf;
    while (len > 0) {
        uint32_t idx = (uint32_t)(off / VDI_BLOCK_SIZE);
        uint32_t in = (uint32_t)(off % VDI_BLOCK_SIZE);
        size_t n = (size_t)bf_min64(len, VDI_BLOCK_SIZE - in);
        uint32_t e = vdi_entry(v, idx);
        int r = 0;
        if (e >= VDI_DISCARDED) {
            pthread_mutex_lock(&v->alloc_lock);
            e = vdi_entry(v, idx);           /* another writer may have been first */
            if (e >= VDI_DISCARDED)
                r = allocate_block(img, v, idx, p, n, in);
            pthread_mutex_unlock(&v->alloc_lock);
        }
        if (r == 0 && e < VDI_DISCARDED) {
            uint64_t at = v->offset_data + (uint64_t)e * VDI_BLOCK_SIZE + in;
            if ((r = bf_source_pwrite(img->src, p, n, at)) < 0)
                r = write_error(img, r, "data", at);
        }
        if (r < 0)
            return r;
        p += n;
        off += n;
        len -= n;
    }
    return 0;
}

/* Free and discarded blocks already read as zeros; allocated ones are
 * zeroed in place (a hole punched where the file system can), so zeroing
 * never allocates. */
int bf_vdi_zero(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags)
{
    struct vdi *v = img->priv;
    while (len > 0) {
        uint32_t idx = (uint32_t)(off / VDI_BLOCK_SIZE);
        uint32_t in = (uint32_t)(off % VDI_BLOCK_SIZE);
        uint64_t n = bf_min64(len, VDI_BLOCK_SIZE - in);
        uint32_t e = vdi_entry(v, idx);
        if (e < VDI_DISCARDED) {
            uint64_t at = v->offset_data + (uint64_t)e * VDI_BLOCK_SIZE + in;
            int r = bf_source_zero(img->src, at, n, flags & BF_ZERO_FAST);
            if (r == -ENOTSUP)
                return r;
            if (r < 0)
                return write_error(img, r, "zeros", at);
        }
        off += n;
        len -= n;
    }
    return 0;
}
