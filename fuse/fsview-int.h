/* fsview-int.h — what the fsview*.c files share: the view's state, the
 * cached tree of nodes, and the helpers that talk to libtsk.  Not for use
 * outside fsview*.c.
 *
 * Thread model: FUSE calls fsview from many threads.  Two locks:
 *  - fs->tsk serialises every libtsk call on fs->tf / fs->ti (libtsk keeps
 *    per-file-system caches that are not safe for concurrent use); it is
 *    held for one directory listing, one file open or one read at a time.
 *  - fs->cache (a rwlock) guards the mutable parts of the node tree: a
 *    directory's children (kids, byname, nkids, loaded) and a symlink's
 *    cached target.  Everything else in a node (name, st, parent) is fixed
 *    before the node becomes reachable, and nodes are freed only by
 *    fsview_close, so a node pointer found under the lock stays valid.
 * Lock order: never take fs->tsk while holding fs->cache.
 */
#ifndef VDISK_FSVIEW_INT_H
#define VDISK_FSVIEW_INT_H

#include "fsview.h"

#include <pthread.h>
#include <stdbool.h>
#include <tsk/libtsk.h>

#define FSV_NAME_MAX 1023        /* bytes in one name (the kernel's FUSE allows 1024) */
#define FSV_LINK_MAX 4095        /* bytes in a symlink target */

enum fsv_kind { FSV_EXT, FSV_FAT, FSV_EXFAT, FSV_NTFS, FSV_HFS, FSV_ISO, FSV_OTHER };

struct fsv_node {
    struct stat st;              /* st_ino: the file system's metadata address */
    struct fsv_node *parent;     /* NULL for the root */
    char *link;                  /* symlink target once known (cache lock) */
    struct fsv_node **kids;      /* directory entries in listing order (cache lock) */
    struct fsv_node **byname;    /* the same, sorted by name for lookups */
    size_t nkids;
    bool loaded;                 /* kids/byname are valid */
    char name[];                 /* "" for the root */
};

struct fsv_ext_geo {              /* ext2/3/4: where inodes are (fsview-ext.c) */
    bool ok;
    uint32_t bsize, ipg, isize, dsize;
    uint64_t gdt;                /* block of the group descriptor table */
};

/* Where a stretch of a file's data lies: bytes [off, off+len) of the file
 * are at byte @img_off of the view's image, or read as zero (@sparse). */
struct fsv_run {
    uint64_t off, len, img_off;
    bool sparse;
};

struct fsv_handle {
    TSK_FS_FILE *file;           /* NULL: slot free */
    const TSK_FS_ATTR *attr;     /* the data stream read, NULL for an empty file */
    int64_t size;                /* bytes readable from attr */
    /* The data stream's runs, when they say everything about it (plain
     * blocks and holes: no compression, encryption, resident data or
     * uninitialised tail); reads then go to the image without libtsk and
     * without its lock.  NULL: every read goes through libtsk. */
    struct fsv_run *runs;
    size_t nruns;
};

struct fsview {
    struct bf_image *img;
    TSK_IMG_INFO *ti;
    TSK_FS_INFO *tf;
    enum fsv_kind kind;
    char type[16];               /* "ext4", "fat32", ... */
    uid_t uid;                   /* owner shown on file systems without owners */
    gid_t gid;
    pthread_mutex_t tsk;
    pthread_rwlock_t cache;
    struct fsv_node *root;
    struct fsv_ext_geo ext;

    pthread_mutex_t hlock;       /* the handle table */
    struct fsv_handle *h;
    size_t nh;
};

/* fsview-tsk.c: libtsk over the image library. */
TSK_IMG_INFO *fsv_tsk_image(struct bf_image *img);
/* Last libtsk error of this thread as one line (never NULL). */
const char *fsv_tsk_error(char *buf, size_t len);
void fsv_set_type(struct fsview *fs);
/* Fill @st from @m (and the name's type @nt when the metadata has none).
 * Returns false for entries that are not shown (virtual, unknown types). */
bool fsv_meta_stat(const struct fsview *fs, const TSK_FS_META *m, TSK_FS_NAME_TYPE_ENUM nt,
                   struct stat *st);
/* Is the entry @name (metadata address @addr) in directory @dir one that
 * libtsk or the file system's own bookkeeping adds, not a user file? */
bool fsv_hidden(const struct fsview *fs, const struct fsv_node *dir, const char *name,
                TSK_INUM_T addr);
/* The data stream of a regular file: NTFS's unnamed $DATA, else the file
 * system's default; NULL when the file has none. (tsk lock held) */
const TSK_FS_ATTR *fsv_data_attr(const struct fsview *fs, TSK_FS_FILE *f);

/* fsview-ext.c: ext2/3/4 times as Linux decodes them. */
void fsv_ext_init(struct fsview *fs);
void fsv_ext_times(const struct fsview *fs, struct stat *st);

/* fsview.c: the node tree. */
int fsv_lookup(struct fsview *fs, const char *path, struct fsv_node **out);

/* fsview-file.c: handles, reads, link targets. */
/* Symlink target of @n read from the image (tsk lock taken inside);
 * caller frees *out. */
int fsv_read_link(struct fsview *fs, const struct fsv_node *n, char **out);
void fsv_handles_free(struct fsview *fs);

#endif
