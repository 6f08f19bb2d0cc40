/* unmount.c — `vdisk-mount -u MOUNTPOINT`: unmount a vdisk mount for a
 * script.  Retries with back-off while the mount is busy, names the process
 * holding it when it gives up, and returns only after the serving process
 * has exited (so the image is released and can be used at once).
 *
 * Exit status: 0 unmounted, 1 other error, 2 still busy after the retries,
 * 3 not a vdisk mount.
 * Thread model: single-threaded.
 */
#include "vdisk-mount.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EXIT_BUSY 2
#define EXIT_NOT_MOUNTED 3
#define SERVER_EXIT_SECONDS 60

/* Undo the octal escapes of /proc/self/mountinfo fields ("\040" = space). */
static void unescape(char *s)
{
    char *o = s;
    for (char *p = s; *p; p++) {
        if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] >= '0' && p[2] <= '7' &&
            p[3] >= '0' && p[3] <= '7') {
            *o++ = (char)((p[1] - '0') * 64 + (p[2] - '0') * 8 + (p[3] - '0'));
            p += 3;
        } else {
            *o++ = *p;
        }
    }
    *o = 0;
}

/* Find @mp in the mount table: its file system type and source. */
static bool find_mount(const char *mp, char *type, size_t tl, char *src, size_t sl)
{
    FILE *f = fopen("/proc/self/mountinfo", "r");
    char line[8192];
    bool found = false;
    while (f && fgets(line, sizeof line, f)) {
        /* id parent maj:min root mountpoint opts [optional...] - type source superopts */
        char point[4096];
        if (sscanf(line, "%*s %*s %*s %*s %4095s", point) != 1)
            continue;
        unescape(point);
        if (strcmp(point, mp) != 0)
            continue;
        char *dash = strstr(line, " - ");
        char t[256], s[4096];
        if (!dash || sscanf(dash + 3, "%255s %4095s", t, s) != 2)
            continue;
        unescape(s);
        snprintf(type, tl, "%s", t);
        snprintf(src, sl, "%s", s);
        found = true;                /* keep going: the last (top) mount wins */
    }
    if (f)
        fclose(f);
    return found;
}

