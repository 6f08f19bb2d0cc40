/* test-partition.c — unit tests of the partition-table reader: disks are
 * built byte by byte in memory (MBR, EBR chains, GPT with correct or broken
 * CRCs, 512- and 4096-byte sectors), written to a temporary raw file and read
 * back through bf_open + bf_ptable_read.  Also a small mutation fuzzer: the
 * reader must never crash or read outside a buffer (run under ASan/UBSan by
 * `make SAN=1`), whatever the bytes.
 *
 * Thread model: single-threaded.
 */
#include "blockfmt.h"
#include "tap.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

/* TAP_OK evaluates its condition twice; the helpers below print diagnostics,
 * so evaluate once. */
#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        bool check_ok_ = (cond);                                              \
        TAP_OK(check_ok_, __VA_ARGS__);                                       \
    } while (0)

/* ------------------------------------------------------------- disks */

struct disk {
    uint8_t *b;
    size_t size;
};

static struct disk disk_new(size_t size)
{
    struct disk d = { calloc(1, size ? size : 1), size };
    if (!d.b) {
        perror("calloc");
        exit(2);
    }
    return d;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> 8 * i); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> 8 * i); }

/* MBR or EBR entry @slot (0-3) of the record at byte @rec. */
static void mbr_entry(struct disk *d, uint64_t rec, unsigned slot, uint8_t boot, uint8_t type,
                      uint32_t start, uint32_t count)
{
    uint8_t *p = d->b + rec + 446 + 16 * slot;
    p[0] = boot;
    p[4] = type;
    put32(p + 8, start);
    put32(p + 12, count);
    d->b[rec + 510] = 0x55;
    d->b[rec + 511] = 0xAA;
}

struct result {
    int r;
    struct bf_ptable *t;
    char msg[1024];
};

static char tmpl[64];

/* Write @d to a temp file, open it as raw and read its table. */
static struct result read_table(const struct disk *d, unsigned ss)
{
    struct result res = { 0 };
    snprintf(tmpl, sizeof tmpl, "%s/vdisk-part-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    int fd = mkstemp(tmpl);
    if (fd < 0 || (d->size && write(fd, d->b, d->size) != (ssize_t)d->size)) {
        perror("temp file");
        exit(2);
    }
    close(fd);
    struct bf_open_opts o = { .format = "raw" };
    struct bf_image *img;
    res.r = bf_open(tmpl, &o, &img);
    if (res.r == 0) {
        res.r = bf_ptable_read(img, ss, &res.t);
        if (res.r < 0) {
            snprintf(res.msg, sizeof res.msg, "%s", bf_errmsg(img));
            res.t = NULL;
        }
    } else {
        snprintf(res.msg, sizeof res.msg, "open: %s", bf_errmsg(img));
    }
    bf_close(img);
    unlink(tmpl);
    return res;
}

static const struct bf_partition *part(const struct bf_ptable *t, unsigned number)
{
    for (size_t i = 0; t && i < t->n; i++)
        if (t->parts[i].number == number)
            return &t->parts[i];
    return NULL;
}

static bool part_is(const struct bf_ptable *t, unsigned number, uint64_t start, uint64_t len,
                    unsigned flags)
{
    const struct bf_partition *p = part(t, number);
    if (!p) {
        printf("#   no partition %u\n", number);
        return false;
    }
    if (p->start != start || p->length != len || p->flags != flags) {
        printf("#   partition %u: start %llu length %llu flags %u; wanted %llu %llu %u\n", number,
               (unsigned long long)p->start, (unsigned long long)p->length, p->flags,
               (unsigned long long)start, (unsigned long long)len, flags);
        return false;
    }
    return true;
}

static bool numbers_are(const struct bf_ptable *t, const unsigned *want, size_t n)
{
    if (!t || t->n != n) {
        printf("#   %zu partitions, wanted %zu\n", t ? t->n : 0, n);
        return false;
    }
    for (size_t i = 0; i < n; i++)
        if (t->parts[i].number != want[i]) {
            printf("#   parts[%zu] is number %u, wanted %u\n", i, t->parts[i].number, want[i]);
            return false;
        }
    return true;
}

static bool failed_with(struct result *res, int err, const char *text)
{
    if (res->r != err || !strstr(res->msg, text)) {
        printf("#   r=%d (wanted %d), message: %s (wanted \"%s\")\n", res->r, err, res->msg, text);
        return false;
    }
    printf("#   message: %s\n", res->msg);
    return true;
}

static void done(struct result *res) { free(res->t); res->t = NULL; }

#define MiB (1024u * 1024u)

/* --------------------------------------------------------- tiny disks */

static void test_tiny(void)
{
    static const size_t sizes[] = { 0, 1, 511 };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        struct disk d = disk_new(sizes[i]);
        memset(d.b, 0xAA, d.size);
        struct result r = read_table(&d, 0);
        CHECK(r.r == 0 && r.t && r.t->kind == BF_PTABLE_NONE && r.t->n == 0,
               "%zu-byte disk: no table", sizes[i]);
        done(&r);
        free(d.b);
    }

