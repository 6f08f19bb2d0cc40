/* vhdx-open.c — the vhdx driver: probe, open, close.  Open reads the file
 * identifier, picks the current of the two headers, replays the log in
 * memory when the header names one (vhdx-log.c), then reads the region
 * table, the metadata items and the whole BAT, checking every value against
 * the file and the spec's limits.
 *
 * What qemu 7.2 does, and we with it: the current header is the valid one
 * with the higher sequence number (two identical headers are fine, as
 * Disk2VHD writes them); an unknown region or metadata item marked required
 * is refused; the five required metadata items must all be there; block
 * sizes are powers of two from 1 to 256 MiB; logical sectors 512 or 4096;
 * differencing disks (HasParent) are refused; a data block that overlaps
 * the headers, the log, the BAT or the metadata, or lies past the end of the
 * file, makes the image corrupt.
 *
 * What we do differently: qemu refuses a read-only open of an image whose
 * log has not been replayed; we replay it in memory and never write.  Only
 * the region table at 192 KiB is read by qemu; we fall back to the copy at
 * 256 KiB when the first is damaged.  Regions and metadata items outside the
 * file are errors (qemu would read zeros there).
 *
 * Thread model: open and close run on one thread; nothing here changes
 * after open.
 */
#include "vhdx.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

/* Region and metadata GUIDs as their bytes on disk (the first three fields
 * little-endian). */
static const uint8_t guid_bat[16] = {
    0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42,
    0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08 };
static const uint8_t guid_metadata[16] = {
    0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b,
    0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e };
static const uint8_t guid_file_params[16] = {
    0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d,
    0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b };
static const uint8_t guid_disk_size[16] = {
    0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48,
    0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8 };
static const uint8_t guid_page83[16] = {
    0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45,
    0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46 };
static const uint8_t guid_logical_sector[16] = {
    0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09, 0x47,
    0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f };
static const uint8_t guid_physical_sector[16] = {
    0xc7, 0x48, 0xa3, 0xcd, 0x5d, 0x44, 0x71, 0x44,
    0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56 };
static const uint8_t guid_parent_locator[16] = {
    0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45,
    0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c };

static int vhdx_probe(const uint8_t *head, size_t len)
{
    return len >= 8 && memcmp(head, "vhdxfile", 8) == 0 ? 100 : 0;
}

static void vhdx_free(struct vhdx *v)
{
    if (!v)
        return;
    free(v->bat);
    bf_source_close(v->replay);
    free(v);
}

static void vhdx_close(struct bf_image *img)
{
    vhdx_free(img->priv);
    img->priv = NULL;
}

/* ------------------------------------------------------------- headers */

/* Is the 4 KiB header in @b valid (signature, checksum, version 1)? */
static bool header_valid(const uint8_t *b)
{
    return memcmp(b, "head", 4) == 0 && vhdx_crc32c(b, VHDX_HEADER_SIZE, 4) == bf_le32(b + 4) &&
           bf_le16(b + 66) == 1;
}

static int read_headers(struct bf_image *img, struct vhdx *v)
{
    uint8_t h[2][VHDX_HEADER_SIZE];
    const uint64_t where[2] = { VHDX_HEADER1_OFF, VHDX_HEADER2_OFF };
    bool ok[2];
    for (int i = 0; i < 2; i++) {
        int r = bf_source_pread(img->src, h[i], VHDX_HEADER_SIZE, where[i]);
        if (r < 0)
            return bf_err(img, r, "%s: cannot read the vhdx header at offset %" PRIu64 ": %s",
                          img->filename, where[i], strerror(-r));
        ok[i] = header_valid(h[i]);
    }
    int cur;
    if (!ok[0] && !ok[1])
        return bf_err(img, -EINVAL, "%s: no valid vhdx header: both headers (at 64 KiB and "
                      "128 KiB) fail their signature, checksum or version check",
                      img->filename);
    if (ok[0] != ok[1]) {
        cur = ok[0] ? 0 : 1;
    } else {
        uint64_t s0 = bf_le64(h[0] + 8), s1 = bf_le64(h[1] + 8);
        if (s0 == s1 && memcmp(h[0], h[1], VHDX_HEADER_SIZE) != 0)
            return bf_err(img, -EINVAL, "%s: the two vhdx headers differ but have the same "
                          "sequence number %" PRIu64 ", so neither is current", img->filename,
                          s0);
        cur = s1 > s0 ? 1 : 0;
    }
    const uint8_t *b = h[cur];
    v->cur_header = (unsigned)cur + 1;
    v->hdr.seq = bf_le64(b + 8);
    memcpy(v->hdr.log_guid, b + 48, 16);
    v->hdr.log_version = bf_le16(b + 64);
    v->hdr.log_length = bf_le32(b + 68);
    v->hdr.log_offset = bf_le64(b + 72);
    /* qemu checks where the log is even when it is empty */
    if (v->hdr.log_offset < VHDX_MiB || v->hdr.log_offset % VHDX_MiB ||
        v->hdr.log_offset > VHDX_MAX_DISK * 2)
        return bf_err(img, -EINVAL, "%s: vhdx header %u puts the log at offset %" PRIu64
                      ", which is not a multiple of 1 MiB past the header area", img->filename,
                      v->cur_header, v->hdr.log_offset);
    if (v->hdr.log_version != 0)
        return bf_err(img, -ENOTSUP, "%s: vhdx log version %u is not supported (only 0 is)",
                      img->filename, v->hdr.log_version);
    return 0;
}

