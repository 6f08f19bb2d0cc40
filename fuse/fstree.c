/* fstree.c — the filesystem view: one or more file systems (fsview.c) placed
 * at directories inside the mount point, as guestmount's `-m DEV:DIR` does.
 * A path belongs to the file system mounted at its longest matching
 * directory; directories that lead to a mount but exist in no file system
 * are made up.  With several file systems, inode numbers carry the file
 * system's index in their low bits so that no two files look like hard
 * links of each other.
 *
 * Thread model: the mount table is fixed before the FUSE loop; every call
 * goes to a thread-safe fsview.
 */
#include "views.h"
#include "fsview.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FH_SHIFT 8               /* file handle: fsview handle << 8 | mount index */

struct fst_mount {
    char *dir;                   /* "/" or "/boot" (no trailing slash) */
    size_t dirlen;
    struct bf_image *img;        /* slice, owned (or the disk, not owned) */
    struct fsview *fs;
};

struct fstree {
    struct bf_image *disk;
    struct fst_mount *m;
    size_t n;
    struct view_owner owner;
    bool splice;                 /* read replies may name file ranges (ft_init) */
};

static struct fstree *ft(void)
{
    return fuse_get_context()->private_data;
}

/* Does mount directory @dir (length @dl) contain @path? */
static bool covers(const char *dir, size_t dl, const char *path)
{
    if (dl == 1)
        return true;                              /* "/" covers everything */
    return !strncmp(path, dir, dl) && (path[dl] == 0 || path[dl] == '/');
}

/* The mount owning @path, and the path inside it. */
static struct fst_mount *resolve(const char *path, const char **rel, size_t *idx)
{
    struct fstree *t = ft();
    struct fst_mount *best = NULL;
    for (size_t i = 0; i < t->n; i++)
        if (covers(t->m[i].dir, t->m[i].dirlen, path) &&
            (!best || t->m[i].dirlen > best->dirlen)) {
            best = &t->m[i];
            *idx = i;
        }
    if (best) {
        *rel = best->dirlen == 1 ? path : path + best->dirlen;
        if (!**rel)
            *rel = "/";
    }
    return best;
}

/* Is @path a directory on the way to some mount directory? */
static bool leads_to_mount(const char *path)
{
    struct fstree *t = ft();
    size_t pl = strlen(path);
    for (size_t i = 0; i < t->n; i++) {
        const char *d = t->m[i].dir;
        if (pl == 1 ? d[1] != 0 : !strncmp(d, path, pl) && d[pl] == '/')
            return true;
    }
    return false;
}

/* A made-up directory.  Its inode number (the kernel shows ours: use_ino)
 * comes from its path, in a range file systems do not use, so that no two
 * look alike to find(1)'s loop detection. */
static void synth_dir(struct stat *st, const char *path)
{
    uint64_t h = 1469598103934665603ull;          /* FNV-1a */
    for (const char *p = path; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    memset(st, 0, sizeof *st);
    view_owner_stat(&ft()->owner, st);
    st->st_mode = S_IFDIR | 0555;
    st->st_nlink = 2;
    st->st_ino = (ino_t)(h | 1ull << 63);
}

static void fix_ino(struct stat *st, size_t idx)
{
    if (ft()->n > 1)
        st->st_ino = (st->st_ino << 6) | (ino_t)idx;
}

static int ft_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    (void)fi;
    const char *rel;
    size_t idx;
    struct fst_mount *m = resolve(path, &rel, &idx);
    if (m) {
        int r = fsview_getattr(m->fs, rel, st);
        if (r == 0) {
            fix_ino(st, idx);
            return 0;
        }
        if (r != -ENOENT || !leads_to_mount(path))
            return r;
    } else if (!leads_to_mount(path)) {
        return -ENOENT;
    }
    synth_dir(st, path);
    return 0;
}

/* One listing (or the part of it after @off): entries are numbered in the
 * order they are produced (".", "..", the file system's, then mount points
 * it lacks), and each is handed to libfuse with the number of the next, so a
 * listing too big for one reply resumes where it stopped.  libfuse uses
 * READDIRPLUS attributes only from such a listing; with them `ls -l` of a
 * big directory costs one listing instead of a LOOKUP per name. */
