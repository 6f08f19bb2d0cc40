/* bftest.c — a small command-line window onto libblockfmt for the tests:
 * read a whole image (optionally from many threads in random-sized pieces),
 * print its allocation map in qemu-img's JSON shape, its info, snapshots and
 * partition table, and write, zero or discard ranges.
 *
 *   bftest [OPTIONS] COMMAND IMAGE [ARGS]
 *   commands: info | cat [OUT] | map | snapshots | parts | read OFF LEN |
 *             write OFF FILE | zero OFF LEN | discard OFF LEN | flush
 *   options:  -f FMT  --snapshot S  --no-backing  --no-parent-check  --rw  --part N
 *             --sector-size N  --threads N  --chunk BYTES (0 = random sizes)
 *             --seed N  --unmap  --fast  --overlay
 *
 * Exit status 0 on success, 1 on an error (message on stderr), 2 on usage.
 * Thread model: `cat --threads N` reads from N threads sharing one handle.
 */
#include "blockfmt.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct {
    const char *format, *snapshot;
    unsigned flags;
    int part;
    unsigned sector_size;
    unsigned threads;
    long long chunk;
    unsigned seed;
    unsigned zero_flags;
    bool overlay;
} opt = { .part = -1, .threads = 1, .chunk = 1 << 20, .seed = 1 };

/* Images open in main(), closed by die() so that an error exit leaves
 * nothing for LeakSanitizer to report that is not a real leak. */
static struct bf_image *g_part, *g_disk;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("bftest: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (g_part != g_disk)
        bf_close(g_part);
    bf_close(g_disk);
    exit(1);
}

static uint64_t num(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end || end == s)
        die("not a number: %s", s);
    return v;
}

/* ------------------------------------------------------------------ cat */

struct piece { uint64_t off, len; };

struct cat_job {
    struct bf_image *img;
    int fd;
    struct piece *pieces;
    size_t n;
    atomic_size_t next;
    atomic_int failed;
};

static void *cat_worker(void *arg)
{
    struct cat_job *j = arg;
    size_t cap = 0;
    uint8_t *buf = NULL;
    for (;;) {
        size_t i = atomic_fetch_add(&j->next, 1);
        if (i >= j->n || atomic_load(&j->failed))
            break;
        struct piece *p = &j->pieces[i];
        if (p->len > cap) {
            free(buf);
            cap = p->len;
            buf = malloc(cap);
            if (!buf)
                die("out of memory");
        }
        int r = bf_pread(j->img, buf, p->len, p->off);
        if (r < 0) {
            fprintf(stderr, "bftest: read at %" PRIu64 ": %s\n", p->off, bf_errmsg(j->img));
            atomic_store(&j->failed, 1);
            break;
        }
        if (pwrite(j->fd, buf, p->len, (off_t)p->off) != (ssize_t)p->len) {
            /* pipes cannot seek: fall back to plain write (single thread only) */
            if (errno != ESPIPE || write(j->fd, buf, p->len) != (ssize_t)p->len) {
                perror("bftest: write");
                atomic_store(&j->failed, 1);
                break;
            }
        }
    }
    free(buf);
    return NULL;
}

static int cmd_cat(struct bf_image *img, const char *out)
{
    uint64_t size = bf_size(img);
    int fd = 1;
    if (out) {
        fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0)
            die("%s: %s", out, strerror(errno));
    } else if (opt.threads > 1) {
        die("cat --threads needs an output file");
    }
    /* Cut the disk into pieces: fixed size, or random sizes from 1 byte to
     * 1 MiB so that reads start and end at every kind of alignment. */
    size_t cap = 1024, n = 0;
    struct piece *pieces = malloc(cap * sizeof *pieces);
    uint64_t seed = opt.seed * 6364136223846793005ull + 1442695040888963407ull;
    for (uint64_t off = 0; off < size;) {
        uint64_t len;
        if (opt.chunk > 0) {
            len = (uint64_t)opt.chunk;
        } else {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            unsigned kind = (unsigned)(seed >> 60) & 3;
            uint64_t r = seed >> 20;
            len = kind == 0 ? 1 + r % 512 : kind == 1 ? 1 + r % 70000 : 1 + r % (1 << 20);
        }
        if (len > size - off)
            len = size - off;
        if (n == cap) {
            cap *= 2;
            pieces = realloc(pieces, cap * sizeof *pieces);
        }
        if (!pieces)
            die("out of memory");
        pieces[n++] = (struct piece){ off, len };
        off += len;
    }
    struct cat_job job = { .img = img, .fd = fd, .pieces = pieces, .n = n };
    atomic_init(&job.next, 0);
    atomic_init(&job.failed, 0);
    unsigned t = opt.threads ? opt.threads : 1;
    pthread_t *tids = calloc(t, sizeof *tids);
    for (unsigned i = 0; i < t; i++)
        pthread_create(&tids[i], NULL, cat_worker, &job);
    for (unsigned i = 0; i < t; i++)
        pthread_join(tids[i], NULL);
    free(tids);
    free(pieces);
    if (out) {
        if (ftruncate(fd, (off_t)size) < 0)
            die("%s: %s", out, strerror(errno));
        close(fd);
    }
    return atomic_load(&job.failed) ? 1 : 0;
}

