/* vdi.c — VirtualBox disk images (VDI): open, checks and reads (writes are
 * vdi-write.c's).  Layout: the VDI 1.1
 * header (a 64-byte text line, signature 0xbeda107f at 0x40, version
 * 0x00010001, then little-endian fields), a block map of 32-bit
 * little-endian block numbers, and the blocks, each block_size bytes, at
 * offset_data + number * block_size.
 *
 * What is read, and why, follows qemu 7.2's block/vdi.c, so that every
 * image qemu opens reads here as the same bytes with the same size:
 *  - only version 1.1 headers, 512-byte sectors and 1 MiB blocks; the block
 *    map and the data must start on a sector boundary;
 *  - a disk size that is not a whole number of sectors (VBoxManage
 *    convertfromraw writes such) is rounded up to one;
 *  - block map entries 0xffffffff (never allocated) and 0xfffffffe
 *    (discarded) read as zeros; every other entry is the block's number.
 *
 * Beyond qemu, which refuses them: a differencing image (VirtualBox
 * snapshots; the header's linkage UUID is set) reads its free blocks
 * (0xffffffff) from its parent, found by UUID beside it or in the folder
 * above (vdi-parent.c); its discarded blocks read as zeros.  Which state
 * of the parent the child was made from (the header's last UUID, the
 * parent's modification UUID then) is not checked.
 *
 * Stricter than qemu, on purpose (refused with a message where qemu reads
 * zeros or whatever the numbers point at): a block map or a block that lies
 * past the end of the file (a truncated image: qemu reads zeros); a block
 * number of blocks_in_image or more (`qemu-img check` calls it corrupt); a
 * block that overlaps the header or the block map; a non-zero block_extra
 * (VirtualBox puts that many bytes before each block's data, qemu does not:
 * the two disagree on where the data is).  The image type (normal, fixed,
 * undo, differencing) only names the image in info: what makes an image
 * differencing is its linkage UUID.
 *
 * Thread model: everything is read and checked during open; after it only
 * block map entries change (vdi-write.c), each loaded atomically by map().
 */
#include "internal.h"
#include "vdi.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

static int vdi_probe(const uint8_t *head, size_t len)
{
    return len >= VDI_HEADER_BYTES && bf_le32(head + VDI_H_SIGNATURE) == VDI_SIGNATURE ? 100 : 0;
}

static void vdi_close(struct bf_image *img)
{
    struct vdi *v = img->priv;
    if (v) {
        free(v->bmap);
        free(v->parent_name);
        pthread_mutex_destroy(&v->alloc_lock);
    }
    free(v);
    img->priv = NULL;
}

static bool uuid_is_null(const uint8_t *u)
{
    for (int i = 0; i < 16; i++)
        if (u[i])
            return false;
    return true;
}

