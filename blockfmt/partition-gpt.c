/* partition-gpt.c — the GUID partition table: a header at LBA 1 with an
 * array of entries, and a backup copy at the end of the disk.  The checks
 * are those of Linux's block/partitions/efi.c (is_gpt_valid, is_pte_valid),
 * with two differences: we fall back to the backup table whenever the
 * primary is damaged (as sfdisk/libfdisk and sgdisk do; Linux only does with
 * gpt=force), and we accept entry sizes other than 128 when the UEFI rules
 * allow them.
 *
 * Rules chosen where the spec leaves room:
 *   - Header: "EFI PART"; 92 <= header size <= sector size; CRC32 over the
 *     header size with the CRC field zeroed; my_lba is where we read it;
 *     first/last usable LBA within the disk and first <= last.
 *   - Entry size: a multiple of 8, 128..4096 (UEFI: 128 * 2^n; every tool
 *     writes 128; Linux accepts only 128).
 *   - Entry array: at most 1 MiB (8192 entries of 128 bytes, 64 times what
 *     any partitioning tool writes by default: gdisk, Windows and sfdisk all
 *     write 128 entries), and it must lie within the disk.  The bound keeps
 *     a hostile header from making us allocate or read gigabytes.
 *   - The backup header is looked for at the primary's alternate_lba when the
 *     primary header itself is valid (only its array is damaged), else — or
 *     when that fails — at the last LBA of the disk.
 *   - Entries (is_pte_valid): a zero type GUID is an unused entry; start > end
 *     or an end beyond the last LBA of the disk make the entry invalid.  Both
 *     are left out and leave a gap in the numbering (number = index + 1), as
 *     in Linux.  One bad entry does not condemn the table: the CRC says the
 *     array is what its writer meant, and Linux shows the other entries.
 *     Like Linux we do not require entries to lie within the usable LBAs or
 *     not to overlap each other: such entries are shown as they are.
 *   - With sector size 0 the header is looked for with 512- and 4096-byte
 *     sectors: first a valid primary table at either size (512 first), then
 *     a valid backup at either size.
 *
 * Thread model: see partition.h.
 */
#include "partition.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <zlib.h>

#define GPT_HEADER_MIN     92
#define GPT_ENTRY_MIN      128
#define GPT_ENTRY_MAX      4096
#define GPT_ARRAY_MAX      (1u << 20)
#define GPT_NAME_UNITS     36

struct gpt_header {
    uint64_t my_lba, alternate_lba, first_usable, last_usable, entries_lba;
    uint32_t n_entries, entry_size, array_crc;
    uint8_t disk_guid[16];
};

/* Why one header or array was rejected, for the final message. */
struct gpt_why {
    bool found;        /* an "EFI PART" header was there (damaged or not) */
    char text[160];
};

static uint32_t crc(const void *p, size_t len)
{
    return (uint32_t)crc32(0L, p, (uInt)len);
}

/* Read and check the header at @lba.  0: valid, *@h filled; 1: not valid,
 * reason in @why; -errno: I/O error (message set). */