struct fill_ctx {
    void *buf;
    fuse_fill_dir_t fill;
    size_t idx;                  /* mount index, for fix_ino */
    const char *path;            /* the directory being listed */
    bool plus;                   /* the kernel asked for attributes too */
    off_t off, pos;              /* resume after entry @off; entries produced */
    bool full;                   /* libfuse's reply buffer is full */
};

/* Pass one entry on unless it was sent before; non-zero once full.  @st may
 * be NULL (no attributes: the kernel looks the name up when it needs them). */
static int emit(struct fill_ctx *f, const char *name, const struct stat *st, bool plus)
{
    if (++f->pos <= f->off)
        return 0;
    if (f->fill(f->buf, name, st, f->pos, plus && st ? FUSE_FILL_DIR_PLUS : 0)) {
        f->full = true;
        return 1;
    }
    return 0;
}

/* Is @name in directory @dir itself a mount directory?  Its attributes are
 * then the mounted file system's root, not what the listing shows. */
static bool is_mount_dir(const char *dir, const char *name)
{
    struct fstree *t = ft();
    size_t dl = strlen(dir) == 1 ? 0 : strlen(dir);
    for (size_t i = 0; i < t->n; i++) {
        const char *d = t->m[i].dir;
        if (t->m[i].dirlen > dl && !strncmp(d, dir, dl) && d[dl] == '/' &&
            !strcmp(d + dl + 1, name))
            return true;
    }
    return false;
}

static int fill_one(void *ctx, const char *name, const struct stat *st)
{
    struct fill_ctx *f = ctx;
    if (f->pos < f->off) {       /* sent before: skip without copying */
        f->pos++;
        return 0;
    }
    struct stat s = *st;
    fix_ino(&s, f->idx);
    return emit(f, name, &s, f->plus && (ft()->n == 1 || !is_mount_dir(f->path, name)));
}

/* Add the next path component of every mount directory below @path that
 * the listing did not show (a mount point missing from its parent fs). */
static void add_mount_points(const char *path, struct fst_mount *owner, const char *rel,
                             struct fill_ctx *f)
{
    struct fstree *t = ft();
    size_t pl = strlen(path);
    for (size_t i = 0; i < t->n && !f->full; i++) {
        const char *d = t->m[i].dir;
        const char *rest;
        if (pl == 1)
            rest = d + 1;
        else if (!strncmp(d, path, pl) && d[pl] == '/')
            rest = d + pl + 1;
        else
            continue;
        if (!*rest)
            continue;
        char name[256];
        size_t nl = strcspn(rest, "/");
        if (nl >= sizeof name)
            continue;
        memcpy(name, rest, nl);
        name[nl] = 0;
        /* already listed by the file system, or by an earlier mount? */
        if (owner) {
            char sub[4096];
            struct stat st;
            snprintf(sub, sizeof sub, "%s%s%s", rel, rel[1] ? "/" : "", name);
            if (fsview_getattr(owner->fs, sub, &st) == 0)
                continue;
        }
        bool dup = false;
        for (size_t j = 0; j < i; j++) {
            const char *dj = t->m[j].dir;
            const char *rj = pl == 1 ? dj + 1 : (!strncmp(dj, path, pl) && dj[pl] == '/')
                                                    ? dj + pl + 1 : NULL;
            if (rj && !strncmp(rj, name, nl) && (rj[nl] == 0 || rj[nl] == '/'))
                dup = true;
        }
        if (!dup)
            emit(f, name, NULL, false);
    }
}

static int ft_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    (void)fi;
    const char *rel;
    size_t idx = 0;
    struct fst_mount *m = resolve(path, &rel, &idx);
    struct fill_ctx f = { .buf = buf, .fill = fill, .idx = idx, .path = path,
                          .plus = (flags & FUSE_READDIR_PLUS) != 0, .off = off };
    if (emit(&f, ".", NULL, false) || emit(&f, "..", NULL, false))
        return 0;
    if (m) {
        int r = fsview_readdir(m->fs, rel, fill_one, &f);
        if (r < 0 && !(r == -ENOENT && leads_to_mount(path)))
            return r;
    } else if (!leads_to_mount(path)) {
        return -ENOENT;
    }
    if (!f.full)
        add_mount_points(path, m, m ? rel : NULL, &f);
    return 0;
}

