/* fsinfo.c — which file system starts an image, with its label and UUID,
 * read from the superblocks the way blkid reports them:
 *   ext2/3/4  superblock at 1024: s_volume_name, s_uuid; ext4/ext3/ext2 by
 *             features as blkid decides
 *   FAT       the root directory's volume-label entry, else the boot
 *             sector's; the volume serial as XXXX-XXXX; FAT12/16/32 by the
 *             count of clusters (Microsoft's rule)
 *   exFAT     the root directory's label entry (UTF-16); serial XXXX-XXXX
 *   NTFS      $VOLUME_NAME of MFT record 3 ($Volume); the 64-bit serial
 *   HFS+      the volume name (the catalog's first leaf record); no UUID
 *   ISO 9660  the primary volume descriptor's volume id; the creation date
 *             as blkid's UUID
 *   swap      label and UUID of a Linux swap area
 * Every field read is bounded: sizes and offsets are checked before use,
 * directory and cluster-chain walks stop after a fixed number of steps.
 *
 * Thread model: none (see fsinfo.h).
 */
#include "fsinfo.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CHAIN 4096           /* clusters followed in a directory */

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t le32(const uint8_t *p) { return (uint32_t)le16(p) | (uint32_t)le16(p + 2) << 16; }
static uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }
static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t be32(const uint8_t *p) { return (uint32_t)be16(p) << 16 | be16(p + 2); }

/* Read @len bytes at @off; -ENOENT when the image is too small. */
static int rd(struct bf_image *img, uint64_t off, void *buf, size_t len)
{
    uint64_t size = bf_size(img);
    if (off > size || len > size - off)
        return -ENOENT;
    return bf_pread(img, buf, len, off) < 0 ? -EIO : 0;
}

/* -------------------------------------------------------------- strings */

static size_t put_utf8(char *out, size_t cap, size_t n, uint32_t c)
{
    char b[4];
    size_t k;
    if (c < 0x80) {
        b[0] = (char)c;
        k = 1;
    } else if (c < 0x800) {
        b[0] = (char)(0xc0 | c >> 6);
        b[1] = (char)(0x80 | (c & 0x3f));
        k = 2;
    } else if (c < 0x10000) {
        b[0] = (char)(0xe0 | c >> 12);
        b[1] = (char)(0x80 | ((c >> 6) & 0x3f));
        b[2] = (char)(0x80 | (c & 0x3f));
        k = 3;
    } else {
        b[0] = (char)(0xf0 | c >> 18);
        b[1] = (char)(0x80 | ((c >> 12) & 0x3f));
        b[2] = (char)(0x80 | ((c >> 6) & 0x3f));
        b[3] = (char)(0x80 | (c & 0x3f));
        k = 4;
    }
    if (n + k >= cap)
        return n;                    /* no room: stop (the caller terminates) */
    memcpy(out + n, b, k);
    return n + k;
}

/* UTF-16 (@units code units, little- or big-endian) to UTF-8; unpaired
 * surrogates become U+FFFD; stops at a NUL. */
static void utf16_to_utf8(const uint8_t *p, size_t units, bool big, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < units; i++) {
        uint32_t c = big ? be16(p + 2 * i) : le16(p + 2 * i);
        if (c == 0)
            break;
        if (c >= 0xd800 && c < 0xdc00 && i + 1 < units) {
            uint32_t d = big ? be16(p + 2 * i + 2) : le16(p + 2 * i + 2);
            if (d >= 0xdc00 && d < 0xe000) {
                c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
                i++;
            } else {
                c = 0xfffd;
            }
        } else if (c >= 0xd800 && c < 0xe000) {
            c = 0xfffd;
        }
        n = put_utf8(out, cap, n, c);
    }
    out[n] = 0;
}

/* Bytes of an 8-bit label (FAT, ISO, ext: no declared charset) to UTF-8:
 * valid UTF-8 stays as it is, other bytes are taken as Latin-1; control
 * characters are dropped.  Trailing spaces and NULs are trimmed. */
static void bytes_label(const uint8_t *p, size_t len, char *out, size_t cap)
{
    while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == 0))
        len--;
    size_t n = 0;
    for (size_t i = 0; i < len && p[i]; i++) {
        uint8_t c = p[i];
        if (c < 0x20 || c == 0x7f)
            continue;
        size_t k = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
                                 : (c & 0xf8) == 0xf0 ? 4 : 0;
        bool valid = k > 0 && i + k <= len;
        for (size_t j = 1; valid && j < k; j++)
            valid = (p[i + j] & 0xc0) == 0x80;
        if (valid && k > 1) {
            if (n + k >= cap)
                break;
            memcpy(out + n, p + i, k);
            n += k;
            i += k - 1;
        } else {
            n = put_utf8(out, cap, n, c);
        }
    }
    out[n] = 0;
}