/* The header checks, in qemu's order (so the first complaint is qemu's). */
static int check_header(struct bf_image *img, const uint8_t *h, uint64_t *disk_size)
{
    const char *fn = img->filename;
    uint32_t version = bf_le32(h + VDI_H_VERSION);
    uint32_t off_bmap = bf_le32(h + VDI_H_OFFSET_BMAP), off_data = bf_le32(h + VDI_H_OFFSET_DATA);
    uint32_t sector = bf_le32(h + VDI_H_SECTOR_SIZE), bs = bf_le32(h + VDI_H_BLOCK_SIZE);
    uint32_t blocks = bf_le32(h + VDI_H_BLOCKS);
    uint64_t size = bf_le64(h + VDI_H_DISK_SIZE);

    if (size > (uint64_t)VDI_QEMU_MAX_BLOCKS * VDI_BLOCK_SIZE)
        return bf_err(img, -ENOTSUP, "%s: the VDI header gives a disk of %" PRIu64 " bytes, "
                      "more than the %" PRIu64 " a VDI can address", fn, size,
                      (uint64_t)VDI_QEMU_MAX_BLOCKS * VDI_BLOCK_SIZE);
    size = (size + VDI_SECTOR - 1) / VDI_SECTOR * VDI_SECTOR;
    if (bf_le32(h + VDI_H_SIGNATURE) != VDI_SIGNATURE)
        return bf_err(img, -EINVAL, "%s: not a VDI image (signature %08" PRIx32 ")", fn,
                      bf_le32(h + VDI_H_SIGNATURE));
    if (version != VDI_VERSION_1_1)
        return bf_err(img, -ENOTSUP, "%s: VDI version %" PRIu32 ".%" PRIu32 " is not "
                      "supported (only 1.1 is)", fn, version >> 16, version & 0xffff);
    if (off_bmap % VDI_SECTOR || off_data % VDI_SECTOR)
        return bf_err(img, -ENOTSUP, "%s: the VDI %s starts at offset %" PRIu32 ", not on a "
                      "512-byte sector boundary", fn, off_bmap % VDI_SECTOR ? "block map" : "data",
                      off_bmap % VDI_SECTOR ? off_bmap : off_data);
    if (sector != VDI_SECTOR)
        return bf_err(img, -ENOTSUP, "%s: VDI sectors of %" PRIu32 " bytes are not supported "
                      "(only 512)", fn, sector);
    if (bs != VDI_BLOCK_SIZE)
        return bf_err(img, -ENOTSUP, "%s: VDI blocks of %" PRIu32 " bytes are not supported "
                      "(only %u)", fn, bs, VDI_BLOCK_SIZE);
    if (size > (uint64_t)blocks * bs)
        return bf_err(img, -EINVAL, "%s: the VDI disk is %" PRIu64 " bytes, but its block map "
                      "has room for %" PRIu32 " blocks (%" PRIu64 " bytes): the header is "
                      "damaged", fn, size, blocks, (uint64_t)blocks * bs);
    if (blocks > VDI_QEMU_MAX_BLOCKS)
        return bf_err(img, -ENOTSUP, "%s: the VDI block map has %" PRIu32 " entries, more than "
                      "the %u a VDI can hold", fn, blocks, VDI_QEMU_MAX_BLOCKS);
    /* ours from here */
    if (blocks > VDI_MAX_BLOCKS)
        return bf_err(img, -ENOTSUP, "%s: the VDI block map has %" PRIu32 " entries, more than "
                      "the %u supported", fn, blocks, VDI_MAX_BLOCKS);
    if (bf_le32(h + VDI_H_BLOCK_EXTRA) != 0)
        return bf_err(img, -ENOTSUP, "%s: the VDI header gives %" PRIu32 " extra bytes before "
                      "each block's data; images with such blocks are not supported", fn,
                      bf_le32(h + VDI_H_BLOCK_EXTRA));
    *disk_size = size;
    return 0;
}

