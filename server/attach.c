/* attach.c — `vdisk-nbd -c DEV IMAGE`, `-d DEV` and `--list-attached`.
 *
 * -c: socket pairs connect our server (in-process, transmission phase from
 * the start, simple replies) to the kernel's nbd driver.  The command returns
 * only when the device is usable: size set and, when the image has a
 * partition table, the partition nodes present.  The serving process stays
 * behind (forked, detached) unless --foreground; it exits, after a flush,
 * when the kernel disconnects.  It records itself in /run/vdisk-nbd/nbdN so
 * -d and --list-attached can find it.
 *
 * -d: refuses when the device or a partition is mounted, used as swap or held
 * by another device (unless --force), disconnects, and returns only after
 * the serving process has flushed and exited.
 *
 * Thread model: -c forks before any thread exists; the child then runs the
 * server threads (listen.c/transmission.c) plus, on the ioctl path, one
 * thread parked in NBD_DO_IT.  -d and --list-attached are single-threaded.
 */
#include "server.h"
#include "kernel.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/fs.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define STATE_DIR "/run/vdisk-nbd"
#define READY_SECONDS 20        /* for the size and partition nodes to appear */
#define DETACH_SECONDS 60       /* for the server to flush and exit */

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static void sleep_ms(int ms)
{
    struct timespec t = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&t, NULL);
}

/* Wait until @path exists; false after @secs. */
static bool wait_path(const char *path, double secs)
{
    for (double end = now() + secs; access(path, F_OK) < 0;) {
        if (now() > end)
            return false;
        sleep_ms(20);
    }
    return true;
}

static void state_path(int index, char *buf, size_t len)
{
    snprintf(buf, len, STATE_DIR "/nbd%d", index);
}

struct state { long pid; char image[PATH_MAX]; };

static bool read_state(int index, struct state *st)
{
    char p[64];
    state_path(index, p, sizeof p);
    FILE *f = fopen(p, "r");
    if (!f)
        return false;
    bool ok = fscanf(f, "%ld\n", &st->pid) == 1 && fgets(st->image, sizeof st->image, f);
    fclose(f);
    if (ok)
        st->image[strcspn(st->image, "\n")] = 0;
    return ok;
}

/* ------------------------------------------------------------------ -c */

struct attach_ctx {
    struct server *s;
    struct export *e;
    int index;                 /* -1: let the kernel (or us) pick */
    int sv[64][2];             /* [i][0] ours, [i][1] the kernel's */
    unsigned n;
    int status_fd;             /* report to the waiting parent, -1 in foreground */
    char image_abs[PATH_MAX];
};