    struct disk d = disk_new(512);
    struct result r = read_table(&d, 0);
    CHECK(r.r == 0 && r.t->kind == BF_PTABLE_NONE, "512 zero bytes: no table");
    done(&r);

    /* A real MBR cut from a larger disk: every partition starts past the end. */
    mbr_entry(&d, 0, 0, 0x80, 0x83, 2048, 1024000);
    mbr_entry(&d, 0, 1, 0, 0x8e, 1026048, 24139776);
    r = read_table(&d, 0);
    CHECK(r.r == 0 && r.t->kind == BF_PTABLE_MBR && r.t->n == 0,
           "512-byte disk with an MBR whose partitions lie past its end: MBR, no partitions");
    done(&r);

    r = read_table(&d, 4096);
    CHECK(r.r == 0 && r.t->kind == BF_PTABLE_NONE,
           "512-byte disk read with 4096-byte sectors: no table");
    done(&r);

    memset(d.b, 0, d.size);
    mbr_entry(&d, 0, 0, 0, 0xEE, 1, 0xFFFFFFFF);
    r = read_table(&d, 0);
    CHECK(failed_with(&r, -EINVAL, "no valid GPT"),
           "512-byte disk with a protective MBR: error, no GPT");
    done(&r);
    free(d.b);

    d = disk_new(1024);
    mbr_entry(&d, 0, 0, 0, 0xEE, 1, 1);
    memcpy(d.b + 512, "EFI PART", 8);
    r = read_table(&d, 0);
    CHECK(failed_with(&r, -EINVAL, "header size"), "1 KiB disk with a truncated GPT header: error");
    done(&r);
    free(d.b);
}

