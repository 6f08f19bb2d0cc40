/* fsview-ext.c — what libtsk 4.11 drops from ext2/3/4 inodes: the epoch
 * bits of the extra timestamp fields.  libtsk reads the 32-bit seconds as
 * unsigned; Linux reads them as signed and adds (extra & 3) << 32.  The two
 * agree for every time from 1970 to 2038; for a time libtsk shows at or
 * after 2038 (bit 31 set) the inode is read here and decoded as Linux does
 * (which may give a time before 1970, or after 2038).
 *
 * Thread model: fsv_ext_init runs in fsview_open; fsv_ext_times only reads
 * the image (bf_pread is thread-safe) and the fixed geometry.
 */
#include "fsview-int.h"

#include <stddef.h>
#include <string.h>

static uint32_t le16(const uint8_t *p) { return (uint32_t)(p[0] | p[1] << 8); }
static uint32_t le32(const uint8_t *p) { return le16(p) | le16(p + 2) << 16; }

void fsv_ext_init(struct fsview *fs)
{
    struct fsv_ext_geo *g = &fs->ext;
    uint8_t sb[512];
    memset(g, 0, sizeof *g);
    if (bf_size(fs->img) < 2048 || bf_pread(fs->img, sb, sizeof sb, 1024) < 0 ||
        le16(sb + 0x38) != 0xef53)
        return;
    uint32_t log = le32(sb + 0x18), incompat = le32(sb + 0x60);
    if (log > 6 || (incompat & 0x10))          /* meta_bg: descriptors are scattered */
        return;
    g->bsize = 1024u << log;
    g->ipg = le32(sb + 0x28);
    g->isize = le32(sb + 0x4c) == 0 ? 128 : le16(sb + 0x58);
    g->dsize = (incompat & 0x80) ? le16(sb + 0xfe) : 32;
    g->gdt = (uint64_t)le32(sb + 0x14) + 1;
    g->ok = g->ipg > 0 && g->isize >= 128 && g->isize <= g->bsize && !(g->isize & (g->isize - 1)) &&
            g->dsize >= 32 && g->dsize <= 1024 && !(g->dsize & (g->dsize - 1));
}

void fsv_ext_times(const struct fsview *fs, struct stat *st)
{
    const struct fsv_ext_geo *g = &fs->ext;
    if (!g->ok || (st->st_atim.tv_sec < 0x80000000 && st->st_mtim.tv_sec < 0x80000000 &&
                   st->st_ctim.tv_sec < 0x80000000))
        return;
    uint64_t ino = st->st_ino;
    if (ino == 0)
        return;
    uint64_t group = (ino - 1) / g->ipg, idx = (ino - 1) % g->ipg;
    uint8_t d[64], in[256];
    if (bf_pread(fs->img, d, g->dsize >= 64 ? 64 : 32, g->gdt * g->bsize + group * g->dsize) < 0)
        return;
    uint64_t table = le32(d + 8) | (g->dsize >= 64 ? (uint64_t)le32(d + 0x28) << 32 : 0);
    if (table == 0 || table > UINT64_MAX / g->bsize / 2)
        return;
    uint64_t off = table * g->bsize + idx * g->isize;
    size_t len = g->isize < sizeof in ? g->isize : sizeof in;
    if (off > bf_size(fs->img) || len > bf_size(fs->img) - off ||
        bf_pread(fs->img, in, len, off) < 0)
        return;
    uint32_t have = len > 128 ? 128 + le16(in + 0x80) : 128;   /* bytes of inode in use */
    static const struct { unsigned sec, extra; size_t ts; } f[] = {
        { 0x08, 0x8c, offsetof(struct stat, st_atim) },
        { 0x10, 0x88, offsetof(struct stat, st_mtim) },
        { 0x0c, 0x84, offsetof(struct stat, st_ctim) },
    };
    for (size_t i = 0; i < 3; i++) {
        int64_t s = (int32_t)le32(in + f[i].sec);
        if (f[i].extra + 4 <= have && f[i].extra + 4 <= len)
            s += (int64_t)(le32(in + f[i].extra) & 3) << 32;
        ((struct timespec *)((char *)st + f[i].ts))->tv_sec = (time_t)s;
    }
}
