/* fsview-file.c — reading files: a handle table of libtsk files opened once
 * per fsview_open_file, reads of their data stream, and symlink targets
 * that libtsk did not hand over with the directory listing.
 *
 * Only regular files open.  Directories give -EISDIR; FIFOs, sockets and
 * device nodes give -ENXIO (there is no device or peer behind them in an
 * image).  In a mount the kernel handles those itself: FUSE mounts are
 * nodev, so opening a device node fails with EACCES before we are asked,
 * and a FIFO opens as a pipe local to the mount.
 *
 * Most files' data is a list of block runs that says all there is to know
 * (plain blocks and holes); for those the runs are copied at open and reads
 * go straight to the image (fsview_read, fsview_locate), in parallel and
 * without libtsk.  The rest (compressed, encrypted, resident, NTFS streams
 * with an uninitialised tail, anything odd) is read through libtsk.
 *
 * Thread model: fs->hlock guards the table; every libtsk call holds fs->tsk.
 * A handle may be read from several threads at once; reads through libtsk
 * are serialised by the tsk lock, reads by runs take no lock (the runs are
 * fixed from open to release, and FUSE releases a file only after its reads).
 */
#include "fsview-int.h"
#include "views.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FSV_MAX_HANDLES (1u << 20)

static int handle_add(struct fsview *fs, const struct fsv_handle *h, uint64_t *fh)
{
    pthread_mutex_lock(&fs->hlock);
    size_t i;
    for (i = 0; i < fs->nh; i++)
        if (!fs->h[i].file)
            break;
    if (i == fs->nh) {
        size_t cap = fs->nh ? fs->nh * 2 : 16;
        struct fsv_handle *t = cap <= FSV_MAX_HANDLES ? realloc(fs->h, cap * sizeof *t) : NULL;
        if (!t) {
            pthread_mutex_unlock(&fs->hlock);
            return -EMFILE;
        }
        memset(t + fs->nh, 0, (cap - fs->nh) * sizeof *t);
        fs->h = t;
        fs->nh = cap;
    }
    fs->h[i] = *h;
    pthread_mutex_unlock(&fs->hlock);
    *fh = i;
    return 0;
}

static int handle_get(struct fsview *fs, uint64_t fh, struct fsv_handle *out)
{
    int r = -EBADF;
    pthread_mutex_lock(&fs->hlock);
    if (fh < fs->nh && fs->h[fh].file) {
        *out = fs->h[fh];
        r = 0;
    }
    pthread_mutex_unlock(&fs->hlock);
    return r;
}

/* Copy @h's data runs into h->runs when they describe the data completely:
 * non-resident, neither compressed nor encrypted, fully initialised, runs
 * that follow each other from offset 0 to the end without filler entries,
 * every block inside the file system and the image.  Anything else leaves
 * h->runs NULL (reads go through libtsk).  Every value here comes from the
 * image: checked, with overflow, before it is used.  (tsk lock held) */
static void copy_runs(struct fsview *fs, struct fsv_handle *h)
{
    const TSK_FS_ATTR *a = h->attr;
    uint64_t bs = fs->tf->block_size, size = (uint64_t)h->size;
    uint64_t img_size = bf_size(fs->img), base = (uint64_t)fs->tf->offset;
    if (!a || size == 0 || bs == 0 || fs->tf->offset < 0 || !(a->flags & TSK_FS_ATTR_NONRES) ||
        (a->flags & (TSK_FS_ATTR_COMP | TSK_FS_ATTR_ENC)) || a->r || a->nrd.skiplen ||
        a->nrd.initsize < a->size)
        return;
    size_t n = 0, cap = 0;
    struct fsv_run *runs = NULL;
    uint64_t covered = 0;
    for (const TSK_FS_ATTR_RUN *rn = a->nrd.run; rn && covered < size; rn = rn->next) {
        if (rn->len == 0)
            continue;                 /* an entry not in use */
        uint64_t off, len, at = 0;
        if ((rn->flags & ~(unsigned)TSK_FS_ATTR_RUN_FLAG_SPARSE) ||
            __builtin_mul_overflow((uint64_t)rn->offset, bs, &off) || off != covered ||
            __builtin_mul_overflow((uint64_t)rn->len, bs, &len))
            goto fail;                /* filler, encrypted, a gap or an overlap */
        bool sparse = rn->flags & TSK_FS_ATTR_RUN_FLAG_SPARSE;
        if (len > size - covered)
            len = size - covered;     /* the last block runs past the end of the file */
        if (!sparse && (rn->addr > fs->tf->last_block ||
                        rn->len - 1 > fs->tf->last_block - rn->addr ||
                        __builtin_mul_overflow((uint64_t)rn->addr, bs, &at) ||
                        __builtin_add_overflow(at, base, &at) || at > img_size ||
                        len > img_size - at))
            goto fail;
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            struct fsv_run *t = realloc(runs, cap * sizeof *t);
            if (!t)
                goto fail;
            runs = t;
        }
        runs[n++] = (struct fsv_run){ covered, len, sparse ? 0 : at, sparse };
        covered += len;
    }
    if (covered < size)
        goto fail;
    h->runs = runs;
    h->nruns = n;
    return;
