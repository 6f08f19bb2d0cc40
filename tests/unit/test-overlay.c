/* test-overlay.c — the throwaway overlay (bf_open_overlay) against a model:
 * random writes, zeroes and discards of random sizes and alignments, from
 * one thread and then from several threads on disjoint ranges; every read
 * must equal the model, and the base file must be unchanged afterwards.
 * Thread model: the concurrent phase runs 4 threads on one handle.
 */
#include "blockfmt.h"
#include "tap.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define DISK (3u * 1024 * 1024 + 12345)    /* not a multiple of the 64 KiB block */

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static uint8_t *base_bytes, *model;

static int make_base(char *path)
{
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    base_bytes = malloc(DISK);
    for (size_t i = 0; i < DISK; i++)
        base_bytes[i] = (uint8_t)(i * 7 + (i >> 16));
    if (write(fd, base_bytes, DISK) != DISK)
        return -1;
    close(fd);
    return 0;
}

static int compare_all(struct bf_image *img)
{
    uint8_t *buf = malloc(DISK);
    int r = bf_pread(img, buf, DISK, 0);
    int same = r == 0 && memcmp(buf, model, DISK) == 0;
    free(buf);
    return same;
}

/* One random operation on [lo, hi). */
static int random_op(struct bf_image *img, uint64_t lo, uint64_t hi, uint64_t (*rnd)(void *),
                     void *ctx)
{
    uint64_t off = lo + rnd(ctx) % (hi - lo);
    uint64_t len = 1 + rnd(ctx) % (rnd(ctx) % 2 ? 300000 : 5000);
    if (len > hi - off)
        len = hi - off;
    switch (rnd(ctx) % 4) {
    case 0:
    case 1: {
        uint8_t *buf = malloc(len);
        uint8_t v = (uint8_t)rnd(ctx);
        memset(buf, v, len);
        int r = bf_pwrite(img, buf, len, off);
        free(buf);
        if (r)
            return r;
        memset(model + off, v, len);
        return 0;
    }
    case 2: {
        int r = bf_zero(img, off, len, rnd(ctx) % 2 ? BF_ZERO_MAY_UNMAP : 0);
        if (r)
            return r;
        memset(model + off, 0, len);
        return 0;
    }
    default: {
        /* discard leaves contents undefined; only check it does not fail,
         * then rewrite the range so the model stays exact */
        int r = bf_discard(img, off, len);
        if (r)
            return r;
        return bf_pwrite(img, model + off, len, off);
    }
    }
}

static uint64_t rnd_global(void *ctx) { (void)ctx; return next(); }

struct worker { struct bf_image *img; uint64_t lo, hi, state; int failed; };

static uint64_t rnd_local(void *ctx)
{
    struct worker *w = ctx;
    w->state ^= w->state << 13;
    w->state ^= w->state >> 7;
    w->state ^= w->state << 17;
    return w->state;
}

static void *work(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < 300 && !w->failed; i++)
        if (random_op(w->img, w->lo, w->hi, rnd_local, w))
            w->failed = 1;
    return NULL;
}

int main(void)
{
    char path[] = "/tmp/vdisk-ovl-XXXXXX";
    TAP_OK(make_base(path) == 0, "made a %u-byte base file", DISK);
    struct bf_open_opts o = { .format = "raw" };
    struct bf_image *base, *img;
    TAP_OK(bf_open(path, &o, &base) == 0, "opened the base read-only");
    TAP_OK(bf_open_overlay(base, &img) == 0, "opened an overlay: %s", bf_errmsg(img));
    TAP_OK(bf_is_writable(img) && bf_size(img) == DISK, "overlay is writable, same size");
    model = malloc(DISK);
    memcpy(model, base_bytes, DISK);
    TAP_OK(compare_all(img), "fresh overlay reads the base");

    int bad = 0;
    for (int i = 0; i < 400 && !bad; i++)
        bad = random_op(img, 0, DISK, rnd_global, NULL) != 0;
    TAP_OK(!bad, "400 random writes, zeroes, discards succeed: %s", bf_errmsg(img));
    TAP_OK(compare_all(img), "overlay reads equal the model after single-threaded ops");

    struct bf_status st;
    TAP_OK(bf_block_status(img, 0, DISK, &st) == 0 && st.depth >= 1, "block status works");

    pthread_t t[4];
    struct worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){ img, (uint64_t)DISK / 4 * i, (uint64_t)DISK / 4 * (i + 1),
                                0x9e3779b97f4a7c15ull * (i + 1), 0 };
        pthread_create(&t[i], NULL, work, &w[i]);
    }
    int failed = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        failed |= w[i].failed;
    }
    TAP_OK(!failed, "4 threads x 300 random ops on disjoint ranges succeed");
    TAP_OK(compare_all(img), "overlay reads equal the model after concurrent ops");

    TAP_OK(bf_pwrite(img, "x", 1, DISK) < 0, "a write past the end fails");
    bf_close(img);

    int fd = open(path, O_RDONLY);
    uint8_t *now = malloc(DISK);
    TAP_OK(fd >= 0 && read(fd, now, DISK) == DISK && memcmp(now, base_bytes, DISK) == 0,
           "the base file is byte-for-byte unchanged");
    close(fd);
    unlink(path);
    free(now);
    free(model);
    free(base_bytes);
    return tap_done();
}
