/* partition-mbr.c — the MBR (DOS) partition table: four primary slots in
 * sector 0 and, inside each extended partition, a chain of EBRs describing
 * the logical partitions.  Numbering, emptiness and the leniencies follow
 * Linux's block/partitions/msdos.c, which is also what `sfdisk --json` shows;
 * where Linux silently copes with a broken chain (loops, links out of the
 * container, overlaps) we refuse the table with a message instead, because a
 * slice opened on such a partition would alias another one.
 *
 * Rules chosen where a table is odd (each is Linux's unless said otherwise):
 *   - Not a table: any of the four boot indicators other than 0x00 or 0x80.
 *     Sector 0 of a FAT or NTFS volume (no partition table) also ends in
 *     0x55AA, but its boot code fills the entry area; this check is how Linux
 *     tells them apart, and it keeps garbage from producing partitions.
 *   - Empty slot: a sector count of 0.  The type byte does not matter: Linux
 *     and sfdisk both show a type-0 entry that has a size.
 *   - Past the end of the disk: an entry that starts at or beyond the end is
 *     left out (its number stays a gap); one that starts inside but runs past
 *     the end is cut at the end of the disk.  Linux does exactly this
 *     ("beyond EOD" / "extends beyond EOD, truncated") so that images cut
 *     from a larger disk, or tables written by sloppy firmware, still work;
 *     refusing the whole table would lose partitions Linux shows.  sfdisk
 *     prints the raw numbers, so it differs from us only on such tables.
 *   - Extended partitions (0x05, 0x0F, 0x85) keep their full extent (sfdisk
 *     shows it; Linux makes a 1 KiB stub).  Every extended slot's chain is
 *     read, in slot order, logicals numbered from 5 across all of them.
 *   - In an EBR every non-extended entry with a size is a logical partition
 *     (OS/2 used more than one), its start relative to that EBR; the first
 *     extended entry is the link to the next EBR, relative to the start of
 *     the outermost extended partition.  Entries 3 and 4 "sometimes contain
 *     random garbage" (Linux): there, a logical outside the extended
 *     partition is skipped; in entries 1 and 2 it is an error.
 *   - An EBR without 0x55AA, or beyond the end of the disk, ends the chain
 *     quietly (an extended partition with no logicals has a blank EBR).
 *   - Errors (-EINVAL): a chain that comes back to an EBR already read, a
 *     link outside the extended partition, a logical partition outside it or
 *     overlapping another logical partition, an extended partition that
 *     starts at sector 0, more than PT_MAX_EBRS EBRs or PT_MAX_LOGICALS
 *     logical partitions (Linux stops at 256 partitions in all).
 *
 * Thread model: see partition.h.
 */
#include "partition.h"

#include <inttypes.h>
#include <stdlib.h>

#define PT_MAX_LOGICALS 256
#define PT_MAX_EBRS     256

static bool is_extended(uint8_t type)
{
    return type == 0x05 || type == 0x0F || type == 0x85;
}

/* Add a partition of @count sectors at sector @start, applying the
 * end-of-disk rule.  *@added says whether it was kept. */
static int add_part(struct bf_image *img, struct pt_result *res, unsigned number,
                    uint64_t start, uint64_t count, const struct pt_mbr_entry *e,
                    unsigned flags)
{
    uint64_t ss = res->sector_size, disk = bf_size(img);
    /* start, count < 2^33 and ss <= 4096: the products fit easily */
    uint64_t off = start * ss, len = count * ss;
    if (off >= disk)
        return 0;                       /* beyond the end: a gap, as in Linux */
    if (len > disk - off)
        len = disk - off;               /* runs past the end: cut, as in Linux */
    struct bf_partition *p;
    int r = pt_list_add(img, &res->parts, &p);
    if (r < 0)
        return r;
    p->number = number;
    p->start = off;
    p->length = len;
    p->flags = flags | (e->boot == 0x80 ? BF_PART_BOOTABLE : 0);
    p->mbr_type = e->type;
    return 0;
}

/* Logical partitions found so far in all chains, in sectors, for the
 * overlap check (at most PT_MAX_LOGICALS, so the quadratic check is cheap). */
struct logicals {
    unsigned next_number;
    unsigned n;
    struct { uint64_t start, end; unsigned number; } v[PT_MAX_LOGICALS];
};

/* Check a logical partition [@start, @end) (sectors) from entry @slot of the
 * EBR at @ebr against its container [@ext_start, @ext_end) and the logical
 * partitions before it.  1: keep it; 0: skip it (garbage in entries 3-4);
 * -EINVAL: the table is broken. */
static int check_logical(struct bf_image *img, const struct logicals *lg, unsigned ext_slot,
                         uint64_t ext_start, uint64_t ext_end, uint64_t ebr, unsigned slot,
                         uint64_t start, uint64_t end)
{
    if (start < ext_start || end > ext_end) {
        if (slot >= 2)
            return 0;
        return bf_err(img, -EINVAL, "%s: MBR: logical partition %u (sectors %" PRIu64 "-%" PRIu64
                      ", entry %u of the EBR at sector %" PRIu64 ") lies outside extended "
                      "partition %u (sectors %" PRIu64 "-%" PRIu64 ")", img->filename,
                      lg->next_number, start, end - 1, slot + 1, ebr, ext_slot, ext_start,
                      ext_end - 1);
    }
    for (unsigned i = 0; i < lg->n; i++)
        if (start < lg->v[i].end && lg->v[i].start < end)
            return bf_err(img, -EINVAL, "%s: MBR: logical partition %u (sectors %" PRIu64 "-%"
                          PRIu64 ") overlaps logical partition %u (sectors %" PRIu64 "-%" PRIu64
                          ")", img->filename, lg->next_number, start, end - 1, lg->v[i].number,
                          lg->v[i].start, lg->v[i].end - 1);
    if (lg->n == PT_MAX_LOGICALS)
        return bf_err(img, -EINVAL, "%s: MBR: more than %d logical partitions", img->filename,
                      PT_MAX_LOGICALS);
    return 1;
}

