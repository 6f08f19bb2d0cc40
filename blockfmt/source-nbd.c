/* source-nbd.c — byte sources on a remote NBD export, through libnbd:
 * nbd://host[:port]/export, nbd+unix:///export?socket=PATH and their TLS
 * forms nbds:// and nbds+unix:// (as libnbd parses the NBD URI standard;
 * TLS works as far as libnbd's defaults allow: certificates in the default
 * places).  Other transports (vsock) and other schemes are refused.
 *
 * Requests: every operation is split into NBD commands the server accepts
 * (its maximum block size, reads in pieces of NBD_READ_CHUNK so that one
 * large read has several commands in flight) and issued with libnbd's aio
 * calls; the calling thread then waits for its commands.  There is no
 * thread of our own (so a process may fork after opening, as vdisk-nbd -c
 * and --fork do): the waiting threads take turns at driving the connection.
 * One of them at a time ("the driver") polls the socket, without holding
 * any lock, and lets libnbd read replies and write queued requests; replies
 * complete commands of any thread, whose completion callbacks wake their
 * owners.  A thread that submits a command while another drives kicks the
 * driver (an eventfd) so it polls for what libnbd now wants.  A synchronous
 * nbd_pread would instead hold the handle's lock for a whole round trip,
 * serialising all threads.
 *
 * Holes: when the server offers "base:allocation", reads skip ranges the
 * server reports as reading zero (no data is transferred for them) and the
 * `extent` op answers block status.  For read-only sources the answers are
 * cached (NBD_BS_WINDOWS windows of up to NBD_BS_WINDOW bytes), on the
 * assumption that nobody else writes the export while we have it open (the
 * format drivers' metadata caches assume the same).  Writable sources ask
 * every time and read every byte.
 *
 * Failures: libnbd 1.14 has no per-command timeout, so each wait is
 * bounded here: when a thread has waited NBD_TIMEOUT_DEFAULT seconds (or
 * $VDISK_NBD_TIMEOUT) without any command of the connection completing, or
 * the server drops the connection, or breaks the protocol, the connection
 * is killed: the socket is shut down, libnbd fails every command in flight
 * (their buffers are only released then), and this and every later call
 * return -EIO at once, never hang.  Errors the server reports for one
 * command (out of range, no space, ...) are returned as their errno and
 * leave the connection up.  Connecting (TCP connect, TLS and handshake) is
 * bounded by the same timeout.
 *
 * Thread model: all ops may be called from any number of threads at once.
 * Locks: s->lock (driver role, command counts, the dead flag) and s->wlock
 * (block status windows) are never held while calling into libnbd, whose
 * completion callbacks take s->lock (never the other way round).
 * s->rmw_lock serialises unaligned writes (an export with a minimum block
 * size above 1: read-modify-write); libnbd's callbacks never take it.
 */
#include "internal.h"

#include <fcntl.h>
#include <inttypes.h>
#include <libnbd.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NBD_TIMEOUT_DEFAULT 30          /* seconds one wait may take */
#define NBD_TIMEOUT_ENV "VDISK_NBD_TIMEOUT"
#define NBD_READ_CHUNK (512u << 10)     /* bytes per read command */
#define NBD_MAX_REQUEST (32u << 20)     /* when the server names no maximum */
#define NBD_LIBNBD_MAX (64u << 20)      /* libnbd's own cap on one read or write */
#define NBD_ZERO_CHUNK (1u << 30)       /* bytes per write-zeroes command */
#define NBD_BS_WINDOW (64ull << 20)     /* block status asked for at a time */
#define NBD_BS_WINDOWS 32               /* answers kept (read-only sources) */
#define NBD_POLL_SLICE_MS 1000          /* the driver re-checks deadlines this often */

/* One run of a block status answer: up to @end (absolute), reads as zero? */
struct bs_run {
    uint64_t end;
    bool zero;
};

struct bs_window {
    uint64_t start, end;     /* covered: [start, end); empty when end == 0 */
    struct bs_run *runs;     /* ascending, the last one ends at @end */
    size_t n;
    uint64_t used;           /* LRU clock */
};

