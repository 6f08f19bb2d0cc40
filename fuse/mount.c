/* mount.c — `vdisk-mount [options] IMAGE MOUNTPOINT`: open the image (read-
 * only unless --rw; -s for a throwaway overlay), build the view, mount it
 * with FUSE and serve it.  Unless -f, the serving process forks into the
 * background first and the command returns only once the mount answers, so
 * a script can use it on the next line.  The serving process names itself
 * in the mount's source ("vdisk:PID:IMAGE") so `-u` can wait for it.
 *
 * Thread model: everything here runs before the FUSE loop starts, and after
 * it ends; fuse_loop_mt runs the operations on its own threads.
 */
#include "views.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static struct bf_image *open_image(const struct vm_options *o)
{
    struct bf_open_opts bo = {
        .format = o->format,
        .flags = (o->rw ? BF_OPEN_RDWR : 0) | (o->force_share ? BF_OPEN_FORCE_SHARE : 0),
        .snapshot = o->snapshot,
    };
    struct bf_image *img;
    int r = bf_open(o->image, &bo, &img);
    if (r < 0) {
        fprintf(stderr, "vdisk-mount: %s\n", bf_errmsg(img));
        if (o->rw && (r == -EROFS || r == -EACCES || r == -EPERM))
            fprintf(stderr, "vdisk-mount: to mount it anyway, leave out --rw (read-only) or "
                            "use -s (writes go to a throwaway overlay)\n");
        bf_close(img);
        return NULL;
    }
    if (o->overlay && bf_open_overlay(img, &img) < 0) {
        fprintf(stderr, "vdisk-mount: %s\n", bf_errmsg(img));
        bf_close(img);
        return NULL;
    }
    return img;
}

/* The max_read mount option given with -o, or 0. */
static unsigned user_max_read(const struct vm_options *o)
{
    for (const char *p = o->fuse_opts; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : "")
        if (strncmp(p, "max_read=", 9) == 0)
            return (unsigned)strtoul(p + 9, NULL, 10);
    return 0;
}

/* libfuse ends a session whose init() does not repeat the max_read mount
 * option; the view's own init (if any) runs after this one. */
static unsigned mount_max_read;
static const struct fuse_operations *view_ops;

static void *mount_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    conn->max_read = mount_max_read;
    return view_ops->init ? view_ops->init(conn, cfg) : fuse_get_context()->private_data;
}

/* FUSE's own arguments: the mount's name and type, ro/rw, user's -o, and
 * the max_read chosen for the view. */
static int fuse_args_for(const struct vm_options *o, bool writable, struct fuse_args *a)
{
    char abs[PATH_MAX], opts[PATH_MAX + 256];
    if (bf_is_remote(o->image) || !realpath(o->image, abs)) {
        char *shown = bf_display_name(o->image);   /* /proc/mounts is world-readable */
        snprintf(abs, sizeof abs, "%s", shown ? shown : "?");
        free(shown);
    }
    /* commas separate FUSE options: keep them out of the name */
    for (char *p = abs; *p; p++)
        if (*p == ',')
            *p = '_';
    snprintf(opts, sizeof opts, "fsname=vdisk:%ld:%s,subtype=vdisk,%s", (long)getpid(), abs,
             writable ? "rw" : "ro");
    if (fuse_opt_add_arg(a, "vdisk-mount") < 0 || fuse_opt_add_arg(a, "-o") < 0 ||
        fuse_opt_add_arg(a, opts) < 0)
        return -1;
    if (o->fuse_opts && (fuse_opt_add_arg(a, "-o") < 0 || fuse_opt_add_arg(a, o->fuse_opts) < 0))
        return -1;
    if (mount_max_read && !user_max_read(o)) {
        snprintf(opts, sizeof opts, "max_read=%u", mount_max_read);
        if (fuse_opt_add_arg(a, "-o") < 0 || fuse_opt_add_arg(a, opts) < 0)
            return -1;
    }
    return 0;
}

/* An NBD URI whose socket=PATH is relative stops working once the serving
 * process has moved to /: make PATH absolute (the directory percent-encoded).
 * Returns @uri itself when there is nothing to do or no room in @buf. */