/* ------------------------------------------------------ region table */

struct region { uint64_t off, len; const char *what; };

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    /* callers keep every end below 2^63 */
    return alen && blen && a < b + blen && b < a + alen;
}

/* Parse the 64 KiB region table @t; fills v->bat_* and v->md_*. */
static int parse_regions(struct bf_image *img, struct vhdx *v, const uint8_t *t, uint64_t where)
{
    uint32_t n = bf_le32(t + 8);
    if (n > VHDX_MAX_REGIONS)
        return bf_err(img, -EINVAL, "%s: the vhdx region table at %" PRIu64 " lists %" PRIu32
                      " regions (at most %u are allowed)", img->filename, where, n,
                      VHDX_MAX_REGIONS);
    struct region seen[VHDX_MAX_REGIONS + 2];
    size_t ns = 0;
    seen[ns++] = (struct region){ 0, VHDX_HEADER_AREA, "the header area" };
    if (v->hdr.log_length)
        seen[ns++] = (struct region){ v->hdr.log_offset, v->hdr.log_length, "the log" };
    bool have_bat = false, have_md = false;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = t + 16 + (size_t)i * 32;
        uint64_t off = bf_le64(e + 16);
        uint32_t len = bf_le32(e + 24);
        bool required = bf_le32(e + 28) & 1;
        bool is_bat = memcmp(e, guid_bat, 16) == 0, is_md = memcmp(e, guid_metadata, 16) == 0;
        const char *what = is_bat ? "the BAT" : is_md ? "the metadata region" : "a region";
        if (off % VHDX_MiB || off < VHDX_MiB || off > VHDX_MAX_DISK * 2 || len % VHDX_MiB ||
            len == 0)
            return bf_err(img, -EINVAL, "%s: the vhdx region table places %s at offset %" PRIu64
                          ", %" PRIu32 " bytes: not whole MiB past the header area",
                          img->filename, what, off, len);
        for (size_t k = 0; k < ns; k++)
            if (overlaps(off, len, seen[k].off, seen[k].len))
                return bf_err(img, -EINVAL, "%s: %s (offset %" PRIu64 ", %" PRIu32 " bytes) "
                              "overlaps %s", img->filename, what, off, len, seen[k].what);
        seen[ns++] = (struct region){ off, len, what };
        if (is_bat || is_md) {
            if (is_bat ? have_bat : have_md)
                return bf_err(img, -EINVAL, "%s: the vhdx region table lists %s twice",
                              img->filename, what);
            if (off + len > v->file_size)
                return bf_err(img, -EINVAL, "%s: %s (offset %" PRIu64 ", %" PRIu32 " bytes) "
                              "lies past the end of the file (%" PRIu64 " bytes); the image is "
                              "truncated or damaged", img->filename, what, off, len,
                              v->file_size);
            if (is_bat) {
                have_bat = true;
                v->bat_off = off;
                v->bat_len = len;
            } else {
                have_md = true;
                v->md_off = off;
                v->md_len = len;
            }
        } else if (required) {
            return bf_err(img, -ENOTSUP, "%s: the vhdx region table lists a required region "
                          "this reader does not know", img->filename);
        }
    }
    if (!have_bat || !have_md)
        return bf_err(img, -EINVAL, "%s: the vhdx region table has no %s region", img->filename,
                      !have_bat ? "BAT" : "metadata");
    return 0;
}

