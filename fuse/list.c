/* list.c — `vdisk-mount -l IMAGE`: what an image holds, for people: format
 * and its details, the backing chain, internal snapshots, and the partition
 * table.  (Filesystems inside partitions come with the filesystem view.)
 *
 * Thread model: single-threaded; runs once and exits.
 */
#include "vdisk-mount.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* "64 MiB" for sizes that are whole units, else one decimal. */
static const char *human(uint64_t n, char *buf, size_t len)
{
    static const char *unit[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
    double v = (double)n;
    unsigned u = 0;
    while (v >= 1024 && u < 6) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%" PRIu64 " B", n);
    else if (v == (double)(uint64_t)v)
        snprintf(buf, len, "%.0f %s", v, unit[u]);
    else
        snprintf(buf, len, "%.1f %s", v, unit[u]);
    return buf;
}

static const char *mbr_type_name(uint8_t t)
{
    switch (t) {
    case 0x01: return "FAT12";
    case 0x04: case 0x06: case 0x0e: return "FAT16";
    case 0x05: case 0x0f: case 0x85: return "Extended";
    case 0x07: return "NTFS/exFAT";
    case 0x0b: case 0x0c: return "FAT32";
    case 0x82: return "Linux swap";
    case 0x83: return "Linux";
    case 0x8e: return "Linux LVM";
    case 0xa5: return "FreeBSD";
    case 0xaf: return "HFS+";
    case 0xee: return "GPT protective";
    case 0xef: return "EFI System";
    case 0xfd: return "Linux RAID";
    default: return "";
    }
}

static void list_partitions(struct bf_image *img)
{
    struct bf_ptable *t;
    if (bf_ptable_read(img, 0, &t) < 0) {
        printf("partition table: unreadable: %s\n", bf_errmsg(img));
        return;
    }
    if (t->kind == BF_PTABLE_NONE) {
        printf("partition table: none\n");
        free(t);
        return;
    }
    char g[37], h[32];
    if (t->kind == BF_PTABLE_GPT)
        printf("partition table: gpt, disk GUID %s, %u-byte sectors%s\n",
               bf_guid_str(t->disk_guid, g), t->sector_size,
               t->used_backup_gpt ? " (primary header damaged: read from the backup)" : "");
    else
        printf("partition table: dos (MBR), disk id 0x%08" PRIx32 ", %u-byte sectors\n",
               t->mbr_id, t->sector_size);
    printf("  %-4s %14s %14s %10s  %s\n", "part", "start", "bytes", "size", "type");
    for (size_t i = 0; i < t->n; i++) {
        const struct bf_partition *p = &t->parts[i];
        printf("  p%-3u %14" PRIu64 " %14" PRIu64 " %10s  ", p->number, p->start, p->length,
               human(p->length, h, sizeof h));
        if (t->kind == BF_PTABLE_GPT)
            printf("%s%s%s%s", bf_guid_str(p->type_guid, g), p->name[0] ? " \"" : "", p->name,
                   p->name[0] ? "\"" : "");
        else
            printf("0x%02x %s", p->mbr_type, mbr_type_name(p->mbr_type));
        printf("%s%s\n", p->flags & BF_PART_BOOTABLE ? ", bootable" : "",
               p->flags & BF_PART_LOGICAL ? ", logical" : "");
    }
    free(t);
}

static void list_snapshots(struct bf_image *img)
{
    struct bf_snapshot *s;
    size_t n;
    if (bf_snapshots(img, &s, &n) < 0 || n == 0)
        return;
    printf("snapshots:\n  %-6s %-20s %10s  %s\n", "id", "name", "disk", "taken");
    for (size_t i = 0; i < n; i++) {
        char h[32], when[32] = "";
        time_t t = (time_t)s[i].date_sec;
        struct tm tm;
        if (gmtime_r(&t, &tm))
            strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
        printf("  %-6s %-20s %10s  %s\n", s[i].id, s[i].name,
               human(s[i].disk_size, h, sizeof h), when);
    }
    bf_snapshots_free(s, n);
}

int vm_list(const struct vm_options *o)
{
    struct bf_open_opts oo = { .format = o->format, .snapshot = o->snapshot };
    struct bf_image *img;
    if (bf_open(o->image, &oo, &img) < 0) {
        fprintf(stderr, "vdisk-mount: %s\n", bf_errmsg(img));
        bf_close(img);
        return 1;
    }
    struct bf_info in;
    bf_get_info(img, &in);
    char h[32];
    printf("image: %s\n", o->image);
    printf("format: %s%s%s\n", in.format, in.format_version ? ", version " : "",
           in.format_version ? in.format_version : "");
    printf("virtual size: %s (%" PRIu64 " bytes)\n", human(in.size, h, sizeof h), in.size);
    printf("file size: %s\n", human(in.file_size, h, sizeof h));
    if (in.cluster_size)
        printf("cluster size: %" PRIu32 "\n", in.cluster_size);
    if (in.compression)
        printf("compression type: %s\n", in.compression);
    if (in.data_file)
        printf("data file: %s%s\n", in.data_file,
               in.flags & BF_INFO_DATA_FILE_RAW ? " (raw)" : "");
    if (in.flags & (BF_INFO_DIRTY | BF_INFO_CORRUPT | BF_INFO_EXTENDED_L2))
        printf("flags:%s%s%s\n", in.flags & BF_INFO_DIRTY ? " dirty" : "",
               in.flags & BF_INFO_CORRUPT ? " corrupt" : "",
               in.flags & BF_INFO_EXTENDED_L2 ? " extended-l2" : "");
    if (in.snapshot)
        printf("showing snapshot: %s\n", in.snapshot);
    if (bf_backing(img)) {
        printf("backing chain:\n");
        for (struct bf_image *b = img; b; b = bf_backing(b))
            printf("  %s (%s)\n", bf_filename(b), bf_format(b));
    }
    list_snapshots(img);
    list_partitions(img);
    bf_close(img);
    return 0;
}
