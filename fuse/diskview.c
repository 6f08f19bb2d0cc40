/* diskview.c — the disk view: a directory holding `disk` (the whole virtual
 * disk) and `p1`, `p2`, ... (each partition, exact size, Linux numbering) as
 * regular files that read and, with --rw or -s, write through the image
 * library.  The files can be loop-mounted by root.
 *
 * Thread model: the file table is fixed before the FUSE loop starts; reads
 * and writes go straight to the thread-safe image library.
 */
#include "views.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct dv_file {
    char name[16];
    struct bf_image *img;        /* the disk, or a slice of it (owned) */
};

struct diskview {
    struct bf_image *disk;
    struct dv_file *files;
    size_t n;
    bool writable;
    bool splice;                 /* read replies may name file ranges (dv_init) */
    struct view_owner owner;
};

static struct diskview *dv(void)
{
    return fuse_get_context()->private_data;
}

static const struct dv_file *find(const char *path)
{
    struct diskview *v = dv();
    if (path[0] != '/')
        return NULL;
    for (size_t i = 0; i < v->n; i++)
        if (!strcmp(path + 1, v->files[i].name))
            return &v->files[i];
    return NULL;
}

static int dv_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    (void)fi;
    struct diskview *v = dv();
    memset(st, 0, sizeof *st);
    view_owner_stat(&v->owner, st);
    if (!strcmp(path, "/")) {
        st->st_mode = S_IFDIR | (v->writable ? 0755 : 0555);
        st->st_nlink = 2;
        st->st_ino = 1;
        return 0;
    }
    const struct dv_file *f = find(path);
    if (!f)
        return -ENOENT;
    st->st_mode = S_IFREG | (v->writable ? 0644 : 0444);
    st->st_nlink = 1;
    st->st_ino = 2 + (ino_t)(f - v->files);
    st->st_size = (off_t)bf_size(f->img);
    st->st_blksize = 4096;
    st->st_blocks = (st->st_size + 511) / 512;
    return 0;
}

static int dv_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    (void)off;
    (void)fi;
    (void)flags;
    struct diskview *v = dv();
    if (strcmp(path, "/") != 0)
        return find(path) ? -ENOTDIR : -ENOENT;
    fill(buf, ".", NULL, 0, 0);
    fill(buf, "..", NULL, 0, 0);
    for (size_t i = 0; i < v->n; i++)
        fill(buf, v->files[i].name, NULL, 0, 0);
    return 0;
}

static int dv_open(const char *path, struct fuse_file_info *fi)
{
    const struct dv_file *f = find(path);
    if (!f)
        return -ENOENT;
    if ((fi->flags & O_ACCMODE) != O_RDONLY && !dv()->writable)
        return -EROFS;
    fi->fh = (uint64_t)(f - dv()->files);
    fi->keep_cache = 1;
    return 0;
}

/* Reads of a read-only view answer with the image file's own descriptor and
 * offset wherever the image stores the bytes as they are (raw, uncompressed
 * qcow2 clusters, flat and sparse vmdk extents): see readbuf.c.  Everything
 * else (zeros, compressed clusters, remote images) is read into memory.  A
 * writable view never does this: a cluster named here could be freed and
 * reused by a write before the kernel takes the bytes. */
static int dv_locate(void *ctx, uint64_t off, uint64_t len, struct bf_location *loc)
{
    int r = bf_locate(ctx, off, len, loc);
    return r < 0 ? view_error(ctx, r) : 0;
}

static int dv_pread(void *ctx, void *buf, size_t len, uint64_t off)
{
    int r = bf_pread(ctx, buf, len, off);
    return r < 0 ? view_error(ctx, r) : (int)len;
}

static int dv_read_buf(const char *path, struct fuse_bufvec **bufp, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    (void)path;
    struct diskview *v = dv();
    struct bf_image *img = v->files[fi->fh].img;
    uint64_t end = bf_size(img);
    if (off < 0)
        return -EINVAL;
    if ((uint64_t)off >= end)
        size = 0;
    else if (size > end - (uint64_t)off)
        size = (size_t)(end - (uint64_t)off);
    return view_read_buf(bufp, size, (uint64_t)off, v->splice, dv_locate, dv_pread, img);
}

static int dv_write(const char *path, const char *buf, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    (void)path;
    struct bf_image *img = dv()->files[fi->fh].img;
    uint64_t end = bf_size(img);
    if (off < 0)
        return -EINVAL;
    if ((uint64_t)off >= end || size > end - (uint64_t)off)
        return -ENOSPC;              /* a disk does not grow */
    int r = bf_pwrite(img, buf, size, (uint64_t)off);
    return r < 0 ? view_error(img, r) : (int)size;
}