static int try_unmount(const char *mp, char *err, size_t el)
{
    if (geteuid() == 0) {
        if (umount2(mp, 0) == 0)
            return 0;
        int e = errno;
        snprintf(err, el, "%s", strerror(e));
        return -e;
    }
    /* Unprivileged: fusermount3 knows who mounted what. */
    int p[2];
    if (pipe(p) < 0)
        return -errno;
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        dup2(p[1], 2);
        close(p[0]);
        close(p[1]);
        execlp("fusermount3", "fusermount3", "-u", "-q", "--", mp, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    ssize_t n = read(p[0], err, el - 1);
    err[n > 0 ? n : 0] = 0;
    err[strcspn(err, "\n")] = 0;
    close(p[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 0;
    return strstr(err, "busy") ? -EBUSY : -EIO;
}

/* Name the processes with a file, directory or root under @mp. */
static void report_holders(const char *mp)
{
    size_t ml = strlen(mp);
    DIR *d = opendir("/proc");
    int shown = 0;
    for (struct dirent *de = d ? readdir(d) : NULL; de && shown < 10; de = readdir(d)) {
        char *end;
        long pid = strtol(de->d_name, &end, 10);
        if (*end || pid <= 0 || pid == getpid())
            continue;
        char base[64], link[PATH_MAX], what[PATH_MAX + 16] = "";
        static const char *const fixed[] = { "cwd", "root", "exe" };
        for (int i = 0; i < 3 && !what[0]; i++) {
            snprintf(base, sizeof base, "/proc/%ld/%s", pid, fixed[i]);
            ssize_t n = readlink(base, link, sizeof link - 1);
            if (n > 0) {
                link[n] = 0;
                if (!strncmp(link, mp, ml) && (link[ml] == 0 || link[ml] == '/'))
                    snprintf(what, sizeof what, "%s %s", fixed[i], link);
            }
        }
        snprintf(base, sizeof base, "/proc/%ld/fd", pid);
        DIR *fd = what[0] ? NULL : opendir(base);
        for (struct dirent *fe = fd ? readdir(fd) : NULL; fe; fe = readdir(fd)) {
            char p[sizeof base + 256 + 2];
            snprintf(p, sizeof p, "%s/%s", base, fe->d_name);
            ssize_t n = readlink(p, link, sizeof link - 1);
            if (n <= 0)
                continue;
            link[n] = 0;
            if (!strncmp(link, mp, ml) && (link[ml] == 0 || link[ml] == '/')) {
                snprintf(what, sizeof what, "has %s open", link);
                break;
            }
        }
        if (fd)
            closedir(fd);
        if (!what[0])
            continue;
        char comm[64] = "?", cp[64];
        snprintf(cp, sizeof cp, "/proc/%ld/comm", pid);
        FILE *f = fopen(cp, "r");
        if (f) {
            if (fgets(comm, sizeof comm, f))
                comm[strcspn(comm, "\n")] = 0;
            fclose(f);
        }
        fprintf(stderr, "vdisk-mount: %s is held by process %ld (%s): %s\n", mp, pid, comm, what);
        shown++;
    }
    if (d)
        closedir(d);
}

static bool wait_exit(long pid, int secs)
{
    int pfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
    if (pfd >= 0) {
        struct pollfd p = { .fd = pfd, .events = POLLIN };
        int r = poll(&p, 1, secs * 1000);
        close(pfd);
        return r > 0;
    }
    if (errno == ESRCH)
        return true;
    for (int i = 0; i < secs * 50; i++) {
        if (kill((pid_t)pid, 0) < 0 && errno == ESRCH)
            return true;
        struct timespec t = { 0, 20000000 };
        nanosleep(&t, NULL);
    }
    return false;
}

int vm_unmount(const char *mountpoint, unsigned retries)
{
    char mp[PATH_MAX];
    /* A dead FUSE server leaves a mount point that cannot be stat'ed, so
     * realpath may fail: then take the name as given. */
    if (!realpath(mountpoint, mp))
        snprintf(mp, sizeof mp, "%s", mountpoint);
    size_t l = strlen(mp);
    while (l > 1 && mp[l - 1] == '/')
        mp[--l] = 0;
    char type[256], src[4096];
    if (!find_mount(mp, type, sizeof type, src, sizeof src)) {
        fprintf(stderr, "vdisk-mount: %s is not mounted\n", mp);
        return EXIT_NOT_MOUNTED;
    }
    if (strcmp(type, "fuse.vdisk") != 0 || strncmp(src, "vdisk:", 6) != 0) {
        fprintf(stderr, "vdisk-mount: %s is not a vdisk mount (it is %s from %s)\n", mp, type,
                src);
        return EXIT_NOT_MOUNTED;
    }
    long pid = strtol(src + 6, NULL, 10);

    char err[512] = "";
    int r = -EBUSY;
    unsigned wait_ms = 100;
    for (unsigned i = 0; i <= retries; i++) {
        r = try_unmount(mp, err, sizeof err);
        if (r != -EBUSY)
            break;
        if (i == retries)
            break;
        struct timespec t = { wait_ms / 1000, (long)(wait_ms % 1000) * 1000000L };
        nanosleep(&t, NULL);
        wait_ms = wait_ms * 2 > 1000 ? 1000 : wait_ms * 2;
    }
    if (r == -EBUSY) {
        fprintf(stderr, "vdisk-mount: %s is busy; not unmounted after %u retries\n", mp, retries);
        report_holders(mp);
        return EXIT_BUSY;
    }
    if (r < 0) {
        fprintf(stderr, "vdisk-mount: cannot unmount %s: %s\n", mp, err);
        return 1;
    }
    if (pid > 0 && !wait_exit(pid, SERVER_EXIT_SECONDS)) {
        fprintf(stderr, "vdisk-mount: unmounted, but the serving process %ld has not exited\n",
                pid);
        return 1;
    }
    return 0;
}