/* ------------------------------------------------------------------ map */

/* One line per run, coalesced, in the shape of `qemu-img map --output=json`
 * (qemu's depth counts from 0 for the top image). */
static int cmd_map(struct bf_image *img)
{
    uint64_t size = bf_size(img), off = 0;
    struct bf_status cur = { 0 }, st;
    uint64_t cur_start = 0;
    bool have = false;
    printf("[");
    bool first = true;
    while (off < size) {
        int r = bf_block_status(img, off, size - off, &st);
        if (r < 0)
            die("block status at %" PRIu64 ": %s", off, bf_errmsg(img));
        if (have && st.flags == cur.flags && st.depth == cur.depth) {
            cur.len += st.len;
        } else {
            if (have) {
                printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %u, "
                       "\"present\": %s, \"zero\": %s, \"data\": %s}", first ? "" : ",\n",
                       cur_start, cur.len, cur.depth - 1,
                       cur.flags & BF_STATUS_ALLOCATED ? "true" : "false",
                       cur.flags & BF_STATUS_ZERO ? "true" : "false",
                       cur.flags & BF_STATUS_DATA ? "true" : "false");
                first = false;
            }
            cur = st;
            cur_start = off;
            have = true;
        }
        off += st.len;
    }
    if (have)
        printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %u, "
               "\"present\": %s, \"zero\": %s, \"data\": %s}", first ? "" : ",\n",
               cur_start, cur.len, cur.depth - 1,
               cur.flags & BF_STATUS_ALLOCATED ? "true" : "false",
               cur.flags & BF_STATUS_ZERO ? "true" : "false",
               cur.flags & BF_STATUS_DATA ? "true" : "false");
    printf("]\n");
    return 0;
}

/* ------------------------------------------------------------ info etc. */

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static int cmd_info(struct bf_image *img)
{
    struct bf_info in;
    bf_get_info(img, &in);
    printf("format: %s\n", in.format);
    printf("size: %" PRIu64 "\n", in.size);
    printf("file_size: %" PRIu64 "\n", in.file_size);
    if (in.format_version)
        printf("version: %s\n", in.format_version);
    if (in.cluster_size)
        printf("cluster_size: %" PRIu32 "\n", in.cluster_size);
    if (in.compression)
        printf("compression: %s\n", in.compression);
    if (in.backing_file)
        printf("backing_file: %s\n", in.backing_file);
    if (in.backing_format)
        printf("backing_format: %s\n", in.backing_format);
    if (in.data_file)
        printf("data_file: %s\n", in.data_file);
    if (in.snapshot)
        printf("snapshot: %s\n", in.snapshot);
    printf("snapshots: %u\n", in.nb_snapshots);
    printf("flags:%s%s%s%s\n", in.flags & BF_INFO_DIRTY ? " dirty" : "",
           in.flags & BF_INFO_CORRUPT ? " corrupt" : "",
           in.flags & BF_INFO_EXTENDED_L2 ? " extended_l2" : "",
           in.flags & BF_INFO_DATA_FILE_RAW ? " data_file_raw" : "");
    unsigned depth = 1;
    for (struct bf_image *b = bf_backing(img); b; b = bf_backing(b))
        printf("chain[%u]: %s %s\n", depth++, bf_format(b), bf_filename(b));
    return 0;
}

