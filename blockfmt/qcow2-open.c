/* qcow2-open.c — qcow2 probe, header and header-extension parsing with every
 * field checked, the active (or snapshot) L1 table, backing file and external
 * data file.  Layout: qemu docs/interop/qcow2.txt.
 *
 * Rules: unknown incompatible feature bits are refused by name (the image's
 * feature name table names them when it can); the dirty and corrupt bits are
 * tolerated for reading; encrypted images are refused.
 *
 * Thread model: open and close run on one thread; nothing here changes after
 * open.
 */
#include "qcow2.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

static int qcow2_probe(const uint8_t *head, size_t len)
{
    if (len >= 8 && bf_be32(head) == QCOW2_MAGIC && bf_be32(head + 4) >= 2)
        return 100;
    return 0;
}

static void qcow2_free(struct qcow2 *q)
{
    if (!q)
        return;
    if (q->writable)
        pthread_rwlock_destroy(&q->lock);
    qcow2_rc_close(q);
    free(q->l1);
    qcow2_free_snapshots(q);
    free(q->features);
    free(q->backing_file);
    free(q->backing_format);
    free(q->data_file);
    if (q->own_data_src)
        bf_source_close(q->data_src);
    bf_cache_free(q->l2_cache);
    free(q);
}

static void qcow2_close(struct bf_image *img)
{
    qcow2_free(img->priv);
    img->priv = NULL;
}

static char *dup_bytes(const uint8_t *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = 0;
    }
    return s;
}

/* Does the string contain a NUL or control byte?  Names read from the image
 * become paths and messages; refuse anything that cannot be printed. */
static bool bad_name(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20)
            return true;
    return false;
}

/* Parse header extensions in [start, end) of the first cluster @hdr. */
static int read_extensions(struct bf_image *img, struct qcow2 *q, const uint8_t *hdr,
                           uint64_t start, uint64_t end)
{
    uint64_t off = start;
    while (off + 8 <= end) {
        uint32_t type = bf_be32(hdr + off);
        uint32_t len = bf_be32(hdr + off + 4);
        off += 8;
        if (type == QCOW2_EXT_END)
            return 0;
        if (len > end - off)
            return bf_err(img, -EINVAL, "%s: qcow2 header extension 0x%08x of %" PRIu32
                          " bytes runs past the header area", img->filename, type, len);
        const uint8_t *d = hdr + off;
        switch (type) {
        case QCOW2_EXT_BACKING_FORMAT:
            if (len == 0 || len > 63 || bad_name((const char *)d, len))
                return bf_err(img, -EINVAL, "%s: invalid backing format extension",
                              img->filename);
            free(q->backing_format);
            if (!(q->backing_format = dup_bytes(d, len)))
                return bf_err(img, -ENOMEM, "out of memory");
            break;
        case QCOW2_EXT_DATA_FILE:
            if (len == 0 || len > 4095 || bad_name((const char *)d, len))
                return bf_err(img, -EINVAL, "%s: invalid external data file name extension",
                              img->filename);
            free(q->data_file);
            if (!(q->data_file = dup_bytes(d, len)))
                return bf_err(img, -ENOMEM, "out of memory");
            break;
        case QCOW2_EXT_FEATURE_TABLE: {
            size_t n = len / 48;
            free(q->features);
            q->features = calloc(n ? n : 1, sizeof *q->features);
            if (!q->features)
                return bf_err(img, -ENOMEM, "out of memory");
            q->nb_features = n;
            for (size_t i = 0; i < n; i++) {
                q->features[i].type = d[i * 48];
                q->features[i].bit = d[i * 48 + 1];
                memcpy(q->features[i].name, d + i * 48 + 2, 46);
                q->features[i].name[46] = 0;
                for (char *c = q->features[i].name; *c; c++)
                    if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f)
                        *c = '?';
            }
            break;
        }
        default:
            break;      /* bitmaps, encryption header, unknown: not needed to read */
        }
        off += ((uint64_t)len + 7) & ~7ull;
    }
    return 0;
}

