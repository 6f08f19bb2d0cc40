/* vmdk-write.c — writing vmdk disks: flat extents (monolithicFlat,
 * twoGbMaxExtentFlat, ESXi's vmfs "-flat.vmdk") are written where the bytes
 * are; hosted sparse extents (monolithicSparse, twoGbMaxExtentSparse, and
 * the delta disks VMware and qemu make of them) get a new grain at the end
 * of their file the first time a grain is written, as qemu and VMware do.
 *
 * A new grain is written whole before anything points at it: the bytes the
 * guest reads there now (zeros, or the parent's for a delta disk), with the
 * written ones over them; then its grain table entry, then the same entry in
 * the redundant grain table.  An interrupted write leaves the old or the new
 * bytes; only a flush orders these across a power loss (as in qemu).  Grain
 * tables must exist already: VMware and qemu-img make them all when they
 * create the disk (qemu refuses such a write too).
 *
 * Before the first write the descriptor's CID is changed, as VMware and qemu
 * do, so that a delta disk made from this one before the write no longer
 * matches it (its parentCID is checked when it is opened).  The new CID is
 * written over the old one in place (in the descriptor file, or the
 * descriptor embedded in a monolithicSparse file), in as many hex digits as
 * the old one has (qemu writes no leading zeros, so "CID=ac874c1" has
 * seven); a descriptor with no CID line, or one that is not 1 to 8 bare hex
 * digits (quoted, say), is left as it is.
 *
 * Refused for writing at open (vmdk_writable_extent, vmdk_writable_sparse),
 * each with a message: stream-optimized (compressed) extents, ESX vmfsSparse
 * (COWD) and seSparse extents, and RDONLY, NOACCESS or ZERO extent lines; a
 * throwaway overlay (-s) reads them all.
 *
 * Thread model: writes to flat extents and to allocated grains run in
 * parallel; the CID update is made once, under cid_lock; grains are
 * allocated one at a time under alloc_lock, which re-reads the entry, so
 * two writers to one new grain allocate it once.  Grain table entries are
 * read from the file, not the cache (vmdk-map.c), and the extent's file size
 * is published only after the grain is written.
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
        : x->type == VMDK_ET_FLAT || x->type == VMDK_ET_VMFS || x->type == VMDK_ET_SPARSE ? NULL
        : x->type == VMDK_ET_ZERO ? "is a ZERO extent"
        : x->type == VMDK_ET_VMFSSPARSE ? "is an ESX vmfsSparse extent"
        : "is a seSparse extent";
    if (!why)
        return 0;
    return bf_err(img, -EROFS, "%s: descriptor line %u %s, which cannot be written (flat and "
                  "hosted sparse extents can); open read-only, or with a throwaway overlay",
                  img->filename, x->line, why);
}

int vmdk_writable_sparse(struct bf_image *img, const struct vmdk_extent *e)
{
    const char *why = e->kind == VMDK_COWD ? "an ESX vmfsSparse (COWD) extent"
        : e->kind == VMDK_SESPARSE ? "a seSparse extent"
        : e->kind == VMDK_KDMV && (e->compressed || e->markers)
            ? "stream-optimized (its grains are compressed)" : NULL;
    if (!why)
        return 0;
    return bf_err(img, -EROFS, "%s: the extent is %s, which cannot be written (flat and hosted "
                  "sparse extents can); open read-only, or with a throwaway overlay",
                  e->src->name, why);
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
    uint64_t size = v->desc_bytes;
    if (size == 0)
        return 0;               /* a sparse file without a descriptor */
    if (size > VMDK_MAX_DESC_BYTES)
        return bf_err(img, -EFBIG, "%s: the descriptor is over %u bytes", img->filename,
                      VMDK_MAX_DESC_BYTES);
    char *text = malloc(size);
    if (!text)
        return bf_err(img, -ENOMEM, "out of memory");
    int r;
    if ((r = bf_source_pread(img->src, text, size, v->desc_off)) < 0) {
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
    if ((r = bf_source_pwrite(img->src, digits, n, v->desc_off + (uint64_t)at)) < 0)
        return bf_err(img, r, "%s: cannot write the descriptor's new CID: %s", img->filename,
                      strerror(-r));
    v->desc.cid = cid;
    return 0;
}

/* Change the CID before the first write (once). */
static int before_first_write(struct bf_image *img, struct vmdk *v)
{
    if (__atomic_load_n(&v->cid_updated, __ATOMIC_ACQUIRE))
        return 0;
    pthread_mutex_lock(&v->cid_lock);
    int r = 0;
    if (!v->cid_updated && (r = update_cid(img, v)) == 0)
        __atomic_store_n(&v->cid_updated, true, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&v->cid_lock);
    return r;
}

