/* fsview.h — the files inside one file system on a partition (or a whole
 * disk), read through the image library by The Sleuth Kit.  Read-only, no
 * kernel file system, no journal replay: the bytes on the image are what is
 * shown.
 *
 * Paths are absolute within the file system ("/", "/etc/passwd").  Every
 * function returns 0 (or a byte count) on success and -errno on failure.
 *
 * Thread model: all functions may be called from many threads at once on
 * one fsview (FUSE's multi-threaded loop); the implementation serialises
 * what libtsk needs serialised.
 */
#ifndef VDISK_FSVIEW_H
#define VDISK_FSVIEW_H

#include "blockfmt.h"

#include <stdint.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

struct fsview;

/* Recognise and open the file system on @img (the view keeps using @img,
 * which must outlive it).  On failure writes a message into @err. */
int fsview_open(struct bf_image *img, struct fsview **out, char *err, size_t errlen);
void fsview_close(struct fsview *fs);

/* Short type name: "ext4", "fat32", "ntfs", "exfat", "hfs+", "iso9660"... */
const char *fsview_type(const struct fsview *fs);

int fsview_getattr(struct fsview *fs, const char *path, struct stat *st);

/* Calls @fill for every entry of the directory (not "." and ".."); stops
 * early when @fill returns non-zero. */
typedef int (*fsview_fill_fn)(void *ctx, const char *name, const struct stat *st);
int fsview_readdir(struct fsview *fs, const char *path, fsview_fill_fn fill, void *ctx);

/* Link target into @buf (NUL-terminated, truncated to @len). */
int fsview_readlink(struct fsview *fs, const char *path, char *buf, size_t len);

/* Open a regular file for reading; *fh identifies it to fsview_read. */
int fsview_open_file(struct fsview *fs, const char *path, uint64_t *fh);
/* Bytes read (0 at end of file) or -errno; sparse regions read as zero. */
int fsview_read(struct fsview *fs, uint64_t fh, char *buf, size_t size, off_t off);
/* Where bytes [@off, @off+@len) of an open file start: as bf_locate() on
 * the image (loc->fd >= 0: that many bytes lie as they are in a local file),
 * or loc->fd = -1 for a stretch to read with fsview_read (a hole, data
 * libtsk must decode); loc->len is 0 at or past the end of the file. */
int fsview_locate(struct fsview *fs, uint64_t fh, uint64_t off, uint64_t len,
                  struct bf_location *loc);
void fsview_release(struct fsview *fs, uint64_t fh);

int fsview_statfs(struct fsview *fs, struct statvfs *st);

#endif
