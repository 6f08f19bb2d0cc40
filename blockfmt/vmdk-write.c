/* vmdk-write.c — writing vmdk disks whose extents are all flat: a text
 * descriptor and one or more raw extent files (monolithicFlat,
 * twoGbMaxExtentFlat, ESXi's vmfs "-flat.vmdk" disks).  A write goes to the
 * extent files as it is; nothing is allocated.
 *
 * Before the first write the descriptor's CID is changed, as VMware and qemu
 * do, so that a delta disk made from this one before the write no longer
 * matches it (its parentCID is checked when it is opened).  The new CID is
 * written over the old one in place, in as many hex digits as the old one
 * has (qemu writes no leading zeros, so "CID=ac874c1" has seven); a
 * descriptor with no CID line, or one that is not 1 to 8 bare hex digits
 * (quoted, say), is left as it is.
 *
 * Sparse, stream-optimized and seSparse extents, delta disks, and RDONLY,
 * NOACCESS or ZERO extent lines are refused for writing at open
 * (vmdk_writable_extent); a throwaway overlay (-s) reads them all.
 *
 * Thread model: writes run in parallel (the extents are plain files); the
 * CID update is made once, under cid_lock.
 */
#include "vmdk.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

int vmdk_writable_extent(struct bf_image *img, const struct vmdk_desc_extent *x)
{
    const char *why = x->access == VMDK_RDONLY ? "is read-only (RDONLY)"
        : x->access == VMDK_NOACCESS ? "is NOACCESS"
        : x->type == VMDK_ET_FLAT || x->type == VMDK_ET_VMFS ? NULL
        : x->type == VMDK_ET_ZERO ? "is a ZERO extent" : "is sparse";
    if (!why)
        return 0;
    return bf_err(img, -EROFS, "%s: only vmdk disks whose extents are all flat (monolithicFlat, "
                  "twoGbMaxExtentFlat, vmfs) can be written, and descriptor line %u %s; open "
                  "read-only, or with a throwaway overlay", img->filename, x->line, why);
}

/* A CID of at most @digits hex digits that is neither 0xffffffff nor
 * 0xfffffffe (VMware's "none" and "new") nor @old. */
static uint32_t new_cid(uint32_t old, unsigned digits)
{
    uint32_t mask = digits >= 8 ? UINT32_MAX : (1u << (4 * digits)) - 1;
    for (;;) {
        uint32_t c;
        if (getrandom(&c, sizeof c, GRND_NONBLOCK) != (ssize_t)sizeof c) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            c = (uint32_t)ts.tv_nsec ^ (uint32_t)getpid() << 16 ^ old;
        }
        c &= mask;
        if (c != old && c < 0xfffffffeu)
            return c;
        old ^= 0x9e3779b9u;
    }
}

/* Where the digits of the line "CID=x..." are in @t (*ndigits of them, 1
 * to 8), or -1. */
static long cid_digits(const char *t, size_t n, unsigned *ndigits)
{
    for (size_t i = 0; i < n; ) {
        size_t e = i;
        while (e < n && t[e] != '\n')
            e++;
        size_t k = i;
        while (k < e && (t[k] == ' ' || t[k] == '\t'))
            k++;
        if (e - k >= 3 && memcmp(t + k, "CID", 3) == 0) {
            size_t p = k + 3;
            while (p < e && (t[p] == ' ' || t[p] == '\t'))
                p++;
            if (p < e && t[p] == '=') {
                p++;
                while (p < e && (t[p] == ' ' || t[p] == '\t'))
                    p++;
                size_t d = p;
                while (d < e && isxdigit((unsigned char)t[d]))
                    d++;
                size_t end = d;
                while (end < e && (t[end] == ' ' || t[end] == '\t' || t[end] == '\r'))
                    end++;
                *ndigits = (unsigned)(d - p);
                return d > p && d - p <= 8 && end == e ? (long)p : -1;
            }
        }
        i = e + 1;
    }
    return -1;
}

static int update_cid(struct bf_image *img, struct vmdk *v)
{
    uint64_t size;
    int r = bf_source_size(img->src, &size);
    if (r < 0)
        return bf_err(img, r, "%s: cannot get size: %s", img->filename, strerror(-r));
    if (size > VMDK_MAX_DESC_BYTES)
        return bf_err(img, -EFBIG, "%s: the descriptor grew past %u bytes", img->filename,
                      VMDK_MAX_DESC_BYTES);
    char *text = malloc(size ? size : 1);
    if (!text)
        return bf_err(img, -ENOMEM, "out of memory");
    if ((r = bf_source_pread(img->src, text, size, 0)) < 0) {
        free(text);
        return bf_err(img, r, "%s: cannot read the descriptor: %s", img->filename, strerror(-r));
    }
    unsigned n = 0;
    long at = cid_digits(text, size, &n);
    free(text);
    if (at < 0)
        return 0;               /* no CID we can rewrite in place: keep it */
    uint32_t cid = new_cid(v->desc.cid, n);
    char digits[9];
    snprintf(digits, sizeof digits, "%0*" PRIx32, (int)n, cid);
    if ((r = bf_source_pwrite(img->src, digits, n, (uint64_t)at)) < 0)
        return bf_err(img, r, "%s: cannot write the descriptor's new CID: %s", img->filename,
                      strerror(-r));
    v->desc.cid = cid;
    return 0;
}

int vmdk_alloc(struct bf_image *img, uint64_t off, uint64_t len, struct bf_map *m)
{
    struct vmdk *v = img->priv;
    if (!__atomic_load_n(&v->cid_updated, __ATOMIC_ACQUIRE)) {
        pthread_mutex_lock(&v->cid_lock);
        int r = 0;
        if (!v->cid_updated && (r = update_cid(img, v)) == 0)
            __atomic_store_n(&v->cid_updated, true, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&v->cid_lock);
        if (r < 0)
            return r;
    }
    int r = vmdk_map(img, off, len, 0, m);
    if (r == 0 && m->kind != BF_MAP_DATA)     /* open let only flat extents through */
        return bf_err(img, -EIO, "%s: internal error: a write at %" PRIu64 " maps to no "
                      "extent file", img->filename, off);
    return r;
}

int vmdk_flush(struct bf_image *img)
{
    struct vmdk *v = img->priv;
    for (size_t i = 0; i < v->n_ext; i++) {
        struct bf_source *s = v->ext[i].src;
        int r = s ? bf_source_flush(s) : 0;
        if (r < 0)
            return bf_err(img, r, "%s: flush failed: %s", s->name, strerror(-r));
    }
    int r = bf_source_flush(img->src);
    if (r < 0)
        return bf_err(img, r, "%s: flush failed: %s", img->filename, strerror(-r));
    return 0;
}