static int cmd_snapshots(struct bf_image *img)
{
    struct bf_snapshot *l;
    size_t n;
    if (bf_snapshots(img, &l, &n) < 0)
        die("%s", bf_errmsg(img));
    for (size_t i = 0; i < n; i++)
        printf("%s\t%s\t%" PRIu64 "\t%" PRIu64 "\n", l[i].id, l[i].name, l[i].disk_size,
               l[i].vm_state_size);
    bf_snapshots_free(l, n);
    return 0;
}

/* Partitions as JSON, in sfdisk's units (sectors) so tests can compare. */
static int cmd_parts(struct bf_image *img)
{
    struct bf_ptable *t;
    if (bf_ptable_read(img, opt.sector_size, &t) < 0)
        die("%s", bf_errmsg(img));
    const char *label = t->kind == BF_PTABLE_GPT ? "gpt" : t->kind == BF_PTABLE_MBR ? "dos" : "none";
    char g[37];
    printf("{\"label\": \"%s\", \"sectorsize\": %u, \"used_backup\": %s, ", label,
           t->sector_size, t->used_backup_gpt ? "true" : "false");
    if (t->kind == BF_PTABLE_GPT)
        printf("\"id\": \"%s\", ", bf_guid_str(t->disk_guid, g));
    else
        printf("\"id\": \"0x%08" PRIx32 "\", ", t->mbr_id);
    printf("\"partitions\": [");
    for (size_t i = 0; i < t->n; i++) {
        const struct bf_partition *p = &t->parts[i];
        printf("%s\n  {\"number\": %u, \"start\": %" PRIu64 ", \"size\": %" PRIu64
               ", \"start_bytes\": %" PRIu64 ", \"length_bytes\": %" PRIu64 ", ",
               i ? "," : "", p->number, p->start / t->sector_size, p->length / t->sector_size,
               p->start, p->length);
        if (t->kind == BF_PTABLE_GPT) {
            printf("\"type\": \"%s\", ", bf_guid_str(p->type_guid, g));
            printf("\"uuid\": \"%s\", \"attrs\": %" PRIu64 ", \"name\": ", bf_guid_str(p->uuid, g),
                   p->gpt_attrs);
            json_str(p->name);
            printf(", ");
        } else {
            printf("\"type\": \"%x\", ", p->mbr_type);
        }
        printf("\"bootable\": %s, \"extended\": %s, \"logical\": %s}",
               p->flags & BF_PART_BOOTABLE ? "true" : "false",
               p->flags & BF_PART_EXTENDED ? "true" : "false",
               p->flags & BF_PART_LOGICAL ? "true" : "false");
    }
    printf("]}\n");
    free(t);
    return 0;
}

static int cmd_read(struct bf_image *img, uint64_t off, uint64_t len)
{
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        die("out of memory");
    if (bf_pread(img, buf, len, off) < 0) {
        free(buf);
        die("%s", bf_errmsg(img));
    }
    fwrite(buf, 1, len, stdout);
    free(buf);
    return 0;
}

static int cmd_write(struct bf_image *img, uint64_t off, const char *file)
{
    FILE *f = fopen(file, "rb");
    if (!f)
        die("%s: %s", file, strerror(errno));
    uint8_t buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        if (bf_pwrite(img, buf, n, off) < 0) {
            fclose(f);
            die("%s", bf_errmsg(img));
        }
        off += n;
    }
    fclose(f);
    if (bf_flush(img) < 0)
        die("%s", bf_errmsg(img));
    return 0;
}

