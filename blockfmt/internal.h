/* internal.h — what the parts of libblockfmt share and nothing outside sees:
 * the image handle, the format-driver table, byte sources, the block cache,
 * codecs and small helpers for reading hostile on-disk integers.
 *
 * The core idea: a format driver does not read data, it *maps*.  For a guest
 * range it says what the first run is (data at a host offset in a source,
 * zero, unallocated, compressed, or a range of another image) and how long
 * that run is.  io.c turns maps into reads, zero fill, backing fall-through,
 * decompression and block status once, for every format.
 */
#ifndef BLOCKFMT_INTERNAL_H
#define BLOCKFMT_INTERNAL_H

#include "blockfmt.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <string.h>
#include <sys/types.h>

#define BF_MAX_CHAIN_DEPTH 256   /* layers in a backing chain, the top included */
#define BF_ERRMSG_MAX 1024

/* ---------------------------------------------------------------- sources */

struct bf_source;

struct bf_source_ops {
    int (*pread)(struct bf_source *, void *, size_t, uint64_t);   /* full read or -errno; zero past EOF */
    int (*pwrite)(struct bf_source *, const void *, size_t, uint64_t);
    int (*flush)(struct bf_source *);
    int (*size)(struct bf_source *, uint64_t *);
    /* Optional: is [off, off+len) a hole?  *run = length of the answer. */
    int (*extent)(struct bf_source *, uint64_t off, uint64_t len, bool *hole, uint64_t *run);
    int (*punch)(struct bf_source *, uint64_t off, uint64_t len, bool keep_allocated);
    void (*close)(struct bf_source *);
};

/* A byte container: a local file, or a remote NBD export (source-nbd.c).
 * Thread model: all ops may be called concurrently. */
struct bf_source {
    const struct bf_source_ops *ops;
    char *name;          /* path for messages; owned */
    int fd;              /* local files: the descriptor, else -1 */
    bool writable;
    dev_t dev;           /* identity for backing-loop detection */
    ino_t ino;
    bool remote;         /* an NBD export: its identity is @name (the URI) */
    /* Decompressed units read from this source, keyed by their offset here;
     * created on first use (io.c). */
    struct bf_cache *ucache;
    pthread_mutex_t ucache_lock;
};

/* Open a local file or block device.  On failure returns -errno and writes
 * a message into @err. */
int bf_source_open_file(const char *path, bool writable, struct bf_source **out,
                        char *err, size_t errlen);
void bf_source_close(struct bf_source *src);
/* source-nbd.c: is @name an NBD URI (nbd://, nbds://, nbd+unix://,
 * nbds+unix://)?  Open one as a source: read-only unless @writable (then
 * the export must allow writes); the source's name is the URI without
 * secrets.  bf_source_open: an NBD URI or else a local file. */
bool bf_is_nbd_uri(const char *name);
/* A file named inside @img (backing file, data file, extent): -EINVAL with
 * a message when @img was opened by NBD URI and @name is not one (there is
 * no directory to resolve it against, and a path would name a file on some
 * other machine). */
int bf_check_inner_name(struct bf_image *img, const char *name, const char *what);
int bf_source_open_nbd(const char *uri, bool writable, struct bf_source **out,
                       char *err, size_t errlen);
int bf_source_open(const char *name, bool writable, struct bf_source **out,
                   char *err, size_t errlen);
/* Image locks compatible with qemu's file driver (OFD byte-range locks on
 * bytes 100+perm and 200+perm of the file): readers hold "read" and do not
 * share "write"; writers also hold "write".  So qemu cannot write an image
 * we use, and we refuse one qemu writes.  A source without a local file
 * (NBD) is not locked.  -EBUSY with a message in @err on a conflict. */