static void uuid_str(const uint8_t u[16], char *out, size_t cap)
{
    snprintf(out, cap, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12],
             u[13], u[14], u[15]);
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

/* ------------------------------------------------------------------ ext */

static int probe_ext(struct bf_image *img, struct fsinfo *fi)
{
    uint8_t sb[256];
    int r = rd(img, 1024, sb, sizeof sb);
    if (r < 0)
        return r;
    if (le16(sb + 0x38) != 0xef53)
        return -ENOENT;
    uint32_t compat = le32(sb + 0x5c), incompat = le32(sb + 0x60), ro = le32(sb + 0x64);
    if (incompat & 0x8)
        snprintf(fi->type, sizeof fi->type, "jbd");           /* an external journal */
    else if ((incompat & ~0x16u) || (ro & ~0x7u))
        snprintf(fi->type, sizeof fi->type, "ext4");
    else if (compat & 0x4)
        snprintf(fi->type, sizeof fi->type, "ext3");
    else
        snprintf(fi->type, sizeof fi->type, "ext2");
    bytes_label(sb + 0x78, 16, fi->label, sizeof fi->label);
    if (!all_zero(sb + 0x68, 16))
        uuid_str(sb + 0x68, fi->uuid, sizeof fi->uuid);
    return 0;
}

/* ------------------------------------------------------------------ FAT */

struct fat_geo {
    uint32_t bps, spc;           /* bytes per sector, sectors per cluster */
    uint64_t fat_off;            /* byte offset of the first FAT */
    uint64_t data_off;           /* byte offset of cluster 2 */
    uint64_t root_off;           /* FAT12/16: byte offset of the root directory */
    uint32_t root_bytes;         /* FAT12/16: its size */
    uint32_t root_clus;          /* FAT32 / exFAT: its first cluster */
    uint64_t clusters;
    unsigned bits;               /* 12, 16, 32 */
};

static bool pow2(uint32_t v) { return v && !(v & (v - 1)); }

static int fat_geometry(const uint8_t *b, struct fat_geo *g)
{
    if (b[510] != 0x55 || b[511] != 0xaa || (b[0] != 0xeb && b[0] != 0xe9))
        return -ENOENT;
    g->bps = le16(b + 11);
    g->spc = b[13];
    uint32_t rsvd = le16(b + 14), nfats = b[16], rootent = le16(b + 17);
    uint32_t tot = le16(b + 19) ? le16(b + 19) : le32(b + 32);
    uint32_t fatsz = le16(b + 22) ? le16(b + 22) : le32(b + 36);
    if (!pow2(g->bps) || g->bps < 512 || g->bps > 4096 || !pow2(g->spc) || rsvd == 0 ||
        nfats == 0 || nfats > 4 || fatsz == 0 || tot == 0 || (b[21] != 0xf0 && b[21] < 0xf8))
        return -ENOENT;
    uint64_t rootsec = ((uint64_t)rootent * 32 + g->bps - 1) / g->bps;
    uint64_t meta = rsvd + (uint64_t)nfats * fatsz + rootsec;
    if (meta >= tot)
        return -ENOENT;
    g->clusters = (tot - meta) / g->spc;
    g->bits = g->clusters < 4085 ? 12 : g->clusters < 65525 ? 16 : 32;
    if (g->bits == 32 && (le16(b + 22) != 0 || rootent != 0))
        return -ENOENT;
    g->fat_off = (uint64_t)rsvd * g->bps;
    g->root_off = (rsvd + (uint64_t)nfats * fatsz) * g->bps;
    g->root_bytes = (uint32_t)(rootsec * g->bps);
    g->data_off = meta * g->bps;
    g->root_clus = g->bits == 32 ? le32(b + 44) : 0;
    return 0;
}

/* Next cluster after @c in a FAT32 / exFAT chain, 0 at the end or on error. */
static uint32_t next_clus32(struct bf_image *img, const struct fat_geo *g, uint32_t c, bool exfat)
{
    uint8_t e[4];
    if (rd(img, g->fat_off + (uint64_t)c * 4, e, 4) < 0)
        return 0;
    uint32_t n = le32(e) & (exfat ? 0xffffffffu : 0x0fffffffu);
    return n >= 2 && n < g->clusters + 2 ? n : 0;
}