static void usage(int code) __attribute__((noreturn));
static void usage(int code)
{
    fprintf(code ? stderr : stdout,
            "usage: bftest [OPTIONS] COMMAND IMAGE [ARGS]\n"
            "commands: info | cat [OUT] | map | snapshots | parts | read OFF LEN |\n"
            "          write OFF FILE | zero OFF LEN | discard OFF LEN | flush\n"
            "options:  -f FMT --snapshot S --no-backing --no-parent-check --rw --part N\n"
            "          --sector-size N\n"
            "          --threads N --chunk BYTES (0: random) --seed N --unmap --fast\n"
            "          --overlay (writes go to a throwaway overlay)\n");
    exit(code);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        { "format", required_argument, 0, 'f' },
        { "snapshot", required_argument, 0, 's' },
        { "no-backing", no_argument, 0, 'B' },
        { "no-parent-check", no_argument, 0, 'P' },
        { "rw", no_argument, 0, 'w' },
        { "part", required_argument, 0, 'p' },
        { "sector-size", required_argument, 0, 'S' },
        { "threads", required_argument, 0, 't' },
        { "chunk", required_argument, 0, 'c' },
        { "seed", required_argument, 0, 'r' },
        { "unmap", no_argument, 0, 'u' },
        { "fast", no_argument, 0, 'F' },
        { "overlay", no_argument, 0, 'O' },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "+f:h", lo, NULL)) != -1) {
        switch (c) {
        case 'f': opt.format = optarg; break;
        case 's': opt.snapshot = optarg; break;
        case 'B': opt.flags |= BF_OPEN_NO_BACKING; break;
        case 'P': opt.flags |= BF_OPEN_NO_PARENT_CHECK; break;
        case 'w': opt.flags |= BF_OPEN_RDWR; break;
        case 'p': opt.part = (int)num(optarg); break;
        case 'S': opt.sector_size = (unsigned)num(optarg); break;
        case 't': opt.threads = (unsigned)num(optarg); break;
        case 'c': opt.chunk = (long long)num(optarg); break;
        case 'r': opt.seed = (unsigned)num(optarg); break;
        case 'u': opt.zero_flags |= BF_ZERO_MAY_UNMAP; break;
        case 'F': opt.zero_flags |= BF_ZERO_FAST; break;
        case 'O': opt.overlay = true; break;
        case 'h': usage(0);
        default: usage(2);
        }
    }
    if (argc - optind < 2)
        usage(2);
    const char *cmd = argv[optind], *path = argv[optind + 1];
    char **args = argv + optind + 2;
    int nargs = argc - optind - 2;

    struct bf_open_opts o = { .format = opt.format, .flags = opt.flags, .snapshot = opt.snapshot };
    struct bf_image *img, *disk;
    int orc = bf_open(path, &o, &disk);
    g_disk = g_part = disk;
    if (orc < 0)
        die("%s", bf_errmsg(disk));
    if (opt.overlay) {
        orc = bf_open_overlay(disk, &disk);
        g_disk = g_part = disk;
        if (orc < 0)
            die("%s", bf_errmsg(disk));
    }
    img = disk;
    if (opt.part >= 0) {
        struct bf_ptable *t;
        if (bf_ptable_read(disk, opt.sector_size, &t) < 0)
            die("%s", bf_errmsg(disk));
        const struct bf_partition *p = NULL;
        for (size_t i = 0; i < t->n; i++)
            if (t->parts[i].number == (unsigned)opt.part)
                p = &t->parts[i];
        uint64_t start = p ? p->start : 0, length = p ? p->length : 0;
        free(t);
        if (!p)
            die("no partition %d", opt.part);
        orc = bf_open_slice(disk, start, length, &img);
        g_part = img;
        if (orc < 0)
            die("%s", bf_errmsg(img));
    }

    int rc;
    if (!strcmp(cmd, "info"))
        rc = cmd_info(img);
    else if (!strcmp(cmd, "cat"))
        rc = cmd_cat(img, nargs > 0 ? args[0] : NULL);
    else if (!strcmp(cmd, "map"))
        rc = cmd_map(img);
    else if (!strcmp(cmd, "snapshots"))
        rc = cmd_snapshots(img);
    else if (!strcmp(cmd, "parts"))
        rc = cmd_parts(img);
    else if (!strcmp(cmd, "read") && nargs == 2)
        rc = cmd_read(img, num(args[0]), num(args[1]));
    else if (!strcmp(cmd, "write") && nargs == 2)
        rc = cmd_write(img, num(args[0]), args[1]);
    else if (!strcmp(cmd, "zero") && nargs == 2)
        rc = bf_zero(img, num(args[0]), num(args[1]), opt.zero_flags) < 0 ? (die("%s", bf_errmsg(img)), 1) : 0;
    else if (!strcmp(cmd, "discard") && nargs == 2)
        rc = bf_discard(img, num(args[0]), num(args[1])) < 0 ? (die("%s", bf_errmsg(img)), 1) : 0;
    else if (!strcmp(cmd, "flush"))
        rc = bf_flush(img) < 0 ? (die("%s", bf_errmsg(img)), 1) : 0;
    else
        usage(2);
    if (img != disk)
        bf_close(img);
    bf_close(disk);
    return rc;
}
