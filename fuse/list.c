/* list.c — `vdisk-mount -l [--json] IMAGE`: what an image holds: format and
 * its details, the backing chain, internal snapshots, the partition table,
 * and the file system in each partition (or on the whole disk when there is
 * no table) with its label and UUID.  For people as text, for scripts as
 * one JSON object (--json); both come from the same gathered facts.
 *
 * File systems are recognised by fsinfo.c (superblocks, as blkid names
 * labels and UUIDs); what it does not know, libtsk may (fsview.c).
 *
 * Thread model: single-threaded; runs once and exits.
 */
#include "vdisk-mount.h"
#include "fsinfo.h"
#include "fsview.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* ------------------------------------------------------------- gather */

struct fs_found {
    bool present;                /* something was recognised */
    bool viewable;               /* the filesystem view (libtsk) can show it */
    struct fsinfo fi;
    char error[256];             /* reading failed */
};

struct listing {
    struct bf_info in;
    struct bf_snapshot *snaps;
    size_t nsnaps;
    struct bf_ptable *pt;        /* NULL: unreadable (pt_error) */
    char pt_error[512];
    struct fs_found disk_fs;     /* no partitions: the whole disk */
    struct fs_found *part_fs;    /* per pt->parts[i] */
};

/* Is it a type the filesystem view shows (libtsk reads it)? */
static bool tsk_type(const char *t)
{
    static const char *const ok[] = { "ext2", "ext3", "ext4", "fat12", "fat16", "fat32",
                                      "exfat", "ntfs", "hfs+", "iso9660" };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (!strcmp(t, ok[i]))
            return true;
    return false;
}

static void probe_fs(struct bf_image *img, struct fs_found *f)
{
    memset(f, 0, sizeof *f);
    int r = fsinfo_probe(img, &f->fi);
    if (r == 0) {
        f->present = true;
        f->viewable = tsk_type(f->fi.type);
        return;
    }
    if (r != -ENOENT) {
        snprintf(f->error, sizeof f->error, "%s", bf_errmsg(img));
        return;
    }
    /* not one fsinfo knows: libtsk may (UFS, YAFFS2, APFS, ...) */
    struct fsview *fs;
    char err[256];
    if (fsview_open(img, &fs, err, sizeof err) == 0) {
        f->present = f->viewable = true;
        snprintf(f->fi.type, sizeof f->fi.type, "%s", fsview_type(fs));
        fsview_close(fs);
    }
}

static void gather(struct bf_image *img, struct listing *l)
{
    bf_get_info(img, &l->in);
    if (bf_snapshots(img, &l->snaps, &l->nsnaps) < 0) {
        l->snaps = NULL;
        l->nsnaps = 0;
    }
    if (bf_ptable_read(img, 0, &l->pt) < 0) {
        l->pt = NULL;
        snprintf(l->pt_error, sizeof l->pt_error, "%s", bf_errmsg(img));
        return;
    }
    if (l->pt->n == 0) {
        /* no table, or one with no partitions (what a FAT "superfloppy"'s
         * boot sector may be read as): look at the whole disk */
        probe_fs(img, &l->disk_fs);
        return;
    }
    l->part_fs = calloc(l->pt->n ? l->pt->n : 1, sizeof *l->part_fs);
    if (!l->part_fs)
        return;
    for (size_t i = 0; i < l->pt->n; i++) {
        const struct bf_partition *p = &l->pt->parts[i];
        if (p->flags & BF_PART_EXTENDED)
            continue;
        struct bf_image *s;
        if (bf_open_slice(img, p->start, p->length, &s) < 0) {
            snprintf(l->part_fs[i].error, sizeof l->part_fs[i].error, "%s", bf_errmsg(s));
            bf_close(s);
            continue;
        }
        probe_fs(s, &l->part_fs[i]);
        bf_close(s);
    }
}

static void release(struct listing *l)
{
    bf_snapshots_free(l->snaps, l->nsnaps);
    free(l->pt);
    free(l->part_fs);
}

/* ---------------------------------------------------------------- text */

