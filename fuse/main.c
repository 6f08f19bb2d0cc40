/* main.c — vdisk-mount: show a disk image's partitions, or the files inside
 * them, through FUSE.  For now only --help and --version: the mounts arrive
 * with their own issue, and until then every other use fails with a message
 * rather than pretending to work.
 *
 * Thread model: single-threaded.
 */
#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: vdisk-mount [OPTIONS] IMAGE MOUNTPOINT\n"
            "Show a disk image (raw, qcow2) and its partitions as files.\n"
            "\n"
            "  -h, --help       show this help and exit\n"
            "  -V, --version    show the version and exit\n"
            "\n"
            "Mounting is not implemented yet.\n");
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "-V") || !strcmp(argv[i], "--version")) {
            printf("vdisk-mount %s\n", VDISK_VERSION);
            return 0;
        }
    }
    fprintf(stderr, "vdisk-mount: mounting is not implemented yet\n");
    usage(stderr);
    return 1;
}
