/* transmission.c — the transmission phase of one connection: a pool of
 * workers that take turns reading a request (and its WRITE payload) from the
 * socket and each execute the request it read, replying in whatever order
 * they finish (the leader/follower pattern: no queue, no hand-off).
 *
 * Thread model: read_lock lets one worker at a time read the socket;
 * replies are written under the send lock (reply.c).  At most one request
 * per worker is in memory, so a client that floods us cannot make us buffer
 * without bound.  On NBD_CMD_DISC, EOF or a protocol error no more requests
 * are read; those being executed still get their replies, then the workers
 * exit.
 */
#include "server.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum { RQ_OK = 0, RQ_STOP = 1, RQ_DROP = -1 };

/* Read one request (and its payload).  RQ_STOP on DISC or a clean EOF. */
static int read_request(struct conn *c, struct request *r)
{
    uint8_t h[32];
    size_t hl = c->extended ? 32 : 28;
    int e = wire_read(c->fd, h, hl);
    if (e < 0)
        return e == -EPIPE ? RQ_STOP : RQ_DROP;
    uint32_t magic = get32(h);
    if (magic != (c->extended ? NBD_EXTENDED_REQUEST_MAGIC : NBD_REQUEST_MAGIC)) {
        vlog(c->srv, "connection %u: bad request magic %#x; closing", c->id, magic);
        return RQ_DROP;
    }
    r->flags = get16(h + 4);
    r->type = get16(h + 6);
    r->cookie = get64(h + 8);
    r->offset = get64(h + 16);
    r->length = c->extended ? get64(h + 24) : get32(h + 24);
    if (r->type == NBD_CMD_DISC)
        return RQ_STOP;

    uint64_t plen = 0;
    if (c->extended) {
        if (r->flags & NBD_CMD_FLAG_PAYLOAD_LEN)
            plen = r->length;
        else if (r->type == NBD_CMD_WRITE)
            r->early_error = NBD_EINVAL;   /* a write must carry its payload */
    } else if (r->type == NBD_CMD_WRITE) {
        plen = r->length;
    }
    if (plen == 0)
        return RQ_OK;
    if (plen > NBD_MAX_PAYLOAD) {
        /* Compact headers: the payload must be consumed to stay in step.
         * Extended headers: the spec asks us to hang up instead. */
        if (c->extended) {
            vlog(c->srv, "connection %u: payload of %llu bytes is over the limit; closing",
                 c->id, (unsigned long long)plen);
            return RQ_DROP;
        }
        if (wire_skip(c->fd, plen) < 0)
            return RQ_DROP;
        r->early_error = NBD_EINVAL;
        return RQ_OK;
    }
    r->payload = malloc(plen);
    if (!r->payload)
        return RQ_DROP;
    if (wire_read(c->fd, r->payload, plen) < 0)
        return RQ_DROP;
    if (r->type != NBD_CMD_WRITE)
        r->early_error = NBD_EINVAL;       /* no other command takes a payload */
    return RQ_OK;
}

/* One worker: read a request (the read lock makes the turns), then execute
 * it while another worker reads the next.  No hand-off between threads, so
 * a small request costs no context switch. */
static void *worker(void *arg)
{
    struct conn *c = arg;
    for (;;) {
        pthread_mutex_lock(&c->read_lock);
        if (c->reader_done || atomic_load(&c->dead)) {
            pthread_mutex_unlock(&c->read_lock);
            break;
        }
        struct request *r = calloc(1, sizeof *r);
        int rr = r ? read_request(c, r) : RQ_DROP;
        if (rr != RQ_OK) {
            c->reader_done = true;
            if (rr == RQ_STOP)
                vlog(c->srv, "connection %u: client disconnected", c->id);
        }
        pthread_mutex_unlock(&c->read_lock);
        if (rr == RQ_OK && !atomic_load(&c->dead))
            handle_request(c, r);
        /* Once a send has failed nobody can get a reply: the requests read
         * after that are dropped (an unanswered request may or may not have
         * been done, as the protocol allows). */
        if (r)
            free(r->payload);
        free(r);
        if (rr != RQ_OK)
            break;
    }
    return NULL;
}

void nbd_transmission(struct conn *c)
{
    /* The connection's own thread is one of the workers. */
    unsigned n = c->srv->opt->threads ? c->srv->opt->threads : 1;
    pthread_t *tids = calloc(n, sizeof *tids);
    unsigned started = 0;
    for (unsigned i = 1; tids && i < n; i++)
        if (pthread_create(&tids[i], NULL, worker, c) == 0)
            tids[started++] = tids[i];
    worker(c);
    for (unsigned i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    free(tids);
}
