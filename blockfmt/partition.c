/* partition.c — bf_ptable_read(): decide which table a disk holds and with
 * which sector size, hand it to the MBR or GPT reader, and package the result
 * as one malloc'd struct bf_ptable.  Also bf_guid_str() and small helpers the
 * readers share.
 *
 * How a disk is classified (as Linux's block/partitions/ does it):
 *   - smaller than 512 bytes, or no 0x55AA at byte 510: no table;
 *   - an MBR entry of type 0xEE in any slot: a GPT disk.  Linux's msdos
 *     reader ignores such disks, so the MBR entries are never shown, even in
 *     a hybrid MBR (0xEE beside other entries).  Linux's GPT reader also
 *     wants the 0xEE entry to start at LBA 1; we do not, since the GPT
 *     header's own checks (signature, CRC, my_lba) are far stronger.  If
 *     neither the primary nor the backup GPT is valid, that is an error (a
 *     damaged table), not "no table";
 *   - otherwise an MBR, read with 512-byte sectors unless 4096 was asked.
 *
 * Thread model: called from the thread that owns open/close (blockfmt.h);
 * reads go through bf_pread, which is itself thread-safe; no shared state.
 */
#include "partition.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

/* A table never holds more than 4 primaries + 256 logicals (MBR) or the
 * entries of a 1 MiB GPT array (8192), so the list stays small; the bound is
 * enforced by the readers, this only grows memory. */
int pt_list_add(struct bf_image *img, struct pt_list *l, struct bf_partition **p)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        struct bf_partition *v = realloc(l->v, cap * sizeof *v);
        if (!v)
            return bf_err(img, -ENOMEM, "out of memory reading the partition table");
        l->v = v;
        l->cap = cap;
    }
    *p = &l->v[l->n++];
    memset(*p, 0, sizeof **p);
    return 0;
}

int pt_read(struct bf_image *img, void *buf, size_t len, uint64_t off, const char *what)
{
    int r = bf_pread(img, buf, len, off);
    if (r < 0) {
        char prefix[160];
        snprintf(prefix, sizeof prefix, "%s: reading %s at offset %" PRIu64 ": ",
                 img->filename, what, off);
        return bf_err_from(img, img, r, prefix);
    }
    return 0;
}

void pt_mbr_entry(const uint8_t *rec, unsigned slot, struct pt_mbr_entry *e)
{
    const uint8_t *p = rec + PT_MBR_TABLE + 16 * slot;
    e->boot = p[0];
    e->type = p[4];
    e->start = bf_le32(p + 8);
    e->count = bf_le32(p + 12);
}

static bool has_gpt_entry(const uint8_t *mbr)
{
    for (unsigned slot = 0; slot < 4; slot++) {
        struct pt_mbr_entry e;
        pt_mbr_entry(mbr, slot, &e);
        if (e.type == PT_MBR_TYPE_GPT)
            return true;
    }
    return false;
}

/* Read the table into @res (kind stays NONE when there is none). */
static int classify_and_read(struct bf_image *img, unsigned sector_size, struct pt_result *res)
{
    uint8_t mbr[PT_MBR_SIZE];
    if (bf_size(img) < PT_MBR_SIZE)
        return 0;
    int r = pt_read(img, mbr, sizeof mbr, 0, "the MBR");
    if (r < 0)
        return r;
    if (!pt_has_boot_signature(mbr))
        return 0;
    res->mbr_id = bf_le32(mbr + PT_MBR_DISKSIG);
    if (has_gpt_entry(mbr))
        return pt_gpt_parse(img, sector_size, res);
    unsigned ss = sector_size ? sector_size : 512;
    if (bf_size(img) < ss)
        return 0;              /* not even one sector of the asked size */
    return pt_mbr_parse(img, mbr, ss, res);
}

int bf_ptable_read(struct bf_image *img, unsigned sector_size, struct bf_ptable **out)
{
    *out = NULL;
    if (!img->drv)
        return bf_err(img, -EBADF, "image is not open");
    if (sector_size != 0 && sector_size != 512 && sector_size != 4096)
        return bf_err(img, -EINVAL, "sector size %u is not supported (use 512, 4096 or 0 to detect)",
                      sector_size);

    struct pt_result res = { .kind = BF_PTABLE_NONE, .sector_size = sector_size ? sector_size : 512 };
    int r = classify_and_read(img, sector_size, &res);
    if (r < 0) {
        free(res.parts.v);
        return r;
    }
    if (res.kind == BF_PTABLE_NONE)
        res.parts.n = 0;

    struct bf_ptable *t = malloc(sizeof *t + res.parts.n * sizeof t->parts[0]);
    if (!t) {
        free(res.parts.v);
        return bf_err(img, -ENOMEM, "out of memory reading the partition table");
    }
    memset(t, 0, sizeof *t);
    t->kind = res.kind;
    t->sector_size = res.sector_size;
    t->used_backup_gpt = res.used_backup_gpt;
    memcpy(t->disk_guid, res.disk_guid, sizeof t->disk_guid);
    t->n = res.parts.n;
    if (res.parts.n)
        memcpy(t->parts, res.parts.v, res.parts.n * sizeof t->parts[0]);
    /* Filled on GPT disks too: it is what their protective MBR carries. */
    t->mbr_id = res.kind != BF_PTABLE_NONE ? res.mbr_id : 0;
    free(res.parts.v);
    *out = t;
    return 0;
}

/* On disk a GUID is a little-endian u32, two little-endian u16 and eight
 * bytes in order; the text form prints the integers big-endian. */
char *bf_guid_str(const uint8_t g[16], char *buf)
{
    snprintf(buf, 37, "%02X%02X%02X%02X-%02X%02X-%02X%02X-%02X%02X-%02X%02X%02X%02X%02X%02X",
             g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6],
             g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]);
    return buf;
}
