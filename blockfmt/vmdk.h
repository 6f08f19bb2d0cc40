/* vmdk.h — state shared by the vmdk driver's files: the text descriptor
 * (vmdk-descriptor.c), sparse extent headers and grain directories
 * (vmdk-sparse.c), open/close and the extent list (vmdk-open.c) and the
 * mapping of guest offsets (vmdk-map.c).
 *
 * Layouts: VMware "Virtual Disk Format 1.1" and "5.0" technical notes
 * (descriptor, hosted sparse "KDMV" extents, ESX "COWD" sparse extents,
 * stream-optimized extents); seSparse has no public spec and follows what
 * qemu's block/vmdk.c accepts (it is checked as strictly as qemu does).
 *
 * Thread model: everything here is fixed when open returns, except the
 * grain-table cache, which locks itself, and, in a disk open for writing,
 * its CID (under cid_lock) and the grains allocated in its sparse extents
 * (under alloc_lock; see vmdk-write.c).
 */
#ifndef BLOCKFMT_VMDK_H
#define BLOCKFMT_VMDK_H

#include "internal.h"

#define VMDK_SECTOR ((uint64_t)512)

/* Bounds on values read from images.  Each is far above anything VMware or
 * qemu write and low enough that a hostile value cannot make us allocate or
 * loop without limit. */
#define VMDK_MAX_DESC_BYTES   (1u << 20)    /* descriptor text (qemu reads at most 1 MiB) */
#define VMDK_MAX_LINE         8192u         /* one descriptor line */
#define VMDK_MAX_NAME         4096u         /* a file name in a descriptor */
#define VMDK_MAX_EXTENTS      4096u         /* 2 TiB in 2 GiB pieces needs 1024 */
#define VMDK_MAX_GRAIN_SECTORS 0x200000u    /* 1 GiB grains: qemu's limit */
#define VMDK_MAX_ZGRAIN_SECTORS 0x8000u     /* 16 MiB: compressed grains are inflated whole */
#define VMDK_MAX_GTES         512u          /* KDMV grain-table entries (VMware writes 512) */
#define VMDK_MAX_GD_ENTRIES   (32u << 20)   /* qemu's limit on grain-directory entries */
#define VMDK_MAX_SECTORS      ((uint64_t)INT64_MAX / VMDK_SECTOR)
#define VMDK_GT_CACHE_BYTES   (16u << 20)
/* Grain-table cache keys are (extent index << 44 | byte offset): tables
 * must start below 16 TiB in their file. */
#define VMDK_GT_KEY_BITS      44
#define VMDK_GT_BAD           UINT64_MAX    /* a grain directory entry that is damaged */

#define VMDK_KDMV_MAGIC  0x4b444d56u        /* "KDMV" read big-endian */
#define VMDK_COWD_MAGIC  0x434f5744u        /* "COWD" read big-endian */
#define VMDK_SESPARSE_MAGIC 0xcafebabeull   /* seSparse constant header, little-endian u64 */

/* ------------------------------------------------------------ descriptor */

enum vmdk_access { VMDK_RW, VMDK_RDONLY, VMDK_NOACCESS };
enum vmdk_etype { VMDK_ET_FLAT, VMDK_ET_VMFS, VMDK_ET_SPARSE, VMDK_ET_VMFSSPARSE,
                  VMDK_ET_SESPARSE, VMDK_ET_ZERO };

struct vmdk_desc_extent {
    enum vmdk_access access;
    enum vmdk_etype type;
    uint64_t sectors;
    uint64_t offset;          /* FLAT/VMFS: where the extent starts in its file, sectors */
    char *file;               /* as written (relative to the descriptor); NULL for ZERO */
    unsigned line;            /* line number, for messages */
};

struct vmdk_desc {
    char *create_type;        /* NULL when absent */
    char *parent_hint;        /* parentFileNameHint, NULL when absent */
    uint32_t cid, parent_cid;
    bool has_cid, has_parent_cid;
    struct vmdk_desc_extent *ext;
    size_t n_ext;
};

/* Parse descriptor text (@len bytes; it ends early at a NUL).  @where names
 * it in messages.  On failure the message is on @img and @d holds whatever
 * was parsed (free it with vmdk_desc_free). */
int vmdk_desc_parse(struct bf_image *img, const char *where, const char *text, size_t len,
                    struct vmdk_desc *d);
