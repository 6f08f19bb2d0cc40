/* vhdx.h — state shared by the vhdx driver's files: CRC-32C (vhdx-crc.c),
 * headers, region tables, metadata and the BAT (vhdx-open.c), the log and
 * its replay in memory (vhdx-log.c), and the mapping of guest offsets
 * (vhdx-map.c).
 *
 * Layout: [MS-VHDX] "Virtual Hard Disk v2 (VHDX) File Format".  All
 * integers are little-endian; GUIDs are kept as their 16 bytes on disk.
 *
 * Thread model: everything here is fixed when open returns and only read
 * afterwards, by any number of threads.
 */
#ifndef BLOCKFMT_VHDX_H
#define BLOCKFMT_VHDX_H

#include "internal.h"

#define VHDX_KiB ((uint64_t)1 << 10)
#define VHDX_MiB ((uint64_t)1 << 20)

#define VHDX_HEADER1_OFF   (64 * VHDX_KiB)
#define VHDX_HEADER2_OFF   (128 * VHDX_KiB)
#define VHDX_HEADER_SIZE   (4 * VHDX_KiB)    /* the part a header's CRC covers */
#define VHDX_RTABLE1_OFF   (192 * VHDX_KiB)
#define VHDX_RTABLE2_OFF   (256 * VHDX_KiB)
#define VHDX_RTABLE_SIZE   (64 * VHDX_KiB)
#define VHDX_HEADER_AREA   VHDX_MiB          /* file identifier, headers, region tables */
#define VHDX_MTABLE_SIZE   (64 * VHDX_KiB)   /* metadata table at the region's start */
#define VHDX_LOG_SECTOR    4096u

/* Bounds on values read from images: the spec's own limits, and limits on
 * what a hostile file can make us allocate. */
#define VHDX_MAX_REGIONS      2047u
#define VHDX_MAX_MD_ENTRIES   2047u
#define VHDX_MAX_MD_ITEM      VHDX_MiB
#define VHDX_MIN_BLOCK        VHDX_MiB
#define VHDX_MAX_BLOCK        (256 * VHDX_MiB)
#define VHDX_MAX_DISK         ((uint64_t)64 << 40)   /* 64 TiB */
#define VHDX_MAX_BAT_BYTES    (256 * VHDX_MiB)       /* held in memory */
#define VHDX_MAX_LOG_BYTES    (128 * VHDX_MiB)       /* read whole to replay it */

/* BAT entry: state in bits 0-2, file offset in MiB in bits 20-63. */
#define VHDX_BAT_STATE(e)   ((unsigned)((e) & 7))
#define VHDX_BAT_OFFSET(e)  ((e) >> 20 << 20)
enum {
    VHDX_PAYLOAD_NOT_PRESENT = 0,
    VHDX_PAYLOAD_UNDEFINED = 1,
    VHDX_PAYLOAD_ZERO = 2,
    VHDX_PAYLOAD_UNMAPPED = 3,
    VHDX_PAYLOAD_UNMAPPED_V095 = 5,  /* the v0.95 draft's value; qemu reads it as zero */
    VHDX_PAYLOAD_FULLY_PRESENT = 6,
    VHDX_PAYLOAD_PARTIALLY_PRESENT = 7,
};

/* The current header, as far as this driver uses it. */
struct vhdx_header {
    uint64_t seq;
    uint8_t log_guid[16];
    uint16_t log_version;
    uint32_t log_length;
    uint64_t log_offset;
};

/* One replayed range of the file: a 4 KiB page of data, or zeros. */
struct vhdx_seg {
    uint64_t off, len;
    const uint8_t *data;      /* NULL: zeros */
};

struct vhdx {
    struct vhdx_header hdr;
    unsigned cur_header;          /* 1 or 2 */
    uint64_t file_size;           /* after replay (the file may have grown) */
    uint64_t bat_off, bat_len, md_off, md_len;
    uint32_t block_size, logical_sector, physical_sector;
    bool leave_allocated, has_parent;
    uint64_t chunk_ratio;         /* data blocks per sector-bitmap block */
    uint64_t n_blocks;            /* data blocks */
    uint64_t n_bat;               /* BAT entries, sector bitmaps included */
    uint64_t *bat;                /* n_bat entries, host byte order */
    /* The log replayed in memory (NULL: the file needed none): a source
     * that reads the file with the replayed pages laid over it. */
    struct bf_source *replay;
    char version_str[64];
};

/* vhdx-crc.c: CRC-32C (Castagnoli) of @len bytes, with the 4 bytes at
 * @skip (the checksum field itself) read as zero; SIZE_MAX skips nothing. */
uint32_t vhdx_crc32c(const void *buf, size_t len, size_t skip);

/* vhdx-log.c: if the current header names a log with an active sequence,
 * replay it in memory: v->replay reads the file as it would be after the
 * replay and v->file_size grows to what the log says.  0 when there is
 * nothing to replay; -errno with a message on @img. */
int vhdx_log_replay(struct bf_image *img, struct vhdx *v);

/* Does [off, off+len) of the file touch a replayed page?  Then it must be
 * read through v->replay. */
bool vhdx_replayed(const struct vhdx *v, uint64_t off, uint64_t len);

/* Read file bytes as they are after the replay. */
int vhdx_read(struct bf_image *img, const struct vhdx *v, void *buf, size_t len, uint64_t off);

/* vhdx-map.c */
int vhdx_map(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags,
             struct bf_map *m);

#endif
