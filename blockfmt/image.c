/* image.c — image handles: open (probe, driver open, backing chain), close,
 * error messages, descriptions.
 *
 * Thread model: open and close run on one thread.  Error messages may be set
 * and read from any thread (errlock); the reference count is atomic so that
 * a slice and its parent can be closed in any order.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* -------------------------------------------------------------- messages */

int bf_err(struct bf_image *img, int err, const char *fmt, ...)
{
    if (!img)
        return err;
    char buf[BF_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&img->errlock);
    memcpy(img->errmsg, buf, sizeof buf);
    pthread_mutex_unlock(&img->errlock);
    return err;
}

int bf_err_from(struct bf_image *to, struct bf_image *from, int err, const char *prefix)
{
    char msg[BF_ERRMSG_MAX];
    pthread_mutex_lock(&from->errlock);
    memcpy(msg, from->errmsg, sizeof msg);
    pthread_mutex_unlock(&from->errlock);
    if (!msg[0])
        snprintf(msg, sizeof msg, "%s", strerror(-err));
    /* A deep backing chain nests one prefix per layer; the cause is at the
     * end, so when it all does not fit, drop the middle, not the end. */
    char all[2 * BF_ERRMSG_MAX];
    snprintf(all, sizeof all, "%s%s", prefix, msg);
    size_t n = strlen(all);
    if (n >= BF_ERRMSG_MAX) {
        static const char gap[] = " [...] ";
        size_t head = BF_ERRMSG_MAX / 4, tail = BF_ERRMSG_MAX - 1 - head - (sizeof gap - 1);
        size_t from_pos = n - tail;
        while (head > 0 && ((unsigned char)all[head] & 0xc0) == 0x80)
            head--;                      /* do not split a UTF-8 sequence */
        while (from_pos < n && ((unsigned char)all[from_pos] & 0xc0) == 0x80)
            from_pos++;
        memcpy(all + head, gap, sizeof gap - 1);
        memmove(all + head + sizeof gap - 1, all + from_pos, n - from_pos + 1);
    }
    return bf_err(to, err, "%s", all);
}

const char *bf_errmsg(struct bf_image *img)
{
    static __thread char copy[BF_ERRMSG_MAX];
    if (!img)
        return "out of memory";
    pthread_mutex_lock(&img->errlock);
    memcpy(copy, img->errmsg, sizeof copy);
    pthread_mutex_unlock(&img->errlock);
    return copy;
}

/* ------------------------------------------------------------ lifecycle */

struct bf_image *bf_image_alloc(const char *filename)
{
    struct bf_image *img = calloc(1, sizeof *img);
    if (!img)
        return NULL;
    img->filename = strdup(filename ? filename : "");
    if (!img->filename) {
        free(img);
        return NULL;
    }
    pthread_mutex_init(&img->errlock, NULL);
    atomic_init(&img->refs, 1);
    img->depth = 1;
    return img;
}

void bf_image_ref(struct bf_image *img)
{
    atomic_fetch_add(&img->refs, 1);
}

void bf_close(struct bf_image *img)
{
    if (!img || atomic_fetch_sub(&img->refs, 1) > 1)
        return;
    if (img->drv && img->drv->close)
        img->drv->close(img);
    bf_close(img->backing);
    bf_source_close(img->src);
    pthread_mutex_destroy(&img->errlock);
    free(img->filename);
    free(img);
}

/* Is @src's file already a layer above @img?  A chain that names itself
 * (directly or through others) would otherwise recurse until the depth
 * bound, opening the same files again and again. */
static struct bf_image *layer_with_file(struct bf_image *img, const struct bf_source *src)
{
    for (struct bf_image *o = img->overlay; o; o = o->overlay)
        if (o->src && o->src->remote == src->remote &&
            (src->remote ? strcmp(o->src->name, src->name) == 0   /* NBD: same URI */
                         : o->src->dev == src->dev && o->src->ino == src->ino))
            return o;
    return NULL;
}

static bool looks_like_uri(const char *name);

