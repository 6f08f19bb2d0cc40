/* main.c — vdisk-nbd: serve a disk image (or its partitions) over the NBD
 * protocol, or attach it to the kernel (-c, -d: attach.c).  Option names
 * follow qemu-nbd where the meaning is the same.
 * This file parses options, opens the image (read-only, read-write, or under
 * a throwaway overlay), builds the exports, sets up listening, optionally
 * forks, and runs the server until it is done.
 *
 * Exit status: 0 when the server ends normally, 1 on an error, 2 on a usage
 * error.
 * Thread model: single-threaded until serve() starts accepting.
 */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEFAULT_THREADS 16
#define DEFAULT_TIMEOUT 60      /* seconds the kernel waits for a request (-c) */

static void usage(FILE *f)
{
    fprintf(f,
"Usage: vdisk-nbd [OPTIONS] IMAGE\n"
"Serve a disk image (raw, qcow2, vmdk, vhd, vhdx, vdi, or an NBD URI) over the NBD protocol.\n"
"\n"
"Where to listen (default: TCP port 10809 on all addresses):\n"
"  -p, --port PORT            TCP port (default 10809)\n"
"  -b, --bind ADDRESS         listen on this address only (default: all addresses)\n"
"  -k, --socket PATH          listen on a Unix socket instead of TCP\n"
"      (started by systemd socket activation, the sockets it passes are used)\n"
"\n"
"What to serve:\n"
"  -f, --format FMT           image format: raw, qcow2, vmdk, vpc, vhdx, vdi\n"
"                             (default: detect; a fixed VHD needs -f vpc)\n"
"  -r, --read-only            export read-only (the default for NBD URIs)\n"
"      --rw                   an image given by NBD URI: serve it writable (the\n"
"                             remote export must allow writes)\n"
"  -s, --snapshot             writes go to a temporary overlay that is thrown away\n"
"                             at exit; the image is never written\n"
"  -l, --load-snapshot ID|NAME  serve an internal snapshot (read-only)\n"
"  -U, --force-share          with -r: take no image locks, so a VM may keep writing\n"
"                             the image (what is read may be inconsistent)\n"
"  -P, --partition N          export partition N of the image instead of the disk\n"
"      --partitions           also export every partition, as \"p1\", \"p2\", ...\n"
"  -x, --export-name NAME     name of the export (default \"\")\n"
"  -D, --description TEXT     description of the export\n"
"\n"
"Attach to the kernel (root; needs the nbd module, loaded if missing):\n"
"  -c, --connect DEV|auto     attach IMAGE to /dev/nbdN (auto: a free one) and\n"
"                             return once the device and its partitions are usable;\n"
"                             prints the device; the server stays in the background\n"
"      --connections N        sockets between kernel and server (default 1)\n"
"      --timeout SECS         the kernel fails a request after SECS (default 60)\n"
"      --foreground           with -c: keep the server in this process\n"
"  -d, --disconnect DEV       detach DEV; refuses if it or a partition is in use\n"
"                             (mounted, swap, held) unless --force; returns once the\n"
"                             server has flushed and exited\n"
"      --force                with -d: detach even when in use\n"
"      --list-attached        list attached devices and their images\n"
"\n"
"List another server's exports (like qemu-nbd -L; no IMAGE):\n"
"  -L, --list                 list the exports of the NBD server at -k SOCKET, or at\n"
"                             -b HOST (default localhost) -p PORT (default 10809),\n"
"                             with size, description, flags and block sizes\n"
"\n"
"How to run:\n"
"  -e, --shared N             serve up to N clients at once (default 1; 0: no limit)\n"
"  -t, --persistent           keep serving after the last client leaves (default:\n"
"                             exit when the first client disconnects)\n"
"      --fork                 run in the background; return once accepting clients\n"
"      --pid-file PATH        write the serving process's PID to PATH\n"
"      --threads N            worker threads per connection (default %d)\n"
"  -v, --verbose              log connections and errors to stderr\n"
"  -h, --help                 show this help and exit\n"
"  -V, --version              show the version and exit\n",
            DEFAULT_THREADS);
}

static unsigned parse_uint(const char *s, const char *what, unsigned max)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v > max) {
        fprintf(stderr, "vdisk-nbd: invalid %s '%s'\n", what, s);
        exit(2);
    }
    return (unsigned)v;
}