/* The region table at 192 KiB, or its copy at 256 KiB when that one is
 * damaged.  Read after the log replay: the log may have rewritten it. */
static int read_regions(struct bf_image *img, struct vhdx *v)
{
    const uint64_t where[2] = { VHDX_RTABLE1_OFF, VHDX_RTABLE2_OFF };
    uint8_t *t = malloc(VHDX_RTABLE_SIZE);
    if (!t)
        return bf_err(img, -ENOMEM, "out of memory");
    int r = -EINVAL;
    for (int i = 0; i < 2; i++) {
        r = vhdx_read(img, v, t, VHDX_RTABLE_SIZE, where[i]);
        if (r < 0)
            break;
        if (memcmp(t, "regi", 4) == 0 && vhdx_crc32c(t, VHDX_RTABLE_SIZE, 4) == bf_le32(t + 4)) {
            r = parse_regions(img, v, t, where[i]);
            break;
        }
        r = bf_err(img, -EINVAL, "%s: both vhdx region tables (at 192 KiB and 256 KiB) fail "
                   "their signature or checksum check", img->filename);
    }
    free(t);
    return r;
}

/* ---------------------------------------------------------- metadata */

enum { MD_PARAMS, MD_SIZE, MD_PAGE83, MD_LSEC, MD_PSEC, MD_PARENT, MD_N };

struct md_item { uint32_t off, len; bool present; };

static int read_item(struct bf_image *img, struct vhdx *v, const struct md_item *it,
                     const char *name, void *buf, uint32_t need)
{
    if (it->len < need)
        return bf_err(img, -EINVAL, "%s: the vhdx metadata item '%s' is %" PRIu32 " bytes, "
                      "less than its %" PRIu32, img->filename, name, it->len, need);
    return vhdx_read(img, v, buf, need, v->md_off + it->off);
}