struct nsrc {
    struct bf_source base;   /* first: bf_source_close frees the whole */
    struct nbd_handle *h;
    int sock;                /* our duplicate of libnbd's socket: poll, shutdown */
    int wake;                /* eventfd: kicks the driver out of poll() */
    uint64_t size;
    uint64_t min_block;      /* requests are aligned to this (power of 2) */
    uint64_t max_req;        /* largest read or write command */
    uint64_t chunk;          /* read command size */
    bool can_bs, can_flush, can_zero;
    int timeout_ms;

    pthread_mutex_t lock;    /* guards: driving, dead, op counters */
    pthread_cond_t cond;     /* a command completed, or the driver left */
    bool driving;
    bool dead;
    int64_t progress_ms;     /* when a command last completed (now_ms) */

    pthread_mutex_t wlock;   /* guards the block status windows */
    struct bs_window win[NBD_BS_WINDOWS];
    uint64_t clock;

    pthread_mutex_t rmw_lock;  /* unaligned writes (read-modify-write) */
};

/* Commands issued for one call: the caller waits until none is pending. */
struct op {
    struct nsrc *s;
    int pending;             /* submitted, not completed (s->lock; may dip below 0) */
    int err;                 /* first errno (s->lock) */
};

/* --------------------------------------------------------------- names */

static const char *const nbd_schemes[] = { "nbd://", "nbds://", "nbd+unix://", "nbds+unix://" };

bool bf_is_nbd_uri(const char *name)
{
    for (size_t i = 0; i < sizeof nbd_schemes / sizeof nbd_schemes[0]; i++)
        if (strncmp(name, nbd_schemes[i], strlen(nbd_schemes[i])) == 0)
            return true;
    return false;
}

/* @uri for messages: a password in the user part and the values of query
 * parameters that look secret are left out.  Caller frees; NULL on ENOMEM. */
static char *uri_for_messages(const char *uri)
{
    size_t n = strlen(uri);
    char *out = malloc(2 * n + 4);      /* "***" may be longer than what it hides */
    if (!out)
        return NULL;
    const char *auth = strstr(uri, "://");
    auth = auth ? auth + 3 : uri;
    size_t alen = strcspn(auth, "/?#");
    const char *at = memrchr(auth, '@', alen);
    const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    char *o = out;
    if (colon) {                         /* scheme://user:secret@host -> scheme://user@host */
        memcpy(o, uri, (size_t)(colon - uri));
        o += colon - uri;
        uri = at;
    }
    const char *q = strchr(uri, '?');
    size_t head = q ? (size_t)(q - uri) : strlen(uri);
    memcpy(o, uri, head);
    o += head;
    *o = 0;
    if (!q)
        return out;
    /* query: name=value pairs separated by & */
    for (const char *p = q; *p && *p != '#';) {
        char sep = *p++;
        size_t plen = strcspn(p, "&#");
        const char *eq = memchr(p, '=', plen);
        size_t klen = eq ? (size_t)(eq - p) : plen;
        bool secret = (memmem(p, klen, "password", 8) || memmem(p, klen, "secret", 6)) && eq;
        *o++ = sep;
        memcpy(o, p, secret ? klen + 1 : plen);
        o += secret ? klen + 1 : plen;
        if (secret) {
            memcpy(o, "***", 3);
            o += 3;
        }
        p += plen;
        if (*p == '#')
            break;
    }
    *o = 0;
    return out;
}

char *bf_display_name(const char *name)
{
    return bf_is_nbd_uri(name) ? uri_for_messages(name) : strdup(name);
}

/* ------------------------------------------------------------ waiting */

static struct timespec deadline_in(int ms)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000L;
}

static long ms_until(const struct timespec *d)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long)(d->tv_sec - t.tv_sec) * 1000 + (d->tv_nsec - t.tv_nsec) / 1000000L;
}

/* Kill the connection (s->lock held): libnbd sees the end of the socket at
 * its next read or write and fails every command in flight. */
static void kill_locked(struct nsrc *s)
{
    if (!s->dead) {
        s->dead = true;
        shutdown(s->sock, SHUT_RDWR);
    }
}

