/* main.c — vdisk-mount: show a disk image's whole disk and partitions as
 * files (the disk view), or the files inside its file systems (-m, --all),
 * through FUSE; list what an image holds (-l); unmount for scripts (-u).
 * Option names follow guestmount where the meaning is the same.
 *
 * Exit status: 0 success, 1 failure, 2 usage error (and for -u: 2 still
 * busy, 3 not mounted).
 * Thread model: single-threaded until the FUSE loop starts (mount.c).
 */
#include "vdisk-mount.h"

#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_RETRIES 6         /* -u: 0.1+0.2+0.4+0.8+1+1 s of back-off */

static void usage(FILE *f)
{
    fprintf(f,
"Usage: vdisk-mount [OPTIONS] IMAGE MOUNTPOINT          the disk view\n"
"       vdisk-mount -m PART[:DIR] [-m ...] IMAGE MOUNTPOINT  files inside partitions\n"
"       vdisk-mount --all IMAGE MOUNTPOINT               every file system, in pN/\n"
"       vdisk-mount -l [--json] IMAGE                    list what IMAGE holds\n"
"       vdisk-mount -u [--retry N] MOUNTPOINT            unmount\n"
"Show a disk image (raw, qcow2, vmdk, vhd, vhdx, vdi, or an NBD URI) through FUSE, without root\n"
"and without a VM.\n"
"\n"
"The disk view shows `disk` (the whole virtual disk) and `p1`, `p2`, ... (each\n"
"partition) as files; root can loop-mount them.  The filesystem view shows the\n"
"files of ext2/3/4, FAT, exFAT, NTFS, HFS+ and ISO 9660 file systems, read-only,\n"
"as they are on the image (no journal replay).\n"
"\n"
"  -m, --mount PART[:DIR]  show the file system on PART (p1, 1, /dev/sda1; disk\n"
"                          for an unpartitioned disk) at DIR in the mount point\n"
"                          (default /); may be repeated\n"
"  -a, --add IMAGE         the image (guestmount's spelling)\n"
"      --all               show every recognised file system under its own pN/\n"
"  -l, --list              list the image's format, backing chain, snapshots,\n"
"                          partitions and file systems; with --json, as JSON\n"
"  -u, --unmount           unmount MOUNTPOINT, retrying while busy; returns once\n"
"                          the image is released.  Exit 0 unmounted, 2 still busy\n"
"                          (the holder is named), 3 not mounted, 1 other errors\n"
"      --retry N           -u: retries while busy, with back-off (default %d)\n"
"\n"
"      --format FMT        image format: raw, qcow2, vmdk, vpc, vhdx, vdi\n"
"                          (default: detect from content; a fixed VHD needs vpc)\n"
"      --load-snapshot ID|NAME  show an internal qcow2 snapshot\n"
"      --force-share       read-only: take no image locks, so a VM may keep writing\n"
"                          the image (what is shown may be inconsistent)\n"
"  -r, --ro                read-only (the default)\n"
"      --rw                disk view: writes go to the image\n"
"  -s, --snapshot          disk view: writes go to a throwaway overlay\n"
"  -f, --foreground        stay in the foreground (logs errors to stderr)\n"
"      --pid-file PATH     write the serving process's PID to PATH\n"
"  -o OPTION[,...]         FUSE mount options (allow_other, ...)\n"
"  -v, --verbose           report I/O errors on stderr\n"
"  -h, --help              show this help and exit\n"
"  -V, --version           show the version and exit\n",
            DEFAULT_RETRIES);
}

/* -m PART[:DIR] */
static int add_fs(struct vm_options *o, char *arg)
{
    if (o->nfs >= VM_MAX_FS) {
        fprintf(stderr, "vdisk-mount: at most %d -m options\n", VM_MAX_FS);
        return -1;
    }
    char *colon = strchr(arg, ':');
    if (colon)
        *colon = 0;
    o->fs[o->nfs].part = arg;
    o->fs[o->nfs].dir = colon ? colon + 1 : NULL;
    if (colon && colon[1] != '/') {
        fprintf(stderr, "vdisk-mount: -m %s:%s: the directory must start with /\n", arg,
                colon + 1);
        return -1;
    }
    o->nfs++;
    return 0;
}

static int add_fuse_opt(struct vm_options *o, const char *opt)
{
    static char buf[4096];
    size_t used = strlen(buf);
    int n = snprintf(buf + used, sizeof buf - used, "%s%s", used ? "," : "", opt);
    if (n < 0 || (size_t)n >= sizeof buf - used) {
        fprintf(stderr, "vdisk-mount: too many -o options\n");
        return -1;
    }
    o->fuse_opts = buf;
    return 0;
}

