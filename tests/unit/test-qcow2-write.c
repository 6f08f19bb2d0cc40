/* test-qcow2-write.c — qcow2 writing against an in-memory model, on images
 * qemu-img makes (v2/v3, cluster sizes 512 B to 2 MiB, extended L2,
 * backing files, compressed clusters, internal snapshots, external data
 * files, 1- and 64-bit refcounts): random writes, write-zeroes (with and
 * without unmap), discards and flushes of random sizes and alignments, from
 * one thread and then four; every read equals the model; afterwards
 * `qemu-img check` is clean, `qemu-img convert` equals the model, and the
 * snapshot still reads what it read before.
 * Thread model: the second phase runs 4 writer threads on disjoint ranges.
 */

#include "blockfmt.h"
#include "tap.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <sys/wait.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[] = "/tmp/vdisk-qw-XXXXXX";

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int r = system(cmd);
    return r == -1 ? -1 : WEXITSTATUS(r);
}

struct rng { uint64_t s; };
static uint64_t next(struct rng *g)
{
    g->s ^= g->s << 13;
    g->s ^= g->s >> 7;
    g->s ^= g->s << 17;
    return g->s;
}

struct ctx {
    struct bf_image *img;
    uint8_t *model;
    uint64_t size;
    uint64_t lo, hi;            /* this worker's range */
    struct rng g;
    int failed;
    char why[512];
};

static uint64_t pick_len(struct rng *g, uint64_t max)
{
    uint64_t kind = next(g) % 4, len;
    if (kind == 0)
        len = 1 + next(g) % 600;
    else if (kind == 1)
        len = 512 * (1 + next(g) % 16);
    else if (kind == 2)
        len = 65536 * (1 + next(g) % 4);
    else
        len = 1 + next(g) % (3u << 20);
    return len > max ? max : len;
}

/* One random operation in [lo, hi); keeps the model exact. */
static int one_op(struct ctx *c)
{
    struct rng *g = &c->g;
    uint64_t off = c->lo + next(g) % (c->hi - c->lo);
    if (next(g) % 3 == 0 && off - off % 65536 >= c->lo)
        off -= off % 65536;                    /* aligned a third of the time */
    uint64_t len = pick_len(g, c->hi - off);
    if (len == 0)
        return 0;
    int op = (int)(next(g) % 10), r;
    if (op < 6) {
        uint8_t *b = malloc(len);
        uint8_t v = (uint8_t)next(g);
        for (uint64_t i = 0; i < len; i++)
            b[i] = (uint8_t)(v + i * 7 + (i >> 9));
        r = bf_pwrite(c->img, b, len, off);
        if (r == 0)
            memcpy(c->model + off, b, len);
        free(b);
    } else if (op < 8) {
        unsigned fl = next(g) % 2 ? BF_ZERO_MAY_UNMAP : 0;
        r = bf_zero(c->img, off, len, fl);
        if (r == 0)
            memset(c->model + off, 0, len);
    } else if (op < 9) {
        r = bf_discard(c->img, off, len);
        if (r == 0)           /* contents are whatever the image now says */
            r = bf_pread(c->img, c->model + off, len, off);
    } else {
        r = bf_flush(c->img);
    }
    if (r < 0) {
        snprintf(c->why, sizeof c->why, "op %d at %llu+%llu: %s", op, (unsigned long long)off,
                 (unsigned long long)len, bf_errmsg(c->img));
        return r;
    }
    /* check the touched range right away */
    uint8_t *b = malloc(len);
    r = bf_pread(c->img, b, len, off);
    if (r < 0 || memcmp(b, c->model + off, len) != 0) {
        snprintf(c->why, sizeof c->why, "read-back after op %d at %llu+%llu differs%s%s", op,
                 (unsigned long long)off, (unsigned long long)len, r < 0 ? ": " : "",
                 r < 0 ? bf_errmsg(c->img) : "");
        free(b);
        return -EIO;
    }
    free(b);
    return 0;
}

static void *worker(void *arg)
{
    struct ctx *c = arg;
    for (int i = 0; i < 150 && !c->failed; i++)
        if (one_op(c) < 0)
            c->failed = 1;
    return NULL;
}

