/* fsview.c — the files inside one file system, read by The Sleuth Kit
 * through the image library (fsview.h).  libtsk parses; this file keeps a
 * tree of what was seen: each directory is listed through libtsk once, the
 * first time a path inside it is asked for, and its entries (name and
 * attributes) are kept.  The image never changes under a read-only view, so
 * the cache is never invalidated; a 10 000-entry directory is read once and
 * `ls -l` on it is then 10 000 lookups in memory.
 *
 * What is shown: the entries libtsk finds allocated in each directory, less
 * ".", "..", libtsk's virtual entries ($OrphanFiles, $MBR, $FAT1, ...) and
 * the file system's own bookkeeping (fsv_hidden).  Names are compared
 * exactly (byte for byte), also on file systems that are case-insensitive.
 * A name the kernel cannot take (containing '/', longer than
 * FSV_NAME_MAX) is left out, as is the second of two equal names.
 *
 * Thread model: see fsview-int.h (a tsk lock for libtsk, a cache rwlock
 * for the tree).
 */
#include "fsview-int.h"
#include "views.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct fsv_node *node_new(const char *name, size_t len, const struct stat *st,
                                 struct fsv_node *parent)
{
    struct fsv_node *n = calloc(1, sizeof *n + len + 1);
    if (!n)
        return NULL;
    memcpy(n->name, name, len);
    n->name[len] = 0;
    n->st = *st;
    n->parent = parent;
    return n;
}

static void node_free(struct fsv_node *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->nkids; i++)
        node_free(n->kids[i]);
    free(n->kids);
    free(n->byname);
    free(n->link);
    free(n);
}

struct ranked {
    struct fsv_node *n;
    size_t pos;                  /* position in the listing */
};

static int cmp_ranked(const void *a, const void *b)
{
    const struct ranked *x = a, *y = b;
    int c = strcmp(x->n->name, y->n->name);
    return c ? c : x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* Entries in listing order; a name that appeared before wins. */
struct listing {
    struct fsv_node **v;
    size_t n, cap;
};

static int listing_add(struct listing *l, struct fsv_node *n)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        struct fsv_node **v = realloc(l->v, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = n;
    return 0;
}

/* Read directory @dir through libtsk into @l.  Takes the tsk lock. */
static int read_dir(struct fsview *fs, struct fsv_node *dir, struct listing *l)
{
    int r = 0;
    pthread_mutex_lock(&fs->tsk);
    TSK_FS_DIR *d = tsk_fs_dir_open_meta(fs->tf, (TSK_INUM_T)dir->st.st_ino);
    if (!d) {
        char e[256];
        if (view_verbose)
            fprintf(stderr, "vdisk-mount: %s: directory %llu: %s\n", fs->type,
                    (unsigned long long)dir->st.st_ino, fsv_tsk_error(e, sizeof e));
        pthread_mutex_unlock(&fs->tsk);
        return -EIO;
    }
    size_t count = tsk_fs_dir_getsize(d);
    for (size_t i = 0; i < count && r == 0; i++) {
        TSK_FS_FILE *f = tsk_fs_dir_get(d, i);
        if (!f)
            continue;
        const TSK_FS_NAME *nm = f->name;
        struct stat st;
        if (nm && nm->name && (nm->flags & TSK_FS_NAME_FLAG_ALLOC) && f->meta &&
            nm->type != TSK_FS_NAME_TYPE_VIRT && nm->type != TSK_FS_NAME_TYPE_VIRT_DIR) {
            const char *name = nm->name;
            size_t len = strnlen(name, FSV_NAME_MAX + 1);
            bool ok = len > 0 && len <= FSV_NAME_MAX && !strchr(name, '/') &&
                      strcmp(name, ".") != 0 && strcmp(name, "..") != 0 &&
                      !fsv_hidden(fs, dir, name, nm->meta_addr) &&
                      fsv_meta_stat(fs, f->meta, nm->type, &st);
            if (ok) {
                struct fsv_node *n = node_new(name, len, &st, dir);
                if (n && S_ISLNK(st.st_mode) && f->meta->link) {
                    size_t ll = strnlen(f->meta->link, FSV_LINK_MAX);
                    n->link = strndup(f->meta->link, ll);
                }
                if (!n || listing_add(l, n) < 0) {
                    node_free(n);
                    r = -ENOMEM;
                }
            }
        }
        tsk_fs_file_close(f);
    }
    tsk_fs_dir_close(d);
    pthread_mutex_unlock(&fs->tsk);
    return r;
}

/* Drop later duplicates of a name, keeping listing order; make byname. */
static int index_listing(struct listing *l, struct fsv_node ***byname)
{
    size_t n = l->n;
    struct ranked *r = malloc((n ? n : 1) * sizeof *r);
    bool *dup = calloc(n ? n : 1, sizeof *dup);
    struct fsv_node **s = malloc((n ? n : 1) * sizeof *s);
    if (!r || !dup || !s) {
        free(r);
        free(dup);
        free(s);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        r[i] = (struct ranked){ l->v[i], i };
    qsort(r, n, sizeof *r, cmp_ranked);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && !strcmp(r[i].n->name, r[i - 1].n->name))
            dup[r[i].pos] = true;            /* the first in listing order sorts first */
        else
            s[k++] = r[i].n;
    }
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if (dup[i])
            node_free(l->v[i]);
        else
            l->v[w++] = l->v[i];
    }
    l->n = w;
    free(r);
    free(dup);
    *byname = s;
    return 0;
}