/* Call @fn on each 32-byte entry of the directory starting at cluster @c
 * (or the FAT12/16 fixed root when @c is 0) until it returns non-zero. */
static void walk_dir(struct bf_image *img, const struct fat_geo *g, uint32_t c, bool exfat,
                     int (*fn)(const uint8_t *e, void *ctx), void *ctx)
{
    uint32_t csize = g->bps * g->spc;
    if (csize > (1u << 25))
        return;
    uint8_t *buf = malloc(c ? csize : g->root_bytes ? g->root_bytes : 1);
    if (!buf)
        return;
    for (unsigned step = 0; step < MAX_CHAIN; step++) {
        size_t len;
        if (c == 0) {
            len = g->root_bytes;
            if (rd(img, g->root_off, buf, len) < 0)
                break;
        } else {
            if (c < 2 || c >= g->clusters + 2)
                break;
            len = csize;
            if (rd(img, g->data_off + (uint64_t)(c - 2) * csize, buf, len) < 0)
                break;
        }
        for (size_t o = 0; o + 32 <= len; o += 32)
            if (fn(buf + o, ctx))
                goto done;
        if (c == 0 || !(c = next_clus32(img, g, c, exfat)))
            break;
    }
done:
    free(buf);
}

static int fat_label_entry(const uint8_t *e, void *ctx)
{
    if (e[0] == 0)
        return 1;                              /* end of directory */
    if (e[0] == 0xe5 || e[11] == 0x0f)
        return 0;                              /* deleted, long-name part */
    if ((e[11] & 0x18) == 0x08) {              /* volume label, not a directory */
        memcpy(ctx, e, 11);
        return 1;
    }
    return 0;
}

static int probe_fat(struct bf_image *img, struct fsinfo *fi)
{
    uint8_t b[512];
    struct fat_geo g;
    int r = rd(img, 0, b, sizeof b);
    if (r < 0)
        return r;
    if (!memcmp(b + 3, "NTFS    ", 8) || !memcmp(b + 3, "EXFAT   ", 8) || fat_geometry(b, &g) < 0)
        return -ENOENT;
    snprintf(fi->type, sizeof fi->type, "fat%u", g.bits);
    const uint8_t *ext = b + (g.bits == 32 ? 64 : 36);  /* extended boot record */
    uint8_t label[11] = { 0 };
    if (ext[2] == 0x29) {
        uint32_t serial = le32(ext + 3);
        snprintf(fi->uuid, sizeof fi->uuid, "%04X-%04X", serial >> 16, serial & 0xffff);
        memcpy(label, ext + 7, 11);
    }
    uint8_t dirlabel[11] = { 0 };
    walk_dir(img, &g, g.bits == 32 ? g.root_clus : 0, false, fat_label_entry, dirlabel);
    if (dirlabel[0])
        memcpy(label, dirlabel, 11);
    if (memcmp(label, "NO NAME    ", 11) != 0)
        bytes_label(label, 11, fi->label, sizeof fi->label);
    return 0;
}

/* ---------------------------------------------------------------- exFAT */

static int exfat_label_entry(const uint8_t *e, void *ctx)
{
    if (e[0] == 0)
        return 1;
    if (e[0] == 0x83) {                        /* volume label */
        unsigned n = e[1] > 11 ? 11 : e[1];
        char *out = ctx;
        utf16_to_utf8(e + 2, n, false, out, 256);
        return 1;
    }
    return 0;
}

static int probe_exfat(struct bf_image *img, struct fsinfo *fi)
{
    uint8_t b[512];
    int r = rd(img, 0, b, sizeof b);
    if (r < 0)
        return r;
    if (memcmp(b + 3, "EXFAT   ", 8) != 0)
        return -ENOENT;
    unsigned bps_sh = b[108], spc_sh = b[109];
    if (bps_sh < 9 || bps_sh > 12 || spc_sh > 25 - bps_sh)
        return -ENOENT;
    struct fat_geo g = {
        .bps = 1u << bps_sh,
        .spc = 1u << spc_sh,
        .fat_off = (uint64_t)le32(b + 80) << bps_sh,
        .data_off = (uint64_t)le32(b + 88) << bps_sh,
        .clusters = le32(b + 92),
        .root_clus = le32(b + 96),
        .bits = 32,
    };
    snprintf(fi->type, sizeof fi->type, "exfat");
    uint32_t serial = le32(b + 100);
    snprintf(fi->uuid, sizeof fi->uuid, "%04X-%04X", serial >> 16, serial & 0xffff);
    walk_dir(img, &g, g.root_clus, true, exfat_label_entry, fi->label);
    return 0;
}