static int dv_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
    (void)path;
    (void)datasync;
    struct bf_image *img = dv()->files[fi->fh].img;
    int r = bf_flush(img);
    return r < 0 ? view_error(img, r) : 0;
}

static int dv_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
    (void)fi;
    const struct dv_file *f = find(path);
    if (!f)
        return -ENOENT;
    if (!dv()->writable)
        return -EROFS;
    /* O_TRUNC on an existing disk file, or a no-op resize, is harmless */
    return size == (off_t)bf_size(f->img) ? 0 : -EPERM;
}

static int dv_fallocate(const char *path, int mode, off_t off, off_t len,
                        struct fuse_file_info *fi)
{
    (void)path;
    struct bf_image *img = dv()->files[fi->fh].img;
    if (!dv()->writable)
        return -EROFS;
    if (off < 0 || len <= 0 || (uint64_t)off > bf_size(img) ||
        (uint64_t)len > bf_size(img) - (uint64_t)off)
        return -EINVAL;
    int r;
    if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE))
        r = bf_zero(img, (uint64_t)off, (uint64_t)len, BF_ZERO_MAY_UNMAP);
    else if (mode == FALLOC_FL_ZERO_RANGE || mode == (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE))
        r = bf_zero(img, (uint64_t)off, (uint64_t)len, 0);
    else
        return -EOPNOTSUPP;
    return r < 0 ? view_error(img, r) : 0;
}

static int dv_statfs(const char *path, struct statvfs *st)
{
    (void)path;
    struct diskview *v = dv();
    memset(st, 0, sizeof *st);
    st->f_bsize = st->f_frsize = 4096;
    st->f_blocks = (bf_size(v->disk) + 4095) / 4096;
    st->f_files = v->n + 1;
    st->f_namemax = 255;
    return 0;
}

static void *dv_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    (void)cfg;
    struct diskview *v = dv();
    v->splice = !v->writable && view_splice_init(conn);
    return v;
}

const struct fuse_operations diskview_ops = {
    .init = dv_init,
    .getattr = dv_getattr,
    .readdir = dv_readdir,
    .open = dv_open,
    .read_buf = dv_read_buf,
    .write = dv_write,
    .fsync = dv_fsync,
    .truncate = dv_truncate,
    .fallocate = dv_fallocate,
    .statfs = dv_statfs,
};

static int add_file(struct diskview *v, const char *name, struct bf_image *img)
{
    struct dv_file *n = realloc(v->files, (v->n + 1) * sizeof *n);
    if (!n)
        return -ENOMEM;
    v->files = n;
    snprintf(n[v->n].name, sizeof n[v->n].name, "%s", name);
    n[v->n].img = img;
    v->n++;
    return 0;
}

void *diskview_build(struct bf_image *disk, bool writable, const struct view_owner *owner,
                     char *err, size_t errlen)
{
    struct diskview *v = calloc(1, sizeof *v);
    if (!v) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    v->disk = disk;
    v->writable = writable;
    v->owner = *owner;
    if (add_file(v, "disk", disk) < 0)
        goto oom;
    struct bf_ptable *t;
    if (bf_ptable_read(disk, 0, &t) < 0) {
        /* an unreadable table hides no data: the whole disk is still there */
        fprintf(stderr, "vdisk-mount: warning: %s; showing the whole disk only\n",
                bf_errmsg(disk));
        return v;
    }
    for (size_t i = 0; i < t->n; i++) {
        const struct bf_partition *p = &t->parts[i];
        if (p->flags & BF_PART_EXTENDED)
            continue;                 /* a container, not a partition's contents */
        struct bf_image *s;
        char name[16];
        if (bf_open_slice(disk, p->start, p->length, &s) < 0) {
            snprintf(err, errlen, "partition %u: %s", p->number, bf_errmsg(s));
            bf_close(s);
            free(t);
            diskview_free(v);
            return NULL;
        }
        snprintf(name, sizeof name, "p%u", p->number);
        if (add_file(v, name, s) < 0) {
            bf_close(s);
            free(t);
            goto oom;
        }
    }
    free(t);
    return v;
oom:
    snprintf(err, errlen, "out of memory");
    diskview_free(v);
    return NULL;
}

void diskview_free(void *p)
{
    struct diskview *v = p;
    if (!v)
        return;
    for (size_t i = 0; i < v->n; i++)
        if (v->files[i].img != v->disk)
            bf_close(v->files[i].img);
    free(v->files);
    free(v);
}