/* Read the block map and check every allocated block against the file. */
static int read_bmap(struct bf_image *img, struct vdi *v, uint64_t off_bmap, uint64_t disk_size)
{
    const char *fn = img->filename;
    uint64_t bytes = (uint64_t)v->n_blocks * 4;
    if (!bf_range_within(off_bmap, bytes, v->file_size))
        return bf_err(img, -EINVAL, "%s: the VDI block map (%" PRIu32 " entries at offset %"
                      PRIu64 ") lies past the end of the file (%" PRIu64 " bytes): the image "
                      "is truncated or damaged", fn, v->n_blocks, off_bmap, v->file_size);
    uint8_t *raw = malloc(bytes ? bytes : 1);
    v->bmap = malloc(v->n_blocks ? (size_t)v->n_blocks * sizeof *v->bmap : 1);
    if (!raw || !v->bmap) {
        free(raw);
        return bf_err(img, -ENOMEM, "out of memory");
    }
    int r = bf_source_pread(img->src, raw, bytes, off_bmap);
    if (r < 0) {
        free(raw);
        return bf_err(img, r, "%s: cannot read the VDI block map: %s", fn, strerror(-r));
    }
    for (uint32_t i = 0; i < v->n_blocks; i++)
        v->bmap[i] = bf_le32(raw + (size_t)i * 4);
    free(raw);

    for (uint32_t i = 0; i < v->n_blocks; i++) {
        uint32_t e = v->bmap[i];
        uint64_t guest = (uint64_t)i * VDI_BLOCK_SIZE;
        if (e >= VDI_DISCARDED || guest >= disk_size)
            continue;       /* blocks past the disk's end are never read */
        if (e >= v->n_blocks)
            return bf_err(img, -EINVAL, "%s: VDI block %" PRIu32 " is stored as block %" PRIu32
                          ", but the image has only %" PRIu32 ": the block map is damaged", fn,
                          i, e, v->n_blocks);
        /* only the bytes the disk reads from the block must be in the file
         * (a last, partial block may be cut short) */
        uint64_t start = v->offset_data + (uint64_t)e * VDI_BLOCK_SIZE;   /* < 2^63 */
        uint64_t need = bf_min64(VDI_BLOCK_SIZE, disk_size - guest);
        if (!bf_range_within(start, need, v->file_size))
            return bf_err(img, -EINVAL, "%s: VDI block %" PRIu32 " (at offset %" PRIu64 ") lies "
                          "past the end of the file (%" PRIu64 " bytes): the image is truncated",
                          fn, i, start, v->file_size);
        const char *what = start < VDI_HEADER_BYTES ? "header"
            : start < off_bmap + bytes && off_bmap < start + need ? "block map" : NULL;
        if (what)
            return bf_err(img, -EINVAL, "%s: VDI block %" PRIu32 " (at offset %" PRIu64 ") "
                          "overlaps the %s: the header or the block map is damaged", fn, i,
                          start, what);
    }
    return 0;
}

/* A writable image: where new blocks go (after the highest block in use),
 * how many the header should count, and no block shared by two guest
 * blocks (a write to one would change the other). */
static int plan_allocation(struct bf_image *img, struct vdi *v, uint64_t disk_size)
{
    uint8_t *used = calloc((size_t)v->n_blocks / 8 + 1, 1);
    if (!used)
        return bf_err(img, -ENOMEM, "out of memory");
    uint32_t next = 0, count = 0;
    int r = 0;
    for (uint32_t i = 0; i < v->n_blocks && r == 0; i++) {
        uint32_t e = v->bmap[i];
        if (e >= VDI_DISCARDED)
            continue;
        count++;
        if ((uint64_t)i * VDI_BLOCK_SIZE >= disk_size)
            continue;               /* never read, never written: not checked */
        if (used[e / 8] & (1u << (e % 8)))
            r = bf_err(img, -EINVAL, "%s: VDI block %" PRIu32 " is stored in block %" PRIu32
                       ", which another block uses too: the block map is damaged, and writing "
                       "one would change the other; open read-only", img->filename, i, e);
        used[e / 8] |= (uint8_t)(1u << (e % 8));
        if (e + 1 > next)
            next = e + 1;
    }
    free(used);
    v->next_block = next;
    v->n_allocated = count;
    return r;
}

/* "1.1, normal (dynamic)": the image type as VirtualBox names it. */
static void fill_info(struct bf_image *img, struct vdi *v, uint32_t type)
{
    static const char *const types[] = { NULL, "normal (dynamic)", "fixed", "undo",
                                         "differencing" };
    if (type < sizeof types / sizeof types[0] && types[type])
        snprintf(v->version_str, sizeof v->version_str, "1.1, %s", types[type]);
    else
        snprintf(v->version_str, sizeof v->version_str, "1.1, image type %" PRIu32, type);
    img->info.format_version = v->version_str;
    img->info.cluster_size = VDI_BLOCK_SIZE;
    img->info.backing_file = v->parent_name;
    img->info.backing_format = v->parent_name ? "vdi" : NULL;
}