static bool equal_file(const char *path, const uint8_t *model, uint64_t size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    uint8_t *b = malloc(size);
    bool ok = fread(b, 1, size, f) == size && memcmp(b, model, size) == 0;
    free(b);
    fclose(f);
    return ok;
}

struct config {
    const char *name;
    const char *create;          /* qemu-img create options */
    uint64_t size;
    const char *pre;             /* shell run before create (backing files), may be "" */
    const char *prep;            /* shell run on $I after create (may be "") */
    bool snapshot;               /* take an internal snapshot before writing */
};

static void run(const struct config *cf, unsigned seed)
{
    char img[512], cmd[256];
    snprintf(img, sizeof img, "%s/%s.qcow2", dir, cf->name);
    if ((cf->pre[0] && sh("cd %s && %s", dir, cf->pre) != 0) ||
        sh("cd %s && qemu-img create -q -f qcow2 %s %s %llu >/dev/null", dir, cf->create, img,
           (unsigned long long)cf->size) != 0 ||
        (cf->prep[0] && sh("cd %s && I=%s; %s", dir, img, cf->prep) != 0)) {
        TAP_OK(0, "%s: image made", cf->name);
        return;
    }
    if (cf->snapshot)
        sh("qemu-img snapshot -c snap1 %s && qemu-img convert -l snapshot.name=snap1 -O raw %s "
           "%s/%s.snap.raw", img, img, dir, cf->name);
    struct bf_open_opts o = { .flags = BF_OPEN_RDWR };
    struct bf_image *im;
    int r = bf_open(img, &o, &im);
    TAP_OK(r == 0, "%s: opened read-write%s%s", cf->name, r ? ": " : "", r ? bf_errmsg(im) : "");
    if (r) {
        bf_close(im);
        return;
    }
    struct ctx c = { .img = im, .size = bf_size(im), .lo = 0, .hi = bf_size(im),
                     .g = { 0x9e3779b97f4a7c15ull * seed } };
    c.model = malloc(c.size);
    r = bf_pread(im, c.model, c.size, 0);
    int bad = r;
    for (int i = 0; i < 300 && !bad; i++)
        bad = one_op(&c);
    TAP_OK(!bad, "%s: 300 random ops, each read back right%s%s", cf->name, bad ? ": " : "",
           bad ? c.why : "");

    pthread_t t[4];
    struct ctx w[4];
    uint64_t q = c.size / 4;
    for (int i = 0; i < 4; i++) {
        w[i] = c;
        w[i].lo = q * i;
        w[i].hi = i == 3 ? c.size : q * (i + 1);
        w[i].g.s ^= (uint64_t)(i + 1) << 32;
        w[i].failed = 0;
        pthread_create(&t[i], NULL, worker, &w[i]);
    }
    int failed = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        if (w[i].failed && !failed) {
            failed = 1;
            TAP_OK(0, "%s: 4 threads x 150 ops: %s", cf->name, w[i].why);
        }
    }
    if (!failed)
        TAP_OK(1, "%s: 4 threads x 150 ops, each read back right", cf->name);
    uint8_t *all = malloc(c.size);
    TAP_OK(bf_pread(im, all, c.size, 0) == 0 && memcmp(all, c.model, c.size) == 0,
           "%s: whole disk equals the model", cf->name);
    free(all);
    TAP_OK(bf_flush(im) == 0, "%s: flush", cf->name);
    bf_close(im);

    /* run qemu-img from the image's directory: qemu 7.2 resolves a relative
     * external data file name against its working directory */
    int rc = sh("cd %s && qemu-img check -q %s >%s/check.out 2>&1", dir, img, dir);
    if (rc != 0)
        sh("cat %s/check.out | head -20 | sed 's/^/#   /'", dir);
    TAP_OK(rc == 0, "%s: qemu-img check is clean (exit %d)", cf->name, rc);
    snprintf(cmd, sizeof cmd, "%s/%s.out.raw", dir, cf->name);
    sh("cd %s && qemu-img convert -O raw %s %s", dir, img, cmd);
    TAP_OK(equal_file(cmd, c.model, c.size), "%s: qemu-img convert equals the model", cf->name);
    if (cf->snapshot) {
        char snap[600];
        snprintf(snap, sizeof snap, "%s/%s.snap2.raw", dir, cf->name);
        TAP_OK(sh("qemu-img convert -l snapshot.name=snap1 -O raw %s %s && cmp -s %s "
                  "%s/%s.snap.raw", img, snap, snap, dir, cf->name) == 0,
               "%s: the snapshot still reads what it read before", cf->name);
    }
    free(c.model);
}