static const char *uri_with_absolute_socket(const char *uri, char *buf, size_t len)
{
    const char *p = strstr(uri, "://") ? strchr(uri, '?') : NULL, *val = NULL;
    for (; p && !val; p = strchr(p + 1, '&'))
        if (strncmp(p + 1, "socket=", 7) == 0)
            val = p + 8;
    char cwd[PATH_MAX];
    size_t o = val ? (size_t)(val - uri) : 0;
    if (!val || *val == '/' || !*val || *val == '&' || *val == '#' || !getcwd(cwd, sizeof cwd) ||
        o >= len)
        return uri;
    memcpy(buf, uri, o);
    for (const char *c = cwd; *c; c++) {
        unsigned char ch = (unsigned char)*c;
        if (o + 4 >= len)
            return uri;
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
            strchr("/-._~", ch))
            buf[o++] = (char)ch;
        else
            o += (size_t)snprintf(buf + o, len - o, "%%%02X", ch);
    }
    if (o + 2 + strlen(val) > len)
        return uri;
    buf[o++] = '/';
    strcpy(buf + o, val);
    return buf;
}

/* Tell the waiting parent how mounting went (in the foreground: stderr). */
static void report(int fd, const char *msg)
{
    if (fd < 0) {
        if (msg)
            fprintf(stderr, "vdisk-mount: %s\n", msg);
        return;
    }
    char line[1200];
    int n = snprintf(line, sizeof line, "%s%s\n", msg ? "error " : "ok", msg ? msg : "");
    (void)!write(fd, line, (size_t)n);
    close(fd);
}

static int write_pid_file(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f || fprintf(f, "%ld\n", (long)getpid()) < 0 || fclose(f) != 0)
        return -1;
    return 0;
}

/* The kernel gives a FUSE mount 128 KiB of read-ahead, so sequential reads
 * of a disk arrive as 128 KiB requests, each a round trip.  Where we may
 * (root), widen it to 4 MiB for this mount: about a third faster.  This must
 * happen after the kernel has handled FUSE's INIT (which narrows it again),
 * so it runs on a thread that first stat()s the mount point: that returns
 * only once the loop has answered INIT. */
static void *widen_readahead(void *arg)
{
    const char *mountpoint = arg;
    struct stat st;
    if (stat(mountpoint, &st) < 0)
        return NULL;
    char mp[PATH_MAX];
    if (!realpath(mountpoint, mp))
        snprintf(mp, sizeof mp, "%s", mountpoint);
    FILE *f = fopen("/proc/self/mountinfo", "r");
    char line[8192], dev[64] = "";
    while (f && fgets(line, sizeof line, f)) {
        char majmin[64], point[4096];
        if (sscanf(line, "%*s %*s %63s %*s %4095s", majmin, point) == 2 && !strcmp(point, mp))
            snprintf(dev, sizeof dev, "%s", majmin);     /* the last (top) mount wins */
    }
    if (f)
        fclose(f);
    if (!dev[0])
        return NULL;
    char path[128];
    snprintf(path, sizeof path, "/sys/class/bdi/%s/read_ahead_kb", dev);
    FILE *ra = fopen(path, "r+");
    if (!ra)
        return NULL;                    /* not root: keep the kernel's default */
    unsigned kb = 0;
    if (fscanf(ra, "%u", &kb) == 1 && kb < 4096) {
        rewind(ra);
        fprintf(ra, "4096\n");
    }
    fclose(ra);
    return NULL;
}

/* The serving process: mount, report, serve until unmounted, clean up. */
static int serve(const struct vm_options *o, int status_fd)
{
    struct bf_image *img = open_image(o);
    if (!img) {
        report(status_fd, "cannot open the image (see above)");
        return 1;
    }
    bool writable = bf_is_writable(img) && o->nfs == 0 && !o->all;
    struct view_owner owner;
    view_owner_init(&owner, o->image);
    char err[1024];
    const struct fuse_operations *ops;
    void *view;
    bool fsview = o->nfs > 0 || o->all;
    if (fsview) {
        ops = &fstree_ops;
        view = fstree_build(img, o, &owner, err, sizeof err);
    } else {
        ops = &diskview_ops;
        view = diskview_build(img, writable, &owner, err, sizeof err);
    }
    if (!view) {
        report(status_fd, err);
        bf_close(img);
        return 1;
    }

    /* Read-only views splice file ranges into their replies when they fit
     * libfuse's pipes (readbuf.c); reads are sized to fit. */
    mount_max_read = user_max_read(o);
    if (!mount_max_read && !writable)
        mount_max_read = (unsigned)view_splice_max_read();
    view_ops = ops;
    struct fuse_operations mops = *ops;
    mops.init = mount_init;

    struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
    struct fuse *f = NULL;
    int rc = 1;
    if (fuse_args_for(o, writable, &args) < 0) {
        report(status_fd, "out of memory");
        goto out;
    }
    f = fuse_new(&args, &mops, sizeof mops, view);
    if (!f) {
        report(status_fd, "cannot set up FUSE (bad -o option?)");
        goto out;
    }
    if (fuse_mount(f, o->mountpoint) != 0) {
        snprintf(err, sizeof err, "cannot mount on %s (does it exist, is it a directory, "
                 "is /dev/fuse usable?)", o->mountpoint);
        report(status_fd, err);
        fuse_destroy(f);
        f = NULL;
        goto out;
    }
    if (o->pid_file && write_pid_file(o->pid_file) < 0) {
        snprintf(err, sizeof err, "%s: %s", o->pid_file, strerror(errno));
        report(status_fd, err);
        fuse_unmount(f);
        goto out;
    }
    report(status_fd, NULL);            /* the mount exists: the command may return */
    if (status_fd >= 0 && !o->verbose) {
        int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (null >= 0) {
            dup2(null, 2);             /* do not hold the caller's stderr open */
            close(null);
        }
    }

    struct fuse_session *se = fuse_get_session(f);
    fuse_set_signal_handlers(se);
    pthread_t ra;
    if (pthread_create(&ra, NULL, widen_readahead, (void *)o->mountpoint) == 0)
        pthread_detach(ra);
    struct fuse_loop_config cfg = { .clone_fd = 0, .max_idle_threads = 16 };
    rc = fuse_loop_mt(f, &cfg) == 0 ? 0 : 1;
    fuse_remove_signal_handlers(se);
    fuse_unmount(f);
    if (o->pid_file)
        unlink(o->pid_file);
out:
    if (f)
        fuse_destroy(f);
    fuse_opt_free_args(&args);
    if (fsview)
        fstree_free(view);
    else
        diskview_free(view);
    if (bf_is_writable(img) && bf_flush(img) < 0) {
        fprintf(stderr, "vdisk-mount: %s\n", bf_errmsg(img));
        rc = 1;
    }
    bf_close(img);
    return rc;
}

