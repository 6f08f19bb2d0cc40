/* vdi.h — what the VDI driver's files share: header layout, the open
 * image's state, the parent lookup of differencing images (vdi-parent.c)
 * and writing (vdi-write.c).
 *
 * Thread model: struct vdi is fixed after open except the block map
 * entries (atomic) and the allocation fields (under alloc_lock).
 */
#ifndef BLOCKFMT_VDI_H
#define BLOCKFMT_VDI_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VDI_SIGNATURE     0xbeda107fu
#define VDI_HEADER_BYTES  512u          /* what qemu reads: the pre-header and header */
#define VDI_SECTOR        512u
#define VDI_VERSION_1_1   0x00010001u
#define VDI_BLOCK_SIZE    (1u << 20)    /* the only size qemu (and VirtualBox) use */
#define VDI_UNALLOCATED   0xffffffffu
#define VDI_DISCARDED     0xfffffffeu

/* qemu's bound: the block map indexes blocks with 32-bit numbers whose map
 * must fit 4 GiB.  Ours is lower, so that a hostile header cannot make us
 * allocate without limit: 32 Mi blocks of 1 MiB are 32 TiB, past the 2 TiB
 * VirtualBox itself allows. */
#define VDI_QEMU_MAX_BLOCKS 0x3fffffffu
#define VDI_MAX_BLOCKS      (32u << 20)

struct vdi {
    bool diff;                  /* a differencing image: free blocks read the parent */
    char *parent_name;          /* as found beside us (vdi-parent.c) */
    uint64_t file_size;
    uint64_t offset_bmap, offset_data;
    uint32_t n_blocks;          /* entries in the block map */
    /* Entries are loaded and stored atomically: a writer publishes a new
     * block's number only once its data is in the file (vdi-write.c). */
    uint32_t *bmap;
    /* writable images: allocation is serialised by alloc_lock */
    pthread_mutex_t alloc_lock;
    uint32_t next_block;        /* number the next new block gets */
    uint32_t n_allocated;       /* allocated entries, as the header records them */
    char version_str[96];
};

static inline uint32_t vdi_entry(const struct vdi *v, uint32_t idx)
{
    return __atomic_load_n(&v->bmap[idx], __ATOMIC_ACQUIRE);
}

/* header fields (little-endian) */
#define VDI_H_SIGNATURE     0x40
#define VDI_H_VERSION       0x44
#define VDI_H_IMAGE_TYPE    0x4c
#define VDI_H_OFFSET_BMAP   0x154
#define VDI_H_OFFSET_DATA   0x158
#define VDI_H_SECTOR_SIZE   0x168
#define VDI_H_DISK_SIZE     0x170
#define VDI_H_BLOCK_SIZE    0x178
#define VDI_H_BLOCK_EXTRA   0x17c
#define VDI_H_BLOCKS        0x180
#define VDI_H_BLOCKS_ALLOCATED 0x184
#define VDI_H_UUID_CREATE   0x188   /* this image */
#define VDI_H_UUID_MODIFY   0x198   /* its last modification */
#define VDI_H_UUID_LINKAGE  0x1a8   /* differencing: the parent's UUID_CREATE */
#define VDI_H_UUID_PARENT_MODIFY 0x1b8  /* differencing: the parent's UUID_MODIFY then */

struct bf_image;

/* "01234567-89ab-..." as VirtualBox shows the UUID at @u. */
void bf_vdi_uuid_str(const uint8_t *u, char out[37]);

/* Find the .vdi whose creation UUID is @uuid beside @img or in the folder
 * above and open it as @img's backing image; *parent_name (owned by the
 * caller) is its name relative to @img's folder.  With BF_OPEN_NO_BACKING
 * nothing is looked for and *parent_name stays NULL. */
int bf_vdi_open_parent(struct bf_image *img, const uint8_t *uuid, char **parent_name);

/* vdi-write.c: the driver's write entry points (base images only). */
int bf_vdi_pwrite(struct bf_image *img, const void *buf, size_t len, uint64_t off);
int bf_vdi_zero(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags);

#endif