static int op_done(void *user_data, int *error)
{
    struct op *op = user_data;
    struct nsrc *s = op->s;
    pthread_mutex_lock(&s->lock);
    if (*error && !op->err)
        op->err = *error;
    op->pending--;
    s->progress_ms = now_ms();
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    return 1;                           /* retire the command */
}

static nbd_completion_callback completion(struct op *op)
{
    return (nbd_completion_callback){ .callback = op_done, .user_data = op };
}

/* Account for a command just handed to libnbd (@cookie, -1 if refused). */
static void submitted(struct op *op, int64_t cookie)
{
    struct nsrc *s = op->s;
    int e = 0;
    if (cookie < 0) {
        e = nbd_get_errno();
        if (e == 0)
            e = EIO;
    }
    pthread_mutex_lock(&s->lock);
    if (cookie < 0) {
        if (!op->err)
            op->err = e;
    } else {
        op->pending++;
    }
    bool kick = s->driving;
    pthread_mutex_unlock(&s->lock);
    if (kick)
        (void)!eventfd_write(s->wake, 1);
}

/* May @op submit more?  Not after an error, nor once the connection is
 * dead (then @op fails too: what it did not submit was not done). */
static bool op_ok(struct op *op)
{
    pthread_mutex_lock(&op->s->lock);
    if (op->s->dead && !op->err)
        op->err = ENOTCONN;
    bool ok = !op->err;
    pthread_mutex_unlock(&op->s->lock);
    return ok;
}

/* One round as the driver: wait for what libnbd wants from the socket (or
 * a kick, or @ms), then let it read or write. */
static void drive(struct nsrc *s, int ms)
{
    unsigned dir = nbd_aio_get_direction(s->h);
    struct pollfd p[2] = { { .fd = s->sock }, { .fd = s->wake, .events = POLLIN } };
    if (dir & LIBNBD_AIO_DIRECTION_READ)
        p[0].events |= POLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE)
        p[0].events |= POLLOUT;
    if (poll(p, 2, ms) <= 0)
        return;
    if (p[1].revents & POLLIN) {
        eventfd_t v;
        (void)!eventfd_read(s->wake, &v);
    }
    short re = p[0].revents;
    if ((dir & LIBNBD_AIO_DIRECTION_READ) && (re & (POLLIN | POLLHUP | POLLERR)))
        nbd_aio_notify_read(s->h);
    else if ((dir & LIBNBD_AIO_DIRECTION_WRITE) && (re & (POLLOUT | POLLHUP | POLLERR)))
        nbd_aio_notify_write(s->h);
    else if (dir == 0 && (re & (POLLHUP | POLLERR)))
        usleep(1000);                   /* dead: the commands are being failed */
}

/* Wait until every command of @op has completed: 0 or -errno.  The
 * connection is given up when none of its commands (ours or another
 * thread's) completed for the timeout while we waited: a slow but live
 * server with a long queue is not cut off, a silent one is. */
static int wait_op(struct op *op)
{
    struct nsrc *s = op->s;
    int64_t start = now_ms();
    pthread_mutex_lock(&s->lock);
    while (op->pending > 0) {
        int64_t since = s->progress_ms > start ? s->progress_ms : start;
        int64_t left = since + s->timeout_ms - now_ms();
        if (left <= 0) {
            /* Give up on the connection.  The commands' buffers stay ours
             * until libnbd has failed them, which the shut down socket
             * makes it do at its next read. */
            if (!s->dead && !op->err)
                op->err = ETIMEDOUT;
            kill_locked(s);
            left = NBD_POLL_SLICE_MS;
        }
        if (!s->driving) {
            s->driving = true;
            pthread_mutex_unlock(&s->lock);
            drive(s, (int)bf_min64((uint64_t)left, NBD_POLL_SLICE_MS));
            pthread_mutex_lock(&s->lock);
            s->driving = false;
            pthread_cond_broadcast(&s->cond);   /* another waiter may take over */
        } else {
            struct timespec t = deadline_in((int)bf_min64((uint64_t)left, NBD_POLL_SLICE_MS));
            pthread_cond_timedwait(&s->cond, &s->lock, &t);
        }
    }
    int err = op->err;
    pthread_mutex_unlock(&s->lock);
    if (!err)
        return 0;
    /* A dead connection is EIO for every caller; anything else is the
     * server's answer to this command. */
    if (nbd_aio_is_dead(s->h) > 0 || nbd_aio_is_closed(s->h) > 0 || err == ETIMEDOUT ||
        err == ENOTCONN || err == ESHUTDOWN || err == EPIPE || err == ECONNRESET) {
        pthread_mutex_lock(&s->lock);
        kill_locked(s);
        pthread_mutex_unlock(&s->lock);
        return -EIO;
    }
    return -err;
}