/* Refuse incompatible features we do not know, naming each. */
static int check_features(struct bf_image *img, struct qcow2 *q)
{
    uint64_t unknown = q->incompat & ~QCOW2_INCOMPAT_KNOWN;
    if (!unknown)
        return 0;
    char list[512] = "";
    size_t used = 0;
    for (unsigned bit = 0; bit < 64; bit++) {
        if (!(unknown & (1ull << bit)))
            continue;
        const char *name = NULL;
        for (size_t i = 0; i < q->nb_features; i++)
            if (q->features[i].type == 0 && q->features[i].bit == bit)
                name = q->features[i].name;
        int n = name ? snprintf(list + used, sizeof list - used, "%sbit %u (%s)",
                                used ? ", " : "", bit, name)
                     : snprintf(list + used, sizeof list - used, "%sbit %u",
                                used ? ", " : "", bit);
        if (n < 0 || (size_t)n >= sizeof list - used)
            break;
        used += (size_t)n;
    }
    return bf_err(img, -ENOTSUP, "%s: unsupported qcow2 incompatible feature %s",
                  img->filename, list);
}

int qcow2_load_l1(struct bf_image *img, struct qcow2 *q, uint64_t off, uint32_t n,
                  const char *what)
{
    uint64_t bytes = (uint64_t)n * 8;
    if (bytes > QCOW2_MAX_L1_BYTES)
        return bf_err(img, -EFBIG, "%s: %s has %" PRIu32 " entries, more than any valid "
                      "image (limit %u)", img->filename, what, n, QCOW2_MAX_L1_BYTES / 8);
    if (n && (off & (q->cluster_size - 1)))
        return bf_err(img, -EINVAL, "%s: %s offset %#" PRIx64 " is not aligned to a cluster",
                      img->filename, what, off);
    if (n && !bf_range_within(off, bytes, q->file_size))
        return bf_err(img, -EINVAL, "%s: %s (%" PRIu64 " bytes at offset %#" PRIx64
                      ") lies past the end of the file (%" PRIu64 " bytes)",
                      img->filename, what, bytes, off, q->file_size);
    uint64_t *l1 = malloc(bytes ? bytes : 8);
    if (!l1)
        return bf_err(img, -ENOMEM, "out of memory");
    int r = bytes ? bf_source_pread(img->src, l1, bytes, off) : 0;
    if (r < 0) {
        free(l1);
        return bf_err(img, r, "%s: cannot read %s: %s", img->filename, what, strerror(-r));
    }
    for (uint32_t i = 0; i < n; i++)
        l1[i] = bf_be64(&l1[i]);
    free(q->l1);
    q->l1 = l1;
    q->l1_size = n;
    return 0;
}

/* Entries of the L1 table needed to cover @size bytes. */
static uint64_t l1_entries_for(const struct qcow2 *q, uint64_t size)
{
    unsigned shift = q->cluster_bits + q->l2_bits;
    return (size >> shift) + ((size & ((1ull << shift) - 1)) != 0);
}

