/* vmdk-open.c — the vmdk driver: probe, open, close.  An image is either a
 * sparse file (KDMV or COWD) that is its own single extent, with or without
 * an embedded descriptor, or a text descriptor listing extent files beside
 * it.  Extents are opened here (paths relative to the descriptor), their
 * sizes checked against the descriptor, and a delta disk's parent opened
 * through bf_open_backing with its CID checked against our parentCID.
 *
 * What qemu does differently, on purpose:
 *  - RDONLY extents are read (qemu 7.2 skips every line but RW), NOACCESS
 *    and ZERO extents read as zero (qemu skips them, shortening the disk);
 *  - an extent whose header capacity differs from its descriptor line, a
 *    flat extent file shorter than its line, an unknown createType or
 *    extent type, a delta disk naming no parent and a parentCID mismatch
 *    are errors with a message (qemu takes the header, reads zeros, or
 *    fails later on read).
 *
 * Writing is vmdk-write.c's (flat extents and hosted sparse ones); open
 * refuses the rest for writing.
 *
 * Thread model: open and close run on one thread; nothing here changes
 * after open.
 */
#include "vmdk.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

static const char *const create_types[] = {
    "monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat",
    "streamOptimized", "vmfs", "vmfsThin", "vmfsPreallocated", "vmfsEagerZeroedThick",
    "vmfsSparse", "seSparse",
};

/* Raw device mappings: the extents are host disks, not image files. */
static const char *const raw_create_types[] = {
    "fullDevice", "partitionedDevice", "vmfsRaw", "vmfsRawDeviceMap",
    "vmfsPassthroughRawDeviceMap",
};

static int vmdk_probe(const uint8_t *head, size_t len)
{
    if (len >= 4 && (bf_be32(head) == VMDK_KDMV_MAGIC || bf_be32(head) == VMDK_COWD_MAGIC))
        return 100;
    if (len >= 8 && bf_le64(head) == VMDK_SESPARSE_MAGIC)
        return 100;             /* refused by open with a message */
    return vmdk_desc_probe(head, len) ? 100 : 0;
}

static void vmdk_free(struct vmdk *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < v->n_ext; i++)
        vmdk_extent_free(&v->ext[i]);
    free(v->ext);
    bf_cache_free(v->gt_cache);
    vmdk_desc_free(&v->desc);
    pthread_mutex_destroy(&v->cid_lock);
    pthread_mutex_destroy(&v->alloc_lock);
    free(v);
}

static void vmdk_close(struct bf_image *img)
{
    vmdk_free(img->priv);
    img->priv = NULL;
}

static int check_create_type(struct bf_image *img, const struct vmdk_desc *d, const char *where)
{
    if (!d->create_type)
        return bf_err(img, -EINVAL, "%s: the descriptor has no createType", where);
    for (size_t i = 0; i < sizeof create_types / sizeof create_types[0]; i++)
        if (strcmp(d->create_type, create_types[i]) == 0)
            return 0;
    for (size_t i = 0; i < sizeof raw_create_types / sizeof raw_create_types[0]; i++)
        if (strcmp(d->create_type, raw_create_types[i]) == 0)
            return bf_err(img, -ENOTSUP, "%s: createType '%s' (a raw device mapping) is not "
                          "supported", where, d->create_type);
    return bf_err(img, -ENOTSUP, "%s: unknown vmdk createType '%s'", where, d->create_type);
}

/* Open the file of extent @e described by line @x of the descriptor. */
static int open_extent_file(struct bf_image *img, struct vmdk_extent *e,
                            const struct vmdk_desc_extent *x)
{
    int r = bf_check_inner_name(img, x->file, "extent");
    if (r < 0)
        return r;
    char *path = bf_path_relative_to(img->filename, x->file);
    if (!path)
        return bf_err(img, -ENOMEM, "out of memory");
    char msg[BF_ERRMSG_MAX];
    r = bf_source_open(path, img->writable, &e->src, msg, sizeof msg);
    free(path);
    if (r < 0)
        return bf_err(img, r, "%s: cannot open extent '%s' (descriptor line %u): %s",
                      img->filename, x->file, x->line, msg);
    e->own_src = true;
    r = bf_source_lock(e->src, bf_lock_mode_for(img->open_flags, img->writable), msg, sizeof msg);
    if (r < 0)
        return bf_err(img, r, "%s", msg);

    if (x->type == VMDK_ET_FLAT || x->type == VMDK_ET_VMFS) {
        e->kind = VMDK_FLAT;
        if ((r = bf_source_size(e->src, &e->file_size)) < 0)
            return bf_err(img, r, "%s: cannot get size: %s", e->src->name, strerror(-r));
        e->flat_off = x->offset * VMDK_SECTOR;
        uint64_t end;
        if (!bf_add_ok(e->flat_off, e->size, &end) || end > e->file_size)
            return bf_err(img, -EINVAL, "%s: extent file '%s' is %" PRIu64 " bytes, too short "
                          "for the %" PRIu64 " bytes at offset %" PRIu64 " that descriptor "
                          "line %u gives it", img->filename, x->file, e->file_size, e->size,
                          e->flat_off, x->line);
        return 0;
    }
    if ((r = vmdk_sparse_open(img, e, x->type, NULL, NULL)) < 0)
        return r;
    if (img->writable && (r = vmdk_writable_sparse(img, e)) < 0)
        return r;
    if (e->capacity != e->size)
        return bf_err(img, -EINVAL, "%s: the extent sizes do not add up: descriptor line %u "
                      "gives extent '%s' %" PRIu64 " sectors, but its header says %" PRIu64,
                      img->filename, x->line, x->file, e->size / VMDK_SECTOR,
                      e->capacity / VMDK_SECTOR);
    return 0;
}