static bool is_dead(struct nsrc *s)
{
    pthread_mutex_lock(&s->lock);
    bool d = s->dead;
    pthread_mutex_unlock(&s->lock);
    return d;
}

/* ------------------------------------------------------- block status */

struct bs_answer {
    uint64_t start, limit;   /* asked from @start; runs are clipped to @limit */
    struct bs_run *runs;
    size_t n, cap;
    bool seen, nomem;
};

/* libnbd's extent callback (runs on the driving thread, libnbd locked). */
static int bs_extent(void *user_data, const char *context, uint64_t offset,
                     uint32_t *entries, size_t nr, int *error)
{
    (void)error;
    struct bs_answer *a = user_data;
    if (strcmp(context, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0 || a->seen || offset != a->start)
        return 0;
    a->seen = true;
    uint64_t pos = a->start;
    for (size_t i = 0; i + 1 < nr && pos < a->limit; i += 2) {
        if (entries[i] == 0)
            break;
        uint64_t end = bf_min64(pos + entries[i], a->limit);
        bool zero = (entries[i + 1] & LIBNBD_STATE_ZERO) != 0;
        if (a->n > 0 && a->runs[a->n - 1].zero == zero) {
            a->runs[a->n - 1].end = end;
        } else {
            if (a->n == a->cap) {
                size_t cap = a->cap ? 2 * a->cap : 16;
                struct bs_run *r = realloc(a->runs, cap * sizeof *r);
                if (!r) {
                    a->nomem = true;
                    break;
                }
                a->runs = r;
                a->cap = cap;
            }
            a->runs[a->n++] = (struct bs_run){ end, zero };
        }
        pos = end;
    }
    return 0;
}

/* Ask the server about [@off, ...) (at least @want bytes when it will say
 * so much); on success @a holds runs from an aligned offset <= @off. */
static int bs_query(struct nsrc *s, uint64_t off, uint64_t want, struct bs_answer *a)
{
    uint64_t m = s->min_block;
    uint64_t start = off & ~(m - 1);
    uint64_t avail = (s->size & ~(m - 1)) > start ? (s->size & ~(m - 1)) - start : 0;
    uint64_t count = bf_min64(bf_min64(want, avail), (uint64_t)UINT32_MAX & ~(m - 1));
    memset(a, 0, sizeof *a);
    a->start = start;
    a->limit = start + count;
    if (count == 0 || off >= start + count)
        return -ENOTSUP;
    struct op op = { .s = s };
    int64_t c = nbd_aio_block_status(s->h, count, start,
                                     (nbd_extent_callback){ .callback = bs_extent, .user_data = a },
                                     completion(&op), 0);
    submitted(&op, c);
    int r = wait_op(&op);
    if (r == 0 && (a->nomem || a->n == 0 || a->runs[a->n - 1].end <= off))
        r = a->nomem ? -ENOMEM : -EPROTO;
    if (r < 0) {
        free(a->runs);
        a->runs = NULL;
        a->n = 0;
    }
    return r;
}

/* The run at @pos in @runs[0..n) (ending after @pos): zero?, length. */
static void run_at(const struct bs_run *runs, size_t n, uint64_t pos, bool *zero, uint64_t *len)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {               /* first run that ends after pos */
        size_t mid = lo + (hi - lo) / 2;
        if (runs[mid].end <= pos)
            lo = mid + 1;
        else
            hi = mid;
    }
    *zero = runs[lo].zero;
    *len = runs[lo].end - pos;
}