static void text_fs(const char *what, const struct fs_found *f)
{
    if (f->error[0]) {
        printf("  %-5s unreadable: %s\n", what, f->error);
        return;
    }
    if (!f->present) {
        printf("  %-5s -\n", what);
        return;
    }
    printf("  %-5s %-8s %-37s %s%s%s%s\n", what, f->fi.type, f->fi.uuid[0] ? f->fi.uuid : "-",
           f->fi.label[0] ? "\"" : "-", f->fi.label, f->fi.label[0] ? "\"" : "",
           f->viewable ? "" : "  (not shown by the filesystem view)");
}

static void text_partitions(const struct listing *l)
{
    const struct bf_ptable *t = l->pt;
    if (!t) {
        printf("partition table: unreadable: %s\n", l->pt_error);
        return;
    }
    if (t->kind == BF_PTABLE_NONE) {
        printf("partition table: none\n");
        printf("file system:\n  %-5s %-8s %-37s %s\n", "", "type", "uuid", "label");
        text_fs("disk", &l->disk_fs);
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
    if (t->n == 0) {
        printf("  no partitions\nfile system:\n  %-5s %-8s %-37s %s\n", "", "type", "uuid",
               "label");
        text_fs("disk", &l->disk_fs);
        return;
    }
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
    if (!l->part_fs)
        return;
    printf("file systems:\n  %-5s %-8s %-37s %s\n", "part", "type", "uuid", "label");
    for (size_t i = 0; i < t->n; i++) {
        if (t->parts[i].flags & BF_PART_EXTENDED)
            continue;
        char what[16];
        snprintf(what, sizeof what, "p%u", t->parts[i].number);
        text_fs(what, &l->part_fs[i]);
    }
}

static void text_snapshots(const struct listing *l)
{
    if (l->nsnaps == 0)
        return;
    printf("snapshots:\n  %-6s %-20s %10s  %s\n", "id", "name", "disk", "taken");
    for (size_t i = 0; i < l->nsnaps; i++) {
        const struct bf_snapshot *s = &l->snaps[i];
        char h[32], when[32] = "";
        time_t t = (time_t)s->date_sec;
        struct tm tm;
        if (gmtime_r(&t, &tm))
            strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
        printf("  %-6s %-20s %10s  %s\n", s->id, s->name, human(s->disk_size, h, sizeof h), when);
    }
}

static void text(const char *path, struct bf_image *img, const struct listing *l)
{
    const struct bf_info *in = &l->in;
    char h[32];
    printf("image: %s\n", path);
    printf("format: %s%s%s\n", in->format, in->format_version ? ", version " : "",
           in->format_version ? in->format_version : "");
    printf("virtual size: %s (%" PRIu64 " bytes)\n", human(in->size, h, sizeof h), in->size);
    printf("file size: %s\n", human(in->file_size, h, sizeof h));
    if (in->cluster_size)
        printf("cluster size: %" PRIu32 "\n", in->cluster_size);
    if (in->compression)
        printf("compression type: %s\n", in->compression);
    if (in->data_file)
        printf("data file: %s%s\n", in->data_file,
               in->flags & BF_INFO_DATA_FILE_RAW ? " (raw)" : "");
    if (in->flags & (BF_INFO_DIRTY | BF_INFO_CORRUPT | BF_INFO_EXTENDED_L2))
        printf("flags:%s%s%s\n", in->flags & BF_INFO_DIRTY ? " dirty" : "",
               in->flags & BF_INFO_CORRUPT ? " corrupt" : "",
               in->flags & BF_INFO_EXTENDED_L2 ? " extended-l2" : "");
    if (in->snapshot)
        printf("showing snapshot: %s\n", in->snapshot);
    if (bf_backing(img)) {
        printf("backing chain:\n");
        for (struct bf_image *b = img; b; b = bf_backing(b))
            printf("  %s (%s)\n", bf_filename(b), bf_format(b));
    }
    text_snapshots(l);
    text_partitions(l);
}

/* ---------------------------------------------------------------- JSON */

/* A JSON string: quotes, backslashes and control characters escaped;
 * bytes that are not valid UTF-8 are taken as Latin-1 (so the output is
 * always valid UTF-8).  NULL prints null. */
static void jstr(const char *s)
{
    if (!s) {
        fputs("null", stdout);
        return;
    }
    putchar('"');
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            printf("\\%c", c);
            p++;
        } else if (c < 0x20 || c == 0x7f) {
            printf("\\u%04x", c);
            p++;
        } else if (c < 0x80) {
            putchar(c);
            p++;
        } else {
            size_t k = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
            bool valid = k > 0;
            for (size_t j = 1; valid && j < k; j++)
                valid = (p[j] & 0xc0) == 0x80;
            if (valid) {
                fwrite(p, 1, k, stdout);
                p += k;
            } else {
                printf("\\u%04x", c);
                p++;
            }
        }
    }
    putchar('"');
}