int main(void)
{
    if (!mkdtemp(dir))
        return 1;
    static const struct config cfgs[] = {
        { "v3-64k", "-o cluster_size=64k", 24u << 20, "", "", false },
        { "v2-64k", "-o compat=0.10", 24u << 20, "", "", false },
        { "v3-512", "-o cluster_size=512", 6u << 20, "", "", false },
        { "v2-512", "-o compat=0.10,cluster_size=512", 6u << 20, "", "", false },
        { "v3-2m", "-o cluster_size=2M", 40u << 20, "", "", false },
        { "v3-4k-refcount1", "-o cluster_size=4k,refcount_bits=1", 8u << 20, "", "", false },
        { "v3-64k-refcount64", "-o refcount_bits=64", 16u << 20, "", "", false },
        { "extl2-64k", "-o extended_l2=on,cluster_size=64k", 24u << 20, "", "", false },
        { "extl2-2m", "-o extended_l2=on,cluster_size=2M", 40u << 20, "", "", false },
        { "backing-v3", "-b base.raw -F raw", 24u << 20,
          "truncate -s 20M base.raw && qemu-io -f raw -c 'write -P 0x5a 0 20M' base.raw >/dev/null",
          "", false },
        { "backing-v2", "-o compat=0.10 -b base2.raw -F raw", 24u << 20,
          "truncate -s 24M base2.raw && qemu-io -f raw -c 'write -P 0x3c 1M 20M' base2.raw >/dev/null",
          "", false },
        { "backing-extl2", "-o extended_l2=on -b base3.raw -F raw", 24u << 20,
          "truncate -s 24M base3.raw && qemu-io -f raw -c 'write -P 0x77 0 24M' base3.raw >/dev/null",
          "", false },
        { "backing-qcow2-compressed", "-b base4.qcow2 -F qcow2", 24u << 20,
          "qemu-img create -q -f raw s4.raw 24M && qemu-io -f raw -c 'write -P 0x66 0 24M' s4.raw "
          ">/dev/null && qemu-img convert -c -O qcow2 s4.raw base4.qcow2", "", false },
        { "compressed", "-o cluster_size=64k", 24u << 20, "",
          "qemu-img create -q -f raw src.raw 24M && qemu-io -f raw -c 'write -P 0x11 0 24M' src.raw "
          ">/dev/null && qemu-img convert -c -O qcow2 src.raw $I", false },
        { "compressed-zstd", "-o compression_type=zstd", 24u << 20, "",
          "qemu-img create -q -f raw src2.raw 24M && qemu-io -f raw -c 'write -P 0x22 0 20M' "
          "src2.raw >/dev/null && qemu-img convert -c -O qcow2 -o compression_type=zstd src2.raw $I",
          false },
        { "snapshot", "", 24u << 20, "",
          "qemu-io -c 'write -P 0x44 0 24M' $I >/dev/null", true },
        { "snapshot-512", "-o cluster_size=512", 4u << 20, "",
          "qemu-io -c 'write -P 0x45 0 4M' $I >/dev/null", true },
        { "datafile", "-o data_file=df.raw", 24u << 20, "", "", false },
        { "datafile-raw", "-o data_file=dfr.raw,data_file_raw=on", 24u << 20, "", "", false },
        { "odd-size", "-o cluster_size=64k", (24u << 20) + 12345, "", "", false },
    };
    for (size_t i = 0; i < sizeof cfgs / sizeof cfgs[0]; i++)
        run(&cfgs[i], (unsigned)(i + 1));
    sh("rm -rf %s", dir);
    return tap_done();
}