static int vdi_open(struct bf_image *img, const struct bf_open_opts *opts)
{
    if (opts->snapshot)
        return bf_err(img, -ENOTSUP, "%s: VDI images have no internal snapshots here (VirtualBox "
                      "keeps snapshots as differencing images)", img->filename);
    struct vdi *v = calloc(1, sizeof *v);
    if (!v)
        return bf_err(img, -ENOMEM, "out of memory");
    pthread_mutex_init(&v->alloc_lock, NULL);
    img->priv = v;

    uint8_t h[VDI_HEADER_BYTES];
    int r = bf_source_size(img->src, &v->file_size);
    if (r < 0)
        r = bf_err(img, r, "%s: cannot get size: %s", img->filename, strerror(-r));
    else if (v->file_size < VDI_HEADER_BYTES)
        r = bf_err(img, -EINVAL, "%s: the file (%" PRIu64 " bytes) is too small to hold a VDI "
                   "header (512 bytes)", img->filename, v->file_size);
    else if ((r = bf_source_pread(img->src, h, sizeof h, 0)) < 0)
        r = bf_err(img, r, "%s: cannot read the VDI header: %s", img->filename, strerror(-r));
    uint64_t disk_size = 0;
    if (r == 0)
        r = check_header(img, h, &disk_size);
    if (r == 0) {
        v->n_blocks = bf_le32(h + VDI_H_BLOCKS);
        v->offset_data = bf_le32(h + VDI_H_OFFSET_DATA);
        v->offset_bmap = bf_le32(h + VDI_H_OFFSET_BMAP);
        r = read_bmap(img, v, v->offset_bmap, disk_size);
    }
    v->diff = r == 0 && !uuid_is_null(h + VDI_H_UUID_LINKAGE);
    if (r == 0 && img->writable && v->diff)
        r = bf_err(img, -EROFS, "%s: differencing VDIs (VirtualBox snapshots) cannot be written; "
                   "open read-only, or with a throwaway overlay", img->filename);
    if (r == 0 && img->writable)
        r = plan_allocation(img, v, disk_size);
    if (r == 0 && v->diff)
        r = bf_vdi_open_parent(img, h + VDI_H_UUID_LINKAGE, &v->parent_name);
    if (r < 0) {
        vdi_close(img);
        return r;
    }
    img->size = disk_size;
    fill_info(img, v, bf_le32(h + VDI_H_IMAGE_TYPE));
    return 0;
}

struct vdi_units {
    struct bf_image *img;
    const struct vdi *v;
};

/* What the block starting at guest offset @start holds. */
static int vdi_unit(void *ctx, uint64_t start, struct bf_unit *u)
{
    const struct vdi_units *c = ctx;
    uint64_t idx = start / VDI_BLOCK_SIZE;
    if (idx >= c->v->n_blocks)      /* open checked the map covers the disk */
        return bf_err(c->img, -EIO, "%s: internal error: no VDI block holds guest offset %"
                      PRIu64, c->img->filename, start);
    uint32_t e = vdi_entry(c->v, (uint32_t)idx);
    if (e == VDI_UNALLOCATED && c->v->diff) {
        u->kind = BF_UNIT_UNALLOC;  /* the parent's (zeros with BF_OPEN_NO_BACKING) */
    } else if (e >= VDI_DISCARDED) {
        /* a discarded block, or a free one with no parent: zeros of this
         * image (qemu's map says present and zero) */
        u->kind = BF_UNIT_ZERO;
    } else {
        u->kind = BF_UNIT_DATA;
        u->host = c->v->offset_data + (uint64_t)e * VDI_BLOCK_SIZE;
    }
    return 0;
}

static int vdi_map(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags,
                   struct bf_map *m)
{
    (void)flags;
    struct vdi_units c = { img, img->priv };
    struct bf_unit first;
    return bf_map_units(off, len, VDI_BLOCK_SIZE, vdi_unit, &c, img->src, m, &first);
}

const struct bf_driver bf_driver_vdi = {
    .name = "vdi",
    .probe = vdi_probe,
    .open = vdi_open,
    .close = vdi_close,
    .map = vdi_map,
    .pwrite = bf_vdi_pwrite,
    .zero = bf_vdi_zero,
};