static int ft_readlink(const char *path, char *buf, size_t len)
{
    const char *rel;
    size_t idx;
    struct fst_mount *m = resolve(path, &rel, &idx);
    return m ? fsview_readlink(m->fs, rel, buf, len) : -EINVAL;
}

static int ft_open(const char *path, struct fuse_file_info *fi)
{
    if ((fi->flags & O_ACCMODE) != O_RDONLY)
        return -EROFS;
    const char *rel;
    size_t idx;
    struct fst_mount *m = resolve(path, &rel, &idx);
    if (!m)
        return leads_to_mount(path) ? -EISDIR : -ENOENT;
    uint64_t fh;
    int r = fsview_open_file(m->fs, rel, &fh);
    if (r < 0)
        return r;
    fi->fh = fh << FH_SHIFT | idx;
    fi->keep_cache = 1;           /* the image does not change under us */
    return 0;
}

/* A read: the file's plain blocks go out spliced from the image file
 * (readbuf.c); the rest is read by fsview. */
struct ft_file {
    struct fsview *fs;
    uint64_t fh;
};

static int ft_locate(void *ctx, uint64_t off, uint64_t len, struct bf_location *loc)
{
    const struct ft_file *f = ctx;
    return fsview_locate(f->fs, f->fh, off, len, loc);
}

static int ft_pread(void *ctx, void *buf, size_t len, uint64_t off)
{
    const struct ft_file *f = ctx;
    return fsview_read(f->fs, f->fh, buf, len, (off_t)off);
}

static int ft_read_buf(const char *path, struct fuse_bufvec **bufp, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    (void)path;
    if (off < 0)
        return -EINVAL;
    struct fstree *t = ft();
    struct ft_file f = { t->m[fi->fh & ((1u << FH_SHIFT) - 1)].fs, fi->fh >> FH_SHIFT };
    return view_read_buf(bufp, size, (uint64_t)off, t->splice, ft_locate, ft_pread, &f);
}

static int ft_release(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    struct fst_mount *m = &ft()->m[fi->fh & ((1u << FH_SHIFT) - 1)];
    fsview_release(m->fs, fi->fh >> FH_SHIFT);
    return 0;
}

static int ft_statfs(const char *path, struct statvfs *st)
{
    const char *rel;
    size_t idx;
    struct fst_mount *m = resolve(path, &rel, &idx);
    if (!m) {
        memset(st, 0, sizeof *st);
        st->f_bsize = st->f_frsize = 4096;
        st->f_namemax = 255;
        return 0;
    }
    return fsview_statfs(m->fs, st);
}

/* The file systems' own inode numbers (so hard links show as such), and
 * long kernel caching: nothing under a read-only view ever changes. */
static void *ft_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    cfg->use_ino = 1;
    cfg->readdir_ino = 1;
    cfg->entry_timeout = cfg->attr_timeout = cfg->negative_timeout = 3600;
    struct fstree *t = ft();
    t->splice = view_splice_init(conn);
    return t;
}

const struct fuse_operations fstree_ops = {
    .init = ft_init,
    .getattr = ft_getattr,
    .readdir = ft_readdir,
    .readlink = ft_readlink,
    .open = ft_open,
    .read_buf = ft_read_buf,
    .release = ft_release,
    .statfs = ft_statfs,
};

/* ---------------------------------------------------------------- build */

/* Normalise a mount directory: absolute, no trailing or double slashes. */
static char *norm_dir(const char *d)
{
    char *out = malloc(strlen(d) + 2);
    if (!out)
        return NULL;
    size_t n = 0;
    out[n++] = '/';
    for (const char *p = d; *p; p++)
        if (*p != '/' || (n > 0 && out[n - 1] != '/'))
            out[n++] = *p;
    if (n > 1 && out[n - 1] == '/')
        n--;
    out[n] = 0;
    return out;
}