/* ----------------------------------------------------------------- NTFS */

/* $VOLUME_NAME from the MFT record @rec (@len bytes, fixups applied). */
static void ntfs_volume_name(const uint8_t *rec, size_t len, char *out, size_t cap)
{
    size_t o = le16(rec + 0x14);
    for (int i = 0; i < 64 && o + 16 <= len; i++) {
        uint32_t type = le32(rec + o), alen = le32(rec + o + 4);
        if (type == 0xffffffffu || alen < 16 || alen > len - o)
            return;
        if (type == 0x60 && rec[o + 8] == 0) {           /* resident $VOLUME_NAME */
            uint32_t vlen = le32(rec + o + 0x10);
            uint16_t voff = le16(rec + o + 0x14);
            if (voff <= alen && vlen <= alen - voff)
                utf16_to_utf8(rec + o + voff, vlen / 2, false, out, cap);
            return;
        }
        o += alen;
    }
}

static int probe_ntfs(struct bf_image *img, struct fsinfo *fi)
{
    uint8_t b[512];
    int r = rd(img, 0, b, sizeof b);
    if (r < 0)
        return r;
    if (memcmp(b + 3, "NTFS    ", 8) != 0)
        return -ENOENT;
    snprintf(fi->type, sizeof fi->type, "ntfs");
    snprintf(fi->uuid, sizeof fi->uuid, "%016llX", (unsigned long long)le64(b + 0x48));
    uint32_t bps = le16(b + 11), spc = b[13];
    if (spc > 0x80)
        spc = 1u << (256 - spc);                        /* large clusters: 2^-n */
    int8_t cpr = (int8_t)b[0x40];
    uint64_t csize = (uint64_t)bps * spc;
    uint64_t rsize = cpr > 0 ? (uint64_t)cpr * csize : cpr < 0 && cpr > -31 ? 1ull << -cpr : 0;
    if (!pow2(bps) || bps < 256 || bps > 4096 || !spc || csize > (1u << 21) || rsize < 512 ||
        rsize > 65536 || rsize % bps)
        return 0;                                       /* no label, still NTFS */
    uint64_t mft = le64(b + 0x30);
    if (mft > UINT64_MAX / csize / 2)
        return 0;
    uint8_t *rec = malloc(rsize);
    if (!rec)
        return 0;
    if (rd(img, mft * csize + 3 * rsize, rec, rsize) == 0 && !memcmp(rec, "FILE", 4)) {
        /* fixups: the last two bytes of each 512-byte block were saved in
         * the update sequence array; put them back */
        uint16_t usa = le16(rec + 4), n = le16(rec + 6);
        bool ok = n >= 1 && usa + 2u * n <= rsize && (uint64_t)(n - 1) * 512 == rsize;
        for (uint16_t i = 1; ok && i < n; i++) {
            uint8_t *end = rec + (uint64_t)i * 512 - 2;
            if (memcmp(end, rec + usa, 2) != 0)
                ok = false;
            else
                memcpy(end, rec + usa + 2 * i, 2);
        }
        if (ok && le16(rec + 0x14) < rsize)
            ntfs_volume_name(rec, rsize, fi->label, sizeof fi->label);
    }
    free(rec);
    return 0;
}

/* ----------------------------------------------------------------- HFS+ */