static void report(struct attach_ctx *a, bool ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void report(struct attach_ctx *a, bool ok, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (a->status_fd < 0) {
        fprintf(ok ? stdout : stderr, "%s%s\n", ok ? "" : "vdisk-nbd: ", msg);
        fflush(ok ? stdout : stderr);
        return;
    }
    char line[2100];
    int n = snprintf(line, sizeof line, "%s %s\n", ok ? "ok" : "error", msg);
    (void)!write(a->status_fd, line, (size_t)n);
    close(a->status_fd);
    a->status_fd = -1;
}

static void *ioctl_thread(void *arg)
{
    kernel_ioctl_run((int)(intptr_t)arg);
    return NULL;
}

/* The logical sector size the kernel should read the disk with: 4096 only
 * when the disk carries a GPT made for 4096-byte sectors. */
static unsigned sector_size_for(struct bf_image *img, struct bf_ptable **tp)
{
    struct bf_ptable *t = NULL;
    unsigned ss = 512;
    if (bf_ptable_read(img, 0, &t) == 0 && t->kind == BF_PTABLE_GPT)
        ss = t->sector_size;
    *tp = t;
    return ss;
}

/* Partition numbers the kernel created for nbd@index (after its scan). */
static size_t kernel_partitions(int index, unsigned *nums, size_t max)
{
    char dir[64], base[16];
    snprintf(base, sizeof base, "nbd%d", index);
    snprintf(dir, sizeof dir, "/sys/block/%s", base);
    size_t n = 0, bl = strlen(base);
    DIR *d = opendir(dir);
    for (struct dirent *de = d ? readdir(d) : NULL; de && n < max; de = readdir(d))
        if (!strncmp(de->d_name, base, bl) && de->d_name[bl] == 'p')
            nums[n++] = (unsigned)strtoul(de->d_name + bl + 1, NULL, 10);
    if (d)
        closedir(d);
    return n;
}

/* Make the kernel scan the partition table now (there may be no udev to
 * open the device), then wait for the /dev node of every partition it
 * found.  BLKRRPART returns after the scan, so the kernel's own list is
 * final and our parser's opinion (e.g. of a backup GPT, which Linux ignores
 * without gpt=force) cannot make us wait for partitions that never come.
 * Without BLKRRPART, fall back to waiting for the partitions we see. */
static int wait_usable(struct attach_ctx *a, const struct bf_ptable *t, char *warn, size_t wl)
{
    char dev[64], p[128];
    snprintf(dev, sizeof dev, "/dev/nbd%d", a->index);
    warn[0] = 0;
    double end = now() + READY_SECONDS;
    while (kernel_size_sectors(a->index) == 0) {
        if (now() > end)
            return -ETIMEDOUT;
        sleep_ms(20);
    }
    if (!t || t->n == 0)
        return 0;
    if (kernel_max_part() == 0) {
        snprintf(warn, wl, "the nbd module was loaded without partition support, so "
                 "/dev/nbd%dpN will not appear (reload it: rmmod nbd; modprobe nbd max_part=16)",
                 a->index);
        return 0;
    }
    int fd = open(dev, O_RDONLY | O_CLOEXEC);
    bool scanned = fd >= 0 && ioctl(fd, BLKRRPART) == 0;
    if (fd >= 0)
        close(fd);
    unsigned nums[256];
    size_t n = 0;
    if (scanned) {
        n = kernel_partitions(a->index, nums, 256);
    } else {
        for (size_t i = 0; i < t->n && n < 256; i++)
            nums[n++] = t->parts[i].number;
    }
    for (size_t i = 0; i < n; i++) {
        snprintf(p, sizeof p, "/sys/block/nbd%d/nbd%dp%u", a->index, a->index, nums[i]);
        if (!wait_path(p, end - now())) {
            snprintf(warn, wl, "the kernel did not create partition %u (%s)", nums[i], p);
            return 0;
        }
        snprintf(p, sizeof p, "/dev/nbd%dp%u", a->index, nums[i]);
        if (!wait_path(p, end - now())) {
            snprintf(warn, wl, "%s did not appear (is udev or devtmpfs running?)", p);
            return 0;
        }
    }
    return 0;
}

static void write_state(struct attach_ctx *a)
{
    mkdir("/run", 0755);              /* a bare initramfs may not have it */
    mkdir(STATE_DIR, 0755);
    char p[64], tmp[80];
    state_path(a->index, p, sizeof p);
    snprintf(tmp, sizeof tmp, "%s.tmp", p);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    fprintf(f, "%ld\n%s\n", (long)getpid(), a->image_abs);
    if (fclose(f) == 0)
        rename(tmp, p);
}

/* Runs in the serving process: hand sockets to the kernel, wait for the
 * device, report, serve until the kernel lets go.  Returns the exit status. */
static int run_attached(struct attach_ctx *a)
{
    struct server *s = a->s;
    struct conn probe = { .srv = s, .structured = false };
    uint16_t tflags = export_tflags(&probe, a->e);
    if (a->n > 1)
        tflags |= NBD_FLAG_CAN_MULTI_CONN;     /* one shared handle behind all sockets */
    struct bf_ptable *t;
    unsigned ss = sector_size_for(a->e->img, &t);

    char backend[PATH_MAX + 64];
    snprintf(backend, sizeof backend, "vdisk-nbd pid=%ld image=%s", (long)getpid(), a->image_abs);
    int kfds[64];
    for (unsigned i = 0; i < a->n; i++)
        kfds[i] = a->sv[i][1];
    struct kernel_conf kc = {
        .size = bf_size(a->e->img), .block_size = ss, .flags = tflags,
        .timeout = s->opt->timeout, .backend = backend, .fds = kfds, .nfds = (int)a->n,
    };
    for (unsigned i = 0; i < a->n; i++)
        server_add_conn(s, a->sv[i][0], a->e, tflags);

    char err[1024];
    int r;
    pthread_t ioctl_tid;
    bool ioctl_started = false;
    if (kernel_has_netlink()) {
        r = kernel_connect_netlink(&kc, &a->index, err, sizeof err);
    } else {
        if (a->index < 0)
            a->index = kernel_find_free();
        if (a->index < 0) {
            snprintf(err, sizeof err, "no free nbd device");
            r = -ENODEV;
        } else {
            int devfd;
            r = kernel_ioctl_setup(&kc, a->index, &devfd, err, sizeof err);
            if (r == 0 && pthread_create(&ioctl_tid, NULL, ioctl_thread,
                                         (void *)(intptr_t)devfd) == 0)
                ioctl_started = true;
        }
    }
    for (unsigned i = 0; i < a->n; i++)
        close(a->sv[i][1]);                    /* the kernel holds its own references */
    if (r < 0) {
        report(a, false, "%s", err);
        for (unsigned i = 0; i < a->n; i++)
            shutdown(a->sv[i][0], SHUT_RDWR);
        serve(s);
        free(t);
        return 1;
    }

    char warn[512];
    if (wait_usable(a, t, warn, sizeof warn) < 0) {
        report(a, false, "/dev/nbd%d did not become ready within %d seconds", a->index,
               READY_SECONDS);
        kernel_disconnect(a->index);
    } else {
        write_state(a);
        if (warn[0])
            fprintf(stderr, "vdisk-nbd: warning: %s\n", warn);
        report(a, true, "/dev/nbd%d", a->index);
    }
    free(t);

    serve(s);                                  /* until the kernel disconnects */
    if (ioctl_started)
        pthread_join(ioctl_tid, NULL);
    int rc = 0;
    if (s->writable && bf_flush(s->disk) < 0)
        rc = 1;
    char p[64];
    state_path(a->index, p, sizeof p);
    struct state st;
    if (read_state(a->index, &st) && st.pid == (long)getpid())
        unlink(p);
    return rc;
}

int attach_main(struct server *s)
{
    const struct nbd_options *o = s->opt;
    struct attach_ctx a = { .s = s, .e = &s->exports[0], .index = -1, .status_fd = -1 };
    char err[1024];
    if (strcmp(o->connect_dev, "auto") != 0) {
        a.index = kernel_parse_device(o->connect_dev);
        if (a.index < 0) {
            fprintf(stderr, "vdisk-nbd: '%s' is not an nbd device (expected /dev/nbdN or auto)\n",
                    o->connect_dev);
            return 2;
        }
    }
    if (kernel_load_module(err, sizeof err) < 0) {
        fprintf(stderr, "vdisk-nbd: %s\n", err);
        return 1;
    }
    if (a.index >= 0) {
        char p[64];
        snprintf(p, sizeof p, "/sys/block/nbd%d", a.index);
        if (access(p, F_OK) < 0) {
            fprintf(stderr, "vdisk-nbd: /dev/nbd%d does not exist\n", a.index);
            return 1;
        }
        if (kernel_is_connected(a.index)) {
            fprintf(stderr, "vdisk-nbd: /dev/nbd%d is already attached\n", a.index);
            return 1;
        }
    }
    if (bf_is_remote(o->image) || !realpath(o->image, a.image_abs)) {
        char *shown = bf_display_name(o->image);   /* sysfs "backend" is world-readable */
        snprintf(a.image_abs, sizeof a.image_abs, "%s", shown ? shown : "?");
        free(shown);
    }
    a.n = o->connections ? o->connections : 1;
    for (unsigned i = 0; i < a.n; i++)
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a.sv[i]) < 0) {
            fprintf(stderr, "vdisk-nbd: socketpair: %s\n", strerror(errno));
            return 1;
        }

    if (o->foreground)
        return run_attached(&a);

    int st[2];
    if (pipe2(st, O_CLOEXEC) < 0) {
        fprintf(stderr, "vdisk-nbd: pipe: %s\n", strerror(errno));
        return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "vdisk-nbd: fork: %s\n", strerror(errno));
        return 1;
    }
    if (pid == 0) {
        close(st[0]);
        a.status_fd = st[1];
        detach_from_terminal(o->verbose);
        _exit(run_attached(&a));
    }
    close(st[1]);
    for (unsigned i = 0; i < a.n; i++) {
        close(a.sv[i][0]);
        close(a.sv[i][1]);
    }
    char line[2100];
    size_t got = 0;
    ssize_t k;
    while (got < sizeof line - 1 &&
           ((k = read(st[0], line + got, sizeof line - 1 - got)) > 0 || (k < 0 && errno == EINTR)))
        if (k > 0)
            got += (size_t)k;
    line[got] = 0;
    close(st[0]);
    line[strcspn(line, "\n")] = 0;
    if (!strncmp(line, "ok ", 3)) {
        printf("%s\n", line + 3);
        if (o->pid_file)
            write_pid_file(o->pid_file, pid);
        return 0;
    }
    if (!strncmp(line, "error ", 6))
        fprintf(stderr, "vdisk-nbd: %s\n", line + 6);
    else
        fprintf(stderr, "vdisk-nbd: the serving process ended before the device was ready\n");
    return 1;
}

