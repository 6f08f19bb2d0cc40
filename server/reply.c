/* reply.c — encoding and sending transmission-phase replies in the style the
 * client negotiated: simple (16-byte header), structured chunks (20 bytes)
 * or extended chunks (32 bytes, and never a simple reply).
 *
 * Thread model: called from worker threads; each function sends one whole
 * reply (or a batch of chunks) under the connection's send lock so replies to
 * different requests never interleave mid-message.  A failed send marks the
 * connection dead and shuts the socket so the reader stops too.
 */
#include "server.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/socket.h>

/* Send @iov, then the file ranges @runs, as one message. */
static int send_locked_files(struct conn *c, struct iovec *iov, int niov,
                             const struct bf_location *runs, size_t nruns)
{
    int r = 0;
    pthread_mutex_lock(&c->send_lock);
    if (atomic_load(&c->dead))
        r = -EPIPE;
    while (r == 0 && niov > 0) {
        int n = niov > IOV_MAX ? IOV_MAX : niov;
        r = wire_writev(c->fd, iov, n);
        iov += n;
        niov -= n;
    }
    for (size_t i = 0; r == 0 && i < nruns; i++)
        r = wire_sendfile(c->fd, runs[i].fd, runs[i].fd_off, runs[i].len);
    /* a failure part-way leaves the stream out of step: end the connection */
    if (r < 0 && !atomic_exchange(&c->dead, true))
        shutdown(c->fd, SHUT_RDWR);
    pthread_mutex_unlock(&c->send_lock);
    return r;
}

static int send_locked(struct conn *c, struct iovec *iov, int niov)
{
    return send_locked_files(c, iov, niov, NULL, 0);
}



size_t chunk_header(const struct conn *c, const struct request *r, uint8_t *hdr,
                    uint16_t flags, uint16_t type, uint64_t payload_len)
{
    if (c->extended) {
        put32(hdr, NBD_EXTENDED_REPLY_MAGIC);
        put16(hdr + 4, flags);
        put16(hdr + 6, type);
        put64(hdr + 8, r->cookie);
        put64(hdr + 16, r->offset);
        put64(hdr + 24, payload_len);
        return 32;
    }
    put32(hdr, NBD_STRUCTURED_REPLY_MAGIC);
    put16(hdr + 4, flags);
    put16(hdr + 6, type);
    put64(hdr + 8, r->cookie);
    put32(hdr + 16, (uint32_t)payload_len);
    return 20;
}

static size_t simple_header(const struct request *r, uint8_t *hdr, uint32_t err)
{
    put32(hdr, NBD_SIMPLE_REPLY_MAGIC);
    put32(hdr + 4, err);
    put64(hdr + 8, r->cookie);
    return 16;
}

int reply_ok(struct conn *c, const struct request *r)
{
    uint8_t h[32];
    struct iovec iov = { h, 0 };
    if (c->extended)
        iov.iov_len = chunk_header(c, r, h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, 0);
    else
        iov.iov_len = simple_header(r, h, 0);
    return send_locked(c, &iov, 1);
}

int reply_error(struct conn *c, const struct request *r, uint32_t nbd_err, const char *msg)
{
    uint8_t h[32 + 6];
    if (!c->structured) {
        struct iovec iov = { h, simple_header(r, h, nbd_err) };
        return send_locked(c, &iov, 1);
    }
    size_t ml = msg ? strlen(msg) : 0;
    if (ml > 4096)
        ml = 4096;
    size_t hl = chunk_header(c, r, h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, 6 + ml);
    put32(h + hl, nbd_err);
    put16(h + hl + 4, (uint16_t)ml);
    struct iovec iov[2] = { { h, hl + 6 }, { (void *)msg, ml } };
    return send_locked(c, iov, ml ? 2 : 1);
}

int reply_simple_data(struct conn *c, const struct request *r, const void *data, size_t len)
{
    uint8_t h[16];
    struct iovec iov[2] = { { h, simple_header(r, h, 0) }, { (void *)data, len } };
    return send_locked(c, iov, len ? 2 : 1);
}

int reply_chunks(struct conn *c, const struct request *r, struct iovec *iov, int niov)
{
    (void)r;
    return send_locked(c, iov, niov);
}

int reply_read_from_files(struct conn *c, const struct request *r,
                          const struct bf_location *runs, size_t n)
{
    uint8_t h[40];
    struct iovec iov = { h, 0 };
    if (c->structured) {
        iov.iov_len = chunk_header(c, r, h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA,
                                   8 + r->length);
        put64(h + iov.iov_len, r->offset);
        iov.iov_len += 8;
    } else {
        iov.iov_len = simple_header(r, h, 0);
    }
    return send_locked_files(c, &iov, 1, runs, n);
}