static int add_mount(struct fstree *t, const char *dir, struct bf_image *img, const char *what,
                     char *err, size_t errlen)
{
    char *d = norm_dir(dir);
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < t->n; i++)
        if (!strcmp(t->m[i].dir, d)) {
            snprintf(err, errlen, "two file systems at %s", d);
            free(d);
            return -1;
        }
    struct fsview *fs;
    char msg[512];
    if (fsview_open(img, &fs, msg, sizeof msg) < 0) {
        snprintf(err, errlen, "%s: %s", what, msg);
        free(d);
        return -1;
    }
    struct fst_mount *n = realloc(t->m, (t->n + 1) * sizeof *n);
    if (!n) {
        fsview_close(fs);
        free(d);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    t->m = n;
    n[t->n++] = (struct fst_mount){ d, strlen(d), img, fs };
    return 0;
}

/* A slice for partition @num of the disk (0: the whole disk). */
static struct bf_image *part_image(struct fstree *t, const struct bf_ptable *pt, int num,
                                   char *err, size_t errlen)
{
    if (num == 0)
        return t->disk;
    for (size_t i = 0; pt && i < pt->n; i++) {
        const struct bf_partition *p = &pt->parts[i];
        if (p->number != (unsigned)num || (p->flags & BF_PART_EXTENDED))
            continue;
        struct bf_image *s;
        if (bf_open_slice(t->disk, p->start, p->length, &s) < 0) {
            snprintf(err, errlen, "partition %d: %s", num, bf_errmsg(s));
            bf_close(s);
            return NULL;
        }
        return s;
    }
    snprintf(err, errlen, "there is no partition %d%s", num,
             pt && (pt->kind == BF_PTABLE_NONE || pt->n == 0)
                 ? " (the disk has no partition table; use -m disk)" : "");
    return NULL;
}

void *fstree_build(struct bf_image *disk, const struct vm_options *o,
                   const struct view_owner *owner, char *err, size_t errlen)
{
    struct fstree *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    t->disk = disk;
    t->owner = *owner;
    struct bf_ptable *pt = NULL;
    if (bf_ptable_read(disk, 0, &pt) < 0) {
        snprintf(err, errlen, "%s", bf_errmsg(disk));
        goto fail;
    }
    if (o->all) {
        char what[32], dir[32];
        if (pt->kind == BF_PTABLE_NONE || pt->n == 0) {
            if (add_mount(t, "/", disk, "the disk", err, errlen) < 0)
                goto fail;
        }
        for (size_t i = 0; i < pt->n; i++) {
            const struct bf_partition *p = &pt->parts[i];
            if (p->flags & BF_PART_EXTENDED)
                continue;
            struct bf_image *s = part_image(t, pt, (int)p->number, err, errlen);
            if (!s)
                goto fail;
            snprintf(what, sizeof what, "p%u", p->number);
            snprintf(dir, sizeof dir, "/p%u", p->number);
            char msg[512];
            if (add_mount(t, dir, s, what, msg, sizeof msg) < 0) {
                if (view_verbose)
                    fprintf(stderr, "vdisk-mount: skipping %s\n", msg);
                bf_close(s);
            }
        }
        if (t->n == 0) {
            snprintf(err, errlen, "no file system was recognised on the image");
            goto fail;
        }
    }
    for (unsigned i = 0; i < o->nfs; i++) {
        int num = vm_parse_part(o->fs[i].part);
        if (num < 0) {
            snprintf(err, errlen, "'%s' names no partition (use p1, 1 or /dev/sda1; "
                     "disk for a disk without partitions)", o->fs[i].part);
            goto fail;
        }
        struct bf_image *s = part_image(t, pt, num, err, errlen);
        if (!s)
            goto fail;
        if (add_mount(t, o->fs[i].dir ? o->fs[i].dir : "/", s, o->fs[i].part, err,
                      errlen) < 0) {
            if (s != disk)
                bf_close(s);
            goto fail;
        }
    }
    free(pt);
    return t;
fail:
    free(pt);
    fstree_free(t);
    return NULL;
}

void fstree_free(void *p)
{
    struct fstree *t = p;
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++) {
        fsview_close(t->m[i].fs);
        if (t->m[i].img != t->disk)
            bf_close(t->m[i].img);
        free(t->m[i].dir);
    }
    free(t->m);
    free(t);
}