int vm_mount(const struct vm_options *o)
{
    struct stat st;
    if (stat(o->mountpoint, &st) < 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "vdisk-mount: %s: %s\n", o->mountpoint,
                errno && stat(o->mountpoint, &st) < 0 ? strerror(errno) : "not a directory");
        return 1;
    }
    if ((o->nfs || o->all) && (o->rw || o->overlay)) {
        fprintf(stderr, "vdisk-mount: the filesystem view is read-only; --rw and -s apply to "
                        "the disk view\n");
        return 2;
    }
    view_verbose = o->verbose || o->foreground;
    if (o->foreground)
        return serve(o, -1);

    /* The background process leaves the caller's directory (so it does not
     * keep it busy): make the paths it needs absolute first. */
    struct vm_options abs = *o;
    char img[PATH_MAX], mnt[PATH_MAX], pidf[PATH_MAX];
    if (realpath(o->image, img))
        abs.image = img;
    else                                /* an NBD URI? */
        abs.image = uri_with_absolute_socket(o->image, img, sizeof img);
    if (realpath(o->mountpoint, mnt))
        abs.mountpoint = mnt;
    if (o->pid_file && o->pid_file[0] != '/') {
        char cwd[PATH_MAX];
        if (getcwd(cwd, sizeof cwd) &&
            snprintf(pidf, sizeof pidf, "%s/%s", cwd, o->pid_file) < (int)sizeof pidf)
            abs.pid_file = pidf;
    }
    o = &abs;

    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        fprintf(stderr, "vdisk-mount: pipe: %s\n", strerror(errno));
        return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "vdisk-mount: fork: %s\n", strerror(errno));
        return 1;
    }
    if (pid == 0) {
        close(p[0]);
        setsid();
        if (chdir("/") < 0)
            _exit(1);
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
        }
        int rc = serve(o, p[1]);
        _exit(rc);
    }
    close(p[1]);
    char line[1200];
    size_t got = 0;
    ssize_t k;
    while (got < sizeof line - 1 &&
           ((k = read(p[0], line + got, sizeof line - 1 - got)) > 0 || (k < 0 && errno == EINTR)))
        if (k > 0)
            got += (size_t)k;
    line[got] = 0;
    close(p[0]);
    line[strcspn(line, "\n")] = 0;
    if (!strcmp(line, "ok")) {
        /* The mount exists; make sure it answers too (FUSE INIT is done
         * only once the serving process runs its loop, and libfuse may still
         * end the session there): a stat is one round trip through it. */
        if (stat(o->mountpoint, &st) == 0)
            return 0;
        fprintf(stderr, "vdisk-mount: %s: the mount does not answer: %s\n", o->mountpoint,
                strerror(errno));
        return 1;
    }
    if (!strncmp(line, "error ", 6))
        fprintf(stderr, "vdisk-mount: %s\n", line + 6);
    else
        fprintf(stderr, "vdisk-mount: the serving process ended before mounting\n");
    return 1;
}