void vmdk_desc_free(struct vmdk_desc *d);
/* Does @head look like descriptor text (qemu's rule, or the usual first line)? */
bool vmdk_desc_probe(const uint8_t *head, size_t len);
const char *vmdk_etype_name(enum vmdk_etype t);

/* --------------------------------------------------------------- extents */

enum vmdk_kind {
    VMDK_FLAT,       /* FLAT, VMFS: the bytes at flat_off in the file */
    VMDK_ZERO,       /* ZERO extents and NOACCESS lines: read as zero */
    VMDK_KDMV,       /* hosted sparse extent ("KDMV"), incl. stream-optimized */
    VMDK_COWD,       /* ESX sparse extent ("COWD"), vmfsSparse */
    VMDK_SESPARSE,   /* ESXi seSparse extent */
};

struct vmdk_extent {
    enum vmdk_kind kind;
    unsigned index;          /* position in the extent list (cache keys) */
    struct bf_source *src;   /* NULL for VMDK_ZERO */
    bool own_src;            /* false when src is the image file itself */
    uint64_t start, size;    /* guest bytes */
    uint64_t file_size;      /* size of src at open; grows as grains are added
                                (atomic loads and stores) */
    uint64_t flat_off;       /* VMDK_FLAT: bytes */

    /* sparse extents */
    unsigned version;        /* header version (KDMV, COWD) */
    uint64_t capacity;       /* bytes, as the extent header says */
    uint64_t grain;          /* bytes */
    uint32_t gt_entries;     /* entries per grain table */
    unsigned gte_size;       /* 4, or 8 for seSparse */
    uint64_t gt_span;        /* guest bytes one grain table maps */
    uint32_t n_gd;
    uint64_t *gd;            /* grain-table byte offsets: 0 none, VMDK_GT_BAD damaged */
    uint64_t *rgd;           /* the redundant directory resolved likewise, or NULL */
    bool compressed, markers, zero_grain;
    uint64_t overhead;       /* KDMV: bytes of metadata before the first grain */
    uint64_t desc_off, desc_bytes;  /* KDMV: where its embedded descriptor is, if any */
    uint64_t alloc_end;      /* writing: where the next new grain goes (0: not known yet) */
    uint64_t se_grains;      /* seSparse: byte offset of grain 0 */
};

struct vmdk {
    struct vmdk_extent *ext;
    size_t n_ext;
    struct bf_cache *gt_cache;   /* grain tables of every extent */
    struct vmdk_desc desc;
    char version_str[96];
    /* where the descriptor text is in the image's own file */
    uint64_t desc_off, desc_bytes;
    /* disks open for writing (vmdk-write.c): the CID is changed once,
     * before the first write; grains are allocated one at a time; grain
     * tables are read from the file each time, never from the cache */
    pthread_mutex_t cid_lock, alloc_lock;
    bool cid_updated;
    bool gt_uncached;
};

/* Open the sparse extent @e whose file is e->src, as a @type extent
 * (SPARSE or VMFSSPARSE: KDMV or COWD; SESPARSE: seSparse).  Fills the
 * geometry and grain directories; e->capacity is what the header says.  For
 * KDMV extents with an embedded descriptor, *@desc (if @desc is not NULL)
 * gets a copy of its text (caller frees). */
int vmdk_sparse_open(struct bf_image *img, struct vmdk_extent *e, enum vmdk_etype type,
                     char **desc, size_t *desc_len);
void vmdk_extent_free(struct vmdk_extent *e);

int vmdk_map(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags,
             struct bf_map *m);
/* The extent holding guest offset @off (extents are sorted, none empty;
 * the caller checks that one does). */
struct vmdk_extent *vmdk_extent_at(const struct vmdk *v, uint64_t off);

/* vmdk-write.c: 0 if descriptor extent @x (or opened sparse extent @e) can
 * be written, else -EROFS with a message; the driver's write hooks. */
int vmdk_writable_extent(struct bf_image *img, const struct vmdk_desc_extent *x);
int vmdk_writable_sparse(struct bf_image *img, const struct vmdk_extent *e);
int vmdk_pwrite(struct bf_image *img, const void *buf, size_t len, uint64_t off);
int vmdk_zero(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags);
int vmdk_flush(struct bf_image *img);

#endif
