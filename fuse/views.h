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
/* The max_read mount option under which a read-only disk view answers reads
 * by splicing from the image file (0: not possible here). */
size_t diskview_splice_max_read(void);

extern const struct fuse_operations fstree_ops;
/* File systems named by o->fs[] (or all with o->all) on @disk. */
void *fstree_build(struct bf_image *disk, const struct vm_options *o,
                   const struct view_owner *owner, char *err, size_t errlen);
void fstree_free(void *v);

#endif