/* Open @img (already allocated, filename set) from the file at its name. */
static int open_file_image(struct bf_image *img, const char *format, unsigned flags,
                           const char *snapshot)
{
    char msg[BF_ERRMSG_MAX];
    bool writable = (flags & BF_OPEN_RDWR) && !snapshot;

    const struct bf_driver *drv = NULL;
    if (format && *format && strcmp(format, "auto") != 0) {
        drv = bf_driver_by_name(format);
        if (!drv)
            return bf_err(img, -ENOTSUP, "unknown image format '%s' (known: raw, qcow2, vmdk, vpc, vhdx, vdi)", format);
    }

    /* a local file, or an NBD URI (source-nbd.c) */
    int r = bf_source_open(img->filename, writable, &img->src, msg, sizeof msg);
    if (r == -ENOENT && !bf_is_nbd_uri(img->filename) && looks_like_uri(img->filename))
        return bf_err(img, -ENOTSUP, "%s: no such file, and not a URI that can be opened "
                      "(supported: nbd://, nbds://, nbd+unix://, nbds+unix://)", img->filename);
    if (r < 0)
        return bf_err(img, r, "%s", msg);
    if (img->src->remote && strcmp(img->filename, img->src->name) != 0) {
        char *f = strdup(img->src->name);   /* the URI without secrets, for messages */
        if (!f)
            return bf_err(img, -ENOMEM, "out of memory");
        free(img->filename);
        img->filename = f;
    }
    r = bf_source_lock(img->src, bf_lock_mode_for(flags, writable), msg, sizeof msg);
    if (r < 0)
        return bf_err(img, r, "%s", msg);

    struct bf_image *dup = layer_with_file(img, img->src);
    if (dup)
        return bf_err(img, -ELOOP, "backing chain loops: %s is the same file as %s above it",
                      img->filename, dup->filename);

    if (!drv) {
        uint8_t head[BF_PROBE_LEN];
        uint64_t fsize;
        r = bf_source_size(img->src, &fsize);
        if (r < 0)
            return bf_err(img, r, "%s: cannot get size: %s", img->filename, strerror(-r));
        size_t n = (size_t)bf_min64(fsize, sizeof head);
        r = bf_source_pread(img->src, head, n, 0);
        if (r < 0)
            return bf_err(img, r, "%s: cannot read: %s", img->filename, strerror(-r));
        drv = bf_probe(head, n, msg, sizeof msg);
        if (drv == &bf_driver_raw && fsize >= 512) {
            /* formats known by a trailer rather than a header (dmg) */
            r = bf_source_pread(img->src, head, 512, fsize - 512);
            if (r < 0)
                return bf_err(img, r, "%s: cannot read: %s", img->filename, strerror(-r));
            if (bf_probe_trailer(head, 512, msg, sizeof msg))
                drv = NULL;
        }
        if (!drv)
            return bf_err(img, -ENOTSUP, "%s: %s", img->filename, msg);
    }

    if (writable && !drv->alloc && !drv->pwrite)
        return bf_err(img, -EROFS, "%s: %s images cannot be written yet; open read-only",
                      img->filename, drv->name);

    struct bf_open_opts o = { .format = drv->name, .flags = flags, .snapshot = snapshot };
    img->writable = writable;
    img->open_flags = flags;
    img->info.format = drv->name;
    r = drv->open(img, &o);
    if (r < 0)
        return r;                  /* the driver set the message and freed its state */
    img->drv = drv;
    return 0;
}

int bf_open(const char *path, const struct bf_open_opts *opts, struct bf_image **imgp)
{
    static const struct bf_open_opts defaults;
    if (!opts)
        opts = &defaults;
    struct bf_image *img = bf_image_alloc(path);
    *imgp = img;
    if (!img)
        return -ENOMEM;
    if (!path || !*path)
        return bf_err(img, -EINVAL, "no image file name given");
    return open_file_image(img, opts->format, opts->flags, opts->snapshot);
}

/* Names with a URI scheme ("nbd://", "http://") or qemu's "json:" are not
 * local files; say so rather than "no such file". */
static bool looks_like_uri(const char *name)
{
    if (strncmp(name, "json:", 5) == 0)
        return true;
    const char *p = name;
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
        return false;
    while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
           (*p >= '0' && *p <= '9') || *p == '+' || *p == '-' || *p == '.')
        p++;
    return strncmp(p, "://", 3) == 0;
}

bool bf_is_remote(const char *name)
{
    return name && bf_is_nbd_uri(name);
}

int bf_check_inner_name(struct bf_image *img, const char *name, const char *what)
{
    if (bf_is_nbd_uri(img->filename) && !bf_is_nbd_uri(name))
        return bf_err(img, -EINVAL, "%s: %s '%s' cannot be opened: an image opened by NBD URI "
                      "may only name other NBD URIs", img->filename, what, name);
    return 0;
}