fail:
    free(runs);
}

/* The run holding byte @off of the file (off < size). */
static const struct fsv_run *run_at(const struct fsv_handle *h, uint64_t off)
{
    size_t lo = 0, hi = h->nruns;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (h->runs[mid].off <= off)
            lo = mid;
        else
            hi = mid;
    }
    return &h->runs[lo];
}

static int read_runs(struct fsview *fs, const struct fsv_handle *h, char *buf, size_t size,
                     uint64_t off)
{
    while (size > 0) {
        const struct fsv_run *rn = run_at(h, off);
        uint64_t in = off - rn->off;
        size_t n = (size_t)(rn->len - in < size ? rn->len - in : size);
        if (rn->sparse) {
            memset(buf, 0, n);
        } else {
            int r = bf_pread(fs->img, buf, n, rn->img_off + in);
            if (r < 0)
                return view_error(fs->img, r);
        }
        buf += n;
        off += n;
        size -= n;
    }
    return 0;
}

int fsview_open_file(struct fsview *fs, const char *path, uint64_t *fh)
{
    struct fsv_node *n;
    int r = fsv_lookup(fs, path, &n);
    if (r < 0)
        return r;
    if (S_ISDIR(n->st.st_mode))
        return -EISDIR;
    if (S_ISLNK(n->st.st_mode))
        return -ELOOP;
    if (!S_ISREG(n->st.st_mode))
        return -ENXIO;
    struct fsv_handle h = { 0 };
    char e[256];
    pthread_mutex_lock(&fs->tsk);
    h.file = tsk_fs_file_open_meta(fs->tf, NULL, (TSK_INUM_T)n->st.st_ino);
    if (h.file) {
        h.attr = fsv_data_attr(fs, h.file);
        h.size = h.attr && h.attr->size > 0 ? h.attr->size : 0;
        copy_runs(fs, &h);
    } else if (view_verbose) {
        fprintf(stderr, "vdisk-mount: %s: %s: %s\n", fs->type, path, fsv_tsk_error(e, sizeof e));
    }
    pthread_mutex_unlock(&fs->tsk);
    if (!h.file)
        return -EIO;
    if (!h.attr && n->st.st_size > 0) {
        if (view_verbose)
            fprintf(stderr, "vdisk-mount: %s: %s: no data stream\n", fs->type, path);
        pthread_mutex_lock(&fs->tsk);
        tsk_fs_file_close(h.file);
        pthread_mutex_unlock(&fs->tsk);
        return -EIO;
    }
    if ((r = handle_add(fs, &h, fh)) < 0) {
        free(h.runs);
        pthread_mutex_lock(&fs->tsk);
        tsk_fs_file_close(h.file);
        pthread_mutex_unlock(&fs->tsk);
    }
    return r;
}