enum bf_lock_mode { BF_LOCK_NONE, BF_LOCK_READ, BF_LOCK_WRITE };
int bf_source_lock(struct bf_source *src, enum bf_lock_mode mode, char *err, size_t errlen);
/* The mode for an image opened with BF_OPEN_* @flags, for reading or writing. */
static inline enum bf_lock_mode bf_lock_mode_for(unsigned flags, bool writable)
{
    return writable ? BF_LOCK_WRITE : (flags & BF_OPEN_FORCE_SHARE) ? BF_LOCK_NONE : BF_LOCK_READ;
}

/* A writable, already-unlinked temporary file in @dir (NULL: $TMPDIR, else
 * /var/tmp), for throwaway overlays. */
int bf_source_open_tmpfile(const char *dir, struct bf_source **out, char *err, size_t errlen);

static inline int bf_source_pread(struct bf_source *s, void *buf, size_t len, uint64_t off)
{ return s->ops->pread(s, buf, len, off); }
static inline int bf_source_pwrite(struct bf_source *s, const void *buf, size_t len, uint64_t off)
{ return s->ops->pwrite ? s->ops->pwrite(s, buf, len, off) : -EROFS; }
static inline int bf_source_size(struct bf_source *s, uint64_t *size)
{ return s->ops->size(s, size); }
static inline int bf_source_flush(struct bf_source *s)
{ return s->ops->flush ? s->ops->flush(s) : 0; }
/* Make @len bytes at @off read as zero: a hole punched (the space kept)
 * where the file system can, else zeros written; -ENOTSUP instead of
 * writing when @fast. */
int bf_source_zero(struct bf_source *s, uint64_t off, uint64_t len, bool fast);

/* ------------------------------------------------------------------ maps */

enum bf_map_kind {
    BF_MAP_DATA = 1,    /* bytes at src/host_off */
    BF_MAP_ZERO,        /* reads as zero, decided by this layer */
    BF_MAP_UNALLOC,     /* not here: backing image, else zero */
    BF_MAP_COMPRESSED,  /* inside a compressed unit */
    BF_MAP_IMAGE,       /* bytes of another image at image_off (slices) */
};

enum bf_codec { BF_CODEC_DEFLATE = 1, BF_CODEC_ZSTD,
                BF_CODEC_ZLIB /* deflate in a zlib (RFC 1950) wrapper: vmdk grains */ };

struct bf_map {
    enum bf_map_kind kind;
    uint64_t len;                /* run length from the queried offset, > 0 */
    struct bf_source *src;       /* DATA, COMPRESSED */
    uint64_t host_off;           /* DATA: where the queried offset lives */
    /* COMPRESSED: the unit holding the queried offset */
    enum bf_codec codec;
    uint64_t comp_off, comp_len; /* compressed bytes in src */
    uint64_t unit_guest_off;     /* guest offset where the unit starts */
    uint32_t unit_len;           /* uncompressed size of the unit */
    /* IMAGE */
    struct bf_image *image;
    uint64_t image_off;
};

/* What one allocation unit (cluster, subcluster, grain) of a table-mapped
 * format holds, as its driver reads it from its tables. */
enum bf_unit_kind { BF_UNIT_DATA, BF_UNIT_ZERO, BF_UNIT_UNALLOC, BF_UNIT_COMPRESSED };
struct bf_unit {
    enum bf_unit_kind kind;
    uint64_t host;      /* DATA: host offset of the unit's first byte */
    uint64_t aux;       /* COMPRESSED: whatever the driver needs to map it */
};
/* Classify the unit that starts at @start (in the caller's coordinates). */
typedef int (*bf_unit_fn)(void *ctx, uint64_t start, struct bf_unit *u);
/* maprun.c: the run at @off (at most @len bytes, within one table) from the
 * answers of @fn for units of @unit_size bytes: fills @m with a DATA (in
 * @src), ZERO or UNALLOC run, or, when the first unit is compressed, leaves
 * @m to the caller and returns that unit in @first. */
int bf_map_units(uint64_t off, uint64_t len, uint64_t unit_size, bf_unit_fn fn, void *ctx,
                 struct bf_source *src, struct bf_map *m, struct bf_unit *first);

