/* views.h — the two kinds of tree vdisk-mount can show through FUSE: the
 * disk view (diskview.c) and file systems (fstree.c over fsview.c), plus the
 * little they share.
 *
 * Thread model: see vdisk-mount.h; views are built before the FUSE loop.
 */
#ifndef VDISK_VIEWS_H
#define VDISK_VIEWS_H

#define FUSE_USE_VERSION 35
#include <fuse.h>

#include "vdisk-mount.h"

#include <sys/stat.h>
#include <time.h>

/* Owner and times given to synthetic entries (directories we make up, the
 * disk view's files): the mounting user, and the image file's times. */
struct view_owner {
    uid_t uid;
    gid_t gid;
    struct timespec atime, mtime, ctime;
};
void view_owner_init(struct view_owner *o, const char *image);
void view_owner_stat(const struct view_owner *o, struct stat *st);

/* Report a library failure (to stderr when running in the foreground) and
 * return it, for FUSE. */
int view_error(struct bf_image *img, int r);
extern bool view_verbose;

extern const struct fuse_operations diskview_ops;
void *diskview_build(struct bf_image *disk, bool writable, const struct view_owner *owner,
                     char *err, size_t errlen);
void diskview_free(void *v);

/* readbuf.c: read replies that splice file ranges (read-only views).
 * The max_read mount option under which a view can answer reads by
 * splicing from the image file (0: not possible here). */
size_t view_splice_max_read(void);
/* From a view's init(): ask for spliced replies if this mount allows them. */
bool view_splice_init(struct fuse_conn_info *conn);
/* Where bytes of the file at @off lie (see bf_locate; loc->len 0 at the
 * end of the file), and a read of them into memory (bytes read, fewer only
 * at the end of the file, or -errno). */
typedef int (*view_locate_fn)(void *ctx, uint64_t off, uint64_t len, struct bf_location *loc);
typedef int (*view_pread_fn)(void *ctx, void *buf, size_t len, uint64_t off);
/* A read_buf answer of @size bytes at @off: file ranges as descriptors when
 * @splice, the rest read into memory. */
int view_read_buf(struct fuse_bufvec **bufp, size_t size, uint64_t off, bool splice,
                  view_locate_fn locate, view_pread_fn pread_fn, void *ctx);

extern const struct fuse_operations fstree_ops;
/* File systems named by o->fs[] (or all with o->all) on @disk. */
void *fstree_build(struct bf_image *disk, const struct vm_options *o,
                   const struct view_owner *owner, char *err, size_t errlen);
void fstree_free(void *v);

#endif
