/* blockfmt.h — the one public interface of libblockfmt: open a disk image
 * (raw, qcow2, ...), read and write its virtual disk, ask what is allocated,
 * list its partitions and open a partition as an image of its own.
 *
 * Thread model: bf_open/bf_close and the partition-table functions are called
 * from one thread.  Between them, bf_pread, bf_pwrite, bf_zero, bf_discard,
 * bf_flush and bf_block_status may be called from any number of threads at
 * once on the same handle.
 *
 * Errors: every function returns 0 (or a count) on success and -errno on
 * failure.  The message for the last failure is kept on the handle and read
 * with bf_errmsg().  The library never prints.
 */
#ifndef BLOCKFMT_H
#define BLOCKFMT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct bf_image;

/* ------------------------------------------------------------------ open */

enum {
    BF_OPEN_RDWR       = 1u << 0, /* open for writing (backing files never are) */
    BF_OPEN_NO_BACKING = 1u << 1, /* do not open backing files: unallocated reads as zero */
    BF_OPEN_NO_PARENT_CHECK = 1u << 2, /* vmdk: open a delta disk whose parentCID does not
                                          match its parent's CID (or that names no parent) */
    BF_OPEN_FORCE_SHARE = 1u << 3, /* read-only: take no image locks, so a running VM may
                                      go on writing (what is read may be inconsistent) */
};

struct bf_open_opts {
    const char *format;   /* NULL or "auto": probe the content; else "raw",
                             "qcow2", "vmdk", "vpc" (VHD), "vhdx", "vdi" */
    unsigned flags;       /* BF_OPEN_* */
    const char *snapshot; /* internal snapshot id or name (id tried first), NULL
                             for the current state; implies read-only */
};

/* Open the image at @path.  @opts may be NULL (probe, read-only, follow
 * backing files).  On success *@imgp is the open image.  On failure the
 * return value is -errno and *@imgp is a handle that only carries the error
 * message: read it with bf_errmsg() and release it with bf_close(). */
int bf_open(const char *path, const struct bf_open_opts *opts, struct bf_image **imgp);

/* Is @name an NBD URI (nbd://, nbds://, nbd+unix://, nbds+unix://) rather
 * than a local path?  Images named so are read through libnbd. */
bool bf_is_remote(const char *name);

/* @name as it may be shown to others (mount tables, sysfs, state files): an
 * NBD URI without the password of its user part and without the values of
 * query parameters that look secret; a path as it is.  Caller frees; NULL
 * on ENOMEM. */
char *bf_display_name(const char *name);

/* Release the handle (NULL is allowed).  Does not flush: call bf_flush()
 * first when the image was written. */
void bf_close(struct bf_image *img);

/* Message of the last failure on @img (never NULL; "" when none).  The
 * string is a copy local to the calling thread, valid until its next call. */
const char *bf_errmsg(struct bf_image *img);

/* ---------------------------------------------------------- description */

uint64_t bf_size(const struct bf_image *img);          /* virtual size in bytes */
bool bf_is_writable(const struct bf_image *img);
const char *bf_format(const struct bf_image *img);     /* "raw", "qcow2", "slice" */
const char *bf_filename(const struct bf_image *img);   /* path as opened */
/* The backing image, or NULL.  Borrowed: valid until bf_close(img). */
struct bf_image *bf_backing(const struct bf_image *img);

enum {
    BF_INFO_DIRTY         = 1u << 0, /* qcow2 dirty bit set */
    BF_INFO_CORRUPT       = 1u << 1, /* qcow2 corrupt bit set */
    BF_INFO_EXTENDED_L2   = 1u << 2, /* qcow2 subclusters */
    BF_INFO_DATA_FILE_RAW = 1u << 3, /* external data file is a valid raw image */
};

/* Format details for listings.  Strings are owned by the image and valid
 * until bf_close(); absent values are NULL or 0. */
