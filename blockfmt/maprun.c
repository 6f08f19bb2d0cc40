/* maprun.c — building one map run from per-unit answers, for formats whose
 * metadata describes fixed-size units (qcow2 clusters and subclusters, vmdk
 * grains).  The driver says what one unit holds; this walks units from the
 * one holding the queried offset while they continue the first one's run
 * (same kind, data contiguous in the host file) and fills the map.  Every
 * table-mapped driver shares it, so run coalescing cannot drift between
 * formats.
 *
 * Thread model: stateless; the callback reads the driver's (pinned) tables.
 */
#include "internal.h"

int bf_map_units(uint64_t off, uint64_t len, uint64_t unit_size, bf_unit_fn fn, void *ctx,
                 struct bf_source *src, struct bf_map *m, struct bf_unit *first)
{
    uint64_t pos = off - off % unit_size, end = off + len, run_end = pos;
    struct bf_unit u;
    while (run_end < end) {
        int r = fn(ctx, run_end, &u);
        if (r < 0) {
            if (run_end == pos)
                return r;
            break;          /* end the run here; the next call reports the damage */
        }
        if (run_end == pos) {
            *first = u;
            if (u.kind == BF_UNIT_COMPRESSED)
                return 0;   /* one unit, mapped by the driver */
        } else if (u.kind != first->kind ||
                   (u.kind == BF_UNIT_DATA && u.host != first->host + (run_end - pos))) {
            break;
        }
        run_end += unit_size;
    }
    m->len = bf_min64(run_end, end) - off;
    switch (first->kind) {
    case BF_UNIT_DATA:
        m->kind = BF_MAP_DATA;
        m->src = src;
        m->host_off = first->host + (off - pos);
        break;
    case BF_UNIT_ZERO:
        m->kind = BF_MAP_ZERO;
        break;
    default:
        m->kind = BF_MAP_UNALLOC;
        break;
    }
    return 0;
}