/* map() flags */
enum {
    BF_MAPF_STATUS = 1u << 0, /* caller wants block status: be precise about
                                 holes even if it costs a system call */
    BF_MAPF_ZEROS  = 1u << 1, /* a read that reports zero ranges (bf_pread_zeros):
                                 look for holes where that is cheap compared
                                 with the read itself */
};

struct bf_driver {
    const char *name;
    /* 0..100: how sure we are that @head (the first @len bytes) is ours */
    int  (*probe)(const uint8_t *head, size_t len);
    int  (*open)(struct bf_image *, const struct bf_open_opts *);
    void (*close)(struct bf_image *);
    /* Describe the run at @off (at most @len bytes); 0 or -errno (message set). */
    int  (*map)(struct bf_image *, uint64_t off, uint64_t len, unsigned flags, struct bf_map *);
    /* Optional, writable formats: a DATA or IMAGE run to write @off into,
     * allocating as needed. */
    int  (*alloc)(struct bf_image *, uint64_t off, uint64_t len, struct bf_map *);
    /* Optional: make a range read as zero (BF_ZERO_*); -ENOTSUP lets io.c
     * fall back to writing zeroes. */
    int  (*zero)(struct bf_image *, uint64_t off, uint64_t len, unsigned flags);
    int  (*discard)(struct bf_image *, uint64_t off, uint64_t len);
    int  (*flush)(struct bf_image *);
    int  (*snapshots)(struct bf_image *, struct bf_snapshot **, size_t *);
    /* Optional: formats whose writes need several ordered steps (qcow2:
     * refcounts, data, then L2) take over bf_pwrite instead of alloc(). */
    int  (*pwrite)(struct bf_image *, const void *, size_t, uint64_t);
    /* Optional: bracket every top-level read and block status, so a writer
     * cannot free clusters under them (qcow2 opened writable). */
    void (*io_begin)(struct bf_image *);
    void (*io_end)(struct bf_image *);
};

/* io.c: bf_pread without the io_begin/io_end bracket, for drivers that
 * already hold their own lock (copy-on-write reads). */
int bf_pread_nolock(struct bf_image *img, void *buf, size_t len, uint64_t off);

extern const struct bf_driver bf_driver_raw;
extern const struct bf_driver bf_driver_qcow2;
extern const struct bf_driver bf_driver_vmdk;
extern const struct bf_driver bf_driver_vhdx;
extern const struct bf_driver bf_driver_vpc;
extern const struct bf_driver bf_driver_vdi;
extern const struct bf_driver bf_driver_slice;
extern const struct bf_driver bf_driver_overlay;

/* probe.c */
const struct bf_driver *bf_driver_by_name(const char *name);
const struct bf_driver *bf_probe(const uint8_t *head, size_t len, char *why, size_t whylen);
/* Is @tail (the last @len bytes of a file that probed as raw) the trailer of
 * a format we know but do not read?  Then fills @why and returns true. */
bool bf_probe_trailer(const uint8_t *tail, size_t len, char *why, size_t whylen);
#define BF_PROBE_LEN 4096

/* ----------------------------------------------------------------- image */

struct bf_cache;

struct bf_image {
    const struct bf_driver *drv;
    void *priv;                   /* driver state, freed by drv->close */
    struct bf_source *src;        /* the image file; owned (NULL for slices) */
    char *filename;               /* as given to bf_open; owned */
    uint64_t size;                /* virtual size */
    bool writable;
    unsigned open_flags;          /* BF_OPEN_* the image was opened with */
    struct bf_image *backing;     /* owned; NULL when none */
    struct bf_image *overlay;     /* the image this one backs (not owned) */
    unsigned depth;               /* 1 for the image opened by the user */
    struct bf_info info;          /* filled by the driver; strings point into priv */
    atomic_int refs;              /* slices hold a reference on their parent */
    pthread_mutex_t errlock;
    char errmsg[BF_ERRMSG_MAX];
};

/* Record a message on @img and return @err (a -errno), so drivers can write
 * `return bf_err(img, -EIO, "...", ...)`. */