int fsview_read(struct fsview *fs, uint64_t fh, char *buf, size_t size, off_t off)
{
    struct fsv_handle h;
    int r = handle_get(fs, fh, &h);
    if (r < 0)
        return r;
    if (off < 0)
        return -EINVAL;
    if (!h.attr || off >= h.size)
        return 0;
    if (size > INT_MAX)
        size = INT_MAX;
    if ((uint64_t)size > (uint64_t)(h.size - off))
        size = (size_t)(h.size - off);
    if (h.runs) {
        r = read_runs(fs, &h, buf, size, (uint64_t)off);
        return r < 0 ? r : (int)size;
    }
    size_t got = 0;
    char e[256];
    pthread_mutex_lock(&fs->tsk);
    while (got < size) {
        ssize_t n = tsk_fs_attr_read(h.attr, off + (off_t)got, buf + got, size - got,
                                     TSK_FS_FILE_READ_FLAG_NONE);
        if (n <= 0) {
            if (view_verbose)
                fprintf(stderr, "vdisk-mount: %s: inode %llu: read at %lld: %s\n", fs->type,
                        (unsigned long long)h.file->meta->addr, (long long)(off + (off_t)got),
                        n < 0 ? fsv_tsk_error(e, sizeof e) : "no data");
            break;
        }
        got += (size_t)n;
    }
    pthread_mutex_unlock(&fs->tsk);
    if (got < size)
        return -EIO;              /* a short read would look like the end of the file */
    return (int)got;
}

int fsview_locate(struct fsview *fs, uint64_t fh, uint64_t off, uint64_t len,
                  struct bf_location *loc)
{
    struct fsv_handle h;
    int r = handle_get(fs, fh, &h);
    if (r < 0)
        return r;
    *loc = (struct bf_location){ .len = 0, .fd = -1 };
    if (off >= (uint64_t)h.size)
        return 0;                     /* the end of the file */
    loc->len = len < (uint64_t)h.size - off ? len : (uint64_t)h.size - off;
    if (!h.runs || len == 0)
        return 0;
    const struct fsv_run *rn = run_at(&h, off);
    uint64_t in = off - rn->off;
    if (rn->len - in < loc->len)
        loc->len = rn->len - in;
    if (rn->sparse)
        return 0;
    r = bf_locate(fs->img, rn->img_off + in, loc->len, loc);
    return r < 0 ? view_error(fs->img, r) : 0;
}

void fsview_release(struct fsview *fs, uint64_t fh)
{
    TSK_FS_FILE *f = NULL;
    pthread_mutex_lock(&fs->hlock);
    if (fh < fs->nh) {
        f = fs->h[fh].file;
        free(fs->h[fh].runs);
        memset(&fs->h[fh], 0, sizeof fs->h[fh]);
    }
    pthread_mutex_unlock(&fs->hlock);
    if (f) {
        pthread_mutex_lock(&fs->tsk);
        tsk_fs_file_close(f);
        pthread_mutex_unlock(&fs->tsk);
    }
}

void fsv_handles_free(struct fsview *fs)
{
    for (size_t i = 0; i < fs->nh; i++)
        if (fs->h[i].file) {
            tsk_fs_file_close(fs->h[i].file);
            free(fs->h[i].runs);
        }
    free(fs->h);
    fs->h = NULL;
    fs->nh = 0;
}

/* A target libtsk did not give with the listing (ext4 slow symlinks in
 * extents, HFS+): the link's data is the target. */
int fsv_read_link(struct fsview *fs, const struct fsv_node *n, char **out)
{
    char *t = NULL;
    int r = -EIO;
    char e[256];
    pthread_mutex_lock(&fs->tsk);
    TSK_FS_FILE *f = tsk_fs_file_open_meta(fs->tf, NULL, (TSK_INUM_T)n->st.st_ino);
    if (f && f->meta && f->meta->link) {
        t = strndup(f->meta->link, FSV_LINK_MAX);
        r = t ? 0 : -ENOMEM;
    } else if (f && f->meta) {
        const TSK_FS_ATTR *a = fsv_data_attr(fs, f);
        int64_t size = a ? a->size : 0;
        if (size > FSV_LINK_MAX)
            size = FSV_LINK_MAX;
        t = calloc(1, (size_t)size + 1);
        if (!t)
            r = -ENOMEM;
        else if (size == 0)
            r = 0;
        else if (tsk_fs_attr_read(a, 0, t, (size_t)size, TSK_FS_FILE_READ_FLAG_NONE) == size)
            r = 0;
    }
    if (r == -EIO && view_verbose)
        fprintf(stderr, "vdisk-mount: %s: symlink %llu: %s\n", fs->type,
                (unsigned long long)n->st.st_ino, fsv_tsk_error(e, sizeof e));
    tsk_fs_file_close(f);
    pthread_mutex_unlock(&fs->tsk);
    if (r < 0) {
        free(t);
        return r;
    }
    *out = t;                     /* stops at the first NUL, if the data has one */
    return 0;
}