static int write_error(struct bf_image *img, const struct vmdk_extent *e, int r,
                       const char *what, uint64_t off)
{
    return bf_err(img, r, "%s: cannot write the %s at offset %" PRIu64 ": %s", e->src->name,
                  what, off, strerror(-r));
}

/* Where grain @g (guest bytes from the extent's start, grain aligned) of
 * sparse extent @e has its grain table entry (byte offset in the file), or
 * an error when the grain directory gives it no table. */
static int gte_offset(struct bf_image *img, const struct vmdk_extent *e, uint64_t g,
                      uint64_t *at)
{
    uint64_t gd_idx = g / e->gt_span;
    uint64_t gt = gd_idx < e->n_gd ? e->gd[gd_idx] : VMDK_GT_BAD;
    if (gt == 0)
        return bf_err(img, -EIO, "%s: guest offset %" PRIu64 " has no grain table (its grain "
                      "directory entry is 0), so it cannot be written", e->src->name,
                      e->start + g);
    if (gt == VMDK_GT_BAD)
        return bf_err(img, -EIO, "%s: the grain directory entry for guest offset %" PRIu64
                      " is damaged", e->src->name, e->start + g);
    *at = gt + (g % e->gt_span) / e->grain * 4;
    return 0;
}

/* The host offset of the grain whose entry is at @at, or 0 if the guest
 * reads zeros or the parent there (unallocated or a zeroed grain). */
static int grain_host(struct bf_image *img, const struct vmdk_extent *e, uint64_t at,
                      uint64_t guest, uint64_t *host)
{
    uint8_t le[4];
    int r = bf_source_pread(e->src, le, 4, at);
    if (r < 0)
        return bf_err(img, r, "%s: cannot read the grain table entry at offset %" PRIu64
                      ": %s", e->src->name, at, strerror(-r));
    uint64_t s = bf_le32(le);
    *host = 0;
    if (s == 0 || (s == 1 && e->zero_grain))
        return 0;
    uint64_t h = s * VMDK_SECTOR;
    /* a grain over the header, directories or tables would overwrite them */
    if (h < e->overhead || h >= __atomic_load_n(&e->file_size, __ATOMIC_ACQUIRE))
        return bf_err(img, -EIO, "%s: the grain table entry for guest offset %" PRIu64 " points "
                      "%s; not writing there", e->src->name, guest,
                      h < e->overhead ? "into the file's header and tables" : "past its end");
    *host = h;
    return 0;
}

/* Give the grain at @g (extent bytes, grain aligned) a new grain in the
 * file holding what the guest reads there now with @n bytes of @buf at
 * @in over it; then point its entry (at @at) and the redundant one at it.
 * Called with alloc_lock held and the entry still free. */
static int allocate_grain(struct bf_image *img, struct vmdk_extent *e, uint64_t g, uint64_t at,
                          const void *buf, size_t n, uint64_t in)
{
    if (e->alloc_end == 0) {
        uint64_t size;
        int r = bf_source_size(e->src, &size);
        if (r < 0)
            return bf_err(img, r, "%s: cannot get size: %s", e->src->name, strerror(-r));
        e->alloc_end = (size + VMDK_SECTOR - 1) & ~(VMDK_SECTOR - 1);
        if (e->alloc_end < e->overhead)
            e->alloc_end = e->overhead;
    }
    uint64_t host = e->alloc_end, end;
    if (!bf_add_ok(host, e->grain, &end) || host / VMDK_SECTOR > UINT32_MAX)
        return bf_err(img, -ENOSPC, "%s: the extent file is full (a grain table entry cannot "
                      "point past 2 TiB)", e->src->name);
    uint8_t *grain = malloc(e->grain);
    if (!grain)
        return bf_err(img, -ENOMEM, "out of memory");
    /* what the guest reads there now, unless the write covers it all */
    uint64_t valid = bf_min64(e->grain, e->size - g);      /* the last grain may be short */
    uint64_t filled = n < valid ? valid : 0;
    int r = filled ? bf_pread_nolock(img, grain, filled, e->start + g) : 0;
    if (r == 0) {
        memset(grain + filled, 0, e->grain - filled);
        memcpy(grain + in, buf, n);
        if ((r = bf_source_pwrite(e->src, grain, e->grain, host)) < 0)
            r = write_error(img, e, r, "new grain", host);
    }
    free(grain);
    if (r < 0)
        return r;
    e->alloc_end = end;
    if (end > __atomic_load_n(&e->file_size, __ATOMIC_ACQUIRE))
        __atomic_store_n(&e->file_size, end, __ATOMIC_RELEASE);

    uint8_t le[4];
    bf_put_le32(le, (uint32_t)(host / VMDK_SECTOR));
    if ((r = bf_source_pwrite(e->src, le, 4, at)) < 0)
        return write_error(img, e, r, "grain table entry", at);
    uint64_t gd_idx = g / e->gt_span;
    uint64_t rgt = e->rgd ? e->rgd[gd_idx] : 0;
    if (rgt != 0 && rgt != VMDK_GT_BAD && rgt != e->gd[gd_idx]) {
        uint64_t rat = rgt + (g % e->gt_span) / e->grain * 4;
        if ((r = bf_source_pwrite(e->src, le, 4, rat)) < 0)
            return write_error(img, e, r, "redundant grain table entry", rat);
    }
    return 0;
}