/* ------------------------------------------------------------------ -d */

/* Read "major:minor" from @path into @num; false if unreadable. */
static bool read_devnum(const char *path, char *num, size_t len)
{
    FILE *f = fopen(path, "r");
    bool ok = f && fgets(num, (int)len, f);
    if (f)
        fclose(f);
    if (ok)
        num[strcspn(num, "\n")] = 0;
    return ok;
}

/* "major:minor" and /dev name of nbdN and of each of its partitions. */
static size_t device_numbers(int index, char nums[][32], char names[][64], size_t max)
{
    char base[16], dir[64], p[512];
    snprintf(base, sizeof base, "nbd%d", index);
    snprintf(dir, sizeof dir, "/sys/block/%s", base);
    size_t n = 0, bl = strlen(base);
    snprintf(p, sizeof p, "%s/dev", dir);
    if (read_devnum(p, nums[n], 32))
        snprintf(names[n++], 64, "/dev/%s", base);
    DIR *d = opendir(dir);
    for (struct dirent *de = d ? readdir(d) : NULL; de && n < max; de = readdir(d)) {
        if (strncmp(de->d_name, base, bl) != 0 || de->d_name[bl] != 'p')
            continue;                          /* partitions are nbdNpM */
        snprintf(p, sizeof p, "%s/%s/dev", dir, de->d_name);
        if (read_devnum(p, nums[n], 32))
            snprintf(names[n++], 64, "/dev/%.58s", de->d_name);
    }
    if (d)
        closedir(d);
    return n;
}

