/* main.c — vdisk-nbd: serve a disk image over the NBD protocol, or attach it
 * to the kernel as /dev/nbdX.  For now only --help and --version: the server
 * itself arrives with its own issue, and until then every other use fails
 * with a message rather than pretending to work.
 *
 * Thread model: single-threaded.
 */
#include <stdio.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: vdisk-nbd [OPTIONS] IMAGE\n"
            "Serve a disk image (raw, qcow2) over the NBD protocol.\n"
            "\n"
            "  -h, --help       show this help and exit\n"
            "  -V, --version    show the version and exit\n"
            "\n"
            "The NBD server is not implemented yet.\n");
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "-V") || !strcmp(argv[i], "--version")) {
            printf("vdisk-nbd %s\n", VDISK_VERSION);
            return 0;
        }
    }
    fprintf(stderr, "vdisk-nbd: the NBD server is not implemented yet\n");
    usage(stderr);
    return 1;
}