static void jkey(const char *k, bool *first)
{
    printf("%s\n%*s", *first ? "" : ",", 2, "");
    *first = false;
    jstr(k);
    fputs(": ", stdout);
}

static void jfs(const struct fs_found *f)
{
    if (f->error[0]) {
        fputs("{\"error\": ", stdout);
        jstr(f->error);
        putchar('}');
        return;
    }
    if (!f->present) {
        fputs("null", stdout);
        return;
    }
    fputs("{\"type\": ", stdout);
    jstr(f->fi.type);
    fputs(", \"label\": ", stdout);
    jstr(f->fi.label[0] ? f->fi.label : NULL);
    fputs(", \"uuid\": ", stdout);
    jstr(f->fi.uuid[0] ? f->fi.uuid : NULL);
    printf(", \"viewable\": %s}", f->viewable ? "true" : "false");
}

static void json_ptable(const struct listing *l)
{
    const struct bf_ptable *t = l->pt;
    char g[37], b[64];
    if (!t) {
        fputs("{\"error\": ", stdout);
        jstr(l->pt_error);
        putchar('}');
        return;
    }
    if (t->kind == BF_PTABLE_NONE) {
        fputs("null", stdout);
        return;
    }
    bool gpt = t->kind == BF_PTABLE_GPT;
    printf("{\n    \"type\": \"%s\",\n    \"sector_size\": %u,\n", gpt ? "gpt" : "dos",
           t->sector_size);
    if (gpt)
        printf("    \"disk_guid\": \"%s\",\n    \"used_backup_gpt\": %s,\n",
               bf_guid_str(t->disk_guid, g), t->used_backup_gpt ? "true" : "false");
    else
        printf("    \"disk_id\": \"0x%08" PRIx32 "\",\n", t->mbr_id);
    fputs("    \"partitions\": [", stdout);
    for (size_t i = 0; i < t->n; i++) {
        const struct bf_partition *p = &t->parts[i];
        printf("%s\n      {\"number\": %u, \"start\": %" PRIu64 ", \"size\": %" PRIu64 ", ",
               i ? "," : "", p->number, p->start, p->length);
        if (gpt) {
            printf("\"type\": \"%s\", ", bf_guid_str(p->type_guid, g));
            printf("\"uuid\": \"%s\", \"name\": ", bf_guid_str(p->uuid, g));
            jstr(p->name);
            printf(", \"attributes\": %" PRIu64 ", ", p->gpt_attrs);
        } else {
            snprintf(b, sizeof b, "0x%02x", p->mbr_type);
            printf("\"type\": \"%s\", \"type_name\": ", b);
            jstr(mbr_type_name(p->mbr_type));
            printf(", \"name\": null, \"logical\": %s, \"extended\": %s, ",
                   p->flags & BF_PART_LOGICAL ? "true" : "false",
                   p->flags & BF_PART_EXTENDED ? "true" : "false");
        }
        printf("\"bootable\": %s,\n       \"filesystem\": ",
               p->flags & BF_PART_BOOTABLE ? "true" : "false");
        if (l->part_fs && !(p->flags & BF_PART_EXTENDED))
            jfs(&l->part_fs[i]);
        else
            fputs("null", stdout);
        putchar('}');
    }
    fputs(t->n ? "\n    ]\n  }" : "]\n  }", stdout);
}