static int probe_hfsplus(struct bf_image *img, struct fsinfo *fi)
{
    uint8_t vh[512];
    int r = rd(img, 1024, vh, sizeof vh);
    if (r < 0)
        return r;
    if (memcmp(vh, "H+", 2) != 0 && memcmp(vh, "HX", 2) != 0)
        return -ENOENT;
    snprintf(fi->type, sizeof fi->type, "hfs+");
    uint32_t bsize = be32(vh + 40);
    if (!pow2(bsize) || bsize < 512 || bsize > (1u << 20))
        return 0;
    /* the catalog file's first extents; its header node (node 0) names the
     * first leaf node, whose first record is the root folder, keyed by the
     * volume name */
    const uint8_t *ext = vh + 0x110 + 16;
    uint8_t hdr[256];
    uint64_t cat0 = (uint64_t)be32(ext) * bsize;
    if (be32(ext + 4) == 0 || rd(img, cat0, hdr, sizeof hdr) < 0)
        return 0;
    uint32_t first_leaf = be32(hdr + 14 + 10);
    uint16_t nsize = be16(hdr + 14 + 18);
    if (!pow2(nsize) || nsize < 512 || nsize > 32768)
        return 0;
    uint64_t off = (uint64_t)first_leaf * nsize, done = 0;
    for (int i = 0; i < 8; i++) {                       /* find it in the extents */
        uint64_t start = be32(ext + 8 * i), cnt = be32(ext + 8 * i + 4);
        if (cnt == 0)
            return 0;
        if (off < done + cnt * bsize) {
            off = start * bsize + (off - done);
            uint8_t *node = malloc(nsize);
            if (!node)
                return 0;
            if (rd(img, off, node, nsize) == 0 && (int8_t)node[8] == -1) {  /* leaf */
                uint16_t rec = be16(node + nsize - 2);                      /* record 0 */
                if (rec >= 14 && rec + 8u <= nsize && be16(node + rec) >= 6 &&
                    be32(node + rec + 2) == 1) {                            /* parent: root's parent */
                    uint16_t units = be16(node + rec + 6);
                    if (units <= 255 && rec + 8u + 2u * units <= nsize)
                        utf16_to_utf8(node + rec + 8, units, true, fi->label, sizeof fi->label);
                }
            }
            free(node);
            return 0;
        }
        done += cnt * bsize;
    }
    return 0;
}

/* ------------------------------------------------------------- ISO 9660 */

static int probe_iso(struct bf_image *img, struct fsinfo *fi)
{
    uint8_t pvd[2048];
    int r = rd(img, 16 * 2048, pvd, sizeof pvd);
    if (r < 0)
        return r;
    if (pvd[0] != 1 || memcmp(pvd + 1, "CD001", 5) != 0)
        return -ENOENT;
    snprintf(fi->type, sizeof fi->type, "iso9660");
    bytes_label(pvd + 40, 32, fi->label, sizeof fi->label);
    /* blkid: the creation (else modification) date, YYYY-MM-DD-HH-MM-SS-CC */
    for (int which = 0; which < 2; which++) {
        const uint8_t *d = pvd + (which ? 830 : 813);
        bool digits = true, zero = true;
        for (int i = 0; i < 16; i++) {
            digits = digits && d[i] >= '0' && d[i] <= '9';
            zero = zero && d[i] == '0';
        }
        if (digits && !zero) {
            snprintf(fi->uuid, sizeof fi->uuid, "%.4s-%.2s-%.2s-%.2s-%.2s-%.2s-%.2s", d, d + 4,
                     d + 6, d + 8, d + 10, d + 12, d + 14);
            break;
        }
    }
    return 0;
}

/* ----------------------------------------------------------------- swap */

static int probe_swap(struct bf_image *img, struct fsinfo *fi)
{
    static const unsigned pages[] = { 4096, 8192, 16384, 65536 };
    for (size_t i = 0; i < sizeof pages / sizeof pages[0]; i++) {
        char sig[10];
        if (rd(img, pages[i] - 10, sig, 10) < 0)
            return -ENOENT;
        if (memcmp(sig, "SWAPSPACE2", 10) != 0 && memcmp(sig, "SWAP-SPACE", 10) != 0)
            continue;
        snprintf(fi->type, sizeof fi->type, "swap");
        uint8_t h[48];
        if (!memcmp(sig, "SWAPSPACE2", 10) && rd(img, 1024, h, sizeof h) == 0) {
            if (!all_zero(h + 12, 16))
                uuid_str(h + 12, fi->uuid, sizeof fi->uuid);
            bytes_label(h + 28, 16, fi->label, sizeof fi->label);
        }
        return 0;
    }
    return -ENOENT;
}

int fsinfo_probe(struct bf_image *img, struct fsinfo *out)
{
    static int (*const probes[])(struct bf_image *, struct fsinfo *) = {
        probe_ntfs, probe_exfat, probe_fat, probe_ext, probe_hfsplus, probe_iso, probe_swap,
    };
    int err = -ENOENT;
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
        memset(out, 0, sizeof *out);
        int r = probes[i](img, out);
        if (r == 0)
            return 0;
        if (r != -ENOENT)
            err = r;
    }
    memset(out, 0, sizeof *out);
    return err;
}