static bool cache_lookup(struct nsrc *s, uint64_t pos, bool *zero, uint64_t *len)
{
    bool found = false;
    pthread_mutex_lock(&s->wlock);
    for (size_t i = 0; i < NBD_BS_WINDOWS; i++) {
        struct bs_window *w = &s->win[i];
        if (w->n && pos >= w->start && pos < w->end) {
            run_at(w->runs, w->n, pos, zero, len);
            w->used = ++s->clock;
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&s->wlock);
    return found;
}

/* Keep @a's runs (taken over) in place of the least recently used window. */
static void cache_insert(struct nsrc *s, struct bs_answer *a)
{
    pthread_mutex_lock(&s->wlock);
    struct bs_window *lru = &s->win[0];
    for (size_t i = 1; i < NBD_BS_WINDOWS; i++)
        if (s->win[i].used < lru->used)
            lru = &s->win[i];
    free(lru->runs);
    *lru = (struct bs_window){ .start = a->start, .end = a->runs[a->n - 1].end,
                               .runs = a->runs, .n = a->n, .used = ++s->clock };
    pthread_mutex_unlock(&s->wlock);
    a->runs = NULL;
}

/* Does [@pos, @pos + @max) start with bytes that read as zero, and for how
 * long (*len <= @max) is the answer the same?  0, or -errno when the
 * connection failed; a server that cannot say gives "data". */
static int allocation(struct nsrc *s, uint64_t pos, uint64_t max, bool *zero, uint64_t *len)
{
    *zero = false;
    *len = max;
    if (!s->can_bs)
        return 0;
    bool z;
    uint64_t l;
    bool cached = !s->base.writable && cache_lookup(s, pos, &z, &l);
    if (!cached) {
        /* read-only: ask for a whole window, later reads nearby are free */
        uint64_t want = s->base.writable || max > NBD_BS_WINDOW ? max : NBD_BS_WINDOW;
        struct bs_answer a;
        int r = bs_query(s, pos, want, &a);
        if (r == -EIO)
            return r;
        if (r < 0)
            return 0;                   /* no answer: data */
        run_at(a.runs, a.n, pos, &z, &l);
        if (s->base.writable)
            free(a.runs);
        else
            cache_insert(s, &a);
    }
    *zero = z;
    *len = bf_min64(l, max);
    return 0;
}

/* ---------------------------------------------------------------- reads */

/* Issue reads for [off, off+len) (aligned) into @buf, in chunks. */
static void submit_reads(struct op *op, uint8_t *buf, uint64_t len, uint64_t off)
{
    struct nsrc *s = op->s;
    while (len > 0 && op_ok(op)) {
        uint64_t n = bf_min64(len, s->chunk);
        int64_t c = nbd_aio_pread(s->h, buf, n, off, completion(op), 0);
        submitted(op, c);
        buf += n;
        off += n;
        len -= n;
    }
}

/* Read aligned [off, off+len), inside the export, skipping what reads as
 * zero when the answers are cheap. */
static int read_aligned(struct nsrc *s, uint8_t *buf, uint64_t len, uint64_t off)
{
    uint64_t m = s->min_block;
    struct op op = { .s = s };
    uint64_t pos = off, end = off + len;
    int r = 0;
    while (pos < end && op_ok(&op)) {
        bool zero = false;
        uint64_t run = end - pos;
        if (!s->base.writable && (r = allocation(s, pos, end - pos, &zero, &run)) < 0)
            break;
        /* keep commands aligned even if the server's runs are not */
        if (zero)
            run &= ~(m - 1);
        else
            run = bf_min64((run + m - 1) & ~(m - 1), end - pos);
        if (run == 0) {
            zero = false;
            run = bf_min64(m, end - pos);
        }
        if (zero)
            memset(buf + (pos - off), 0, run);
        else
            submit_reads(&op, buf + (pos - off), run, pos);
        pos += run;
    }
    int w = wait_op(&op);
    return r < 0 ? r : w;
}

static int nbd_src_pread(struct bf_source *src, void *buf, size_t len, uint64_t off)
{
    struct nsrc *s = (struct nsrc *)src;
    uint8_t *p = buf;
    if (off >= s->size) {               /* past the end reads as zero, as for files */
        memset(p, 0, len);
        return 0;
    }
    if (len > s->size - off) {
        memset(p + (s->size - off), 0, len - (s->size - off));
        len = (size_t)(s->size - off);
    }
    if (len == 0)
        return 0;
    if (is_dead(s))
        return -EIO;
    uint64_t m = s->min_block;
    if (((off | len) & (m - 1)) == 0)
        return read_aligned(s, p, len, off);

    /* Unaligned: read the aligned blocks around it.  A tail past the last
     * whole block of an unaligned export cannot be read: zero. */
    uint64_t a = off & ~(m - 1);
    uint64_t b = (off + len + m - 1) & ~(m - 1);
    uint64_t readable = s->size & ~(m - 1);
    uint8_t *tmp = calloc(1, b - a);
    if (!tmp)
        return -ENOMEM;
    int r = 0;
    if (readable > a)
        r = read_aligned(s, tmp, bf_min64(b, readable) - a, a);
    if (r == 0)
        memcpy(p, tmp + (off - a), len);
    free(tmp);
    return r;
}

/* --------------------------------------------------------------- writes */

static int write_aligned(struct nsrc *s, const uint8_t *buf, uint64_t len, uint64_t off)
{
    struct op op = { .s = s };
    while (len > 0 && op_ok(&op)) {
        uint64_t n = bf_min64(len, s->max_req);
        int64_t c = nbd_aio_pwrite(s->h, buf, n, off, completion(&op), 0);
        submitted(&op, c);
        buf += n;
        off += n;
        len -= n;
    }
    return wait_op(&op);
}

static int nbd_src_pwrite(struct bf_source *src, const void *buf, size_t len, uint64_t off)
{
    struct nsrc *s = (struct nsrc *)src;
    if (!s->base.writable)
        return -EROFS;
    if (!bf_range_within(off, len, s->size))
        return -ENOSPC;                 /* an export cannot grow */
    if (len == 0)
        return 0;
    if (is_dead(s))
        return -EIO;
    uint64_t m = s->min_block;
    if (((off | len) & (m - 1)) == 0)
        return write_aligned(s, buf, len, off);
    /* Unaligned: read-modify-write of the blocks around it, one at a time
     * so that two of them never write back each other's old bytes. */
    uint64_t a = off & ~(m - 1);
    uint64_t b = (off + len + m - 1) & ~(m - 1);
    if (b > (s->size & ~(m - 1)))
        return -EINVAL;                 /* the tail of an unaligned export */
    uint8_t *tmp = malloc(b - a);
    if (!tmp)
        return -ENOMEM;
    pthread_mutex_lock(&s->rmw_lock);
    int r = read_aligned(s, tmp, b - a, a);
    if (r == 0) {
        memcpy(tmp + (off - a), buf, len);
        r = write_aligned(s, tmp, b - a, a);
    }
    pthread_mutex_unlock(&s->rmw_lock);
    free(tmp);
    return r;
}

static int nbd_src_flush(struct bf_source *src)
{
    struct nsrc *s = (struct nsrc *)src;
    if (!s->base.writable || !s->can_flush)
        return 0;
    if (is_dead(s))
        return -EIO;
    struct op op = { .s = s };
    submitted(&op, nbd_aio_flush(s->h, completion(&op), 0));
    return wait_op(&op);
}

/* Make a range read as zero (NBD_CMD_WRITE_ZEROES), punching holes unless
 * @keep_allocated.  -ENOTSUP lets the caller write zeroes instead. */
static int nbd_src_punch(struct bf_source *src, uint64_t off, uint64_t len, bool keep_allocated)
{
    struct nsrc *s = (struct nsrc *)src;
    if (!s->base.writable)
        return -EROFS;
    if (!s->can_zero || ((off | len) & (s->min_block - 1)))
        return -ENOTSUP;
    if (!bf_range_within(off, len, s->size))
        return -ENOSPC;
    if (is_dead(s))
        return -EIO;
    struct op op = { .s = s };
    uint32_t flags = keep_allocated ? LIBNBD_CMD_FLAG_NO_HOLE : 0;
    while (len > 0 && op_ok(&op)) {
        uint64_t n = bf_min64(len, NBD_ZERO_CHUNK);
        submitted(&op, nbd_aio_zero(s->h, n, off, completion(&op), flags));
        off += n;
        len -= n;
    }
    return wait_op(&op);
}

static int nbd_src_size(struct bf_source *src, uint64_t *size)
{
    *size = ((struct nsrc *)src)->size;
    return 0;
}

static int nbd_src_extent(struct bf_source *src, uint64_t off, uint64_t len, bool *hole,
                          uint64_t *run)
{
    struct nsrc *s = (struct nsrc *)src;
    if (off >= s->size) {
        *hole = true;
        *run = len;
        return 0;
    }
    if (is_dead(s))
        return -EIO;
    uint64_t l;
    int r = allocation(s, off, bf_min64(len, s->size - off), hole, &l);
    if (r < 0)
        return r;
    *run = l ? l : len;
    return 0;
}

static void nbd_src_close(struct bf_source *src)
{
    struct nsrc *s = (struct nsrc *)src;
    /* No NBD_CMD_DISC: libnbd says closing has the same effect for the
     * server, and after a fork (vdisk-nbd -c) the other process may still
     * be using the connection. */
    nbd_close(s->h);
    if (s->sock >= 0)
        close(s->sock);
    if (s->wake >= 0)
        close(s->wake);
    for (size_t i = 0; i < NBD_BS_WINDOWS; i++)
        free(s->win[i].runs);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->wlock);
    pthread_mutex_destroy(&s->rmw_lock);
}