/* Open every extent the descriptor @d lists, in order; the disk is their
 * concatenation.  No extents is an empty disk (qemu-img writes that for a
 * flat disk of size 0). */
static int open_extents(struct bf_image *img, struct vmdk *v, const struct vmdk_desc *d)
{
    v->ext = calloc(d->n_ext ? d->n_ext : 1, sizeof *v->ext);
    if (!v->ext)
        return bf_err(img, -ENOMEM, "out of memory");
    uint64_t pos = 0;
    for (size_t i = 0; i < d->n_ext; i++) {
        const struct vmdk_desc_extent *x = &d->ext[i];
        if (x->sectors == 0)
            continue;           /* maps nothing (qemu skips such lines too) */
        struct vmdk_extent *e = &v->ext[v->n_ext];
        e->index = (unsigned)v->n_ext;
        e->start = pos;
        e->size = x->sectors * VMDK_SECTOR;
        if (!bf_add_ok(pos, e->size, &pos) || pos > (uint64_t)INT64_MAX)
            return bf_err(img, -EFBIG, "%s: the extents add up to more than any disk can hold",
                          img->filename);
        v->n_ext++;
        int r = img->writable ? vmdk_writable_extent(img, x) : 0;
        if (r < 0)
            return r;
        if (x->access == VMDK_NOACCESS || x->type == VMDK_ET_ZERO) {
            e->kind = VMDK_ZERO;
            continue;
        }
        r = open_extent_file(img, e, x);
        if (r < 0)
            return r;
    }
    img->size = pos;
    return 0;
}

static int open_descriptor_image(struct bf_image *img, struct vmdk *v, uint64_t fsize)
{
    if (fsize > VMDK_MAX_DESC_BYTES)
        return bf_err(img, -EFBIG, "%s: the descriptor file is %" PRIu64 " bytes, larger than "
                      "any valid descriptor (limit %u)", img->filename, fsize,
                      VMDK_MAX_DESC_BYTES);
    char *text = malloc(fsize ? fsize : 1);
    if (!text)
        return bf_err(img, -ENOMEM, "out of memory");
    int r = bf_source_pread(img->src, text, fsize, 0);
    if (r < 0) {
        free(text);
        return bf_err(img, r, "%s: cannot read: %s", img->filename, strerror(-r));
    }
    r = vmdk_desc_parse(img, img->filename, text, fsize, &v->desc);
    free(text);
    v->desc_off = 0;
    v->desc_bytes = fsize;
    if (r == 0)
        r = check_create_type(img, &v->desc, img->filename);
    if (r == 0)
        r = open_extents(img, v, &v->desc);
    return r;
}

/* A sparse file with an embedded descriptor is its own single extent; the
 * descriptor must say no more than that.  Its file name is not compared: a
 * renamed file still carries the name it was created under. */
static int check_embedded(struct bf_image *img, const struct vmdk *v, const char *where)
{
    const struct vmdk_desc *d = &v->desc;
    const struct vmdk_extent *e = &v->ext[0];
    if (d->n_ext == 0)
        return 0;
    const struct vmdk_desc_extent *x = &d->ext[0];
    if (d->n_ext > 1 || x->access == VMDK_NOACCESS ||
        (x->type != VMDK_ET_SPARSE && x->type != VMDK_ET_VMFSSPARSE))
        return bf_err(img, -EINVAL, "%s: lists %zu extent(s), the first of type %s, but a "
                      "sparse file with an embedded descriptor is one sparse extent", where,
                      d->n_ext, vmdk_etype_name(x->type));
    if (x->sectors * VMDK_SECTOR != e->capacity)
        return bf_err(img, -EINVAL, "%s: the extent sizes do not add up: the descriptor gives "
                      "the extent %" PRIu64 " sectors, the header %" PRIu64, where, x->sectors,
                      e->capacity / VMDK_SECTOR);
    return 0;
}