static int read_header(struct bf_image *img, unsigned ss, uint64_t lba, struct gpt_header *h,
                       struct gpt_why *why)
{
    uint64_t last_lba = bf_size(img) / ss - 1;
    why->found = false;
    if (lba > last_lba) {
        snprintf(why->text, sizeof why->text, "LBA %" PRIu64 " is beyond the end of the disk", lba);
        return 1;
    }
    uint8_t buf[4096];
    int r = pt_read(img, buf, ss, lba * ss, "a GPT header");
    if (r < 0)
        return r;
    if (memcmp(buf, "EFI PART", 8) != 0) {
        snprintf(why->text, sizeof why->text, "no \"EFI PART\" signature");
        return 1;
    }
    why->found = true;
    uint32_t hsize = bf_le32(buf + 12);
    if (hsize < GPT_HEADER_MIN || hsize > ss) {
        snprintf(why->text, sizeof why->text, "header size %" PRIu32 " is not within %d..%u",
                 hsize, GPT_HEADER_MIN, ss);
        return 1;
    }
    uint32_t stored = bf_le32(buf + 16);
    memset(buf + 16, 0, 4);
    uint32_t computed = crc(buf, hsize);
    if (stored != computed) {
        snprintf(why->text, sizeof why->text, "header CRC32 is 0x%08" PRIx32 ", should be 0x%08"
                 PRIx32, stored, computed);
        return 1;
    }
    h->my_lba = bf_le64(buf + 24);
    h->alternate_lba = bf_le64(buf + 32);
    h->first_usable = bf_le64(buf + 40);
    h->last_usable = bf_le64(buf + 48);
    memcpy(h->disk_guid, buf + 56, 16);
    h->entries_lba = bf_le64(buf + 72);
    h->n_entries = bf_le32(buf + 80);
    h->entry_size = bf_le32(buf + 84);
    h->array_crc = bf_le32(buf + 88);

    if (h->my_lba != lba) {
        snprintf(why->text, sizeof why->text, "the header says it is at LBA %" PRIu64, h->my_lba);
        return 1;
    }
    if (h->first_usable > last_lba || h->last_usable > last_lba ||
        h->first_usable > h->last_usable) {
        snprintf(why->text, sizeof why->text, "usable LBAs %" PRIu64 "-%" PRIu64 " are not "
                 "within the disk (last LBA %" PRIu64 ")", h->first_usable, h->last_usable,
                 last_lba);
        return 1;
    }
    if (h->entry_size < GPT_ENTRY_MIN || h->entry_size > GPT_ENTRY_MAX || h->entry_size % 8) {
        snprintf(why->text, sizeof why->text, "partition entry size %" PRIu32 " is not a "
                 "multiple of 8 within %d..%d", h->entry_size, GPT_ENTRY_MIN, GPT_ENTRY_MAX);
        return 1;
    }
    uint64_t bytes = (uint64_t)h->n_entries * h->entry_size;    /* < 2^44 */
    if (bytes > GPT_ARRAY_MAX) {
        snprintf(why->text, sizeof why->text, "%" PRIu32 " partition entries of %" PRIu32
                 " bytes exceed the %u-byte limit", h->n_entries, h->entry_size, GPT_ARRAY_MAX);
        return 1;
    }
    if (h->entries_lba > last_lba || !bf_range_within(h->entries_lba * ss, bytes, bf_size(img))) {
        snprintf(why->text, sizeof why->text, "the partition entry array (LBA %" PRIu64 ", %"
                 PRIu64 " bytes) is not within the disk", h->entries_lba, bytes);
        return 1;
    }
    return 0;
}

/* Read the entry array of @h and check its CRC.  0: *@array is malloc'd;
 * 1: CRC mismatch (reason in @why); -errno. */
static int read_array(struct bf_image *img, unsigned ss, const struct gpt_header *h,
                      uint8_t **array, struct gpt_why *why)
{
    size_t bytes = (size_t)h->n_entries * h->entry_size;   /* <= GPT_ARRAY_MAX */
    uint8_t *a = malloc(bytes ? bytes : 1);
    if (!a)
        return bf_err(img, -ENOMEM, "out of memory reading the GPT");
    int r = pt_read(img, a, bytes, h->entries_lba * ss, "the GPT partition entries");
    if (r < 0) {
        free(a);
        return r;
    }
    uint32_t computed = crc(a, bytes);
    if (computed != h->array_crc) {
        snprintf(why->text, sizeof why->text, "partition entry array CRC32 is 0x%08" PRIx32
                 ", should be 0x%08" PRIx32, h->array_crc, computed);
        free(a);
        return 1;
    }
    *array = a;
    return 0;
}