struct bf_info {
    const char *format;          /* driver name */
    const char *format_version;  /* e.g. "3 (compat=1.1)" */
    uint64_t size;               /* virtual size */
    uint64_t file_size;          /* size of the image file itself */
    uint32_t cluster_size;       /* allocation unit, 0 when there is none */
    const char *compression;     /* "zlib", "zstd" for images that may hold compressed data */
    const char *backing_file;    /* backing file name as the image records it */
    const char *backing_format;  /* backing format as the image records it */
    const char *data_file;       /* external data file name as recorded */
    const char *snapshot;        /* id of the internal snapshot opened, else NULL */
    unsigned nb_snapshots;
    unsigned flags;              /* BF_INFO_* */
};
void bf_get_info(const struct bf_image *img, struct bf_info *out);

struct bf_snapshot {
    char *id;                    /* unique id, e.g. "1" */
    char *name;                  /* name given by the user (may be "") */
    uint64_t disk_size;          /* virtual size when taken */
    uint64_t vm_state_size;      /* bytes of saved VM state, 0 if none */
    uint64_t date_sec;           /* wall-clock time taken */
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;      /* guest run time when taken */
};
/* List internal snapshots (none for formats without them: *n = 0).
 * Caller frees *list with bf_snapshots_free(). */
int bf_snapshots(struct bf_image *img, struct bf_snapshot **list, size_t *n);
void bf_snapshots_free(struct bf_snapshot *list, size_t n);

/* ------------------------------------------------------------------- I/O */

/* Read @len bytes of the virtual disk at @off into @buf.  The range must lie
 * within bf_size(); unallocated ranges read from the backing image or as zero. */
int bf_pread(struct bf_image *img, void *buf, size_t len, uint64_t off);

/* bf_pread that also says which parts the image knows read as zero without
 * reading them (zero clusters, unallocated ranges with no backing data, the
 * part past a shorter backing file): @fn is called with each such range, in
 * order, in this image's offsets.  The buffer holds zeros there too.  Holes
 * in a raw file are looked for only in reads of 64 KiB or more (finding them
 * costs system calls).  For servers that send zeros as holes. */
typedef void (*bf_zero_fn)(void *ctx, uint64_t off, uint64_t len);
int bf_pread_zeros(struct bf_image *img, void *buf, size_t len, uint64_t off, bf_zero_fn fn,
                   void *ctx);

/* Write @len bytes.  -EROFS when the image was opened read-only or its format
 * cannot be written. */
int bf_pwrite(struct bf_image *img, const void *buf, size_t len, uint64_t off);

enum {
    BF_ZERO_MAY_UNMAP = 1u << 0, /* the range may be deallocated if it still reads as zero */
    BF_ZERO_FAST      = 1u << 1, /* fail with -ENOTSUP rather than write zero bytes */
};
/* Make the range read as zero. */
int bf_zero(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags);

/* Hint that the range is no longer needed; it may read back as anything the
 * format allows (zero here, backing data for overlays).  May do nothing. */
int bf_discard(struct bf_image *img, uint64_t off, uint64_t len);

/* Make everything written so far durable. */
int bf_flush(struct bf_image *img);

/* --------------------------------------------------------- block status */

enum {
    BF_STATUS_DATA      = 1u << 0, /* stored data (may still read as zero) */
    BF_STATUS_ZERO      = 1u << 1, /* reads as zero */
    BF_STATUS_ALLOCATED = 1u << 2, /* decided by some layer of the chain, not
                                      by falling off its bottom */
};

struct bf_status {
    uint64_t len;    /* length of the run starting at the queried offset */
    unsigned flags;  /* BF_STATUS_* */
    unsigned depth;  /* layer that decided: 1 = this image, 2 = its backing
                        file, ...; for unallocated runs, the deepest layer
                        that was consulted */
};

/* Describe the run that starts at @off (at most @len bytes, @len > 0, the
 * range within bf_size()).  Runs are as long as the format can cheaply tell;
 * callers loop. */
int bf_block_status(struct bf_image *img, uint64_t off, uint64_t len, struct bf_status *st);

