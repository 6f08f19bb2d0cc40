/* main.c — vdisk-mount: show a disk image's partitions, or the files inside
 * them, through FUSE; list what an image holds.  Today: `-l` (listing).  The
 * mounts arrive with their own issue; until then asking for one fails with a
 * message rather than pretending to work.
 *
 * Exit status: 0 success, 1 failure, 2 usage error.
 * Thread model: single-threaded.
 */
#include "vdisk-mount.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: vdisk-mount -l [OPTIONS] IMAGE\n"
            "List what a disk image (raw, qcow2) holds: format, backing chain,\n"
            "snapshots and partitions.\n"
            "\n"
            "  -l, --list             list the image's contents and exit\n"
            "  -f, --format FMT       image format: raw, qcow2 (default: detect)\n"
            "      --snapshot ID|NAME show the image as it was at an internal snapshot\n"
            "  -h, --help             show this help and exit\n"
            "  -V, --version          show the version and exit\n"
            "\n"
            "Mounting (IMAGE MOUNTPOINT) is not implemented yet.\n");
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        { "list", no_argument, 0, 'l' },
        { "format", required_argument, 0, 'f' },
        { "snapshot", required_argument, 0, 'S' },
        { "help", no_argument, 0, 'h' },
        { "version", no_argument, 0, 'V' },
        { 0, 0, 0, 0 },
    };
    struct vm_options o = { 0 };
    int list = 0, c;
    while ((c = getopt_long(argc, argv, "lf:hV", lo, NULL)) != -1) {
        switch (c) {
        case 'l': list = 1; break;
        case 'f': o.format = optarg; break;
        case 'S': o.snapshot = optarg; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("vdisk-mount %s\n", VDISK_VERSION); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (list) {
        if (argc - optind != 1) {
            fprintf(stderr, "vdisk-mount: -l takes exactly one IMAGE\n");
            return 2;
        }
        o.image = argv[optind];
        return vm_list(&o);
    }
    if (argc - optind == 2) {
        fprintf(stderr, "vdisk-mount: mounting is not implemented yet (use -l to list)\n");
        return 1;
    }
    usage(stderr);
    return 2;
}
