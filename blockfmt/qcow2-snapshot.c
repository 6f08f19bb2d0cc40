/* qcow2-snapshot.c — the qcow2 internal snapshot table: read it with every
 * length checked against the file, list it, find a snapshot by id or name.
 * Layout: qemu docs/interop/qcow2.txt, "Snapshots".
 *
 * Thread model: read once at open; read-only afterwards.
 */
#include "qcow2.h"

#include <inttypes.h>
#include <stdlib.h>

void qcow2_free_snapshots(struct qcow2 *q)
{
    for (uint32_t i = 0; q->snaps && i < q->nb_snaps; i++) {
        free(q->snaps[i].id);
        free(q->snaps[i].name);
    }
    free(q->snaps);
    q->snaps = NULL;
}

/* Read @len bytes at @off, which must lie inside the file. */
static int read_in_file(struct bf_image *img, struct qcow2 *q, void *buf, uint64_t len,
                        uint64_t off)
{
    if (!bf_range_within(off, len, q->file_size))
        return bf_err(img, -EINVAL, "%s: qcow2 snapshot table runs past the end of the file",
                      img->filename);
    int r = bf_source_pread(img->src, buf, len, off);
    if (r < 0)
        return bf_err(img, r, "%s: cannot read snapshot table: %s", img->filename,
                      strerror(-r));
    return 0;
}

static char *read_string(struct bf_image *img, struct qcow2 *q, uint64_t off, uint16_t len,
                         int *err)
{
    char *s = malloc((size_t)len + 1);
    if (!s) {
        *err = bf_err(img, -ENOMEM, "out of memory");
        return NULL;
    }
    *err = read_in_file(img, q, s, len, off);
    if (*err < 0) {
        free(s);
        return NULL;
    }
    s[len] = 0;
    for (uint16_t i = 0; i < len; i++)     /* a name is shown and matched, never run */
        if ((unsigned char)s[i] < 0x20)
            s[i] = '?';
    return s;
}

int qcow2_read_snapshots(struct bf_image *img, struct qcow2 *q)
{
    uint32_t n = q->nb_snaps;
    if (n == 0)
        return 0;
    if (n > QCOW2_MAX_SNAPSHOTS)
        return bf_err(img, -EINVAL, "%s: qcow2 image claims %" PRIu32 " snapshots (limit %d)",
                      img->filename, n, QCOW2_MAX_SNAPSHOTS);
    if (q->snapshots_offset & (q->cluster_size - 1))
        return bf_err(img, -EINVAL, "%s: qcow2 snapshot table offset %#" PRIx64
                      " is not aligned to a cluster", img->filename, q->snapshots_offset);
    q->snaps = calloc(n, sizeof *q->snaps);
    if (!q->snaps)
        return bf_err(img, -ENOMEM, "out of memory");

    uint64_t off = q->snapshots_offset;
    for (uint32_t i = 0; i < n; i++) {
        struct qcow2_snap *sn = &q->snaps[i];
        uint8_t h[40];
        int r = read_in_file(img, q, h, sizeof h, off);
        if (r < 0)
            return r;
        sn->l1_offset = bf_be64(h);
        sn->l1_size = bf_be32(h + 8);
        uint16_t id_len = bf_be16(h + 12), name_len = bf_be16(h + 14);
        sn->date_sec = bf_be32(h + 16);
        sn->date_nsec = bf_be32(h + 20);
        sn->vm_clock_nsec = bf_be64(h + 24);
        sn->vm_state_size = bf_be32(h + 32);
        uint32_t extra = bf_be32(h + 36);
        if (extra > QCOW2_MAX_SNAPSHOT_EXTRA)
            return bf_err(img, -EINVAL, "%s: qcow2 snapshot %" PRIu32 " has %" PRIu32
                          " bytes of extra data (limit %d)", img->filename, i, extra,
                          QCOW2_MAX_SNAPSHOT_EXTRA);
        off += sizeof h;
        uint8_t ex[QCOW2_MAX_SNAPSHOT_EXTRA];
        if ((r = read_in_file(img, q, ex, extra, off)) < 0)
            return r;
        if (extra >= 8)
            sn->vm_state_size = bf_be64(ex);
        sn->disk_size = extra >= 16 ? bf_be64(ex + 8) : q->header_size;
        if (sn->disk_size > (uint64_t)INT64_MAX)
            return bf_err(img, -EFBIG, "%s: qcow2 snapshot %" PRIu32 " has a disk size too "
                          "large to be real", img->filename, i);
        off += extra;
        if (!(sn->id = read_string(img, q, off, id_len, &r)))
            return r;
        off += id_len;
        if (!(sn->name = read_string(img, q, off, name_len, &r)))
            return r;
        off += name_len;
        off = (off + 7) & ~7ull;
        if (off - q->snapshots_offset > QCOW2_MAX_SNAPSHOT_TABLE)
            return bf_err(img, -EFBIG, "%s: qcow2 snapshot table is larger than %u bytes",
                          img->filename, QCOW2_MAX_SNAPSHOT_TABLE);
    }
    return 0;
}

int qcow2_find_snapshot(const struct qcow2 *q, const char *s)
{
    for (uint32_t i = 0; i < q->nb_snaps; i++)
        if (strcmp(q->snaps[i].id, s) == 0)
            return (int)i;
    for (uint32_t i = 0; i < q->nb_snaps; i++)
        if (strcmp(q->snaps[i].name, s) == 0)
            return (int)i;
    return -1;
}

int qcow2_list_snapshots(struct bf_image *img, struct bf_snapshot **list, size_t *n)
{
    struct qcow2 *q = img->priv;
    if (q->nb_snaps == 0)
        return 0;
    struct bf_snapshot *l = calloc(q->nb_snaps, sizeof *l);
    if (!l)
        return bf_err(img, -ENOMEM, "out of memory");
    for (uint32_t i = 0; i < q->nb_snaps; i++) {
        const struct qcow2_snap *sn = &q->snaps[i];
        l[i].id = strdup(sn->id);
        l[i].name = strdup(sn->name);
        if (!l[i].id || !l[i].name) {
            bf_snapshots_free(l, q->nb_snaps);
            return bf_err(img, -ENOMEM, "out of memory");
        }
        l[i].disk_size = sn->disk_size;
        l[i].vm_state_size = sn->vm_state_size;
        l[i].date_sec = sn->date_sec;
        l[i].date_nsec = sn->date_nsec;
        l[i].vm_clock_nsec = sn->vm_clock_nsec;
    }
    *list = l;
    *n = q->nb_snaps;
    return 0;
}