/* Header and array at @lba: 0 valid (*@array malloc'd), 1 not (why), -errno.
 * *@header_ok says whether the header alone was valid. */
static int read_table(struct bf_image *img, unsigned ss, uint64_t lba, struct gpt_header *h,
                      uint8_t **array, bool *header_ok, struct gpt_why *why)
{
    *header_ok = false;
    int r = read_header(img, ss, lba, h, why);
    if (r != 0)
        return r;
    *header_ok = true;
    return read_array(img, ss, h, array, why);
}

/* Append one code point as UTF-8 if it fits (with room for the NUL). */
static size_t put_utf8(char *out, size_t pos, size_t cap, uint32_t cp)
{
    char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xC0 | cp >> 6);
        b[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xE0 | cp >> 12);
        b[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        b[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        b[0] = (char)(0xF0 | cp >> 18);
        b[1] = (char)(0x80 | (cp >> 12 & 0x3F));
        b[2] = (char)(0x80 | (cp >> 6 & 0x3F));
        b[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    if (pos + n >= cap)
        return pos;
    memcpy(out + pos, b, n);
    return pos + n;
}

/* The 36 UTF-16LE code units of a GPT name as UTF-8, up to the first NUL
 * unit.  A surrogate without its partner becomes U+FFFD.  36 units give at
 * most 108 bytes (3 per BMP unit, 4 per pair), so @cap = 144 always fits. */
static void name_to_utf8(const uint8_t *units, char *out, size_t cap)
{
    size_t pos = 0;
    for (unsigned i = 0; i < GPT_NAME_UNITS; i++) {
        uint32_t u = bf_le16(units + 2 * i);
        if (u == 0)
            break;
        if (u >= 0xD800 && u <= 0xDBFF && i + 1 < GPT_NAME_UNITS) {
            uint32_t lo = bf_le16(units + 2 * (i + 1));
            if (lo >= 0xDC00 && lo <= 0xDFFF) {
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                i++;
            } else {
                u = 0xFFFD;
            }
        } else if (u >= 0xD800 && u <= 0xDFFF) {
            u = 0xFFFD;         /* a lone low surrogate, or a high one at the end */
        }
        pos = put_utf8(out, pos, cap, u);
    }
    out[pos] = '\0';
}

static bool guid_is_zero(const uint8_t *g)
{
    for (unsigned i = 0; i < 16; i++)
        if (g[i])
            return false;
    return true;
}

/* Turn the valid table @h / @array into partitions. */
static int fill(struct bf_image *img, unsigned ss, const struct gpt_header *h,
                const uint8_t *array, struct pt_result *res)
{
    uint64_t last_lba = bf_size(img) / ss - 1;
    res->kind = BF_PTABLE_GPT;
    res->sector_size = ss;
    memcpy(res->disk_guid, h->disk_guid, 16);
    for (uint32_t i = 0; i < h->n_entries; i++) {
        const uint8_t *e = array + (size_t)i * h->entry_size;
        uint64_t first = bf_le64(e + 32), last = bf_le64(e + 40);
        if (guid_is_zero(e) || first > last || last > last_lba)
            continue;                   /* unused or invalid: a gap (is_pte_valid) */
        struct bf_partition *p;
        int r = pt_list_add(img, &res->parts, &p);
        if (r < 0)
            return r;
        p->number = i + 1;
        p->start = first * ss;          /* last <= last_lba: no overflow */
        p->length = (last - first + 1) * ss;
        memcpy(p->type_guid, e, 16);
        memcpy(p->uuid, e + 16, 16);
        p->gpt_attrs = bf_le64(e + 48);
        if (p->gpt_attrs & (1ull << 2))
            p->flags |= BF_PART_BOOTABLE;   /* legacy BIOS bootable */
        name_to_utf8(e + 56, p->name, sizeof p->name);
    }
    return 0;
}

/* What we learnt about one sector size. */
struct attempt {
    unsigned ss;
    bool possible;                      /* the disk holds LBA 0 and 1 */
    bool primary_header_ok;
    uint64_t alternate_lba;
    struct gpt_why primary;
    char backup[200];                   /* "at LBA n: " + a reason */
    bool signature_seen;
};

static int try_primary(struct bf_image *img, struct attempt *a, struct pt_result *res)
{
    struct gpt_header h;
    uint8_t *array = NULL;
    int r = read_table(img, a->ss, 1, &h, &array, &a->primary_header_ok, &a->primary);
    if (r < 0)
        return r;
    if (a->primary_header_ok)
        a->alternate_lba = h.alternate_lba;
    a->signature_seen |= a->primary.found;
    if (r == 1)
        return 1;
    r = fill(img, a->ss, &h, array, res);
    free(array);
    return r;
}

static int try_backup(struct bf_image *img, struct attempt *a, struct pt_result *res)
{
    uint64_t last_lba = bf_size(img) / a->ss - 1;
    uint64_t where[2];
    unsigned n = 0;
    if (a->primary_header_ok)
        where[n++] = a->alternate_lba;
    if (n == 0 || where[0] != last_lba)
        where[n++] = last_lba;
    int r = 1;
    for (unsigned i = 0; i < n && r == 1; i++) {
        struct gpt_header h;
        uint8_t *array = NULL;
        bool header_ok;
        struct gpt_why why;
        r = read_table(img, a->ss, where[i], &h, &array, &header_ok, &why);
        if (r < 0)
            return r;
        a->signature_seen |= why.found;
        if (r == 1) {
            /* Keep the most telling reason: a damaged backup over a missing one. */
            if (i == 0 || why.found)
                snprintf(a->backup, sizeof a->backup, "at LBA %" PRIu64 ": %s",
                         where[i], why.text);
            continue;
        }
        res->used_backup_gpt = true;
        r = fill(img, a->ss, &h, array, res);
        free(array);
    }
    return r;
}

int pt_gpt_parse(struct bf_image *img, unsigned sector_size, struct pt_result *res)
{
    struct attempt at[2];
    unsigned n = 0;
    if (sector_size == 0 || sector_size == 512)
        at[n++] = (struct attempt){ .ss = 512 };
    if (sector_size == 0 || sector_size == 4096)
        at[n++] = (struct attempt){ .ss = 4096 };
    for (unsigned i = 0; i < n; i++)
        at[i].possible = bf_size(img) / at[i].ss >= 2;   /* LBA 0 and 1 */

    int r;
    for (unsigned i = 0; i < n; i++)
        if (at[i].possible && (r = try_primary(img, &at[i], res)) <= 0)
            return r;
    for (unsigned i = 0; i < n; i++)
        if (at[i].possible && (r = try_backup(img, &at[i], res)) <= 0)
            return r;

    /* Nothing valid: say why, for the sector sizes where a header was seen
     * (or all of them when none was). */
    bool any_seen = false;
    for (unsigned i = 0; i < n; i++)
        any_seen |= at[i].signature_seen;
    char msg[BF_ERRMSG_MAX] = "";
    size_t len = 0;
    for (unsigned i = 0; i < n && len < sizeof msg; i++) {
        if (any_seen && !at[i].signature_seen)
            continue;
        if (!at[i].possible)
            len += (size_t)snprintf(msg + len, sizeof msg - len, "%s%u-byte sectors: disk too "
                                    "small", len ? "; " : "", at[i].ss);
        else
            len += (size_t)snprintf(msg + len, sizeof msg - len, "%s%u-byte sectors: primary "
                                    "header at LBA 1: %s; backup header %s", len ? "; " : "",
                                    at[i].ss, at[i].primary.text, at[i].backup);
    }
    return bf_err(img, -EINVAL, "%s: the MBR is a GPT protective MBR but no valid GPT was "
                  "found (%s)", img->filename, msg);
}
