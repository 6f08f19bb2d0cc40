/* qcow2.h — state shared by the qcow2 driver's files (qcow2-open.c,
 * qcow2-snapshot.c, qcow2-map.c).  Layout: qemu docs/interop/qcow2.txt.
 *
 * Thread model: everything here is fixed at open except the L2 cache, which
 * locks itself.
 */
#ifndef BLOCKFMT_QCOW2_H
#define BLOCKFMT_QCOW2_H

#include "internal.h"

#define QCOW2_MAGIC 0x514649fbu           /* "QFI\xfb" */
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21
#define QCOW2_MAX_L1_BYTES (32u << 20)    /* qemu's limit; no valid image exceeds it */
#define QCOW2_MAX_REFTABLE_BYTES (8u << 20)
#define QCOW2_MAX_SNAPSHOTS 65536
#define QCOW2_MAX_SNAPSHOT_EXTRA 1024
#define QCOW2_MAX_SNAPSHOT_TABLE (64u << 20)
#define QCOW2_L2_CACHE_BYTES (16u << 20)

/* incompatible feature bits */
#define QCOW2_INCOMPAT_DIRTY       (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT     (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE   (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2       (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN       0x1full
/* autoclear feature bits */
#define QCOW2_AUTOCLEAR_BITMAPS       (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (1ull << 1)

/* L1/L2 entry fields */
#define QCOW2_OFFSET_MASK   0x00fffffffffffe00ull  /* bits 9-55 */
#define QCOW2_OFLAG_COPIED  (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO    1ull

/* header extension types */
#define QCOW2_EXT_END            0x00000000u
#define QCOW2_EXT_BACKING_FORMAT 0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE  0x6803f857u
#define QCOW2_EXT_DATA_FILE      0x44415441u

struct qcow2_snap {
    uint64_t l1_offset;
    uint32_t l1_size;
    char *id, *name;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t vm_state_size;
    uint64_t disk_size;
};

struct qcow2_feature_name {
    uint8_t type, bit;
    char name[47];
};

struct qcow2 {
    uint32_t version;
    unsigned cluster_bits;
    uint64_t cluster_size;
    bool extended_l2;
    unsigned l2_bits;              /* log2(entries per L2 table) */
    unsigned l2_entry_size;        /* 8, or 16 with extended L2 */
    uint64_t incompat, autoclear;
    enum bf_codec codec;
    uint64_t header_size;          /* virtual size recorded in the header */
    uint64_t file_size;            /* image file size at open */

    uint64_t *l1;                  /* host-endian copy of the L1 in use */
    uint32_t l1_size;

    /* compressed cluster descriptor fields */
    unsigned csize_shift;
    uint64_t csize_mask, coffset_mask;

    struct qcow2_snap *snaps;
    uint32_t nb_snaps;
    uint64_t snapshots_offset;

    struct qcow2_feature_name *features;
    size_t nb_features;

    char *backing_file, *backing_format, *data_file;
    struct bf_source *data_src;    /* where guest data lives: own, or img->src */
    bool own_data_src;

    struct bf_cache *l2_cache;
    char version_str[24];

    /* Writing (qcow2-write.c, qcow2-refcount.c).  `lock` is taken shared by
     * reads, block status and in-place data writes, and exclusively by
     * anything that changes metadata; only when the image is writable. */
    bool writable;
    pthread_rwlock_t lock;
    uint64_t l1_offset;            /* active L1 table in the file */
    unsigned refcount_order;
    uint64_t rb_entries;           /* refcounts per refcount block */
    uint64_t *rt;                  /* refcount table, host-endian offsets */
    uint64_t rt_size;              /* entries */
    uint64_t rt_offset;
    struct bf_cache *rb_cache;     /* refcount blocks */
    uint64_t free_hint;            /* no free cluster below this one */
};

int qcow2_read_snapshots(struct bf_image *img, struct qcow2 *q);
void qcow2_free_snapshots(struct qcow2 *q);
/* Index of the snapshot with id @s, else with name @s; -1 if none. */
int qcow2_find_snapshot(const struct qcow2 *q, const char *s);
int qcow2_list_snapshots(struct bf_image *img, struct bf_snapshot **list, size_t *n);
/* Read and check an L1 table (the active one or a snapshot's). */
int qcow2_load_l1(struct bf_image *img, struct qcow2 *q, uint64_t off, uint32_t n,
                  const char *what);

int qcow2_map(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags,
              struct bf_map *m);
/* The L2 table at @off (checked: aligned, inside the file), pinned in the
 * cache until bf_cache_put(q->l2_cache, *ent). */
int qcow2_l2_get(struct bf_image *img, struct qcow2 *q, uint64_t off, uint8_t **tbl,
                 struct bf_cache_ent **ent);

/* qcow2-refcount.c (exclusive lock held) */
int qcow2_rc_open(struct bf_image *img, struct qcow2 *q, uint64_t rt_off, uint32_t rt_clusters);
void qcow2_rc_close(struct qcow2 *q);
int qcow2_rc_get(struct bf_image *img, struct qcow2 *q, uint64_t cluster, uint64_t *rc);
int qcow2_rc_update(struct bf_image *img, struct qcow2 *q, uint64_t cluster, int delta);
/* @n contiguous clusters with refcount 1; *off is the first one's offset. */
int qcow2_alloc_clusters(struct bf_image *img, struct qcow2 *q, uint64_t n, uint64_t *off);
/* Drop one reference from every cluster overlapping [off, off+bytes). */
int qcow2_free_range(struct bf_image *img, struct qcow2 *q, uint64_t off, uint64_t bytes);
/* Write metadata (the file may grow; q->file_size follows). */
int qcow2_write_meta(struct bf_image *img, const void *buf, size_t len, uint64_t off,
                     const char *what);

/* qcow2-write.c */
int qcow2_open_writable(struct bf_image *img, struct qcow2 *q, uint64_t l1_off,
                        uint64_t rt_off, uint32_t rt_clusters);
void qcow2_io_begin(struct bf_image *img);
void qcow2_io_end(struct bf_image *img);
int qcow2_pwrite(struct bf_image *img, const void *buf, size_t len, uint64_t off);
int qcow2_zero(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags);
int qcow2_discard(struct bf_image *img, uint64_t off, uint64_t len);
int qcow2_flush(struct bf_image *img);

#endif