int main(int argc, char **argv)
{
    /* glibc gives each busy thread its own malloc arena; with a pool of
     * workers that multiplies heap fragmentation (peak RSS) without making
     * anything faster: one arena per CPU is enough. */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    mallopt(M_ARENA_MAX, ncpu > 1 ? (int)ncpu : 1);
    enum { OPT_ALL = 256, OPT_JSON, OPT_RETRY, OPT_FORMAT, OPT_LOADSNAP, OPT_RW, OPT_PIDFILE,
           OPT_FORCE_SHARE };
    static const struct option lo[] = {
        { "mount", required_argument, 0, 'm' },
        { "add", required_argument, 0, 'a' },
        { "all", no_argument, 0, OPT_ALL },
        { "list", no_argument, 0, 'l' },
        { "json", no_argument, 0, OPT_JSON },
        { "unmount", no_argument, 0, 'u' },
        { "retry", required_argument, 0, OPT_RETRY },
        { "format", required_argument, 0, OPT_FORMAT },
        { "load-snapshot", required_argument, 0, OPT_LOADSNAP },
        { "force-share", no_argument, 0, OPT_FORCE_SHARE },
        { "ro", no_argument, 0, 'r' },
        { "rw", no_argument, 0, OPT_RW },
        { "snapshot", no_argument, 0, 's' },
        { "foreground", no_argument, 0, 'f' },
        { "pid-file", required_argument, 0, OPT_PIDFILE },
        { "verbose", no_argument, 0, 'v' },
        { "help", no_argument, 0, 'h' },
        { "version", no_argument, 0, 'V' },
        { 0, 0, 0, 0 },
    };
    struct vm_options o = { .retries = DEFAULT_RETRIES };
    bool list = false, unmount = false;
    int c;
    while ((c = getopt_long(argc, argv, "m:a:lursfo:vhV", lo, NULL)) != -1) {
        switch (c) {
        case 'm': if (add_fs(&o, optarg) < 0) return 2; break;
        case 'a': o.image = optarg; break;
        case OPT_ALL: o.all = true; break;
        case 'l': list = true; break;
        case OPT_JSON: o.json = true; break;
        case 'u': unmount = true; break;
        case OPT_RETRY: {
            char *e;
            unsigned long v = strtoul(optarg, &e, 10);
            if (*e || e == optarg || v > 1000) {
                fprintf(stderr, "vdisk-mount: invalid --retry '%s'\n", optarg);
                return 2;
            }
            o.retries = (unsigned)v;
            break;
        }
        case OPT_FORMAT: o.format = optarg; break;
        case OPT_LOADSNAP: o.snapshot = optarg; break;
        case OPT_FORCE_SHARE: o.force_share = true; break;
        case 'r': o.rw = false; break;
        case OPT_RW: o.rw = true; break;
        case 's': o.overlay = true; break;
        case 'f': o.foreground = true; break;
        case OPT_PIDFILE: o.pid_file = optarg; break;
        case 'o': if (add_fuse_opt(&o, optarg) < 0) return 2; break;
        case 'v': o.verbose = true; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("vdisk-mount %s\n", VDISK_VERSION); return 0;
        default: usage(stderr); return 2;
        }
    }
    int nargs = argc - optind;
    char **args = argv + optind;
    if (list + unmount > 1) {
        fprintf(stderr, "vdisk-mount: -l and -u do not go together\n");
        return 2;
    }
    if (unmount) {
        if (nargs != 1) {
            fprintf(stderr, "vdisk-mount: -u takes exactly one MOUNTPOINT\n");
            return 2;
        }
        return vm_unmount(args[0], o.retries);
    }
    if (!o.image && nargs > 0) {
        o.image = args[0];
        args++;
        nargs--;
    }
    if (!o.image) {
        usage(stderr);
        return 2;
    }
    if (list) {
        if (nargs != 0) {
            fprintf(stderr, "vdisk-mount: -l takes exactly one IMAGE\n");
            return 2;
        }
        return vm_list(&o);
    }
    if (o.json) {
        fprintf(stderr, "vdisk-mount: --json goes with -l\n");
        return 2;
    }
    if (nargs != 1) {
        fprintf(stderr, "vdisk-mount: expected IMAGE MOUNTPOINT (see --help)\n");
        return 2;
    }
    if (o.force_share && o.rw) {
        fprintf(stderr, "vdisk-mount: --force-share is for read-only mounts\n");
        return 2;
    }
    if (o.rw && o.overlay) {
        fprintf(stderr, "vdisk-mount: --rw and -s do not go together\n");
        return 2;
    }
    o.mountpoint = args[0];
    return vm_mount(&o);
}