static int read_metadata(struct bf_image *img, struct vhdx *v)
{
    static const uint8_t *const guids[MD_N] = {
        guid_file_params, guid_disk_size, guid_page83, guid_logical_sector,
        guid_physical_sector, guid_parent_locator };
    static const char *const names[MD_N] = {
        "file parameters", "virtual disk size", "page 83 data", "logical sector size",
        "physical sector size", "parent locator" };
    uint8_t *t = malloc(VHDX_MTABLE_SIZE);
    if (!t)
        return bf_err(img, -ENOMEM, "out of memory");
    int r = vhdx_read(img, v, t, VHDX_MTABLE_SIZE, v->md_off);
    if (r < 0) {
        free(t);
        return r;
    }
    struct md_item items[MD_N] = { { 0, 0, false } };
    uint16_t n = bf_le16(t + 10);
    if (memcmp(t, "metadata", 8) != 0)
        r = bf_err(img, -EINVAL, "%s: the vhdx metadata table at offset %" PRIu64 " has no "
                   "'metadata' signature", img->filename, v->md_off);
    else if (n > VHDX_MAX_MD_ENTRIES)
        r = bf_err(img, -EINVAL, "%s: the vhdx metadata table lists %u items (at most %u are "
                   "allowed)", img->filename, n, VHDX_MAX_MD_ENTRIES);
    for (unsigned i = 0; r == 0 && i < n; i++) {
        const uint8_t *e = t + 32 + (size_t)i * 32;
        uint32_t off = bf_le32(e + 16), len = bf_le32(e + 20), flags = bf_le32(e + 24);
        int k = 0;
        while (k < MD_N && memcmp(e, guids[k], 16) != 0)
            k++;
        const char *name = k < MD_N ? names[k] : "(unknown)";
        if (len && (off < VHDX_MTABLE_SIZE || len > VHDX_MAX_MD_ITEM ||
                    !bf_range_within(off, len, v->md_len)))
            r = bf_err(img, -EINVAL, "%s: the vhdx metadata item '%s' (offset %" PRIu32 ", %"
                       PRIu32 " bytes) lies outside the metadata region", img->filename, name,
                       off, len);
        else if (k == MD_N && (flags & 4))
            r = bf_err(img, -ENOTSUP, "%s: the vhdx metadata has a required item this reader "
                       "does not know", img->filename);
        else if (k < MD_N && items[k].present)
            r = bf_err(img, -EINVAL, "%s: the vhdx metadata lists '%s' twice", img->filename,
                       name);
        else if (k < MD_N)
            items[k] = (struct md_item){ off, len, true };
    }
    free(t);
    if (r < 0)
        return r;
    for (int k = 0; k < MD_PARENT; k++)
        if (!items[k].present)
            return bf_err(img, -EINVAL, "%s: the vhdx metadata has no '%s' item",
                          img->filename, names[k]);

    uint8_t b[8];
    if ((r = read_item(img, v, &items[MD_PARAMS], names[MD_PARAMS], b, 8)) < 0)
        return r;
    v->block_size = bf_le32(b);
    v->leave_allocated = bf_le32(b + 4) & 1;
    v->has_parent = bf_le32(b + 4) & 2;
    if ((r = read_item(img, v, &items[MD_SIZE], names[MD_SIZE], b, 8)) < 0)
        return r;
    img->size = bf_le64(b);
    if ((r = read_item(img, v, &items[MD_LSEC], names[MD_LSEC], b, 4)) < 0)
        return r;
    v->logical_sector = bf_le32(b);
    if ((r = read_item(img, v, &items[MD_PSEC], names[MD_PSEC], b, 4)) < 0)
        return r;
    v->physical_sector = bf_le32(b);

    if (v->has_parent)
        return bf_err(img, -ENOTSUP, "%s: this is a differencing vhdx disk (it has a parent "
                      "disk); differencing vhdx is not supported (qemu does not read it "
                      "either)", img->filename);
    if (v->block_size < VHDX_MIN_BLOCK || v->block_size > VHDX_MAX_BLOCK ||
        (v->block_size & (v->block_size - 1)))
        return bf_err(img, -EINVAL, "%s: vhdx block size %" PRIu32 " is not a power of two "
                      "from 1 MiB to 256 MiB", img->filename, v->block_size);
    if (v->logical_sector != 512 && v->logical_sector != 4096)
        return bf_err(img, -EINVAL, "%s: vhdx logical sector size %" PRIu32 " is neither 512 "
                      "nor 4096", img->filename, v->logical_sector);
    if (img->size > VHDX_MAX_DISK || img->size % v->logical_sector)
        return bf_err(img, -EINVAL, "%s: vhdx virtual disk size %" PRIu64 " is not a whole "
                      "number of %" PRIu32 "-byte sectors up to 64 TiB", img->filename,
                      img->size, v->logical_sector);
    return 0;
}

/* --------------------------------------------------------------- BAT */