static int parse_args(int argc, char **argv, struct nbd_options *o)
{
    enum { OPT_PARTITIONS = 256, OPT_FORK, OPT_PIDFILE, OPT_THREADS, OPT_CONNECTIONS,
           OPT_TIMEOUT, OPT_FOREGROUND, OPT_FORCE, OPT_LIST_ATTACHED, OPT_RW };
    static const struct option lo[] = {
        { "port", required_argument, 0, 'p' },
        { "bind", required_argument, 0, 'b' },
        { "socket", required_argument, 0, 'k' },
        { "export-name", required_argument, 0, 'x' },
        { "description", required_argument, 0, 'D' },
        { "format", required_argument, 0, 'f' },
        { "read-only", no_argument, 0, 'r' },
        { "snapshot", no_argument, 0, 's' },
        { "load-snapshot", required_argument, 0, 'l' },
        { "force-share", no_argument, 0, 'U' },
        { "rw", no_argument, 0, OPT_RW },
        { "partition", required_argument, 0, 'P' },
        { "partitions", no_argument, 0, OPT_PARTITIONS },
        { "shared", required_argument, 0, 'e' },
        { "persistent", no_argument, 0, 't' },
        { "fork", no_argument, 0, OPT_FORK },
        { "pid-file", required_argument, 0, OPT_PIDFILE },
        { "threads", required_argument, 0, OPT_THREADS },
        { "connect", required_argument, 0, 'c' },
        { "disconnect", required_argument, 0, 'd' },
        { "connections", required_argument, 0, OPT_CONNECTIONS },
        { "timeout", required_argument, 0, OPT_TIMEOUT },
        { "foreground", no_argument, 0, OPT_FOREGROUND },
        { "force", no_argument, 0, OPT_FORCE },
        { "list-attached", no_argument, 0, OPT_LIST_ATTACHED },
        { "list", no_argument, 0, 'L' },
        { "verbose", no_argument, 0, 'v' },
        { "help", no_argument, 0, 'h' },
        { "version", no_argument, 0, 'V' },
        { 0, 0, 0, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "p:b:k:x:D:f:rsl:UP:e:tc:d:LvhV", lo, NULL)) != -1) {
        switch (c) {
        case 'p': parse_uint(optarg, "port", 65535); o->port = optarg; break;
        case 'b': o->bind = optarg; break;
        case 'k': o->socket_path = optarg; break;
        case 'x': o->export_name = optarg; break;
        case 'D': o->description = optarg; break;
        case 'f': o->format = optarg; break;
        case 'r': o->read_only = true; break;
        case 's': o->snapshot = true; break;
        case 'l': o->load_snapshot = optarg; break;
        case 'U': o->force_share = true; break;
        case OPT_RW: o->rw = true; break;
        case 'P': o->partition = (int)parse_uint(optarg, "partition number", 4096); break;
        case OPT_PARTITIONS: o->partitions = true; break;
        case 'e': o->shared = parse_uint(optarg, "client count", 65536); break;
        case 't': o->persistent = true; break;
        case OPT_FORK: o->fork = true; break;
        case OPT_PIDFILE: o->pid_file = optarg; break;
        case OPT_THREADS: o->threads = parse_uint(optarg, "thread count", 1024); break;
        case 'c': o->connect_dev = optarg; break;
        case 'd': o->disconnect_dev = optarg; break;
        case OPT_CONNECTIONS: o->connections = parse_uint(optarg, "connection count", 64); break;
        case OPT_TIMEOUT: o->timeout = parse_uint(optarg, "timeout", 86400); break;
        case OPT_FOREGROUND: o->foreground = true; break;
        case OPT_FORCE: o->force = true; break;
        case OPT_LIST_ATTACHED: o->list_attached = true; break;
        case 'L': o->list_exports = true; break;
        case 'v': o->verbose = true; break;
        case 'h': usage(stdout); exit(0);
        case 'V': printf("vdisk-nbd %s\n", VDISK_VERSION); exit(0);
        default: usage(stderr); return -1;
        }
    }
    if (o->list_exports) {
        if (argc - optind != 0 || o->disconnect_dev || o->list_attached || o->connect_dev) {
            fprintf(stderr, "vdisk-nbd: -L takes no IMAGE or other mode (only -k, or -b "
                            "and -p)\n");
            return -1;
        }
        return 0;
    }
    if (o->disconnect_dev || o->list_attached) {
        if (argc - optind != 0 || (o->disconnect_dev && o->list_attached) || o->connect_dev) {
            fprintf(stderr, "vdisk-nbd: -d DEV and --list-attached take no IMAGE or other mode\n");
            return -1;
        }
        return 0;
    }
    if (argc - optind != 1) {
        fprintf(stderr, "vdisk-nbd: expected one IMAGE (see --help)\n");
        return -1;
    }
    if (o->force_share && !o->read_only && !o->load_snapshot) {
        fprintf(stderr, "vdisk-nbd: --force-share needs -r (a shared image cannot be written)\n");
        return -1;
    }
    if (o->connect_dev && (o->partitions || o->socket_path || o->port || o->bind || o->fork ||
                           o->shared != 1 || o->persistent)) {
        fprintf(stderr, "vdisk-nbd: -c cannot be combined with --partitions, -k, -p, -b, "
                        "--fork, -e or -t\n");
        return -1;
    }
    if (!o->connect_dev && (o->connections || o->foreground || o->timeout)) {
        fprintf(stderr, "vdisk-nbd: --connections, --foreground and --timeout go with -c\n");
        return -1;
    }
    if (o->force && !o->disconnect_dev) {
        fprintf(stderr, "vdisk-nbd: --force goes with -d\n");
        return -1;
    }
    o->image = argv[optind];
    if (o->export_name && strlen(o->export_name) > NBD_MAX_STRING) {
        fprintf(stderr, "vdisk-nbd: the export name is longer than %u bytes\n", NBD_MAX_STRING);
        return -1;
    }
    if (o->description && strlen(o->description) > NBD_MAX_STRING) {
        fprintf(stderr, "vdisk-nbd: the description is longer than %u bytes\n", NBD_MAX_STRING);
        return -1;
    }
    if (o->threads == 0)
        o->threads = DEFAULT_THREADS;
    if (o->timeout == 0)
        o->timeout = DEFAULT_TIMEOUT;
    return 0;
}

