/* readbuf.c — answering a FUSE read with a buffer vector: stretches stored
 * as they are in a local file go out as (descriptor, offset) buffers, which
 * libfuse splices from the page cache into the reply (one copy of every
 * byte fewer than read() into memory and write() out of it); everything
 * else is read into memory.  Shared by the disk view and the file-system
 * view, which differ only in how they locate and read a range.
 *
 * Thread model: view_read_buf runs on any FUSE thread; it keeps no state.
 */
#include "views.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* At most this many buffers per reply: libfuse's splice pipe needs a page
 * per buffer besides the data. */
#define VIEW_MAX_BUFS 16

/* libfuse splices a reply through a per-thread pipe that must hold the
 * header, one page per buffer and the data; when it cannot grow the pipe
 * that far it falls back to copying everything into a fresh allocation,
 * which is slower than not splicing at all.  Pipes grow to at most
 * /proc/sys/fs/pipe-max-size (1 MiB by default) without privilege. */
static size_t pipe_max_size(void)
{
    size_t max = 1u << 20;
    FILE *f = fopen("/proc/sys/fs/pipe-max-size", "re");
    if (f) {
        unsigned long v;
        if (fscanf(f, "%lu", &v) == 1)
            max = v;
        fclose(f);
    }
    return max;
}

static size_t splice_overhead(void)
{
    return (VIEW_MAX_BUFS + 3) * (size_t)sysconf(_SC_PAGESIZE);
}

size_t view_splice_max_read(void)
{
    size_t max = pipe_max_size(), over = splice_overhead(), page = (size_t)sysconf(_SC_PAGESIZE);
    if (max > (1u << 20) + over)
        return 1u << 20;                 /* the most FUSE asks for at once */
    if (max < (128u << 10) + over)
        return 0;                        /* too small to be worth it */
    return (max - over) / page * page;
}

bool view_splice_init(struct fuse_conn_info *conn)
{
    /* conn->max_read is the mount's max_read option, set by mount.c */
    if ((conn->capable & FUSE_CAP_SPLICE_WRITE) && conn->max_read > 0 &&
        conn->max_read + splice_overhead() <= pipe_max_size()) {
        conn->want |= FUSE_CAP_SPLICE_WRITE;
        return true;
    }
    return false;
}

static void free_bufs(struct fuse_bufvec *bv, size_t n)
{
    for (size_t j = 0; j < n; j++)
        if (!(bv->buf[j].flags & FUSE_BUF_IS_FD))
            free(bv->buf[j].mem);
    free(bv);
}

int view_read_buf(struct fuse_bufvec **bufp, size_t size, uint64_t off, bool splice,
                  view_locate_fn locate, view_pread_fn pread_fn, void *ctx)
{
    /* The runs of the request: file ranges, and memory for the rest (with
     * the last slot taking whatever is left). */
    struct bf_location loc[VIEW_MAX_BUFS];
    size_t n = 0, done = 0;
    while (done < size) {
        struct bf_location l = { .len = size - done, .fd = -1 };
        if (splice && n < VIEW_MAX_BUFS - 1) {
            int r = locate(ctx, off + done, size - done, &l);
            if (r < 0)
                return r;
            if (l.len == 0)
                break;                       /* end of the file */
        }
        if (n > 0 && l.fd < 0 && loc[n - 1].fd < 0)
            loc[n - 1].len += l.len;         /* memory runs read in one go */
        else if (n > 0 && l.fd >= 0 && loc[n - 1].fd == l.fd &&
                 loc[n - 1].fd_off + loc[n - 1].len == l.fd_off)
            loc[n - 1].len += l.len;         /* contiguous in the file */
        else
            loc[n++] = l;
        done += l.len;
    }

    struct fuse_bufvec *bv = calloc(1, sizeof *bv + (n ? n - 1 : 0) * sizeof bv->buf[0]);
    if (!bv)
        return -ENOMEM;
    bv->count = n ? n : 1;               /* an empty reply: one empty buffer */
    done = 0;
    for (size_t i = 0; i < n; i++) {
        struct fuse_buf *b = &bv->buf[i];
        b->size = loc[i].len;
        if (loc[i].fd >= 0) {
            b->flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
            b->fd = loc[i].fd;
            b->pos = (off_t)loc[i].fd_off;
        } else {
            int r = (b->mem = malloc(b->size ? b->size : 1)) ? 0 : -ENOMEM;
            if (r == 0)
                r = pread_fn(ctx, b->mem, b->size, off + done);
            if (r < 0) {
                free_bufs(bv, i + 1);
                return r;
            }
            if ((size_t)r < b->size) {       /* the file ended early: stop here */
                b->size = (size_t)r;
                bv->count = i + 1;           /* the buffers after it hold nothing yet */
                break;
            }
        }
        done += loc[i].len;
    }
    *bufp = bv;
    return 0;
}
