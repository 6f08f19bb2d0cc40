/* source.c — byte sources backed by a local file or block device.
 *
 * Reads past the end of the file return zeros, as qemu's file driver does:
 * a qcow2 file may legitimately end inside its last data cluster.  Format
 * drivers that need metadata to be wholly inside the file check that
 * themselves against the size.
 *
 * Thread model: pread/pwrite/flush/extent are safe to call concurrently (they
 * are positional system calls on a shared descriptor).
 */
#include "internal.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

static int file_pread(struct bf_source *s, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    while (len > 0) {
        if (off > (uint64_t)INT64_MAX)
            return -EINVAL;
        ssize_t n = pread(s->fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0) {          /* end of file: the rest reads as zero */
            memset(p, 0, len);
            return 0;
        }
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int file_pwrite(struct bf_source *s, const void *buf, size_t len, uint64_t off)
{
    const uint8_t *p = buf;
    if (!s->writable)
        return -EROFS;
    while (len > 0) {
        if (off > (uint64_t)INT64_MAX)
            return -EINVAL;
        ssize_t n = pwrite(s->fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO;
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int file_flush(struct bf_source *s)
{
    if (!s->writable)
        return 0;
    return fdatasync(s->fd) < 0 ? -errno : 0;
}

static int file_size(struct bf_source *s, uint64_t *size)
{
    struct stat st;
    if (fstat(s->fd, &st) < 0)
        return -errno;
    if (S_ISBLK(st.st_mode)) {
        uint64_t sz;
        if (ioctl(s->fd, BLKGETSIZE64, &sz) < 0)
            return -errno;
        *size = sz;
        return 0;
    }
    *size = (uint64_t)st.st_size;
    return 0;
}

/* SEEK_DATA/SEEK_HOLE: a file system that cannot tell says "all data". */
static int file_extent(struct bf_source *s, uint64_t off, uint64_t len, bool *hole, uint64_t *run)
{
    uint64_t size;
    int r = file_size(s, &size);
    if (r < 0)
        return r;
    if (off >= size) {             /* past EOF reads as zero */
        *hole = true;
        *run = len;
        return 0;
    }
    off_t d = lseek(s->fd, (off_t)off, SEEK_DATA);
    if (d < 0) {
        if (errno == ENXIO) {      /* no data after off: hole to EOF and beyond */
            *hole = true;
            *run = len;
            return 0;
        }
        *hole = false;             /* not supported: claim data */
        *run = len;
        return 0;
    }
    if ((uint64_t)d > off) {
        *hole = true;
        *run = bf_min64(len, (uint64_t)d - off);
        return 0;
    }
    off_t h = lseek(s->fd, (off_t)off, SEEK_HOLE);
    *hole = false;
    *run = (h < 0 || (uint64_t)h <= off) ? len : bf_min64(len, (uint64_t)h - off);
    return 0;
}

static int file_punch(struct bf_source *s, uint64_t off, uint64_t len, bool keep_allocated)
{
    if (!s->writable)
        return -EROFS;
    int mode = keep_allocated ? FALLOC_FL_ZERO_RANGE
                              : FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    if (fallocate(s->fd, mode, (off_t)off, (off_t)len) < 0)
        return errno == EOPNOTSUPP ? -ENOTSUP : -errno;
    return 0;
}

int bf_source_zero(struct bf_source *s, uint64_t off, uint64_t len, bool fast)
{
    static const uint8_t zeros[64 * 1024];
    int r = s->ops->punch ? s->ops->punch(s, off, len, true) : -ENOTSUP;
    if (r != -ENOTSUP && r != -EOPNOTSUPP && r != -ENODEV)
        return r;
    if (fast)
        return -ENOTSUP;
    for (uint64_t done = 0; done < len; done += sizeof zeros)
        if ((r = bf_source_pwrite(s, zeros, (size_t)bf_min64(len - done, sizeof zeros),
                                  off + done)) < 0)
            return r;
    return 0;
}

static void file_close(struct bf_source *s)
{
    if (s->fd >= 0)
        close(s->fd);
}

static const struct bf_source_ops file_ops = {
    .pread = file_pread,
    .pwrite = file_pwrite,
    .flush = file_flush,
    .size = file_size,
    .extent = file_extent,
    .punch = file_punch,
    .close = file_close,
};

/* Wrap an open descriptor (takes it over). */
static int source_from_fd(int fd, const char *name, bool writable, struct bf_source **out,
                          char *err, size_t errlen)
{
    struct stat st;
    struct bf_source *s = calloc(1, sizeof *s);
    if (s)
        s->name = strdup(name);
    if (!s || !s->name || fstat(fd, &st) < 0) {
        int e = s && s->name ? errno : ENOMEM;
        if (s)
            free(s->name);
        free(s);
        close(fd);
        snprintf(err, errlen, "%s: %s", name, strerror(e));
        return -e;
    }
    s->ops = &file_ops;
    s->fd = fd;
    s->writable = writable;
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    pthread_mutex_init(&s->ucache_lock, NULL);
    *out = s;
    return 0;
}

int bf_source_open_file(const char *path, bool writable, struct bf_source **out,
                        char *err, size_t errlen)
{
    /* O_NONBLOCK so that a FIFO (or a tty) named by a hostile image or a
     * careless user cannot hang us in open(); we then refuse it. */
    int fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
        snprintf(err, errlen, "%s: %s", path, S_ISDIR(st.st_mode) ? "is a directory"
                                              : "is not a regular file or block device");
        close(fd);
        return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    return source_from_fd(fd, path, writable, out, err, errlen);
}

int bf_source_open_tmpfile(const char *dir, struct bf_source **out, char *err, size_t errlen)
{
    if (!dir)
        dir = getenv("TMPDIR");
    if (!dir || !*dir)          /* /var/tmp is disk-backed where /tmp may be RAM */
        dir = access("/var/tmp", W_OK) == 0 ? "/var/tmp" : "/tmp";
    /* O_TMPFILE: never visible by name, gone when closed even after a crash */
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) {
        char path[4096];
        snprintf(path, sizeof path, "%s/vdisk-overlay.XXXXXX", dir);
        fd = mkostemp(path, O_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            snprintf(err, errlen, "cannot create a temporary file in %s: %s", dir, strerror(e));
            return -e;
        }
        unlink(path);
    }
    return source_from_fd(fd, "(temporary overlay)", true, out, err, errlen);
}

/* ---------------------------------------------------------- image locks */

#define LOCK_PERM_BASE   100     /* qemu block/file-posix.c: byte 100+i held = "has perm i" */
#define LOCK_SHARED_BASE 200     /* byte 200+i held = "does not share perm i" */
#define PERM_CONSISTENT_READ 0
#define PERM_WRITE 1

static int lock_op(int fd, int cmd, short type, off_t byte, struct flock *out)
{
    struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1 };
    int r = fcntl(fd, cmd, &fl);
    if (out)
        *out = fl;
    return r < 0 ? -errno : 0;
}

/* Does another open file description hold @byte? */
static bool byte_held(int fd, off_t byte)
{
    struct flock fl;
    return lock_op(fd, F_OFD_GETLK, F_WRLCK, byte, &fl) == 0 && fl.l_type != F_UNLCK;
}

int bf_source_lock(struct bf_source *s, enum bf_lock_mode mode, char *err, size_t errlen)
{
    if (mode == BF_LOCK_NONE || s->fd < 0)
        return 0;
    bool write = mode == BF_LOCK_WRITE;
    /* Lock first, then test, as qemu does (raw_handle_perm_lock): of two
     * openers racing, each then sees the other's bytes, so at worst both
     * are refused, never both admitted (testing first let a second writer
     * test and lock between our test and our lock). */
    static const int bytes[] = { LOCK_PERM_BASE + PERM_CONSISTENT_READ,
                                 LOCK_SHARED_BASE + PERM_WRITE, LOCK_PERM_BASE + PERM_WRITE };
    int n = write ? 3 : 2, r = 0;
    for (int i = 0; i < n && r == 0; i++) {
        r = lock_op(s->fd, F_OFD_SETLK, F_RDLCK, bytes[i], NULL);
        if (i == 0 && (r == -EINVAL || r == -ENOLCK || r == -EOPNOTSUPP))
            return 0;          /* a file system without OFD locks: nothing to honour */
        if (r < 0) {
            snprintf(err, errlen, "%s: cannot lock the image: %s", s->name, strerror(-r));
            r = r == -EAGAIN || r == -EACCES ? -EBUSY : r;
        }
    }
    /* our perms against others' unshared bytes, our unshared "write"
     * against others holding it (our own locks do not count) */
    if (r == 0 && byte_held(s->fd, LOCK_SHARED_BASE + PERM_CONSISTENT_READ)) {
        snprintf(err, errlen, "%s: another process uses the image and does not allow it to "
                 "be read (is a VM running on it?)", s->name);
        r = -EBUSY;
    }
    if (r == 0 && write && byte_held(s->fd, LOCK_SHARED_BASE + PERM_WRITE)) {
        snprintf(err, errlen, "%s: another process has the image open and does not allow it "
                 "to be written (qemu, a VM, or another vdisk program)", s->name);
        r = -EBUSY;
    }
    if (r == 0 && byte_held(s->fd, LOCK_PERM_BASE + PERM_WRITE)) {
        snprintf(err, errlen, "%s: another process is writing the image (qemu, a VM, or "
                 "another vdisk program)%s", s->name,
                 write ? "" : "; use --force-share to read it anyway");
        r = -EBUSY;
    }
    if (r < 0)                 /* refused: take back what we took */
        for (int i = 0; i < n; i++)
            lock_op(s->fd, F_OFD_SETLK, F_UNLCK, bytes[i], NULL);
    return r;
}

void bf_source_close(struct bf_source *src)
{
    if (!src)
        return;
    src->ops->close(src);
    bf_cache_free(src->ucache);
    pthread_mutex_destroy(&src->ucache_lock);
    free(src->name);
    free(src);
}
