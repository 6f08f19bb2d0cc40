/* transmission.c — the transmission phase of one connection: the connection
 * thread reads requests (and WRITE payloads) and queues them; a pool of
 * worker threads executes them and replies, in whatever order they finish.
 *
 * Thread model: the reader is the only thread reading the socket; workers
 * only write to it, under the send lock (reply.c).  The queue is guarded by
 * qlock.  At most MAX_INFLIGHT requests are queued or executing, so a client
 * that floods us cannot make us buffer without bound.  On NBD_CMD_DISC, EOF
 * or a protocol error the reader stops; queued requests still run and get
 * their replies, then the workers exit.
 */
#include "server.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INFLIGHT 64

static void *worker(void *arg)
{
    struct conn *c = arg;
    for (;;) {
        pthread_mutex_lock(&c->qlock);
        while (!c->qhead && !c->reader_done)
            pthread_cond_wait(&c->qcond, &c->qlock);
        struct request *r = c->qhead;
        if (r) {
            c->qhead = r->next;
            if (!c->qhead)
                c->qtail = NULL;
        }
        pthread_mutex_unlock(&c->qlock);
        if (!r)
            break;
        /* Once a send has failed nobody can get the reply: skip the work
         * (an unanswered request may or may not have been done). */
        if (!atomic_load(&c->dead))
            handle_request(c, r);
        free(r->payload);
        free(r);
        pthread_mutex_lock(&c->qlock);
        c->inflight--;
        pthread_cond_signal(&c->qspace);
        pthread_mutex_unlock(&c->qlock);
    }
    return NULL;
}

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

void nbd_transmission(struct conn *c)
{
    unsigned n = c->srv->opt->threads ? c->srv->opt->threads : 1;
    pthread_t *tids = calloc(n, sizeof *tids);
    unsigned started = 0;
    for (unsigned i = 0; tids && i < n; i++)
        if (pthread_create(&tids[i], NULL, worker, c) == 0)
            started++;

    while (started > 0) {
        pthread_mutex_lock(&c->qlock);
        while (c->inflight >= MAX_INFLIGHT && !atomic_load(&c->dead))
            pthread_cond_wait(&c->qspace, &c->qlock);
        pthread_mutex_unlock(&c->qlock);
        if (atomic_load(&c->dead))
            break;
        struct request *r = calloc(1, sizeof *r);
        if (!r)
            break;
        int rr = read_request(c, r);
        if (rr != RQ_OK) {
            free(r->payload);
            free(r);
            if (rr == RQ_STOP)
                vlog(c->srv, "connection %u: client disconnected", c->id);
            break;
        }
        pthread_mutex_lock(&c->qlock);
        if (c->qtail)
            c->qtail->next = r;
        else
            c->qhead = r;
        c->qtail = r;
        c->inflight++;
        pthread_cond_signal(&c->qcond);
        pthread_mutex_unlock(&c->qlock);
    }

    pthread_mutex_lock(&c->qlock);
    c->reader_done = true;
    pthread_cond_broadcast(&c->qcond);
    pthread_mutex_unlock(&c->qlock);
    for (unsigned i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    free(tids);
}