static int parse_header(struct bf_image *img, struct qcow2 *q, const uint8_t *h,
                        size_t hlen, uint64_t *ext_start, uint64_t *ext_end)
{
    q->version = bf_be32(h + 4);
    q->refcount_order = 4;          /* version 2: always 16-bit refcounts */
    if (q->version != 2 && q->version != 3)
        return bf_err(img, -ENOTSUP, "%s: qcow2 version %" PRIu32 " is not supported "
                      "(versions 2 and 3 are)", img->filename, q->version);
    q->cluster_bits = bf_be32(h + 20);
    if (q->cluster_bits < QCOW2_MIN_CLUSTER_BITS || q->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        return bf_err(img, -EINVAL, "%s: qcow2 cluster_bits %u is out of range (%d to %d)",
                      img->filename, q->cluster_bits, QCOW2_MIN_CLUSTER_BITS,
                      QCOW2_MAX_CLUSTER_BITS);
    q->cluster_size = 1ull << q->cluster_bits;

    uint32_t header_length = 72;
    if (q->version >= 3) {
        if (hlen < 104)
            return bf_err(img, -EINVAL, "%s: file too short for a qcow2 version 3 header",
                          img->filename);
        header_length = bf_be32(h + 100);
        if (header_length < 104 || header_length > q->cluster_size)
            return bf_err(img, -EINVAL, "%s: qcow2 header_length %" PRIu32 " is out of range",
                          img->filename, header_length);
        if (header_length > hlen)
            return bf_err(img, -EINVAL, "%s: file too short for its qcow2 header",
                          img->filename);
        q->incompat = bf_be64(h + 72);
        q->autoclear = bf_be64(h + 88);
        uint32_t refcount_order = bf_be32(h + 96);
        if (refcount_order > 6)
            return bf_err(img, -EINVAL, "%s: qcow2 refcount_order %" PRIu32 " is out of range",
                          img->filename, refcount_order);
        q->refcount_order = refcount_order;
    }

    uint32_t crypt = bf_be32(h + 32);
    if (crypt != 0)
        return bf_err(img, -ENOTSUP, "%s: encrypted images are not supported (qcow2 %s "
                      "encryption)", img->filename,
                      crypt == 1 ? "AES" : crypt == 2 ? "LUKS" : "unknown");

    /* compression type: present when the header is long enough */
    uint8_t ctype = header_length > 104 ? h[104] : 0;
    if (q->incompat & QCOW2_INCOMPAT_COMPRESSION) {
        if (ctype == 0)
            return bf_err(img, -EINVAL, "%s: qcow2 compression type bit is set but the "
                          "type is zlib", img->filename);
    } else if (ctype != 0) {
        return bf_err(img, -EINVAL, "%s: qcow2 compression_type is %u but the compression "
                      "type feature bit is not set", img->filename, ctype);
    }
    if (ctype > 1)
        return bf_err(img, -ENOTSUP, "%s: unknown qcow2 compression type %u",
                      img->filename, ctype);
    q->codec = ctype == 1 ? BF_CODEC_ZSTD : BF_CODEC_DEFLATE;

    q->extended_l2 = (q->incompat & QCOW2_INCOMPAT_EXTL2) != 0;
    if (q->extended_l2 && q->cluster_bits < 14)
        return bf_err(img, -EINVAL, "%s: clusters of %" PRIu64 " bytes are too small for "
                      "extended L2 entries", img->filename, q->cluster_size);
    q->l2_entry_size = q->extended_l2 ? 16 : 8;
    q->l2_bits = q->cluster_bits - (q->extended_l2 ? 4 : 3);

    q->csize_shift = 62 - (q->cluster_bits - 8);
    q->csize_mask = (1ull << (q->cluster_bits - 8)) - 1;
    q->coffset_mask = (1ull << q->csize_shift) - 1;

    q->header_size = bf_be64(h + 24);
    if (q->header_size > (uint64_t)INT64_MAX)
        return bf_err(img, -EFBIG, "%s: qcow2 virtual size %" PRIu64 " is too large",
                      img->filename, q->header_size);

    uint64_t backing_off = bf_be64(h + 8);
    *ext_start = header_length;
    *ext_end = backing_off ? backing_off : q->cluster_size;
    if (backing_off > q->cluster_size || backing_off > hlen ||
        (backing_off && backing_off < header_length))
        return bf_err(img, -EINVAL, "%s: qcow2 backing file name offset %" PRIu64
                      " is outside the header cluster", img->filename, backing_off);
    if (*ext_end > hlen)
        *ext_end = hlen;
    if (backing_off) {
        uint32_t blen = bf_be32(h + 16);
        if (blen > 1023 || blen > q->cluster_size - backing_off || blen > hlen - backing_off)
            return bf_err(img, -EINVAL, "%s: qcow2 backing file name is too long (%" PRIu32
                          " bytes)", img->filename, blen);
        if (bad_name((const char *)h + backing_off, blen))
            return bf_err(img, -EINVAL, "%s: qcow2 backing file name holds control "
                          "characters", img->filename);
        if (!(q->backing_file = dup_bytes(h + backing_off, blen)))
            return bf_err(img, -ENOMEM, "out of memory");
    }
    return 0;
}

/* Refcount table: not needed for reading, but where it points says whether
 * the header is sane, and a broken one means a broken image. */
static int check_refcount_table(struct bf_image *img, struct qcow2 *q, const uint8_t *h)
{
    uint64_t off = bf_be64(h + 48);
    uint32_t clusters = bf_be32(h + 56);
    if (clusters == 0)
        return bf_err(img, -EINVAL, "%s: qcow2 image has no refcount table", img->filename);
    if ((uint64_t)clusters > QCOW2_MAX_REFTABLE_BYTES >> q->cluster_bits)
        return bf_err(img, -EFBIG, "%s: qcow2 refcount table of %" PRIu32 " clusters is "
                      "larger than any valid image", img->filename, clusters);
    if (off & (q->cluster_size - 1))
        return bf_err(img, -EINVAL, "%s: qcow2 refcount table offset %#" PRIx64
                      " is not aligned to a cluster", img->filename, off);
    if (!bf_range_within(off, (uint64_t)clusters << q->cluster_bits, q->file_size))
        return bf_err(img, -EINVAL, "%s: qcow2 refcount table (offset %#" PRIx64
                      ") lies past the end of the file (%" PRIu64 " bytes)",
                      img->filename, off, q->file_size);
    return 0;
}

static int open_data_file(struct bf_image *img, struct qcow2 *q)
{
    if (!(q->incompat & QCOW2_INCOMPAT_DATA_FILE)) {
        q->data_src = img->src;
        return 0;
    }
    if (!q->data_file)
        return bf_err(img, -EINVAL, "%s: the image keeps its data in an external file but "
                      "does not name it", img->filename);
    int r = bf_check_inner_name(img, q->data_file, "external data file");
    if (r < 0)
        return r;
    char *path = bf_path_relative_to(img->filename, q->data_file);
    if (!path)
        return bf_err(img, -ENOMEM, "out of memory");
    char msg[BF_ERRMSG_MAX];
    r = bf_source_open(path, img->writable, &q->data_src, msg, sizeof msg);
    free(path);
    if (r < 0)
        return bf_err(img, r, "%s: external data file '%s': %s", img->filename,
                      q->data_file, msg);
    q->own_data_src = true;
    r = bf_source_lock(q->data_src, bf_lock_mode_for(img->open_flags, img->writable), msg,
                       sizeof msg);
    return r < 0 ? bf_err(img, r, "%s", msg) : 0;
}

static int open_snapshot(struct bf_image *img, struct qcow2 *q, const char *want)
{
    int i = qcow2_find_snapshot(q, want);
    if (i < 0)
        return bf_err(img, -ENOENT, "%s: no internal snapshot with id or name '%s'",
                      img->filename, want);
    const struct qcow2_snap *sn = &q->snaps[i];
    char what[64];
    snprintf(what, sizeof what, "L1 table of snapshot %.32s", sn->id);
    int r = qcow2_load_l1(img, q, sn->l1_offset, sn->l1_size, what);
    if (r < 0)
        return r;
    img->size = sn->disk_size;
    img->info.snapshot = sn->id;
    return 0;
}

static int qcow2_open(struct bf_image *img, const struct bf_open_opts *opts)
{
    struct qcow2 *q = calloc(1, sizeof *q);
    if (!q)
        return bf_err(img, -ENOMEM, "out of memory");
    img->priv = q;

    int r = bf_source_size(img->src, &q->file_size);
    if (r < 0) {
        r = bf_err(img, r, "%s: cannot get size: %s", img->filename, strerror(-r));
        goto fail;
    }
    if (q->file_size < 72) {
        r = bf_err(img, -EINVAL, "%s: file too short for a qcow2 header (%" PRIu64 " bytes)",
                   img->filename, q->file_size);
        goto fail;
    }
    /* The header, its extensions and the backing file name all live in the
     * first cluster; read it whole (or the whole file if shorter). */
    uint8_t first[72];
    r = bf_source_pread(img->src, first, sizeof first, 0);
    if (r < 0) {
        r = bf_err(img, r, "%s: cannot read header: %s", img->filename, strerror(-r));
        goto fail;
    }
    unsigned cb = bf_be32(first + 20);
    size_t hlen = (size_t)bf_min64(q->file_size,
                                   cb >= QCOW2_MIN_CLUSTER_BITS && cb <= QCOW2_MAX_CLUSTER_BITS
                                       ? 1ull << cb : 72);
    uint8_t *h = malloc(hlen);
    if (!h) {
        r = bf_err(img, -ENOMEM, "out of memory");
        goto fail;
    }
    r = bf_source_pread(img->src, h, hlen, 0);
    if (r < 0) {
        free(h);
        r = bf_err(img, r, "%s: cannot read header: %s", img->filename, strerror(-r));
        goto fail;
    }
    uint64_t ext_start = 0, ext_end = 0;
    r = parse_header(img, q, h, hlen, &ext_start, &ext_end);
    if (r == 0)
        r = read_extensions(img, q, h, ext_start, ext_end);
    if (r == 0)
        r = check_features(img, q);
    if (r == 0)
        r = check_refcount_table(img, q, h);
    uint32_t l1_size = bf_be32(h + 36);
    uint64_t l1_off = bf_be64(h + 40);
    uint64_t rt_off = bf_be64(h + 48);
    uint32_t rt_clusters = bf_be32(h + 56);
    q->nb_snaps = bf_be32(h + 60);
    q->snapshots_offset = bf_be64(h + 64);
    free(h);
    if (r < 0)
        goto fail;

    if (l1_size < l1_entries_for(q, q->header_size)) {
        r = bf_err(img, -EINVAL, "%s: qcow2 L1 table (%" PRIu32 " entries) is too small for "
                   "the virtual size %" PRIu64, img->filename, l1_size, q->header_size);
        goto fail;
    }
    if ((r = qcow2_load_l1(img, q, l1_off, l1_size, "L1 table")) < 0)
        goto fail;
    img->size = q->header_size;
    if ((r = qcow2_read_snapshots(img, q)) < 0)
        goto fail;
    if (opts->snapshot && (r = open_snapshot(img, q, opts->snapshot)) < 0)
        goto fail;
    if ((r = open_data_file(img, q)) < 0)
        goto fail;

    q->l2_cache = bf_cache_new(q->cluster_size, QCOW2_L2_CACHE_BYTES);
    if (!q->l2_cache) {
        r = bf_err(img, -ENOMEM, "out of memory");
        goto fail;
    }
    if (img->writable && (r = qcow2_open_writable(img, q, l1_off, rt_off, rt_clusters)) < 0)
        goto fail;

    if (q->backing_file) {
        if ((r = bf_open_backing(img, q->backing_file, q->backing_format)) < 0)
            goto fail;
    }

    snprintf(q->version_str, sizeof q->version_str, "%u (compat=%s)", q->version,
             q->version == 2 ? "0.10" : "1.1");
    img->info.format_version = q->version_str;
    img->info.cluster_size = (uint32_t)q->cluster_size;
    img->info.compression = bf_codec_name(q->codec);
    img->info.backing_file = q->backing_file;
    img->info.backing_format = q->backing_format;
    img->info.data_file = (q->incompat & QCOW2_INCOMPAT_DATA_FILE) ? q->data_file : NULL;
    img->info.nb_snapshots = q->nb_snaps;
    img->info.flags = ((q->incompat & QCOW2_INCOMPAT_DIRTY) ? BF_INFO_DIRTY : 0) |
                      ((q->incompat & QCOW2_INCOMPAT_CORRUPT) ? BF_INFO_CORRUPT : 0) |
                      (q->extended_l2 ? BF_INFO_EXTENDED_L2 : 0) |
                      ((q->incompat & QCOW2_INCOMPAT_DATA_FILE) &&
                       (q->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW) ? BF_INFO_DATA_FILE_RAW : 0);
    return 0;

fail:
    /* the backing image, if opened, is closed by bf_close(img) */
    qcow2_free(q);
    img->priv = NULL;
    return r;
}

const struct bf_driver bf_driver_qcow2 = {
    .name = "qcow2",
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .map = qcow2_map,
    .zero = qcow2_zero,
    .discard = qcow2_discard,
    .flush = qcow2_flush,
    .snapshots = qcow2_list_snapshots,
    .pwrite = qcow2_pwrite,
    .io_begin = qcow2_io_begin,
    .io_end = qcow2_io_end,
};