char *bf_path_relative_to(const char *base, const char *name)
{
    if (name[0] == '/' || bf_is_nbd_uri(name))
        return strdup(name);
    const char *slash = strrchr(base, '/');
    if (!slash)
        return strdup(name);
    size_t dirlen = (size_t)(slash - base) + 1;
    char *p = malloc(dirlen + strlen(name) + 1);
    if (!p)
        return NULL;
    memcpy(p, base, dirlen);
    strcpy(p + dirlen, name);
    return p;
}

int bf_open_backing(struct bf_image *img, const char *name, const char *fmt)
{
    if (img->open_flags & BF_OPEN_NO_BACKING)
        return 0;
    if (!*name)
        return bf_err(img, -EINVAL, "%s: the backing file name is empty", img->filename);
    /* Backing files may be NBD URIs.  An image opened by NBD URI may name
     * only NBD URIs: a relative name has no directory to be resolved
     * against (qemu refuses it too), and an absolute path names a file on
     * the server's machine, not on ours. */
    if (looks_like_uri(name) && !bf_is_nbd_uri(name))
        return bf_err(img, -ENOTSUP, "%s: backing file '%s' is neither a local file nor an "
                      "NBD URI (nbd://, nbds://, nbd+unix://, nbds+unix://); such backing "
                      "files are not supported", img->filename, name);
    if (bf_is_nbd_uri(img->filename) && !bf_is_nbd_uri(name))
        return bf_err(img, -ENOTSUP, "%s: backing file '%s' is a %s, but the image was opened "
                      "by NBD URI: %s; name the backing file by its NBD URI (qemu-img rebase "
                      "-u -b URI) or open the image without its backing file", img->filename,
                      name, name[0] == '/' ? "local path" : "relative name",
                      name[0] == '/' ? "that path is on the server's machine, not here"
                                     : "there is no directory to resolve it against");
    if (img->depth >= BF_MAX_CHAIN_DEPTH)
        return bf_err(img, -ELOOP, "%s: backing chain is deeper than %d images",
                      img->filename, BF_MAX_CHAIN_DEPTH);
    char *path = bf_path_relative_to(img->filename, name);
    if (!path)
        return bf_err(img, -ENOMEM, "out of memory");
    struct bf_image *b = bf_image_alloc(path);
    if (!b) {
        free(path);
        return bf_err(img, -ENOMEM, "out of memory");
    }
    b->overlay = img;
    b->depth = img->depth + 1;
    int r = open_file_image(b, fmt, img->open_flags & ~BF_OPEN_RDWR, NULL);
    if (r < 0) {
        char prefix[BF_ERRMSG_MAX];
        if (r == -ENOENT && strcmp(path, name) != 0 && access(path, F_OK) != 0)
            snprintf(prefix, sizeof prefix, "%s: backing file '%s' (looked for at %s): ",
                     img->filename, name, path);
        else
            snprintf(prefix, sizeof prefix, "%s: backing file '%s': ", img->filename, name);
        bf_err_from(img, b, r, prefix);
        bf_close(b);
        free(path);
        return r;
    }
    free(path);
    img->backing = b;
    return 0;
}

/* ---------------------------------------------------------- description */

uint64_t bf_size(const struct bf_image *img) { return img->size; }
bool bf_is_writable(const struct bf_image *img) { return img->writable; }
const char *bf_format(const struct bf_image *img) { return img->drv ? img->drv->name : ""; }
const char *bf_filename(const struct bf_image *img) { return img->filename; }
struct bf_image *bf_backing(const struct bf_image *img) { return img->backing; }

void bf_get_info(const struct bf_image *img, struct bf_info *out)
{
    *out = img->info;
    out->format = bf_format(img);
    out->size = img->size;
    uint64_t fs = 0;
    if (img->src && bf_source_size(img->src, &fs) == 0)
        out->file_size = fs;
}

int bf_snapshots(struct bf_image *img, struct bf_snapshot **list, size_t *n)
{
    *list = NULL;
    *n = 0;
    if (!img->drv || !img->drv->snapshots)
        return 0;
    return img->drv->snapshots(img, list, n);
}

void bf_snapshots_free(struct bf_snapshot *list, size_t n)
{
    for (size_t i = 0; list && i < n; i++) {
        free(list[i].id);
        free(list[i].name);
    }
    free(list);
}