static const struct bf_source_ops nbd_ops = {
    .pread = nbd_src_pread,
    .pwrite = nbd_src_pwrite,
    .flush = nbd_src_flush,
    .size = nbd_src_size,
    .extent = nbd_src_extent,
    .punch = nbd_src_punch,
    .close = nbd_src_close,
};

/* ----------------------------------------------------------------- open */

static int timeout_ms(void)
{
    const char *e = getenv(NBD_TIMEOUT_ENV);
    if (e && *e) {
        char *end;
        unsigned long v = strtoul(e, &end, 10);
        if (!*end && v > 0 && v <= 86400)
            return (int)v * 1000;
    }
    return NBD_TIMEOUT_DEFAULT * 1000;
}

/* libnbd's message for the last failure on this thread, shortened: its
 * messages start with the name of the call ("nbd_connect_uri: "). */
static const char *nbd_msg(void)
{
    const char *m = nbd_get_error();
    if (!m)
        return "unknown error";
    if (strncmp(m, "nbd_", 4) == 0) {
        const char *c = strstr(m, ": ");
        if (c)
            m = c + 2;
    }
    return m;
}

static int nbd_errno_or(int dflt)
{
    int e = nbd_get_errno();
    return e > 0 ? e : dflt;
}

/* Connect @h to @uri within @ms. */
static int connect_uri(struct nbd_handle *h, const char *uri, int ms, const char *name,
                       char *err, size_t errlen)
{
    if (nbd_aio_connect_uri(h, uri) < 0) {
        int e = nbd_errno_or(EINVAL);
        const char *m = nbd_msg();
        /* libnbd says "connect: ..." when the socket cannot be reached */
        if (strncmp(m, "connect: ", 9) == 0)
            snprintf(err, errlen, "%s: cannot connect to the NBD server: %s", name, m + 9);
        else
            snprintf(err, errlen, "%s: %s", name, m);
        return -e;
    }
    struct timespec deadline = deadline_in(ms);
    while (nbd_aio_is_connecting(h) > 0) {
        long left = ms_until(&deadline);
        if (left <= 0) {
            snprintf(err, errlen, "%s: the NBD server did not complete the handshake within "
                     "%d seconds", name, ms / 1000);
            return -ETIMEDOUT;
        }
        /* single-threaded here: libnbd's own poll loop is fine */
        if (nbd_poll(h, (int)bf_min64((uint64_t)left, NBD_POLL_SLICE_MS)) < 0) {
            int e = nbd_errno_or(EIO);
            snprintf(err, errlen, "%s: cannot connect to the NBD server: %s", name, nbd_msg());
            return -e;
        }
    }
    if (nbd_aio_is_ready(h) <= 0) {
        int e = nbd_errno_or(EIO);
        snprintf(err, errlen, "%s: cannot connect to the NBD server: %s", name, nbd_msg());
        return -e;
    }
    return 0;
}

