/* commands.c — executing one NBD request against its export: checks first
 * (flags, read-only, range, size limits; the errors doc/proto.md asks for),
 * then READ (holes sent as hole chunks when structured replies are on),
 * WRITE, WRITE_ZEROES, TRIM, FLUSH, CACHE and BLOCK_STATUS for
 * base:allocation and qemu:allocation-depth.
 *
 * Thread model: runs on worker threads, many at once on one export; the
 * image library is thread-safe and replies are sent whole (reply.c).
 */
#include "server.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EXTENTS 16384            /* block status descriptors per reply */

static int fail(struct conn *c, const struct request *r, uint32_t err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(struct conn *c, const struct request *r, uint32_t err, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    vlog(c->srv, "connection %u: request %u at %" PRIu64 "+%" PRIu64 ": %s", c->id, r->type,
         r->offset, r->length, msg);
    return reply_error(c, r, err, msg);
}

static int fail_image(struct conn *c, const struct request *r, int neg_errno)
{
    return fail(c, r, nbd_errno(neg_errno), "%s", bf_errmsg(c->exp->img));
}

/* Flags each command accepts. */
static uint16_t allowed_flags(const struct conn *c, uint16_t type)
{
    uint16_t ext = c->extended ? NBD_CMD_FLAG_PAYLOAD_LEN : 0;
    switch (type) {
    case NBD_CMD_READ:         return NBD_CMD_FLAG_FUA | (c->structured ? NBD_CMD_FLAG_DF : 0);
    case NBD_CMD_WRITE:        return NBD_CMD_FLAG_FUA | ext;
    case NBD_CMD_FLUSH:        return 0;
    case NBD_CMD_TRIM:         return NBD_CMD_FLAG_FUA;
    case NBD_CMD_CACHE:        return 0;
    case NBD_CMD_WRITE_ZEROES: return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE |
                                      NBD_CMD_FLAG_FAST_ZERO;
    case NBD_CMD_BLOCK_STATUS: return NBD_CMD_FLAG_REQ_ONE;
    default:                   return 0;
    }
}

/* The checks every request passes before it touches the image.  Returns 0,
 * or the NBD error after having replied with it. */
static int validate(struct conn *c, const struct request *r)
{
    struct bf_image *img = c->exp->img;
    uint64_t size = bf_size(img);
    bool in_range = r->offset <= size && r->length <= size - r->offset;
    bool writes = r->type == NBD_CMD_WRITE || r->type == NBD_CMD_TRIM ||
                  r->type == NBD_CMD_WRITE_ZEROES;

    if (r->early_error)
        return fail(c, r, r->early_error, "malformed request (payload)"), 1;
    if (r->type > NBD_CMD_BLOCK_STATUS || r->type == NBD_CMD_DISC)
        return fail(c, r, NBD_EINVAL, "unknown command %u", r->type), 1;
    if (r->flags & ~allowed_flags(c, r->type))
        return fail(c, r, NBD_EINVAL, "unsupported flags %#x for command %u", r->flags,
                    r->type), 1;
    if (writes && !bf_is_writable(img))
        return fail(c, r, NBD_EPERM, "the export is read-only"), 1;
    if ((r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE) && r->length > NBD_MAX_PAYLOAD)
        return fail(c, r, NBD_EINVAL, "request of %" PRIu64 " bytes is over the %u-byte limit",
                    r->length, NBD_MAX_PAYLOAD), 1;
    if (r->type != NBD_CMD_FLUSH && !in_range)
        return fail(c, r, r->type == NBD_CMD_WRITE || r->type == NBD_CMD_WRITE_ZEROES
                              ? NBD_ENOSPC : NBD_EINVAL,
                    "range is beyond the end of the export (%" PRIu64 " bytes)", size), 1;
    if (r->type == NBD_CMD_FLUSH && (r->offset || r->length))
        return fail(c, r, NBD_EINVAL, "flush with an offset or length"), 1;
    if (r->type == NBD_CMD_BLOCK_STATUS) {
        if (!c->meta_base && !c->meta_depth)
            return fail(c, r, NBD_EINVAL, "no metadata context was selected"), 1;
        if (r->length == 0)
            return fail(c, r, NBD_EINVAL, "block status of zero bytes"), 1;
    }
    return 0;
}

/* ----------------------------------------------------------------- read */

struct seg { uint64_t off, len; bool hole; };

#define MIN_HOLE 4096        /* smaller zero runs go out as data: a chunk costs more */

/* The chunks of one read reply, built from the zero ranges the library
 * reports (in order): data, hole, data, ... */
struct segs {
    struct seg *v;
    size_t n, cap;
    uint64_t base;           /* where the next data segment starts */
    int err;
};

static void push_seg(struct segs *s, uint64_t off, uint64_t len, bool hole)
{
    if (len == 0 || s->err)
        return;
    if (s->n > 0 && s->v[s->n - 1].hole == hole &&
        s->v[s->n - 1].off + s->v[s->n - 1].len == off) {
        s->v[s->n - 1].len += len;
        return;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        struct seg *nv = realloc(s->v, cap * sizeof *nv);
        if (!nv) {
            s->err = -ENOMEM;
            return;
        }
        s->v = nv;
        s->cap = cap;
    }
    s->v[s->n++] = (struct seg){ off, len, hole };
}

static void note_zero(void *ctx, uint64_t off, uint64_t len)
{
    struct segs *s = ctx;
    if (len < MIN_HOLE)
        return;              /* stays inside the data around it */
    push_seg(s, s->base, off - s->base, false);
    push_seg(s, off, len, true);
    s->base = off + len;
}

static int segs_finish(struct segs *s, uint64_t end)
{
    push_seg(s, s->base, end - s->base, false);
    return s->err;
}

/* Large reads of a read-only image whose bytes sit as they are in local
 * files (raw, uncompressed qcow2 clusters, flat and sparse vmdk extents) go
 * out with sendfile(2): the kernel hands page-cache pages to the socket, and
 * neither a read into a buffer nor a copy out of it happens here.  A request
 * that touches anything else (a hole, zeros, compressed data, a remote
 * source) takes the ordinary path.  Not for writable images: a cluster named
 * here could be freed and reused by another request before it is sent. */
#define SENDFILE_MIN (64u << 10)   /* below this, pread+writev is as cheap */
#define SENDFILE_RUNS 16

static bool read_by_sendfile(struct conn *c, const struct request *r)
{
    struct bf_image *img = c->exp->img;
    if (r->length < SENDFILE_MIN || bf_is_writable(img))
        return false;
    struct bf_location runs[SENDFILE_RUNS];
    size_t n = 0;
    uint64_t done = 0;
    while (done < r->length) {
        struct bf_location l;
        if (bf_locate(img, r->offset + done, r->length - done, &l) < 0 || l.fd < 0)
            return false;
        if (n > 0 && runs[n - 1].fd == l.fd && runs[n - 1].fd_off + runs[n - 1].len == l.fd_off)
            runs[n - 1].len += l.len;
        else if (n == SENDFILE_RUNS)
            return false;
        else
            runs[n++] = l;
        done += l.len;
    }
    reply_read_from_files(c, r, runs, n);
    return true;
}

static void do_read(struct conn *c, const struct request *r)
{
    struct bf_image *img = c->exp->img;
    size_t len = (size_t)r->length;
    if (read_by_sendfile(c, r))
        return;
    if (!c->structured) {
        uint8_t *buf = malloc(len ? len : 1);
        int e = buf ? bf_pread(img, buf, len, r->offset) : -ENOMEM;
        if (e < 0)
            fail_image(c, r, e);
        else
            reply_simple_data(c, r, buf, len);
        free(buf);
        return;
    }
    if (len == 0) {
        uint8_t h[32];
        struct iovec iov = { h, chunk_header(c, r, h, NBD_REPLY_FLAG_DONE,
                                             NBD_REPLY_TYPE_NONE, 0) };
        reply_chunks(c, r, &iov, 1);
        return;
    }

    /* One read; the library tells which parts it knew to be zero, and those
     * go out as hole chunks (unless the client wants a single chunk). */
    struct segs sg = { .base = r->offset };
    uint8_t *buf = malloc(len);
    int e = buf ? bf_pread_zeros(img, buf, len, r->offset,
                                 (r->flags & NBD_CMD_FLAG_DF) ? NULL : note_zero, &sg)
                : -ENOMEM;
    if (e == 0)
        e = segs_finish(&sg, r->offset + len);
    if (e < 0) {
        fail_image(c, r, e);
        free(sg.v);
        free(buf);
        return;
    }
    struct seg *segs = sg.v;
    size_t n = sg.n;

    /* Two iovecs per data chunk (header+offset, data), one per hole chunk. */
    struct iovec *iov = malloc(2 * n * sizeof *iov);
    uint8_t (*hdrs)[48] = malloc(n * sizeof *hdrs);
    if (!iov || !hdrs) {
        fail(c, r, NBD_ENOMEM, "out of memory");
    } else {
        int niov = 0;
        for (size_t i = 0; i < n; i++) {
            uint16_t fl = i + 1 == n ? NBD_REPLY_FLAG_DONE : 0;
            uint8_t *h = hdrs[i];
            if (segs[i].hole) {
                size_t hl = chunk_header(c, r, h, fl, NBD_REPLY_TYPE_OFFSET_HOLE, 12);
                put64(h + hl, segs[i].off);
                put32(h + hl + 8, (uint32_t)segs[i].len);
                iov[niov++] = (struct iovec){ h, hl + 12 };
            } else {
                size_t hl = chunk_header(c, r, h, fl, NBD_REPLY_TYPE_OFFSET_DATA,
                                         8 + segs[i].len);
                put64(h + hl, segs[i].off);
                iov[niov++] = (struct iovec){ h, hl + 8 };
                iov[niov++] = (struct iovec){ buf + (segs[i].off - r->offset), segs[i].len };
            }
        }
        reply_chunks(c, r, iov, niov);
    }
    free(iov);
    free(hdrs);
    free(segs);
    free(buf);
}

/* --------------------------------------------------------- block status */

struct extent { uint64_t len; uint32_t flags; };

/* Can a run of @len bytes in state @flags join the last descriptor?  (Same
 * state, and the sum still fits @cap.) */
static bool joins(const struct extent *ex, size_t n, uint64_t len, uint32_t flags, uint64_t cap)
{
    return n > 0 && ex[n - 1].flags == flags && ex[n - 1].len + len <= cap;
}

static void push(struct extent *ex, size_t *n, uint64_t len, uint32_t flags, uint64_t cap)
{
    if (joins(ex, *n, len, flags, cap))
        ex[*n - 1].len += len;
    else
        ex[(*n)++] = (struct extent){ len, flags };
}

/* Encode one status chunk for context @id from @ex. */
static int status_chunk(struct conn *c, const struct request *r, uint32_t id,
                        struct extent *ex, size_t n, bool last)
{
    size_t each = c->extended ? 16 : 8, pre = c->extended ? 8 : 4;
    size_t plen = pre + n * each;
    uint8_t *b = malloc(32 + plen);
    if (!b)
        return -ENOMEM;
    size_t hl = chunk_header(c, r, b, last ? NBD_REPLY_FLAG_DONE : 0,
                             c->extended ? NBD_REPLY_TYPE_BLOCK_STATUS_EXT
                                         : NBD_REPLY_TYPE_BLOCK_STATUS, plen);
    uint8_t *p = b + hl;
    put32(p, id);
    if (c->extended)
        put32(p + 4, (uint32_t)n);
    p += pre;
    for (size_t i = 0; i < n; i++, p += each) {
        if (c->extended) {
            put64(p, ex[i].len);
            put32(p + 8, 0);
            put32(p + 12, ex[i].flags);
        } else {
            put32(p, (uint32_t)ex[i].len);
            put32(p + 4, ex[i].flags);
        }
    }
    struct iovec iov = { b, hl + plen };
    int e = reply_chunks(c, r, &iov, 1);
    free(b);
    return e;
}

static void do_block_status(struct conn *c, const struct request *r)
{
    struct bf_image *img = c->exp->img;
    bool one = r->flags & NBD_CMD_FLAG_REQ_ONE;
    size_t max = one ? 1 : MAX_EXTENTS;
    /* Compact replies carry 32-bit lengths: keep each extent below 4 GiB. */
    uint64_t ext_cap = c->extended ? UINT64_MAX : 0xfffff000u;
    struct extent *base = malloc(max * sizeof *base), *depth = malloc(max * sizeof *depth);
    size_t nb = 0, nd = 0;
    int e = base && depth ? 0 : -ENOMEM;
    uint64_t off = r->offset, end = r->offset + r->length;
    while (e == 0 && off < end) {
        struct bf_status st;
        e = bf_block_status(img, off, end - off < ext_cap ? end - off : ext_cap, &st);
        if (e < 0)
            break;
        uint32_t bflags = (st.flags & BF_STATUS_DATA ? 0 : NBD_STATE_HOLE) |
                          (st.flags & BF_STATUS_ZERO ? NBD_STATE_ZERO : 0);
        uint32_t dflags = st.flags & BF_STATUS_ALLOCATED ? st.depth : 0;
        /* Both lists describe the same bytes: stop when either is full. */
        if ((!joins(base, nb, st.len, bflags, ext_cap) && nb == max) ||
            (!joins(depth, nd, st.len, dflags, ext_cap) && nd == max))
            break;
        push(base, &nb, st.len, bflags, ext_cap);
        push(depth, &nd, st.len, dflags, ext_cap);
        off += st.len;
        if (one)
            break;
    }
    if (e < 0) {
        fail_image(c, r, e);
    } else if (c->meta_base && c->meta_depth) {
        if (status_chunk(c, r, NBD_CTX_BASE_ALLOCATION, base, nb, false) == 0)
            status_chunk(c, r, NBD_CTX_ALLOCATION_DEPTH, depth, nd, true);
    } else if (c->meta_base) {
        status_chunk(c, r, NBD_CTX_BASE_ALLOCATION, base, nb, true);
    } else {
        status_chunk(c, r, NBD_CTX_ALLOCATION_DEPTH, depth, nd, true);
    }
    free(base);
    free(depth);
}

/* ----------------------------------------------------------- the rest */

static int fua(struct conn *c, const struct request *r)
{
    if (!(r->flags & NBD_CMD_FLAG_FUA))
        return 0;
    return bf_flush(c->exp->img);
}

void handle_request(struct conn *c, struct request *r)
{
    if (validate(c, r))
        return;
    struct bf_image *img = c->exp->img;
    int e = 0;
    switch (r->type) {
    case NBD_CMD_READ:
        do_read(c, r);
        return;
    case NBD_CMD_BLOCK_STATUS:
        do_block_status(c, r);
        return;
    case NBD_CMD_WRITE:
        e = bf_pwrite(img, r->payload, r->length, r->offset);
        if (e == 0)
            e = fua(c, r);
        break;
    case NBD_CMD_WRITE_ZEROES: {
        unsigned zf = (r->flags & NBD_CMD_FLAG_NO_HOLE ? 0 : BF_ZERO_MAY_UNMAP) |
                      (r->flags & NBD_CMD_FLAG_FAST_ZERO ? BF_ZERO_FAST : 0);
        e = bf_zero(img, r->offset, r->length, zf);
        if (e == 0)
            e = fua(c, r);
        break;
    }
    case NBD_CMD_TRIM:
        e = bf_discard(img, r->offset, r->length);
        if (e == 0)
            e = fua(c, r);
        break;
    case NBD_CMD_FLUSH:
        e = bf_flush(img);
        break;
    case NBD_CMD_CACHE:
        break;          /* advisory; the range was checked; nothing to warm */
    }
    if (e < 0)
        fail_image(c, r, e);
    else
        reply_ok(c, r);
}