int bf_err(struct bf_image *img, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prefix the current message of @from with @prefix and store it on @to. */
int bf_err_from(struct bf_image *to, struct bf_image *from, int err, const char *prefix);

struct bf_image *bf_image_alloc(const char *filename);
void bf_image_ref(struct bf_image *img);

/* Open the backing image @name (as recorded in @img) with format @fmt (NULL
 * to probe), resolving a relative name against @img's directory, checking
 * chain depth and loops.  Sets img->backing.  Does nothing with
 * BF_OPEN_NO_BACKING. */
int bf_open_backing(struct bf_image *img, const char *name, const char *fmt);

/* Resolve @name relative to the directory of @base (unless absolute).
 * Caller frees. NULL on ENOMEM. */
char *bf_path_relative_to(const char *base, const char *name);

/* ------------------------------------------------------------------ cache */

/* A bounded LRU of fixed-size blocks keyed by a 64-bit key, shared by
 * threads.  A hit pins the block so it can be used outside the lock.
 * Thread model: all calls may be concurrent. */
struct bf_cache_ent;
typedef int (*bf_cache_load_fn)(void *ctx, uint64_t key, void *buf);

struct bf_cache *bf_cache_new(size_t block_size, size_t max_bytes);
void bf_cache_free(struct bf_cache *c);
size_t bf_cache_block_size(const struct bf_cache *c);
/* Get the block for @key, calling @load (outside the cache lock) on a miss.
 * On success *@data points at block_size bytes valid until bf_cache_put(). */
int bf_cache_get(struct bf_cache *c, uint64_t key, bf_cache_load_fn load, void *ctx,
                 const void **data, struct bf_cache_ent **ent);
void bf_cache_put(struct bf_cache *c, struct bf_cache_ent *ent);
/* Forget @key (after the block on disk changed). */
void bf_cache_drop(struct bf_cache *c, uint64_t key);

/* ------------------------------------------------------------------ codec */

/* Decompress one unit: @out must be filled exactly (@outlen bytes); trailing
 * input after the end of the compressed stream is ignored.  0 or -EIO. */
int bf_decompress(enum bf_codec codec, const void *in, size_t inlen, void *out, size_t outlen);
const char *bf_codec_name(enum bf_codec codec);

/* ------------------------------------------------------- integer helpers */

static inline uint16_t bf_be16(const void *p)
{ const uint8_t *b = p; return (uint16_t)(b[0] << 8 | b[1]); }
static inline uint32_t bf_be32(const void *p)
{ const uint8_t *b = p; return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3]; }
static inline uint64_t bf_be64(const void *p)
{ return (uint64_t)bf_be32(p) << 32 | bf_be32((const uint8_t *)p + 4); }
static inline uint16_t bf_le16(const void *p)
{ const uint8_t *b = p; return (uint16_t)(b[1] << 8 | b[0]); }
static inline uint32_t bf_le32(const void *p)
{ const uint8_t *b = p; return (uint32_t)b[3] << 24 | (uint32_t)b[2] << 16 | (uint32_t)b[1] << 8 | b[0]; }
static inline uint64_t bf_le64(const void *p)
{ return (uint64_t)bf_le32((const uint8_t *)p + 4) << 32 | bf_le32(p); }
static inline void bf_put_le32(void *p, uint32_t v)
{ uint8_t *b = p; b[0] = (uint8_t)v; b[1] = (uint8_t)(v >> 8); b[2] = (uint8_t)(v >> 16); b[3] = (uint8_t)(v >> 24); }

/* a + b without wrapping: false on overflow */
static inline bool bf_add_ok(uint64_t a, uint64_t b, uint64_t *sum)
{ return !__builtin_add_overflow(a, b, sum); }

static inline uint64_t bf_min64(uint64_t a, uint64_t b) { return a < b ? a : b; }

/* Is [off, off+len) inside [0, limit)?  Overflow-safe. */
static inline bool bf_range_within(uint64_t off, uint64_t len, uint64_t limit)
{ return off <= limit && len <= limit - off; }

#endif