/* A power of two in [1, 64 KiB], else 1. */
static uint64_t sane_min_block(int64_t v)
{
    if (v <= 1 || v > 65536 || (v & (v - 1)))
        return 1;
    return (uint64_t)v;
}

int bf_source_open_nbd(const char *uri, bool writable, struct bf_source **out,
                       char *err, size_t errlen)
{
    char *name = uri_for_messages(uri);
    if (!name) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    struct nsrc *s = calloc(1, sizeof *s);
    struct nbd_handle *h = nbd_create();
    int r;
    if (!s || !h) {
        r = s ? -nbd_errno_or(ENOMEM) : -ENOMEM;
        snprintf(err, errlen, "%s: %s", name, s ? nbd_msg() : "out of memory");
        goto fail;
    }
    s->sock = s->wake = -1;
    if (nbd_set_uri_allow_transports(h, LIBNBD_ALLOW_TRANSPORT_TCP |
                                        LIBNBD_ALLOW_TRANSPORT_UNIX) < 0 ||
        nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) < 0) {
        r = -nbd_errno_or(EINVAL);
        snprintf(err, errlen, "%s: %s", name, nbd_msg());
        goto fail;
    }
    s->timeout_ms = timeout_ms();
    if ((r = connect_uri(h, uri, s->timeout_ms, name, err, errlen)) < 0)
        goto fail;

    int64_t size = nbd_get_size(h);
    if (size < 0) {
        r = -nbd_errno_or(EIO);
        snprintf(err, errlen, "%s: cannot get the export's size: %s", name, nbd_msg());
        goto fail;
    }
    if (writable && nbd_is_read_only(h) != 0) {
        r = -EROFS;
        snprintf(err, errlen, "%s: the NBD export is read-only", name);
        goto fail;
    }
    s->size = (uint64_t)size;
    s->min_block = sane_min_block(nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM));
    int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
    s->max_req = max > 0 ? (uint64_t)max : NBD_MAX_REQUEST;
    s->max_req = bf_min64(s->max_req, NBD_LIBNBD_MAX) & ~(s->min_block - 1);
    if (s->max_req < s->min_block)
        s->max_req = s->min_block;
    s->chunk = bf_min64(s->max_req, NBD_READ_CHUNK) & ~(s->min_block - 1);
    if (s->chunk < s->min_block)
        s->chunk = s->min_block;
    s->can_bs = nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) > 0;
    s->can_flush = nbd_can_flush(h) > 0;
    s->can_zero = nbd_can_zero(h) > 0;

    int fd = nbd_aio_get_fd(h);
    s->sock = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1;
    s->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (s->sock < 0 || s->wake < 0) {
        r = -errno;
        snprintf(err, errlen, "%s: %s", name, strerror(errno));
        goto fail;
    }

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->wlock, NULL);
    pthread_mutex_init(&s->rmw_lock, NULL);
    pthread_mutex_init(&s->base.ucache_lock, NULL);
    s->h = h;
    s->base.ops = &nbd_ops;
    s->base.name = name;
    s->base.fd = -1;
    s->base.writable = writable;
    s->base.remote = true;
    *out = &s->base;
    return 0;

fail:
    if (h)
        nbd_close(h);
    if (s) {
        if (s->sock >= 0)
            close(s->sock);
        if (s->wake >= 0)
            close(s->wake);
    }
    free(s);
    free(name);
    return r < 0 ? r : -EIO;
}

int bf_source_open(const char *name, bool writable, struct bf_source **out,
                   char *err, size_t errlen)
{
    if (bf_is_nbd_uri(name))
        return bf_source_open_nbd(name, writable, out, err, errlen);
    return bf_source_open_file(name, writable, out, err, errlen);
}