/* Write @n bytes at @rel (extent bytes, within one grain) of sparse @e. */
static int write_sparse(struct bf_image *img, struct vmdk *v, struct vmdk_extent *e,
                        const void *buf, size_t n, uint64_t rel)
{
    uint64_t in = rel % e->grain, g = rel - in, at, host;
    int r = gte_offset(img, e, g, &at);
    if (r == 0)
        r = grain_host(img, e, at, e->start + rel, &host);
    if (r == 0 && host == 0) {
        pthread_mutex_lock(&v->alloc_lock);
        r = grain_host(img, e, at, e->start + rel, &host);  /* another writer may have been first */
        if (r == 0 && host == 0)
            r = allocate_grain(img, e, g, at, buf, n, in);
        pthread_mutex_unlock(&v->alloc_lock);
    }
    if (r == 0 && host != 0 && (r = bf_source_pwrite(e->src, buf, n, host + in)) < 0)
        r = write_error(img, e, r, "data", host + in);
    return r;
}

int vmdk_pwrite(struct bf_image *img, const void *buf, size_t len, uint64_t off)
{
    struct vmdk *v = img->priv;
    int r = before_first_write(img, v);
    const uint8_t *p = buf;
    while (r == 0 && len > 0) {
        struct vmdk_extent *e = vmdk_extent_at(v, off);
        uint64_t rel = off - e->start;
        if (off < e->start || rel >= e->size)
            return bf_err(img, -EIO, "%s: internal error: no extent holds guest offset %"
                          PRIu64, img->filename, off);
        size_t n = (size_t)bf_min64(len, e->size - rel);
        if (e->kind == VMDK_FLAT) {
            if ((r = bf_source_pwrite(e->src, p, n, e->flat_off + rel)) < 0)
                r = write_error(img, e, r, "data", e->flat_off + rel);
        } else if (e->kind == VMDK_KDMV) {
            n = (size_t)bf_min64(n, e->grain - rel % e->grain);
            r = write_sparse(img, v, e, p, n, rel);
        } else {            /* open let only flat and hosted sparse extents through */
            r = bf_err(img, -EIO, "%s: internal error: a write at %" PRIu64 " maps to an "
                       "extent that cannot be written", img->filename, off);
        }
        p += n;
        off += n;
        len -= n;
    }
    return r;
}

/* In a disk without a parent whose extents are all sparse, free and zeroed
 * grains already read as zeros and allocated ones are zeroed in place, so
 * zeroing allocates nothing.  Anywhere else (flat extents; a delta disk,
 * whose free grains show its parent) zeros are written. */
int vmdk_zero(struct bf_image *img, uint64_t off, uint64_t len, unsigned flags)
{
    struct vmdk *v = img->priv;
    bool delta = v->desc.has_parent_cid && v->desc.parent_cid != 0xffffffffu;
    for (size_t i = 0; i < v->n_ext; i++)
        if (v->ext[i].kind != VMDK_KDMV || delta || img->backing)
            return -ENOTSUP;
    int r = before_first_write(img, v);
    while (r == 0 && len > 0) {
        struct vmdk_extent *e = vmdk_extent_at(v, off);
        uint64_t rel = off - e->start, at, host;
        uint64_t n = bf_min64(len, bf_min64(e->size - rel, e->grain - rel % e->grain));
        r = gte_offset(img, e, rel - rel % e->grain, &at);
        if (r == 0)
            r = grain_host(img, e, at, off, &host);
        if (r == 0 && host != 0) {
            r = bf_source_zero(e->src, host + rel % e->grain, n, flags & BF_ZERO_FAST);
            if (r < 0 && r != -ENOTSUP)
                r = write_error(img, e, r, "zeros", host + rel % e->grain);
        }
        off += n;
        len -= n;
    }
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