/* Open the image as the options say; messages name what to do instead. */
static struct bf_image *open_image(const struct nbd_options *o)
{
    /* remote images are read-only unless --rw asks (the export decides) */
    bool rw = !o->read_only && !o->snapshot && !o->load_snapshot &&
              (!bf_is_remote(o->image) || o->rw);
    struct bf_open_opts bo = {
        .format = o->format,
        .flags = (rw ? BF_OPEN_RDWR : 0) | (o->force_share ? BF_OPEN_FORCE_SHARE : 0),
        .snapshot = o->load_snapshot,
    };
    struct bf_image *img;
    int r = bf_open(o->image, &bo, &img);
    if (r < 0) {
        fprintf(stderr, "vdisk-nbd: %s\n", bf_errmsg(img));
        if (rw && (r == -EROFS || r == -EACCES || r == -EPERM))
            fprintf(stderr, "vdisk-nbd: to serve it anyway, use -r (read-only) or -s (writes "
                            "go to a throwaway overlay)\n");
        bf_close(img);
        return NULL;
    }
    /* -r wins over -s (as in qemu-nbd): a read-only export needs no overlay. */
    if (o->snapshot && !o->read_only && bf_open_overlay(img, &img) < 0) {
        fprintf(stderr, "vdisk-nbd: %s\n", bf_errmsg(img));
        bf_close(img);
        return NULL;
    }
    return img;
}


/* --fork: the parent returns once the child is listening (the listeners are
 * open before the fork, so that is now) and has its PID on record. */
static int daemonize(const struct nbd_options *o)
{
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "vdisk-nbd: fork: %s\n", strerror(errno));
        return -1;
    }
    if (pid > 0) {
        if (o->pid_file && write_pid_file(o->pid_file, pid) < 0) {
            /* Leave no daemon whose PID nobody knows: stop it before it
             * serves; main() then closes the listeners, removes the socket. */
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            return -1;
        }
        _exit(0);
    }
    detach_from_terminal(o->verbose);
    return 0;
}

int main(int argc, char **argv)
{
    /* glibc gives each busy thread its own malloc arena; with a pool of
     * workers that multiplies heap fragmentation (peak RSS) without making
     * anything faster: one arena per CPU is enough. */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    mallopt(M_ARENA_MAX, ncpu > 1 ? (int)ncpu : 1);
    struct nbd_options o = { .partition = -1, .shared = 1 };
    if (parse_args(argc, argv, &o) < 0)
        return 2;
    if (o.disconnect_dev)
        return detach_main(&o);
    if (o.list_attached)
        return list_attached_main();
    if (o.list_exports)
        return list_exports_main(&o);

    struct server s = { .opt = &o };
    pthread_mutex_init(&s.lock, NULL);
    atomic_init(&s.stopping, false);
    char err[1024];
    bool own_pid_file = false;

    s.disk = open_image(&o);
    if (!s.disk)
        return 1;
    s.writable = bf_is_writable(s.disk);
    int rc = 1;
    if (exports_build(&s, err, sizeof err) < 0) {
        fprintf(stderr, "vdisk-nbd: %s\n", err);
        goto out;
    }
    if (o.connect_dev) {
        rc = attach_main(&s);
        goto out;
    }
    if (listeners_open(&s, err, sizeof err) < 0) {
        fprintf(stderr, "vdisk-nbd: %s\n", err);
        goto out;
    }
    if (o.fork && daemonize(&o) < 0)
        goto out;
    if (o.pid_file && !o.fork) {
        if (write_pid_file(o.pid_file, getpid()) < 0)
            goto out;
        own_pid_file = true;
    }
    vlog(&s, "serving %s (%s%s), %zu export(s)", o.image, bf_format(s.disk),
         s.writable ? ", writable" : ", read-only", s.nexports);
    rc = serve(&s) < 0 ? 1 : 0;
    if (s.writable && bf_flush(s.disk) < 0) {
        fprintf(stderr, "vdisk-nbd: %s\n", bf_errmsg(s.disk));
        rc = 1;
    }
    if (o.pid_file && (own_pid_file || o.fork))
        unlink(o.pid_file);
out:
    listeners_close(&s);
    exports_free(&s);
    bf_close(s.disk);
    return rc;
}