/* Is the device or one of its partitions in use?  Fills @why. */
static bool in_use(int index, char *why, size_t wl)
{
    char nums[256][32], names[256][64];
    size_t n = device_numbers(index, nums, names, 256);
    FILE *f = fopen("/proc/self/mountinfo", "r");
    char line[4096];
    while (f && fgets(line, sizeof line, f)) {
        char majmin[32], mnt[2048];
        if (sscanf(line, "%*s %*s %31s %*s %2047s", majmin, mnt) != 2)
            continue;
        for (size_t i = 0; i < n; i++)
            if (!strcmp(majmin, nums[i])) {
                snprintf(why, wl, "%s is mounted on %s", names[i], mnt);
                fclose(f);
                return true;
            }
    }
    if (f)
        fclose(f);
    f = fopen("/proc/swaps", "r");
    while (f && fgets(line, sizeof line, f))
        for (size_t i = 0; i < n; i++) {
            size_t l = strlen(names[i]);
            if (!strncmp(line, names[i], l) && (line[l] == ' ' || line[l] == '\t')) {
                snprintf(why, wl, "%s is in use as swap", names[i]);
                fclose(f);
                return true;
            }
        }
    if (f)
        fclose(f);
    char hd[64];
    snprintf(hd, sizeof hd, "/sys/block/nbd%d/holders", index);
    DIR *d = opendir(hd);
    for (struct dirent *de = d ? readdir(d) : NULL; de; de = readdir(d))
        if (de->d_name[0] != '.') {
            snprintf(why, wl, "/dev/nbd%d is held by %s", index, de->d_name);
            closedir(d);
            return true;
        }
    if (d)
        closedir(d);
    return false;
}

static bool process_alive(long pid)
{
    return pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
}

/* Wait for @pid to exit; pidfd where the kernel has it, else polling. */
static bool wait_exit(long pid, double secs)
{
    int pfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
    if (pfd >= 0) {
        struct pollfd p = { .fd = pfd, .events = POLLIN };
        int r = poll(&p, 1, (int)(secs * 1000));
        close(pfd);
        return r > 0;
    }
    for (double end = now() + secs; process_alive(pid);) {
        if (now() > end)
            return false;
        sleep_ms(20);
    }
    return true;
}