static int read_bat(struct bf_image *img, struct vhdx *v)
{
    /* 2^23 sectors of sector bitmap per bitmap block: the data blocks one
     * bitmap block describes, whose BAT entries precede its own */
    v->chunk_ratio = ((uint64_t)1 << 23) * v->logical_sector / v->block_size;
    v->n_blocks = (img->size + v->block_size - 1) / v->block_size;
    v->n_bat = v->n_blocks ? v->n_blocks + (v->n_blocks - 1) / v->chunk_ratio : 0;
    if (v->n_bat == 0)
        return 0;                /* an empty disk (qemu-img makes them) */
    uint64_t bytes = v->n_bat * 8;
    if (bytes > v->bat_len)
        return bf_err(img, -EINVAL, "%s: the vhdx BAT region (%" PRIu64 " bytes) is too small "
                      "for the %" PRIu64 " entries a %" PRIu64 "-byte disk needs", img->filename,
                      v->bat_len, v->n_bat, img->size);
    if (bytes > VHDX_MAX_BAT_BYTES)
        return bf_err(img, -EFBIG, "%s: the vhdx BAT has %" PRIu64 " entries, more than this "
                      "reader holds in memory", img->filename, v->n_bat);
    uint8_t *raw = malloc(bytes);
    v->bat = malloc(bytes);
    if (!raw || !v->bat) {
        free(raw);
        return bf_err(img, -ENOMEM, "out of memory");
    }
    int r = vhdx_read(img, v, raw, bytes, v->bat_off);
    for (uint64_t i = 0; r == 0 && i < v->n_bat; i++)
        v->bat[i] = bf_le64(raw + i * 8);
    free(raw);
    if (r < 0)
        return r;

    /* Every data block must lie inside the file, clear of the structures. */
    const struct region fixed[] = {
        { 0, VHDX_HEADER_AREA, "the header area" },
        { v->hdr.log_offset, v->hdr.log_length, "the log" },
        { v->bat_off, v->bat_len, "the BAT" },
        { v->md_off, v->md_len, "the metadata region" },
    };
    for (uint64_t i = 0; i < v->n_bat; i++) {
        if (i % (v->chunk_ratio + 1) == v->chunk_ratio)
            continue;            /* a sector bitmap entry: only differencing disks use them */
        unsigned st = VHDX_BAT_STATE(v->bat[i]);
        if (st != VHDX_PAYLOAD_FULLY_PRESENT && st != VHDX_PAYLOAD_PARTIALLY_PRESENT)
            continue;
        uint64_t off = VHDX_BAT_OFFSET(v->bat[i]);
        uint64_t blk = i - i / (v->chunk_ratio + 1);
        if (!bf_range_within(off, v->block_size, v->file_size))
            return bf_err(img, -EINVAL, "%s: vhdx block %" PRIu64 " (guest offset %" PRIu64
                          ") lies at file offset %" PRIu64 ", past the end of the file (%"
                          PRIu64 " bytes); the image is truncated or damaged", img->filename,
                          blk, blk * v->block_size, off, v->file_size);
        for (size_t k = 0; k < sizeof fixed / sizeof fixed[0]; k++)
            if (overlaps(off, v->block_size, fixed[k].off, fixed[k].len))
                return bf_err(img, -EINVAL, "%s: vhdx block %" PRIu64 " (file offset %" PRIu64
                              ") overlaps %s; the image is damaged", img->filename, blk, off,
                              fixed[k].what);
    }
    return 0;
}

/* -------------------------------------------------------------- open */

static int vhdx_open(struct bf_image *img, const struct bf_open_opts *opts)
{
    if (opts->snapshot)
        return bf_err(img, -ENOTSUP, "%s: vhdx images have no internal snapshots",
                      img->filename);
    if (img->writable)
        return bf_err(img, -EROFS, "%s: vhdx images cannot be written; open read-only",
                      img->filename);
    struct vhdx *v = calloc(1, sizeof *v);
    if (!v)
        return bf_err(img, -ENOMEM, "out of memory");
    img->priv = v;

    uint8_t sig[8];
    int r = bf_source_size(img->src, &v->file_size);
    if (r < 0) {
        r = bf_err(img, r, "%s: cannot get size: %s", img->filename, strerror(-r));
        goto fail;
    }
    if (v->file_size < VHDX_HEADER_AREA) {
        r = bf_err(img, -EINVAL, "%s: the file is %" PRIu64 " bytes, shorter than the 1 MiB "
                   "header area of a vhdx image", img->filename, v->file_size);
        goto fail;
    }
    if ((r = bf_source_pread(img->src, sig, 8, 0)) < 0) {
        r = bf_err(img, r, "%s: cannot read: %s", img->filename, strerror(-r));
        goto fail;
    }
    if (memcmp(sig, "vhdxfile", 8) != 0) {
        r = bf_err(img, -EINVAL, "%s: not a vhdx image (no 'vhdxfile' signature)",
                   img->filename);
        goto fail;
    }
    if ((r = read_headers(img, v)) < 0 || (r = vhdx_log_replay(img, v)) < 0 ||
        (r = read_regions(img, v)) < 0 || (r = read_metadata(img, v)) < 0 ||
        (r = read_bat(img, v)) < 0)
        goto fail;

    snprintf(v->version_str, sizeof v->version_str, "%s%s",
             v->leave_allocated ? "fixed" : "dynamic",
             v->replay ? " (log replayed in memory)" : "");
    img->info.format_version = v->version_str;
    img->info.cluster_size = v->block_size;
    return 0;

fail:
    vhdx_free(v);
    img->priv = NULL;
    return r;
}

const struct bf_driver bf_driver_vhdx = {
    .name = "vhdx",
    .probe = vhdx_probe,
    .open = vhdx_open,
    .close = vhdx_close,
    .map = vhdx_map,
};