static int open_sparse_image(struct bf_image *img, struct vmdk *v)
{
    v->ext = calloc(1, sizeof *v->ext);
    if (!v->ext)
        return bf_err(img, -ENOMEM, "out of memory");
    struct vmdk_extent *e = &v->ext[0];
    e->src = img->src;          /* not owned */
    v->n_ext = 1;
    char *text = NULL;
    size_t tlen = 0;
    char where[BF_ERRMSG_MAX / 2];
    snprintf(where, sizeof where, "%s (embedded descriptor)", img->filename);
    int r = vmdk_sparse_open(img, e, VMDK_ET_SPARSE, &text, &tlen);
    if (r == 0 && text)
        r = vmdk_desc_parse(img, where, text, tlen, &v->desc);
    free(text);
    if (r < 0)
        return r;
    v->desc_off = e->desc_off;
    v->desc_bytes = e->desc_bytes;
    if (e->kind == VMDK_KDMV && e->capacity == 0 && v->desc.n_ext > 0) {
        /* No capacity, but a descriptor listing extents: qemu reads such a
         * file as a descriptor file, and so do we. */
        vmdk_extent_free(e);
        free(v->ext);
        v->ext = NULL;
        v->n_ext = 0;
        if ((r = check_create_type(img, &v->desc, where)) < 0)
            return r;
        return open_extents(img, v, &v->desc);
    }
    if ((r = check_embedded(img, v, where)) < 0)
        return r;
    if (img->writable && ((v->desc.n_ext && (r = vmdk_writable_extent(img, &v->desc.ext[0])) < 0)
                          || (r = vmdk_writable_sparse(img, e)) < 0))
        return r;
    e->size = e->capacity;
    img->size = e->capacity;
    return 0;
}

/* VMware on Windows writes parentFileNameHint as a Windows path
 * ("C:\VMs\base\base.vmdk", "..\base\base.vmdk"), which names nothing
 * here.  Where a copied VM has that file: an absolute name (drive letter,
 * UNC or rooted) as its last component beside the child, a relative one with
 * its backslashes read as slashes.  NULL: @hint is no Windows path. */
static char *hint_as_copied(const char *hint)
{
    bool drive = isalpha((unsigned char)hint[0]) && hint[1] == ':';
    if (!drive && !strchr(hint, '\\'))
        return NULL;
    if (drive || hint[0] == '\\') {
        const char *b = hint + strlen(hint);
        while (b > hint && b[-1] != '\\' && b[-1] != '/' && b[-1] != ':')
            b--;
        return *b ? strdup(b) : NULL;
    }
    char *s = strdup(hint);
    for (char *c = s; c && *c; c++)
        if (*c == '\\')
            *c = '/';
    return s;
}

/* Open the parent named @hint; a Windows path not found as written is
 * looked for where a copied VM keeps it (hint_as_copied). */
static int open_parent_file(struct bf_image *img, const char *hint)
{
    int r = bf_open_backing(img, hint, NULL);
    if (r != -ENOENT)
        return r;
    char *alt = hint_as_copied(hint);
    if (!alt)
        return r;
    r = bf_open_backing(img, alt, NULL);
    if (r == -ENOENT) {
        char *at = bf_path_relative_to(img->filename, alt);
        bf_err(img, r, "%s: the parent file '%s' (a Windows path) is neither there nor at %s",
               img->filename, hint, at ? at : alt);
        free(at);
    }
    free(alt);
    return r;
}

/* Follow parentFileNameHint and check the parent's CID against ours. */
static int open_parent(struct bf_image *img, const struct vmdk *v)
{
    const struct vmdk_desc *d = &v->desc;
    bool check = !(img->open_flags & BF_OPEN_NO_PARENT_CHECK);
    bool delta = d->has_parent_cid && d->parent_cid != 0xffffffffu;
    if (!d->parent_hint) {
        if (delta && check && !(img->open_flags & BF_OPEN_NO_BACKING))
            return bf_err(img, -EINVAL, "%s: this is a delta disk (parentCID %08" PRIx32 ") but "
                          "its descriptor names no parent file (no parentFileNameHint); its "
                          "unallocated parts cannot be read", img->filename, d->parent_cid);
        return 0;
    }
    int r = open_parent_file(img, d->parent_hint);
    if (r < 0 || !img->backing || !check)
        return r;
    const struct bf_image *p = img->backing;
    if (p->drv != &bf_driver_vmdk)
        return 0;               /* only a vmdk parent has a CID (qemu skips the check too) */
    const struct vmdk *pv = p->priv;
    if (!d->has_parent_cid)
        return bf_err(img, -EINVAL, "%s: names the parent %s but records no parentCID to "
                      "check it against", img->filename, p->filename);
    if (!pv->desc.has_cid)
        return bf_err(img, -EINVAL, "%s: the parent %s has no CID to check our parentCID %08"
                      PRIx32 " against", img->filename, p->filename, d->parent_cid);
    if (pv->desc.cid != d->parent_cid)
        return bf_err(img, -EINVAL, "%s: parentCID %08" PRIx32 " does not match the CID %08"
                      PRIx32 " of its parent %s: the parent changed after this delta disk was "
                      "made, so the disk would read wrong", img->filename, d->parent_cid,
                      pv->desc.cid, p->filename);
    return 0;
}