/* Make sure @dir's entries are known.  0 or -errno. */
static int load_dir(struct fsview *fs, struct fsv_node *dir)
{
    for (struct fsv_node *a = dir->parent; a; a = a->parent)
        if (a->st.st_ino == dir->st.st_ino)
            return -ELOOP;                 /* a damaged tree loops back */
    struct listing l = { 0 };
    int r = read_dir(fs, dir, &l);
    struct fsv_node **byname = NULL;
    if (r == 0)
        r = index_listing(&l, &byname);
    if (r < 0) {
        for (size_t i = 0; i < l.n; i++)
            node_free(l.v[i]);
        free(l.v);
        return r;
    }
    pthread_rwlock_wrlock(&fs->cache);
    bool installed = !dir->loaded;
    if (installed) {
        dir->kids = l.v;
        dir->byname = byname;
        dir->nkids = l.n;
        dir->loaded = true;
    }
    pthread_rwlock_unlock(&fs->cache);
    if (!installed) {                      /* another thread was quicker */
        for (size_t i = 0; i < l.n; i++)
            node_free(l.v[i]);
        free(l.v);
        free(byname);
    }
    return 0;
}

/* Entry @name (@len bytes) of loaded directory @dir, or NULL. (cache lock) */
static struct fsv_node *find_kid(const struct fsv_node *dir, const char *name, size_t len)
{
    size_t lo = 0, hi = dir->nkids;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *k = dir->byname[mid]->name;
        int c = strncmp(k, name, len);
        if (c == 0 && k[len] != 0)
            c = 1;
        if (c == 0)
            return dir->byname[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

int fsv_lookup(struct fsview *fs, const char *path, struct fsv_node **out)
{
    if (!path || path[0] != '/')
        return -ENOENT;
    for (;;) {
        struct fsv_node *n = fs->root, *need = NULL;
        int r = 0;
        const char *p = path;
        pthread_rwlock_rdlock(&fs->cache);
        for (;;) {
            while (*p == '/')
                p++;
            if (!*p)
                break;
            size_t len = strcspn(p, "/");
            if (len > FSV_NAME_MAX) {
                r = -ENAMETOOLONG;
                break;
            }
            if (!S_ISDIR(n->st.st_mode)) {
                r = -ENOTDIR;
                break;
            }
            if (!n->loaded) {
                need = n;
                break;
            }
            struct fsv_node *k = find_kid(n, p, len);
            if (!k) {
                r = -ENOENT;
                break;
            }
            n = k;
            p += len;
        }
        pthread_rwlock_unlock(&fs->cache);
        if (need) {
            r = load_dir(fs, need);
            if (r < 0)
                return r;
            continue;                      /* walk again, now with it */
        }
        if (r == 0)
            *out = n;
        return r;
    }
}

/* ------------------------------------------------------------ interface */

int fsview_open(struct bf_image *img, struct fsview **out, char *err, size_t errlen)
{
    char e[512];
    *out = NULL;
    struct fsview *fs = calloc(1, sizeof *fs);
    if (!fs) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    fs->img = img;
    fs->uid = getuid();
    fs->gid = getgid();
    pthread_mutex_init(&fs->tsk, NULL);
    pthread_rwlock_init(&fs->cache, NULL);
    pthread_mutex_init(&fs->hlock, NULL);
    int r = -EINVAL;
    fs->ti = fsv_tsk_image(img);
    if (!fs->ti) {
        snprintf(err, errlen, "libtsk: %s", fsv_tsk_error(e, sizeof e));
        r = -ENOMEM;
        goto fail;
    }
    fs->tf = tsk_fs_open_img(fs->ti, 0, TSK_FS_TYPE_DETECT);
    if (!fs->tf) {
        snprintf(err, errlen, "no file system recognised (libtsk: %s)",
                 fsv_tsk_error(e, sizeof e));
        goto fail;
    }
    fsv_set_type(fs);
    if (fs->kind == FSV_EXT)
        fsv_ext_init(fs);
    TSK_FS_FILE *rf = tsk_fs_file_open_meta(fs->tf, NULL, fs->tf->root_inum);
    struct stat st;
    if (!rf || !rf->meta || !fsv_meta_stat(fs, rf->meta, TSK_FS_NAME_TYPE_DIR, &st) ||
        !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: the root directory is unreadable (libtsk: %s)", fs->type,
                 rf ? "not a directory" : fsv_tsk_error(e, sizeof e));
        tsk_fs_file_close(rf);
        r = -EIO;
        goto fail;
    }
    tsk_fs_file_close(rf);
    fs->root = node_new("", 0, &st, NULL);
    if (!fs->root) {
        snprintf(err, errlen, "out of memory");
        r = -ENOMEM;
        goto fail;
    }
    *out = fs;
    return 0;
fail:
    fsview_close(fs);
    return r;
}

void fsview_close(struct fsview *fs)
{
    if (!fs)
        return;
    fsv_handles_free(fs);
    if (fs->tf)
        tsk_fs_close(fs->tf);
    if (fs->ti)
        tsk_img_close(fs->ti);
    node_free(fs->root);
    pthread_mutex_destroy(&fs->tsk);
    pthread_rwlock_destroy(&fs->cache);
    pthread_mutex_destroy(&fs->hlock);
    free(fs);
}

const char *fsview_type(const struct fsview *fs)
{
    return fs->type;
}

int fsview_getattr(struct fsview *fs, const char *path, struct stat *st)
{
    struct fsv_node *n;
    int r = fsv_lookup(fs, path, &n);
    if (r == 0)
        *st = n->st;
    return r;
}

int fsview_readdir(struct fsview *fs, const char *path, fsview_fill_fn fill, void *ctx)
{
    struct fsv_node *n;
    int r = fsv_lookup(fs, path, &n);
    if (r < 0)
        return r;
    if (!S_ISDIR(n->st.st_mode))
        return -ENOTDIR;
    pthread_rwlock_rdlock(&fs->cache);
    bool loaded = n->loaded;
    pthread_rwlock_unlock(&fs->cache);
    if (!loaded && (r = load_dir(fs, n)) < 0)
        return r;
    pthread_rwlock_rdlock(&fs->cache);
    for (size_t i = 0; i < n->nkids; i++)
        if (fill(ctx, n->kids[i]->name, &n->kids[i]->st))
            break;
    pthread_rwlock_unlock(&fs->cache);
    return 0;
}

int fsview_readlink(struct fsview *fs, const char *path, char *buf, size_t len)
{
    struct fsv_node *n;
    int r = fsv_lookup(fs, path, &n);
    if (r < 0)
        return r;
    if (!S_ISLNK(n->st.st_mode))
        return -EINVAL;
    if (len == 0)
        return -EINVAL;
    pthread_rwlock_rdlock(&fs->cache);
    bool have = n->link != NULL;
    if (have)
        snprintf(buf, len, "%s", n->link);
    pthread_rwlock_unlock(&fs->cache);
    if (have)
        return 0;
    char *t;
    if ((r = fsv_read_link(fs, n, &t)) < 0)
        return r;
    snprintf(buf, len, "%s", t);
    pthread_rwlock_wrlock(&fs->cache);
    if (!n->link) {
        n->link = t;
        t = NULL;
    }
    pthread_rwlock_unlock(&fs->cache);
    free(t);
    return 0;
}

int fsview_statfs(struct fsview *fs, struct statvfs *st)
{
    memset(st, 0, sizeof *st);
    unsigned bs = fs->tf->block_size;
    st->f_bsize = st->f_frsize = bs >= 512 && bs <= (1u << 20) ? bs : 4096;
    st->f_blocks = (fsblkcnt_t)fs->tf->block_count;
    st->f_files = (fsfilcnt_t)fs->tf->inum_count;
    st->f_namemax = 255;
    st->f_flag = ST_RDONLY;
    return 0;                     /* free space is not counted: nothing can be written */
}