/* Follow the EBR chain of the extended partition in primary slot @ext_slot
 * (1-4) that covers sectors [@ext_start, @ext_end). */
static int read_chain(struct bf_image *img, struct pt_result *res, struct logicals *lg,
                      unsigned ext_slot, uint64_t ext_start, uint64_t ext_end)
{
    uint64_t ss = res->sector_size, disk = bf_size(img);
    uint64_t visited[PT_MAX_EBRS];
    unsigned nvisited = 0;
    uint64_t ebr = ext_start;
    uint8_t rec[PT_MBR_SIZE];

    for (;;) {
        for (unsigned i = 0; i < nvisited; i++)
            if (visited[i] == ebr)
                return bf_err(img, -EINVAL, "%s: MBR: the EBR chain of extended partition %u "
                              "loops back to the EBR at sector %" PRIu64, img->filename,
                              ext_slot, ebr);
        if (nvisited == PT_MAX_EBRS)
            return bf_err(img, -EINVAL, "%s: MBR: the EBR chain of extended partition %u is "
                          "longer than %d", img->filename, ext_slot, PT_MAX_EBRS);
        visited[nvisited++] = ebr;

        if (!bf_range_within(ebr * ss, PT_MBR_SIZE, disk))
            return 0;                   /* beyond the end of the disk: the chain stops */
        int r = pt_read(img, rec, sizeof rec, ebr * ss, "an EBR");
        if (r < 0)
            return r;
        if (!pt_has_boot_signature(rec))
            return 0;                   /* blank EBR: no (more) logical partitions */

        /* The logical partitions of this EBR. */
        for (unsigned slot = 0; slot < 4; slot++) {
            struct pt_mbr_entry e;
            pt_mbr_entry(rec, slot, &e);
            if (e.count == 0 || is_extended(e.type))
                continue;
            uint64_t start = ebr + e.start, end = start + e.count;   /* < 2^34 */
            r = check_logical(img, lg, ext_slot, ext_start, ext_end, ebr, slot, start, end);
            if (r < 0)
                return r;
            if (r == 0)
                continue;
            lg->v[lg->n].start = start;
            lg->v[lg->n].end = end;
            lg->v[lg->n].number = lg->next_number;
            lg->n++;
            r = add_part(img, res, lg->next_number++, start, e.count, &e, BF_PART_LOGICAL);
            if (r < 0)
                return r;
        }

        /* The link to the next EBR: the first extended entry. */
        struct pt_mbr_entry link = { 0 };
        for (unsigned slot = 0; slot < 4; slot++) {
            pt_mbr_entry(rec, slot, &link);
            if (link.count != 0 && is_extended(link.type))
                break;
            link.count = 0;
        }
        if (link.count == 0)
            return 0;                   /* end of the chain */
        uint64_t next = ext_start + link.start;
        if (next >= ext_end)
            return bf_err(img, -EINVAL, "%s: MBR: the EBR at sector %" PRIu64 " links to sector %"
                          PRIu64 ", outside extended partition %u (sectors %" PRIu64 "-%" PRIu64
                          ")", img->filename, ebr, next, ext_slot, ext_start, ext_end - 1);
        ebr = next;
    }
}

int pt_mbr_parse(struct bf_image *img, const uint8_t *mbr, unsigned sector_size,
                 struct pt_result *res)
{
    struct pt_mbr_entry e[4];
    for (unsigned slot = 0; slot < 4; slot++) {
        pt_mbr_entry(mbr, slot, &e[slot]);
        if (e[slot].boot != 0x00 && e[slot].boot != 0x80)
            return 0;                   /* boot code, not a table: kind stays NONE */
    }
    res->kind = BF_PTABLE_MBR;
    res->sector_size = sector_size;

    for (unsigned slot = 0; slot < 4; slot++) {
        if (e[slot].count == 0)
            continue;
        unsigned flags = is_extended(e[slot].type) ? BF_PART_EXTENDED : 0;
        if (flags && e[slot].start == 0)
            return bf_err(img, -EINVAL, "%s: MBR: extended partition %u starts at sector 0 "
                          "(the MBR itself)", img->filename, slot + 1);
        int r = add_part(img, res, slot + 1, e[slot].start, e[slot].count, &e[slot], flags);
        if (r < 0)
            return r;
    }

    struct logicals *lg = calloc(1, sizeof *lg);
    if (!lg)
        return bf_err(img, -ENOMEM, "out of memory reading the partition table");
    lg->next_number = 5;
    int r = 0;
    for (unsigned slot = 0; slot < 4 && r == 0; slot++)
        if (e[slot].count != 0 && is_extended(e[slot].type))
            r = read_chain(img, res, lg, slot + 1, e[slot].start,
                           (uint64_t)e[slot].start + e[slot].count);
    free(lg);
    return r;
}
