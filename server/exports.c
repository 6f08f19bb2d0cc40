/* exports.c — the table of exports one server offers: the whole disk (or
 * one partition with -P), and with --partitions every partition as "p1",
 * "p2", ... next to the whole disk.
 *
 * Thread model: built before any connection exists; read-only afterwards.
 */
#include "server.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int add_export(struct server *s, const char *name, const char *desc, struct bf_image *img)
{
    for (size_t i = 0; i < s->nexports; i++)
        if (!strcmp(s->exports[i].name, name))
            return -EEXIST;
    struct export *n = realloc(s->exports, (s->nexports + 1) * sizeof *n);
    if (!n)
        return -ENOMEM;
    s->exports = n;
    struct export *e = &n[s->nexports];
    e->name = strdup(name);
    e->description = strdup(desc ? desc : "");
    e->img = img;
    if (!e->name || !e->description) {
        free(e->name);
        free(e->description);
        return -ENOMEM;
    }
    s->nexports++;
    return 0;
}

static void describe(const struct bf_ptable *t, const struct bf_partition *p, char *buf,
                     size_t len)
{
    char type[160];
    if (t->kind == BF_PTABLE_GPT) {
        char g[37];
        snprintf(type, sizeof type, "%s", p->name[0] ? p->name : bf_guid_str(p->type_guid, g));
    } else {
        snprintf(type, sizeof type, "type 0x%02x", p->mbr_type);
    }
    snprintf(buf, len, "partition %u: %" PRIu64 " bytes at offset %" PRIu64 ", %s",
             p->number, p->length, p->start, type);
}

/* Slice @p of the disk and export it as @name. */
static int export_partition(struct server *s, const struct bf_ptable *t,
                            const struct bf_partition *p, const char *name, const char *desc,
                            char *err, size_t errlen)
{
    struct bf_image *slice;
    char d[256];
    if (bf_open_slice(s->disk, p->start, p->length, &slice) < 0) {
        snprintf(err, errlen, "partition %u: %s", p->number, bf_errmsg(slice));
        bf_close(slice);
        return -1;
    }
    if (!desc) {
        describe(t, p, d, sizeof d);
        desc = d;
    }
    int r = add_export(s, name, desc, slice);
    if (r < 0) {
        bf_close(slice);
        snprintf(err, errlen, r == -EEXIST ? "export name '%s' is used twice" : "out of memory",
                 name);
        return -1;
    }
    return 0;
}

int exports_build(struct server *s, char *err, size_t errlen)
{
    const struct nbd_options *o = s->opt;
    const char *name = o->export_name ? o->export_name : "";
    struct bf_ptable *t = NULL;
    if (o->partition >= 0 || o->partitions) {
        if (bf_ptable_read(s->disk, 0, &t) < 0) {
            snprintf(err, errlen, "%s: %s", o->image, bf_errmsg(s->disk));
            return -1;
        }
        if (t->kind == BF_PTABLE_NONE) {
            snprintf(err, errlen, "%s: the disk has no partition table", o->image);
            free(t);
            return -1;
        }
    }
    int r = 0;
    if (o->partition >= 0) {
        const struct bf_partition *p = NULL;
        for (size_t i = 0; i < t->n; i++)
            if (t->parts[i].number == (unsigned)o->partition &&
                !(t->parts[i].flags & BF_PART_EXTENDED))
                p = &t->parts[i];
        if (!p) {
            snprintf(err, errlen, "%s: there is no partition %d", o->image, o->partition);
            r = -1;
        } else {
            r = export_partition(s, t, p, name, o->description, err, errlen);
        }
    } else {
        if (add_export(s, name, o->description, s->disk) < 0) {
            snprintf(err, errlen, "out of memory");
            r = -1;
        }
    }
    for (size_t i = 0; r == 0 && o->partitions && i < t->n; i++) {
        const struct bf_partition *p = &t->parts[i];
        if (p->flags & BF_PART_EXTENDED)
            continue;              /* a container, not a file system */
        char pn[16];
        snprintf(pn, sizeof pn, "p%u", p->number);
        r = export_partition(s, t, p, pn, NULL, err, errlen);
    }
    free(t);
    return r;
}

struct export *export_find(struct server *s, const char *name)
{
    for (size_t i = 0; i < s->nexports; i++)
        if (!strcmp(s->exports[i].name, name))
            return &s->exports[i];
    return NULL;
}

void exports_free(struct server *s)
{
    for (size_t i = 0; i < s->nexports; i++) {
        free(s->exports[i].name);
        free(s->exports[i].description);
        if (s->exports[i].img != s->disk)      /* the disk is the server's */
            bf_close(s->exports[i].img);
    }
    free(s->exports);
    s->exports = NULL;
    s->nexports = 0;
}