/* Only wait for a process that is one of ours (PIDs get reused). */
static bool is_our_server(long pid)
{
    char p[64], comm[64] = "";
    snprintf(p, sizeof p, "/proc/%ld/comm", pid);
    FILE *f = fopen(p, "r");
    if (!f)
        return false;
    if (!fgets(comm, sizeof comm, f))
        comm[0] = 0;
    fclose(f);
    return !strncmp(comm, "vdisk-nbd", 9);
}

int detach_main(const struct nbd_options *o)
{
    int index = kernel_parse_device(o->disconnect_dev);
    if (index < 0) {
        fprintf(stderr, "vdisk-nbd: '%s' is not an nbd device (expected /dev/nbdN)\n",
                o->disconnect_dev);
        return 2;
    }
    char p[64], why[2200];
    snprintf(p, sizeof p, "/sys/block/nbd%d", index);
    if (access(p, F_OK) < 0) {
        fprintf(stderr, "vdisk-nbd: /dev/nbd%d does not exist%s\n", index,
                access("/sys/module/nbd", F_OK) < 0 ? " (the nbd module is not loaded)" : "");
        return 1;
    }
    if (!kernel_is_connected(index)) {
        fprintf(stderr, "vdisk-nbd: /dev/nbd%d is not attached\n", index);
        return 1;
    }
    if (in_use(index, why, sizeof why)) {
        if (!o->force) {
            fprintf(stderr, "vdisk-nbd: %s; unmount it first, or use --force\n", why);
            return 1;
        }
        fprintf(stderr, "vdisk-nbd: warning: %s; detaching anyway (--force)\n", why);
    }
    struct state st = { .pid = 0 };
    bool have = read_state(index, &st) && is_our_server(st.pid);
    int r = kernel_disconnect(index);
    if (r < 0) {
        fprintf(stderr, "vdisk-nbd: cannot disconnect /dev/nbd%d: %s\n", index, strerror(-r));
        return 1;
    }
    double end = now() + DETACH_SECONDS;
    while (kernel_is_connected(index)) {
        if (now() > end) {
            fprintf(stderr, "vdisk-nbd: /dev/nbd%d is still connected after %d seconds\n",
                    index, DETACH_SECONDS);
            return 1;
        }
        sleep_ms(20);
    }
    if (have && !wait_exit(st.pid, end - now())) {
        fprintf(stderr, "vdisk-nbd: the server (pid %ld) for /dev/nbd%d has not exited\n",
                st.pid, index);
        return 1;
    }
    state_path(index, p, sizeof p);
    unlink(p);                           /* in case the server could not */
    printf("/dev/nbd%d disconnected\n", index);
    return 0;
}

/* ------------------------------------------------------- --list-attached */

int list_attached_main(void)
{
    DIR *d = opendir("/sys/block");
    if (!d) {
        fprintf(stderr, "vdisk-nbd: /sys/block: %s\n", strerror(errno));
        return 1;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        int index = kernel_parse_device(de->d_name);
        if (index < 0 || !kernel_is_connected(index))
            continue;
        struct state st = { .pid = 0, .image = "" };
        char image[PATH_MAX + 64] = "?";
        if (read_state(index, &st))
            snprintf(image, sizeof image, "%s", st.image);
        char p[80], ro[8] = "0";
        snprintf(p, sizeof p, "/sys/block/nbd%d/ro", index);
        FILE *f = fopen(p, "r");
        if (f) {
            if (!fgets(ro, sizeof ro, f))
                ro[0] = '0';
            fclose(f);
        }
        uint64_t bytes = kernel_size_sectors(index) * 512;
        if (st.pid > 0 && process_alive(st.pid))
            printf("/dev/nbd%d\t%" PRIu64 "\t%s\tpid %ld\t%s\n", index, bytes,
                   ro[0] == '1' ? "ro" : "rw", st.pid, image);
        else
            printf("/dev/nbd%d\t%" PRIu64 "\t%s\t%s\t%s\n", index, bytes,
                   ro[0] == '1' ? "ro" : "rw", st.pid > 0 ? "server gone" : "not ours", image);
    }
    closedir(d);
    return 0;
}