/* ------------------------------------------------------ zero-copy reads */

/* Where the run of bytes at a guest offset is kept. */
struct bf_location {
    uint64_t len;      /* length of the run starting at the queried offset */
    int fd;            /* >= 0: the run is stored as-is in this local file... */
    uint64_t fd_off;   /* ...starting at this offset in it */
};

/* For callers that move data without copying it (splice, sendfile): fill
 * @loc for the run that starts at @off (at most @len bytes, @len > 0, the
 * range within bf_size()).  With loc->fd >= 0 the run's bytes are those of
 * that descriptor (owned by the image) at loc->fd_off, and stay so while the
 * image is open and nothing writes it; with loc->fd == -1 the run is zero
 * (a hole of a sparse raw file included, where cheap to find), compressed,
 * remote or otherwise not a plain file range: read it with bf_pread.
 * Callers loop, as with bf_block_status. */
int bf_locate(struct bf_image *img, uint64_t off, uint64_t len, struct bf_location *loc);

/* ----------------------------------------------------- partition tables */

enum bf_ptable_kind { BF_PTABLE_NONE = 0, BF_PTABLE_MBR, BF_PTABLE_GPT };

enum {
    BF_PART_BOOTABLE = 1u << 0, /* MBR active flag (GPT: legacy BIOS bootable attribute) */
    BF_PART_EXTENDED = 1u << 1, /* MBR extended partition (the container) */
    BF_PART_LOGICAL  = 1u << 2, /* MBR logical partition inside an extended one */
};

struct bf_partition {
    unsigned number;      /* as Linux numbers it: MBR primaries 1-4 by slot,
                             logicals from 5; GPT entry index + 1 */
    uint64_t start;       /* byte offset in the disk */
    uint64_t length;      /* bytes */
    unsigned flags;       /* BF_PART_* */
    uint8_t mbr_type;     /* MBR system id byte (0 for GPT) */
    uint8_t type_guid[16];/* GPT partition type, mixed-endian as on disk */
    uint8_t uuid[16];     /* GPT unique partition GUID */
    uint64_t gpt_attrs;   /* GPT attribute bits */
    char name[144];       /* GPT name as UTF-8, "" for MBR */
};

struct bf_ptable {
    enum bf_ptable_kind kind;
    unsigned sector_size;     /* logical sector size the table was read with */
    uint32_t mbr_id;          /* MBR disk signature */
    uint8_t disk_guid[16];    /* GPT disk GUID */
    bool used_backup_gpt;     /* the primary GPT was damaged; the backup was used */
    size_t n;                 /* number of partitions in parts[] */
    struct bf_partition parts[];
};

/* Read the partition table of @img.  @sector_size is 512 or 4096, or 0 to
 * decide: GPT is looked for at both sizes; MBR assumes 512.  A disk without a
 * table gives kind BF_PTABLE_NONE and n = 0; a damaged table is an error.
 * Caller frees *out with free(). */
int bf_ptable_read(struct bf_image *img, unsigned sector_size, struct bf_ptable **out);

/* Format a GUID as the canonical upper-case text ("0FC63DAF-8483-...");
 * @buf must hold 37 bytes.  Returns @buf. */
char *bf_guid_str(const uint8_t guid[16], char *buf);

/* Open bytes [@off, @off+@len) of @parent as an image of its own.  Reads,
 * writes and block status go through @parent; the slice keeps @parent alive
 * until the slice is closed.  Writable when @parent is. */
int bf_open_slice(struct bf_image *parent, uint64_t off, uint64_t len, struct bf_image **imgp);

/* Open a throwaway writable overlay on @base: writes go to an unlinked
 * temporary file (in $TMPDIR, else /var/tmp, else /tmp) and vanish at bf_close(); @base
 * is never written.  Takes ownership of @base (even on failure). */
int bf_open_overlay(struct bf_image *base, struct bf_image **imgp);

#ifdef __cplusplus
}
#endif
#endif