static void test_bad_args(void)
{
    struct disk d = disk_new(4096);
    struct result r = read_table(&d, 1024);
    CHECK(failed_with(&r, -EINVAL, "sector size 1024"), "sector size 1024 is refused");
    done(&r);
    r = read_table(&d, 511);
    CHECK(r.r == -EINVAL, "sector size 511 is refused");
    done(&r);
    free(d.b);
    char buf[37];
    static const uint8_t linux_fs[16] = { 0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47,
                                          0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4 };
    CHECK(!strcmp(bf_guid_str(linux_fs, buf), "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
           "bf_guid_str: %s", buf);
}

/* ---------------------------------------------------------------- MBR */

static void test_mbr_primaries(void)
{
    struct disk d = disk_new(8 * MiB);        /* 16384 sectors */
    put32(d.b + 440, 0xDEADBEEF);
    mbr_entry(&d, 0, 0, 0x00, 0x83, 2048, 2048);
    mbr_entry(&d, 0, 1, 0x00, 0x07, 4096, 0);        /* size 0: empty */
    mbr_entry(&d, 0, 2, 0x80, 0x0c, 4096, 4096);
    mbr_entry(&d, 0, 3, 0x00, 0x00, 8192, 1024);     /* type 0 with a size: shown (Linux) */
    struct result r = read_table(&d, 0);
    static const unsigned want[] = { 1, 3, 4 };
    CHECK(r.r == 0 && r.t->kind == BF_PTABLE_MBR && r.t->sector_size == 512 &&
           r.t->mbr_id == 0xDEADBEEF && numbers_are(r.t, want, 3),
           "MBR: primaries 1, 3, 4 (slot 2 empty leaves a gap), id, sector size");
    CHECK(r.t && part_is(r.t, 1, 2048 * 512, 2048 * 512, 0) &&
           part_is(r.t, 3, 4096 * 512, 4096 * 512, BF_PART_BOOTABLE) &&
           part(r.t, 3)->mbr_type == 0x0c && part(r.t, 4)->mbr_type == 0 &&
           part(r.t, 1)->name[0] == 0, "MBR: starts, lengths in bytes, bootable flag, types");
    done(&r);

    /* Past the end: start beyond is left out, a partition running past is cut. */
    mbr_entry(&d, 0, 1, 0, 0x83, 16384, 100);
    mbr_entry(&d, 0, 3, 0, 0x83, 12288, 8192);
    r = read_table(&d, 0);
    static const unsigned want2[] = { 1, 3, 4 };
    CHECK(r.r == 0 && numbers_are(r.t, want2, 3) &&
           part_is(r.t, 4, 12288 * 512, 4096 * 512, 0),
           "MBR: a partition starting at the disk end is left out, one running past is cut");
    done(&r);

    /* Boot code where the table should be: a volume boot record, no table. */
    mbr_entry(&d, 0, 2, 0x0d, 0x83, 4096, 4096);
    r = read_table(&d, 0);
    CHECK(r.r == 0 && r.t->kind == BF_PTABLE_NONE && r.t->n == 0,
           "MBR with a boot indicator of 0x0d: not a partition table");
    done(&r);

    d.b[510] = 0;
    r = read_table(&d, 0);
    CHECK(r.r == 0 && r.t->kind == BF_PTABLE_NONE, "no 0x55AA: no table");
    done(&r);
    free(d.b);
}

/* ext at sector 2048 of 8192 sectors; logicals at +1 of EBRs 2048, 4096, 6144 */
static struct disk ext_disk(void)
{
    struct disk d = disk_new(8 * MiB);
    mbr_entry(&d, 0, 0, 0x80, 0x83, 63, 1985);
    mbr_entry(&d, 0, 1, 0, 0x0f, 2048, 8192);
    mbr_entry(&d, 0, 2, 0, 0x83, 10240, 2048);
    for (unsigned i = 0; i < 3; i++) {
        uint64_t ebr = 2048 + 2048 * i;
        mbr_entry(&d, ebr * 512, 0, 0, 0x83, 1, 2047);
        if (i < 2)
            mbr_entry(&d, ebr * 512, 1, 0, 0x05, 2048 * (i + 1), 2048);
    }
    return d;
}

static void test_mbr_logicals(void)
{
    struct disk d = ext_disk();
    struct result r = read_table(&d, 0);
    static const unsigned want[] = { 1, 2, 3, 5, 6, 7 };
    CHECK(r.r == 0 && numbers_are(r.t, want, 6), "MBR: primaries 1-3, logicals 5-7");
    CHECK(r.t && part_is(r.t, 2, 2048 * 512, 8192 * 512, BF_PART_EXTENDED) &&
           part_is(r.t, 5, 2049 * 512, 2047 * 512, BF_PART_LOGICAL) &&
           part_is(r.t, 6, 4097 * 512, 2047 * 512, BF_PART_LOGICAL) &&
           part_is(r.t, 7, 6145 * 512, 2047 * 512, BF_PART_LOGICAL) &&
           part_is(r.t, 1, 63 * 512, 1985 * 512, BF_PART_BOOTABLE),
           "MBR: extended keeps its full extent; logicals relative to their EBR");
    done(&r);

    /* A blank first EBR: an extended partition with no logicals. */
    struct disk e = disk_new(8 * MiB);
    mbr_entry(&e, 0, 0, 0, 0x05, 2048, 4096);
    r = read_table(&e, 0);
    static const unsigned want_e[] = { 1 };
    CHECK(r.r == 0 && numbers_are(r.t, want_e, 1), "MBR: empty extended partition");
    done(&r);
    free(e.b);

    /* An EBR whose data slot is empty uses no number. */
    memset(d.b + 4096 * 512 + 446, 0, 16);
    r = read_table(&d, 0);
    static const unsigned want2[] = { 1, 2, 3, 5, 6 };
    CHECK(r.r == 0 && numbers_are(r.t, want2, 5) &&
           part_is(r.t, 6, 6145 * 512, 2047 * 512, BF_PART_LOGICAL),
           "MBR: an EBR without a data entry uses no number");
    done(&r);
    free(d.b);

    /* Loops: back to the first EBR, and to itself. */
    d = ext_disk();
    mbr_entry(&d, 6144 * 512, 1, 0, 0x05, 0, 2048);
    r = read_table(&d, 0);
    CHECK(failed_with(&r, -EINVAL, "loops"), "MBR: EBR chain looping to the first EBR");
    done(&r);
    mbr_entry(&d, 6144 * 512, 1, 0, 0x05, 4096, 2048);
    r = read_table(&d, 0);
    CHECK(failed_with(&r, -EINVAL, "loops"), "MBR: EBR linking to itself");
    done(&r);
    free(d.b);

    d = ext_disk();
    mbr_entry(&d, 4096 * 512, 1, 0, 0x05, 8192, 2048);
    r = read_table(&d, 0);
    CHECK(failed_with(&r, -EINVAL, "outside extended"), "MBR: EBR link outside the extended partition");
    done(&r);
    free(d.b);

    d = ext_disk();
    mbr_entry(&d, 6144 * 512, 0, 0, 0x83, 1, 4096);  /* runs past the container end */
    r = read_table(&d, 0);
    CHECK(failed_with(&r, -EINVAL, "outside extended"), "MBR: logical partition outside the extended one");
    done(&r);
    /* The same in EBR entry 3: Linux's "random garbage" rule skips it. */
    memset(d.b + 6144 * 512 + 446, 0, 16);
    mbr_entry(&d, 6144 * 512, 2, 0, 0x83, 1, 4096);
    r = read_table(&d, 0);
    static const unsigned want3[] = { 1, 2, 3, 5, 6 };
    CHECK(r.r == 0 && numbers_are(r.t, want3, 5), "MBR: garbage in EBR entry 3 is skipped");
    done(&r);
    free(d.b);

    d = ext_disk();
    mbr_entry(&d, 4096 * 512, 0, 0, 0x83, 1, 2048 + 100);   /* into logical 7 */
    r = read_table(&d, 0);
    CHECK(failed_with(&r, -EINVAL, "overlaps"), "MBR: overlapping logical partitions");
    done(&r);
    free(d.b);

    d = ext_disk();
    mbr_entry(&d, 0, 1, 0, 0x05, 0, 8192);
    r = read_table(&d, 0);
    CHECK(failed_with(&r, -EINVAL, "sector 0"), "MBR: extended partition at sector 0");
    done(&r);
    free(d.b);
}

/* A chain of @n EBRs each holding one 1-sector logical partition. */
static void test_mbr_long_chain(unsigned n, bool ok)
{
    struct disk d = disk_new((size_t)(2 * n + 4) * 512);
    mbr_entry(&d, 0, 0, 0, 0x05, 2, 2 * n);
    for (unsigned i = 0; i < n; i++) {
        uint64_t ebr = 2 + 2 * i;
        mbr_entry(&d, ebr * 512, 0, 0, 0x83, 1, 1);
        if (i + 1 < n)
            mbr_entry(&d, ebr * 512, 1, 0, 0x05, 2 * (i + 1), 2);
    }
    struct result r = read_table(&d, 0);
    if (ok)
        CHECK(r.r == 0 && r.t->n == n + 1 && r.t->parts[n].number == n + 4,
               "MBR: chain of %u logicals is read", n);
    else
        CHECK(r.r == -EINVAL && r.msg[0], "MBR: chain of %u logicals is refused (%s)", n, r.msg);
    done(&r);
    free(d.b);
}

static void test_mbr_4096(void)
{
    struct disk d = disk_new(64 * MiB);           /* 16384 sectors of 4096 */
    mbr_entry(&d, 0, 0, 0x80, 0x83, 256, 1024);
    mbr_entry(&d, 0, 1, 0, 0x05, 1280, 4096);
    mbr_entry(&d, 1280 * 4096, 0, 0, 0x83, 1, 1000);
    mbr_entry(&d, 1280 * 4096, 1, 0, 0x05, 2048, 1024);
    mbr_entry(&d, (1280 + 2048) * 4096, 0, 0, 0x82, 8, 1000);
    struct result r = read_table(&d, 4096);
    static const unsigned want[] = { 1, 2, 5, 6 };
    CHECK(r.r == 0 && r.t->sector_size == 4096 && numbers_are(r.t, want, 4) &&
           part_is(r.t, 1, 256 * 4096ull, 1024 * 4096ull, BF_PART_BOOTABLE) &&
           part_is(r.t, 6, (1280 + 2048 + 8) * 4096ull, 1000 * 4096ull, BF_PART_LOGICAL),
           "MBR with 4096-byte sectors when asked");
    done(&r);
    r = read_table(&d, 0);
    CHECK(r.r == 0 && r.t->sector_size == 512 && part_is(r.t, 1, 256 * 512, 1024 * 512, BF_PART_BOOTABLE),
           "a plain MBR is read with 512-byte sectors by default");
    done(&r);
    free(d.b);
}

/* ---------------------------------------------------------------- GPT */

struct gpt {
    unsigned ss;
    uint64_t sectors;
    uint32_t n, esize;
    uint8_t *array;
    uint64_t first_usable, last_usable, backup_array_lba;
};

static const uint8_t LINUX_FS[16] = { 0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47,
                                      0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4 };

static struct gpt gpt_new(unsigned ss, uint64_t sectors, uint32_t n, uint32_t esize)
{
    struct gpt g = { ss, sectors, n, esize, calloc(n, esize), 0, 0, 0 };
    uint64_t asect = ((uint64_t)n * esize + ss - 1) / ss;
    g.first_usable = 2 + asect;
    g.backup_array_lba = sectors - 1 - asect;
    g.last_usable = g.backup_array_lba - 1;
    return g;
}

/* Entry @i with a name given as UTF-16 code units. */
static void gpt_entry(struct gpt *g, uint32_t i, const uint8_t type[16], uint64_t first,
                      uint64_t last, uint64_t attrs, const uint16_t *name, size_t nunits)
{
    uint8_t *e = g->array + (size_t)i * g->esize;
    memcpy(e, type, 16);
    for (int k = 0; k < 16; k++)
        e[16 + k] = (uint8_t)(0x10 * (i + 1) + k);
    put64(e + 32, first);
    put64(e + 40, last);
    put64(e + 48, attrs);
    for (size_t k = 0; k < nunits && k < 36; k++)
        put16(e + 56 + 2 * k, name[k]);
}

static void hdr_fix_crc(struct disk *d, unsigned ss, uint64_t lba)
{
    uint8_t *h = d->b + lba * ss;
    uint32_t hsize = h[12] | h[13] << 8;
    put32(h + 16, 0);
    put32(h + 16, (uint32_t)crc32(0, h, hsize));
}

static void gpt_header(struct disk *d, const struct gpt *g, uint64_t lba, uint64_t alt,
                       uint64_t array_lba)
{
    uint8_t *h = d->b + lba * g->ss;
    memset(h, 0, g->ss);
    memcpy(h, "EFI PART", 8);
    put32(h + 8, 0x00010000);
    put32(h + 12, 92);
    put64(h + 24, lba);
    put64(h + 32, alt);
    put64(h + 40, g->first_usable);
    put64(h + 48, g->last_usable);
    for (int k = 0; k < 16; k++)
        h[56 + k] = (uint8_t)(0xA0 + k);
    put64(h + 72, array_lba);
    put32(h + 80, g->n);
    put32(h + 84, g->esize);
    put32(h + 88, (uint32_t)crc32(0, g->array, g->n * g->esize));
    hdr_fix_crc(d, g->ss, lba);
}

static struct disk gpt_disk(struct gpt *g)
{
    struct disk d = disk_new(g->sectors * g->ss);
    uint64_t s = g->sectors - 1;
    mbr_entry(&d, 0, 0, 0, 0xEE, 1, s > 0xFFFFFFFF ? 0xFFFFFFFF : (uint32_t)s);
    memcpy(d.b + 2 * g->ss, g->array, g->n * g->esize);
    memcpy(d.b + g->backup_array_lba * g->ss, g->array, g->n * g->esize);
    gpt_header(&d, g, 1, g->sectors - 1, 2);
    gpt_header(&d, g, g->sectors - 1, 1, g->backup_array_lba);
    return d;
}

static const uint16_t NAME_ROOT[] = { 'r', 'o', 'o', 't' };

/* 3 entries used out of 128: indexes 0, 2 and 5 (gaps at 2, 4, 5). */
static struct gpt standard_gpt(unsigned ss, uint64_t sectors)
{
    struct gpt g = gpt_new(ss, sectors, 128, 128);
    gpt_entry(&g, 0, LINUX_FS, 40, 99, 0, NAME_ROOT, 4);
    gpt_entry(&g, 2, LINUX_FS, 100, 199, 1ull << 2 | 1ull << 60, NULL, 0);
    gpt_entry(&g, 5, LINUX_FS, 200, 200, 0, NULL, 0);
    return g;
}

static bool standard_ok(const struct bf_ptable *t, unsigned ss, bool backup)
{
    static const unsigned want[] = { 1, 3, 6 };
    char buf[37];
    if (!t || t->kind != BF_PTABLE_GPT || t->sector_size != ss || t->used_backup_gpt != backup ||
        !numbers_are(t, want, 3))
        return false;
    const struct bf_partition *p = part(t, 1);
    return part_is(t, 1, 40ull * ss, 60ull * ss, 0) &&
           part_is(t, 3, 100ull * ss, 100ull * ss, BF_PART_BOOTABLE) &&
           part_is(t, 6, 200ull * ss, ss, 0) && !strcmp(p->name, "root") &&
           !strcmp(bf_guid_str(p->type_guid, buf), "0FC63DAF-8483-4772-8E79-3D69D8477DE4") &&
           p->uuid[0] == 0x10 && p->uuid[15] == 0x1F &&
           part(t, 3)->gpt_attrs == (1ull << 2 | 1ull << 60) && t->disk_guid[0] == 0xA0 &&
           part(t, 3)->mbr_type == 0;
}

static void test_gpt_basic(void)
{
    struct gpt g = standard_gpt(512, 8192);
    struct disk d = gpt_disk(&g);
    struct result r = read_table(&d, 0);
    CHECK(r.r == 0 && standard_ok(r.t, 512, false), "GPT: entries 1, 3, 6 with gaps, names, attrs");
    done(&r);
    r = read_table(&d, 512);
    CHECK(r.r == 0 && standard_ok(r.t, 512, false), "GPT: sector size 512 asked");
    done(&r);
    r = read_table(&d, 4096);
    CHECK(failed_with(&r, -EINVAL, "4096-byte sectors"), "GPT at 512 read with 4096-byte sectors: error");
    done(&r);

    /* A hybrid MBR (other entries beside 0xEE) is still a GPT disk. */
    mbr_entry(&d, 0, 1, 0x80, 0x0c, 40, 60);
    r = read_table(&d, 0);
    CHECK(r.r == 0 && standard_ok(r.t, 512, false), "GPT behind a hybrid MBR");
    done(&r);
    free(d.b);
    free(g.array);
}

static void test_gpt_damage(void)
{
    struct gpt g = standard_gpt(512, 8192);
    struct disk d = gpt_disk(&g);

    d.b[512 + 8] ^= 1;                                  /* header CRC now wrong */
    struct result r = read_table(&d, 0);
    CHECK(r.r == 0 && standard_ok(r.t, 512, true), "GPT: bad primary header CRC: backup used");
    done(&r);
    memset(d.b + 512, 0, 512);                          /* header gone */
    r = read_table(&d, 0);
    CHECK(r.r == 0 && standard_ok(r.t, 512, true), "GPT: primary header wiped: backup at the last LBA");
    done(&r);
    free(d.b);

    d = gpt_disk(&g);
    d.b[2 * 512 + 100] ^= 0x40;                         /* array CRC now wrong */
    r = read_table(&d, 0);
    CHECK(r.r == 0 && standard_ok(r.t, 512, true), "GPT: bad primary array CRC: backup used");
    done(&r);
    /* The backup is found through the primary's alternate_lba even when the
     * disk grew (backup no longer at the last LBA). */
    struct disk big = disk_new(d.size + 1 * MiB);
    memcpy(big.b, d.b, d.size);
    r = read_table(&big, 0);
    CHECK(r.r == 0 && standard_ok(r.t, 512, true), "GPT: backup found at alternate_lba on a grown disk");
    done(&r);
    free(big.b);

    d.b[(8192 - 1) * 512 + 30] ^= 1;                    /* and the backup header */
    r = read_table(&d, 0);
    CHECK(failed_with(&r, -EINVAL, "CRC"), "GPT: primary and backup damaged: error");
    done(&r);
    free(d.b);

    /* my_lba wrong (a copy of the backup header at LBA 1). */
    d = gpt_disk(&g);
    put64(d.b + 512 + 24, 5);
    hdr_fix_crc(&d, 512, 1);
    memset(d.b + (8192 - 1) * 512, 0, 512);
    r = read_table(&d, 0);
    CHECK(failed_with(&r, -EINVAL, "at LBA 5"), "GPT: header whose my_lba is wrong: error");
    done(&r);
    free(d.b);

    /* Usable range outside the disk / reversed. */
    d = gpt_disk(&g);
    put64(d.b + 512 + 48, 8192);
    hdr_fix_crc(&d, 512, 1);
    r = read_table(&d, 0);
    CHECK(r.r == 0 && standard_ok(r.t, 512, true), "GPT: last usable LBA past the disk: backup used");
    done(&r);
    free(d.b);
    free(g.array);
}

/* Header fields set to absurd values, CRC recomputed so only the range
 * checks can catch them. */
static void test_gpt_absurd(void)
{
    struct gpt g = standard_gpt(512, 8192);
    static const struct { unsigned off, width; uint64_t v; const char *what; } cases[] = {
        { 80, 4, 0xFFFFFFFF, "entries" },
        { 80, 4, 8193, "entries" },
        { 84, 4, 0, "entry size" },
        { 84, 4, 127, "entry size" },
        { 84, 4, 132, "entry size" },
        { 84, 4, 0x80000000u, "entry size" },
        { 72, 8, UINT64_MAX, "array" },
        { 72, 8, 8190, "array" },
        { 72, 8, UINT64_MAX / 512 + 1, "array" },
        { 12, 4, 91, "header size" },
        { 12, 4, 513, "header size" },
        { 40, 8, 9000, "usable" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct disk d = gpt_disk(&g);
        for (uint64_t lba = 1; lba != 0; lba = lba == 1 ? 8191 : 0) {
            uint8_t *h = d.b + lba * 512;
            if (cases[i].width == 4)
                put32(h + cases[i].off, (uint32_t)cases[i].v);
            else
                put64(h + cases[i].off, cases[i].v);
            if (cases[i].off != 12)
                hdr_fix_crc(&d, 512, lba);
            else
                put32(h + 16, 0);   /* CRC over a bogus size cannot be fixed up */
        }
        struct result r = read_table(&d, 0);
        CHECK(failed_with(&r, -EINVAL, cases[i].what), "GPT: absurd %s (%llu) in both headers: error",
               cases[i].what, (unsigned long long)cases[i].v);
        done(&r);
        free(d.b);
    }

    /* Legal but unusual: 256-byte entries, 1 entry, or the 1 MiB maximum. */
    struct gpt w = gpt_new(512, 8192, 4, 256);
    gpt_entry(&w, 3, LINUX_FS, 100, 199, 0, NAME_ROOT, 4);
    struct disk d = gpt_disk(&w);
    struct result r = read_table(&d, 0);
    static const unsigned want[] = { 4 };
    CHECK(r.r == 0 && numbers_are(r.t, want, 1) && !strcmp(r.t->parts[0].name, "root"),
           "GPT: 256-byte entries");
    done(&r);
    free(d.b);
    free(w.array);

    w = gpt_new(512, 8192, 8192, 128);
    gpt_entry(&w, 8191, LINUX_FS, 4100, 4199, 0, NULL, 0);
    d = gpt_disk(&w);
    r = read_table(&d, 0);
    static const unsigned want2[] = { 8192 };
    CHECK(r.r == 0 && numbers_are(r.t, want2, 1), "GPT: 8192 entries (1 MiB array)");
    done(&r);
    free(d.b);
    free(w.array);

    w = gpt_new(512, 8192, 0, 128);
    d = gpt_disk(&w);
    r = read_table(&d, 0);
    CHECK(r.r == 0 && r.t->kind == BF_PTABLE_GPT && r.t->n == 0, "GPT: zero entries");
    done(&r);
    free(d.b);
    free(w.array);
    free(g.array);
}

static void test_gpt_entries(void)
{
    struct gpt g = gpt_new(512, 8192, 128, 128);
    gpt_entry(&g, 0, LINUX_FS, 100, 99, 0, NULL, 0);      /* start > end by one: empty */
    gpt_entry(&g, 1, LINUX_FS, 300, 200, 0, NULL, 0);     /* start > end */
    gpt_entry(&g, 2, LINUX_FS, 8000, 8192, 0, NULL, 0);   /* end past the disk */
    gpt_entry(&g, 3, LINUX_FS, 8000, 8191, 0, NULL, 0);   /* ends on the last LBA: kept */
    gpt_entry(&g, 4, LINUX_FS, 0, UINT64_MAX, 0, NULL, 0);
    gpt_entry(&g, 5, LINUX_FS, UINT64_MAX, UINT64_MAX, 0, NULL, 0);
    static const uint8_t zero[16];
    gpt_entry(&g, 6, zero, 100, 200, 0, NULL, 0);         /* zero type: unused */
    struct disk d = gpt_disk(&g);
    struct result r = read_table(&d, 0);
    static const unsigned want[] = { 4 };
    CHECK(r.r == 0 && numbers_are(r.t, want, 1) && part_is(r.t, 4, 8000 * 512, 192 * 512, 0),
           "GPT: entries with start > end, past the disk or a zero type are left out");
    done(&r);
    free(d.b);
    free(g.array);
}

static void test_gpt_names(void)
{
    static const struct { uint16_t u[36]; size_t n; const char *utf8; const char *what; } cases[] = {
        { { 'E', 'F', 'I', ' ', 's', 'y', 's' }, 7, "EFI sys", "ASCII" },
        { { 0xE9, 0x20AC, 0x4E2D }, 3, "\xC3\xA9\xE2\x82\xAC\xE4\xB8\xAD", "2- and 3-byte UTF-8" },
        { { 'a', 0xD83D, 0xDE00, 'b' }, 4, "a\xF0\x9F\x98\x80" "b", "surrogate pair" },
        { { 0xD83D, 'A' }, 2, "\xEF\xBF\xBD" "A", "lone high surrogate" },
        { { 0xDE00, 'A' }, 2, "\xEF\xBF\xBD" "A", "lone low surrogate" },
        { { 0xDBFF, 0xDFFF }, 2, "\xF4\x8F\xBF\xBF", "U+10FFFF" },
        { { 'x', 0, 'y' }, 3, "x", "stops at the first NUL" },
    };
    struct gpt g = gpt_new(512, 8192, 128, 128);
    size_t nc = sizeof cases / sizeof cases[0];
    for (size_t i = 0; i < nc; i++)
        gpt_entry(&g, (uint32_t)i, LINUX_FS, 100 + i, 100 + i, 0, cases[i].u, cases[i].n);
    /* 36 units of U+20AC (no NUL): 108 bytes; then 35 units and a high
     * surrogate cut off by the end of the field; then 18 pairs. */
    uint16_t euro[36], cut[36], pairs[36];
    for (int k = 0; k < 36; k++) {
        euro[k] = 0x20AC;
        cut[k] = k == 35 ? 0xD83D : 'z';
        pairs[k] = k % 2 ? 0xDE00 : 0xD83D;
    }
    gpt_entry(&g, (uint32_t)nc, LINUX_FS, 200, 200, 0, euro, 36);
    gpt_entry(&g, (uint32_t)nc + 1, LINUX_FS, 201, 201, 0, cut, 36);
    gpt_entry(&g, (uint32_t)nc + 2, LINUX_FS, 202, 202, 0, pairs, 36);
    struct disk d = gpt_disk(&g);
    struct result r = read_table(&d, 0);
    CHECK(r.r == 0 && r.t->n == nc + 3, "GPT: name entries read");
    for (size_t i = 0; r.t && i < nc; i++) {
        const struct bf_partition *p = part(r.t, (unsigned)i + 1);
        CHECK(p && !strcmp(p->name, cases[i].utf8), "GPT name: %s", cases[i].what);
    }
    if (r.t) {
        const struct bf_partition *p = part(r.t, (unsigned)nc + 1);
        char want[200] = "";
        for (int k = 0; k < 36; k++)
            strcat(want, "\xE2\x82\xAC");
        CHECK(p && strlen(p->name) == 108 && !strcmp(p->name, want), "GPT name: 36 units, no NUL");
        p = part(r.t, (unsigned)nc + 2);
        CHECK(p && strlen(p->name) == 38 && !strcmp(p->name + 35, "\xEF\xBF\xBD"),
               "GPT name: high surrogate in the last unit");
        p = part(r.t, (unsigned)nc + 3);
        CHECK(p && strlen(p->name) == 72 && !memcmp(p->name, "\xF0\x9F\x98\x80", 4),
               "GPT name: 18 surrogate pairs");
    }
    done(&r);
    free(d.b);
    free(g.array);
}

static void test_gpt_4096(void)
{
    struct gpt g = standard_gpt(4096, 4096);      /* 16 MiB */
    struct disk d = gpt_disk(&g);
    struct result r = read_table(&d, 0);
    CHECK(r.r == 0 && standard_ok(r.t, 4096, false), "GPT with 4096-byte sectors: detected");
    done(&r);
    r = read_table(&d, 4096);
    CHECK(r.r == 0 && standard_ok(r.t, 4096, false), "GPT with 4096-byte sectors: asked");
    done(&r);
    r = read_table(&d, 512);
    CHECK(failed_with(&r, -EINVAL, "512-byte sectors"), "GPT at 4096 read with 512-byte sectors: error");
    done(&r);
    d.b[4096 + 8] ^= 1;
    r = read_table(&d, 0);
    CHECK(r.r == 0 && standard_ok(r.t, 4096, true), "GPT 4096: damaged primary, backup detected");
    done(&r);
    d.b[(4096 - 1) * 4096 + 8] ^= 1;
    r = read_table(&d, 0);
    CHECK(failed_with(&r, -EINVAL, "4096-byte sectors: primary header at LBA 1: header CRC"),
           "GPT 4096: both damaged: error names the 4096-byte table");
    done(&r);
    free(d.b);
    free(g.array);
}

/* ------------------------------------------------------------ fuzzing */

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Flip random bytes of the table areas; for GPT, often fix the header CRC
 * so the deeper checks run.  Pass = no crash, a valid result or a message,
 * and every partition inside the disk. */
static void test_fuzz(void)
{
    struct disk base_mbr = ext_disk();
    struct gpt g = standard_gpt(512, 8192);
    struct disk base_gpt = gpt_disk(&g);
    unsigned bad = 0, runs = 0;
    /* PART_FUZZ_ITERS=N runs longer by hand. */
    unsigned iters = getenv("PART_FUZZ_ITERS") ? (unsigned)atoi(getenv("PART_FUZZ_ITERS")) : 600;
    for (unsigned it = 0; it < iters; it++) {
        bool gpt = it & 1;
        const struct disk *base = gpt ? &base_gpt : &base_mbr;
        struct disk d = disk_new(base->size);
        memcpy(d.b, base->b, d.size);
        unsigned flips = 1 + (unsigned)(rnd() % 8);
        for (unsigned k = 0; k < flips; k++) {
            uint64_t off;
            if (gpt) {
                static const uint64_t areas[][2] = { { 446, 66 }, { 512, 92 }, { 1024, 1024 },
                                                     { 8191 * 512, 92 } };
                unsigned a = (unsigned)(rnd() % 4);
                off = areas[a][0] + rnd() % areas[a][1];
            } else {
                static const uint64_t ebrs[] = { 0, 2048, 4096, 6144 };
                off = ebrs[rnd() % 4] * 512 + 446 + rnd() % 66;
            }
            d.b[off] = (uint8_t)rnd();
        }
        if (gpt && rnd() % 2) {
            put32(d.b + 512 + 88, (uint32_t)crc32(0, d.b + 1024, 128 * 128));
            if (d.b[512 + 12] >= 92 && d.b[512 + 13] == 0 && d.b[512 + 14] == 0 && d.b[512 + 15] == 0 &&
                d.b[512 + 12] + 256 * d.b[512 + 13] <= 512)
                hdr_fix_crc(&d, 512, 1);
        }
        struct result r = read_table(&d, (unsigned)(rnd() % 2) * 512);
        runs++;
        if (r.r == 0) {
            for (size_t i = 0; i < r.t->n; i++)
                if (r.t->parts[i].start > d.size || r.t->parts[i].length > d.size - r.t->parts[i].start ||
                    r.t->parts[i].length == 0 || strlen(r.t->parts[i].name) >= 144)
                    bad++;
        } else if (!r.msg[0]) {
            bad++;
        }
        done(&r);
        free(d.b);
    }
    CHECK(bad == 0, "fuzz: %u mutated tables, every result within the disk or a message", runs);
    free(base_mbr.b);
    free(base_gpt.b);
    free(g.array);
}

int main(void)
{
    test_tiny();
    test_bad_args();
    test_mbr_primaries();
    test_mbr_logicals();
    test_mbr_long_chain(256, true);
    test_mbr_long_chain(257, false);
    test_mbr_4096();
    test_gpt_basic();
    test_gpt_damage();
    test_gpt_absurd();
    test_gpt_entries();
    test_gpt_names();
    test_gpt_4096();
    test_fuzz();
    return tap_done();
}