static void json(const char *path, struct bf_image *img, const struct listing *l)
{
    const struct bf_info *in = &l->in;
    bool first = true;
    putchar('{');
    jkey("image", &first);
    jstr(path);
    jkey("format", &first);
    jstr(in->format);
    jkey("version", &first);
    jstr(in->format_version);
    jkey("virtual_size", &first);
    printf("%" PRIu64, in->size);
    jkey("file_size", &first);
    printf("%" PRIu64, in->file_size);
    jkey("cluster_size", &first);
    if (in->cluster_size)
        printf("%" PRIu32, in->cluster_size);
    else
        fputs("null", stdout);
    jkey("compression", &first);
    jstr(in->compression);
    jkey("data_file", &first);
    jstr(in->data_file);
    jkey("data_file_raw", &first);
    fputs(in->flags & BF_INFO_DATA_FILE_RAW ? "true" : "false", stdout);
    jkey("flags", &first);
    const char *fl[3];
    size_t nf = 0;
    if (in->flags & BF_INFO_DIRTY)
        fl[nf++] = "dirty";
    if (in->flags & BF_INFO_CORRUPT)
        fl[nf++] = "corrupt";
    if (in->flags & BF_INFO_EXTENDED_L2)
        fl[nf++] = "extended-l2";
    putchar('[');
    for (size_t i = 0; i < nf; i++) {
        fputs(i ? ", " : "", stdout);
        jstr(fl[i]);
    }
    putchar(']');
    jkey("snapshot_shown", &first);
    jstr(in->snapshot);
    jkey("backing_file", &first);
    jstr(in->backing_file);
    jkey("backing_format", &first);
    jstr(in->backing_format);
    jkey("backing_chain", &first);
    putchar('[');
    for (struct bf_image *b = bf_backing(img); b; b = bf_backing(b)) {
        fputs(b == bf_backing(img) ? "\n    {\"filename\": " : ",\n    {\"filename\": ", stdout);
        jstr(bf_filename(b));
        fputs(", \"format\": ", stdout);
        jstr(bf_format(b));
        putchar('}');
    }
    fputs(bf_backing(img) ? "\n  ]" : "]", stdout);
    jkey("snapshots", &first);
    putchar('[');
    for (size_t i = 0; i < l->nsnaps; i++) {
        const struct bf_snapshot *s = &l->snaps[i];
        fputs(i ? ",\n    {\"id\": " : "\n    {\"id\": ", stdout);
        jstr(s->id);
        fputs(", \"name\": ", stdout);
        jstr(s->name);
        printf(", \"disk_size\": %" PRIu64 ", \"vm_state_size\": %" PRIu64
               ", \"date_sec\": %" PRIu64 ", \"date_nsec\": %" PRIu32
               ", \"vm_clock_nsec\": %" PRIu64 "}",
               s->disk_size, s->vm_state_size, s->date_sec, s->date_nsec, s->vm_clock_nsec);
    }
    fputs(l->nsnaps ? "\n  ]" : "]", stdout);
    jkey("partition_table", &first);
    json_ptable(l);
    jkey("filesystem", &first);
    if (l->pt && l->pt->n == 0)
        jfs(&l->disk_fs);
    else
        fputs("null", stdout);
    fputs("\n}\n", stdout);
}

int vm_list(const struct vm_options *o)
{
    struct bf_open_opts oo = { .format = o->format, .snapshot = o->snapshot,
                               .flags = o->force_share ? BF_OPEN_FORCE_SHARE : 0 };
    struct bf_image *img;
    if (bf_open(o->image, &oo, &img) < 0) {
        fprintf(stderr, "vdisk-mount: %s\n", bf_errmsg(img));
        bf_close(img);
        return 1;
    }
    struct listing l = { 0 };
    gather(img, &l);
    if (o->json)
        json(o->image, img, &l);
    else
        text(o->image, img, &l);
    release(&l);
    bf_close(img);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "vdisk-mount: writing the listing failed\n");
        return 1;
    }
    return 0;
}