static void fill_info(struct bf_image *img, struct vmdk *v)
{
    const struct vmdk_extent *sp = NULL;
    bool compressed = false;
    for (size_t i = 0; i < v->n_ext; i++) {
        const struct vmdk_extent *e = &v->ext[i];
        if (e->kind != VMDK_FLAT && e->kind != VMDK_ZERO && !sp)
            sp = e;
        compressed |= e->compressed;
    }
    const char *ct = v->desc.create_type;
    if (!ct)
        ct = !sp ? "vmdk" : sp->kind == VMDK_COWD ? "vmfsSparse"
           : sp->compressed ? "streamOptimized" : "monolithicSparse";
    if (sp && sp->kind == VMDK_KDMV)
        snprintf(v->version_str, sizeof v->version_str, "%.60s (sparse extent version %u)",
                 ct, sp->version);
    else if (sp && sp->kind == VMDK_COWD)
        snprintf(v->version_str, sizeof v->version_str, "%.60s (COWD version %u)", ct,
                 sp->version);
    else
        snprintf(v->version_str, sizeof v->version_str, "%.60s", ct);
    img->info.format_version = v->version_str;
    img->info.cluster_size = sp ? (uint32_t)sp->grain : 0;
    img->info.compression = compressed ? "zlib" : NULL;
    img->info.backing_file = v->desc.parent_hint;
}

static int vmdk_open(struct bf_image *img, const struct bf_open_opts *opts)
{
    if (opts->snapshot)
        return bf_err(img, -ENOTSUP, "%s: vmdk images have no internal snapshots",
                      img->filename);
    struct vmdk *v = calloc(1, sizeof *v);
    if (!v)
        return bf_err(img, -ENOMEM, "out of memory");
    pthread_mutex_init(&v->cid_lock, NULL);
    pthread_mutex_init(&v->alloc_lock, NULL);
    v->gt_uncached = img->writable;
    img->priv = v;

    uint64_t fsize;
    uint8_t head[8] = { 0 };
    int r = bf_source_size(img->src, &fsize);
    if (r < 0) {
        r = bf_err(img, r, "%s: cannot get size: %s", img->filename, strerror(-r));
        goto fail;
    }
    if ((r = bf_source_pread(img->src, head, (size_t)bf_min64(fsize, sizeof head), 0)) < 0) {
        r = bf_err(img, r, "%s: cannot read: %s", img->filename, strerror(-r));
        goto fail;
    }
    if (fsize >= 4 && (bf_be32(head) == VMDK_KDMV_MAGIC || bf_be32(head) == VMDK_COWD_MAGIC))
        r = open_sparse_image(img, v);
    else if (fsize >= 8 && bf_le64(head) == VMDK_SESPARSE_MAGIC)
        r = bf_err(img, -ENOTSUP, "%s: this is a seSparse extent, not a whole disk; open the "
                   "descriptor file that lists it", img->filename);
    else
        r = open_descriptor_image(img, v, fsize);
    if (r < 0)
        goto fail;

    /* one cache for the grain tables of all extents, blocks as large as
     * the largest table */
    size_t block = 0;
    for (size_t i = 0; i < v->n_ext; i++) {
        size_t b = (size_t)v->ext[i].gt_entries * v->ext[i].gte_size;
        if (b > block)
            block = b;
    }
    if (block && !(v->gt_cache = bf_cache_new(block, VMDK_GT_CACHE_BYTES))) {
        r = bf_err(img, -ENOMEM, "out of memory");
        goto fail;
    }
    if ((r = open_parent(img, v)) < 0)
        goto fail;
    fill_info(img, v);
    return 0;

fail:
    /* the parent, if opened, is closed by bf_close(img) */
    vmdk_free(v);
    img->priv = NULL;
    return r;
}

const struct bf_driver bf_driver_vmdk = {
    .name = "vmdk",
    .probe = vmdk_probe,
    .open = vmdk_open,
    .close = vmdk_close,
    .map = vmdk_map,
    .pwrite = vmdk_pwrite,
    .zero = vmdk_zero,
    .flush = vmdk_flush,
};
