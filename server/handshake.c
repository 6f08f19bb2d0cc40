/* handshake.c — the fixed-newstyle NBD negotiation (doc/proto.md, "Option
 * haggling"): one handler per NBD_OPT_*.  Unknown options and STARTTLS get an
 * error reply and the negotiation goes on; only a broken framing, an
 * EXPORT_NAME we cannot satisfy, or a client that never finishes ends it.
 *
 * Thread model: runs on the connection's own thread before any worker exists.
 */
#include "server.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

#define HANDSHAKE_SECONDS 10     /* a client must finish negotiating this fast */
#define MAX_OPTIONS 4096         /* options per connection before we give up */

enum { GO_ON = 0, START = 1, END = 2, DROP = -1 };

struct opt {
    uint32_t code;
    uint32_t len;
    const uint8_t *data;
};

/* --------------------------------------------------------------- replies */

static int opt_reply(struct conn *c, uint32_t code, uint32_t type, const void *data, size_t len)
{
    uint8_t h[20];
    put64(h, NBD_REP_MAGIC);
    put32(h + 8, code);
    put32(h + 12, type);
    put32(h + 16, (uint32_t)len);
    struct iovec iov[2] = { { h, sizeof h }, { (void *)data, len } };
    return wire_writev(c->fd, iov, len ? 2 : 1) < 0 ? DROP : GO_ON;
}

static int opt_error(struct conn *c, const struct opt *o, uint32_t type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int opt_error(struct conn *c, const struct opt *o, uint32_t type, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof msg)
        n = sizeof msg - 1;
    vlog(c->srv, "connection %u: option %u refused: %s", c->id, o->code, msg);
    return opt_reply(c, o->code, type, msg, (size_t)n);
}

/* ------------------------------------------------------------ parsing */

/* A length-prefixed string at @p (@left bytes available): sets *s (NUL
 * terminated, caller frees) and advances. */
static bool take_string(const uint8_t **p, uint32_t *left, char **s)
{
    if (*left < 4)
        return false;
    uint32_t n = get32(*p);
    if (n > *left - 4 || n > NBD_MAX_STRING)
        return false;
    if (memchr(*p + 4, 0, n))
        return false;
    *s = malloc(n + 1);
    if (!*s)
        return false;
    memcpy(*s, *p + 4, n);
    (*s)[n] = 0;
    *p += 4 + n;
    *left -= 4 + n;
    return true;
}

uint16_t export_tflags(const struct conn *c, const struct export *e)
{
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
                 NBD_FLAG_SEND_CACHE;
    if (!bf_is_writable(e->img))
        f |= NBD_FLAG_READ_ONLY;
    else
        f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    if (c->structured)
        f |= NBD_FLAG_SEND_DF;
    /* Every connection shares one image handle (one cache, one file), so a
     * flush on any connection covers writes done on all of them.  Only say
     * so when more than one client may connect at once. */
    if (c->srv->opt->shared != 1)
        f |= NBD_FLAG_CAN_MULTI_CONN;
    return f;
}

static const char *names_of_exports(struct server *s, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = 0;
    for (size_t i = 0; i < s->nexports && used < len; i++) {
        int n = snprintf(buf + used, len - used, "%s'%s'", i ? ", " : "", s->exports[i].name);
        if (n < 0)
            break;
        used += (size_t)n;
    }
    return buf;
}

/* ------------------------------------------------------------- handlers */

/* @reqs: @nreq big-endian 16-bit information requests from the client. */
static int send_export_info(struct conn *c, const struct opt *o, struct export *e,
                            const uint8_t *reqs, uint16_t nreq)
{
    uint8_t b[18];
    put16(b, NBD_INFO_EXPORT);
    put64(b + 2, bf_size(e->img));
    put16(b + 10, export_tflags(c, e));
    if (opt_reply(c, o->code, NBD_REP_INFO, b, 12) < 0)
        return DROP;
    /* Block sizes are always sent: any alignment works (minimum 1). */
    put16(b, NBD_INFO_BLOCK_SIZE);
    put32(b + 2, 1);
    put32(b + 6, NBD_PREFERRED_BLOCK);
    put32(b + 10, NBD_MAX_PAYLOAD);
    if (opt_reply(c, o->code, NBD_REP_INFO, b, 14) < 0)
        return DROP;
    for (uint16_t i = 0; i < nreq; i++) {
        const char *text = NULL;
        uint16_t type = get16(reqs + 2 * i);
        if (type == NBD_INFO_NAME)
            text = e->name;
        else if (type == NBD_INFO_DESCRIPTION && e->description[0])
            text = e->description;
        if (!text)
            continue;
        size_t n = strlen(text);
        uint8_t *buf = malloc(2 + n);
        if (!buf)
            return DROP;
        put16(buf, type);
        memcpy(buf + 2, text, n);
        int r = opt_reply(c, o->code, NBD_REP_INFO, buf, 2 + n);
        free(buf);
        if (r < 0)
            return DROP;
    }
    return GO_ON;
}

static int do_export_name(struct conn *c, const struct opt *o)
{
    if (c->extended)
        return DROP;               /* forbidden after extended headers */
    char name[NBD_MAX_STRING + 1];
    if (o->len > NBD_MAX_STRING || memchr(o->data, 0, o->len))
        return DROP;
    memcpy(name, o->data, o->len);
    name[o->len] = 0;
    struct export *e = export_find(c->srv, name);
    if (!e) {
        vlog(c->srv, "connection %u: unknown export '%s' requested; closing", c->id, name);
        return DROP;               /* this option cannot answer with an error */
    }
    if (c->meta_export && strcmp(c->meta_export, name) != 0)
        c->meta_base = c->meta_depth = false;
    c->exp = e;
    c->tflags = export_tflags(c, e);
    uint8_t b[10 + 124];
    memset(b, 0, sizeof b);
    put64(b, bf_size(e->img));
    put16(b + 8, c->tflags);
    if (wire_write(c->fd, b, c->no_zeroes ? 10 : sizeof b) < 0)
        return DROP;
    return START;
}

static int do_abort(struct conn *c, const struct opt *o)
{
    if (o->len == 0)
        opt_reply(c, o->code, NBD_REP_ACK, NULL, 0);
    return END;
}

static int do_list(struct conn *c, const struct opt *o)
{
    if (o->len != 0)
        return opt_error(c, o, NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
    for (size_t i = 0; i < c->srv->nexports; i++) {
        const struct export *e = &c->srv->exports[i];
        size_t nl = strlen(e->name), dl = strlen(e->description);
        uint8_t *b = malloc(4 + nl + dl);
        if (!b)
            return DROP;
        put32(b, (uint32_t)nl);
        memcpy(b + 4, e->name, nl);
        memcpy(b + 4 + nl, e->description, dl);
        int r = opt_reply(c, o->code, NBD_REP_SERVER, b, 4 + nl + dl);
        free(b);
        if (r < 0)
            return DROP;
    }
    return opt_reply(c, o->code, NBD_REP_ACK, NULL, 0);
}

static int do_info_go(struct conn *c, const struct opt *o)
{
    const uint8_t *p = o->data;
    uint32_t left = o->len;
    char *name = NULL;
    if (!take_string(&p, &left, &name) || left < 2 || left != 2 + 2u * get16(p)) {
        free(name);
        return opt_error(c, o, NBD_REP_ERR_INVALID, "malformed NBD_OPT_%s",
                         o->code == NBD_OPT_GO ? "GO" : "INFO");
    }
    uint16_t nreq = get16(p);
    const uint8_t *reqs = p + 2;
    struct export *e = export_find(c->srv, name);
    if (!e) {
        char list[512];
        int r = opt_error(c, o, NBD_REP_ERR_UNKNOWN, "export '%s' not found (exports: %s)",
                          name, names_of_exports(c->srv, list, sizeof list));
        free(name);
        return r;
    }
    if (send_export_info(c, o, e, reqs, nreq) < 0) {
        free(name);
        return DROP;
    }
    if (opt_reply(c, o->code, NBD_REP_ACK, NULL, 0) < 0) {
        free(name);
        return DROP;
    }
    if (o->code == NBD_OPT_INFO) {
        free(name);
        return GO_ON;
    }
    /* Contexts selected for another export do not carry over. */
    if (c->meta_export && strcmp(c->meta_export, name) != 0)
        c->meta_base = c->meta_depth = false;
    free(name);
    c->exp = e;
    c->tflags = export_tflags(c, e);
    return START;
}

static int do_structured_reply(struct conn *c, const struct opt *o)
{
    if (o->len != 0)
        return opt_error(c, o, NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
    if (c->extended)
        return opt_error(c, o, NBD_REP_ERR_EXT_HEADER_REQD,
                         "extended headers are already in use");
    if (c->structured)
        return opt_error(c, o, NBD_REP_ERR_INVALID, "structured replies are already in use");
    c->structured = true;
    return opt_reply(c, o->code, NBD_REP_ACK, NULL, 0);
}

static int do_extended_headers(struct conn *c, const struct opt *o)
{
    if (o->len != 0)
        return opt_error(c, o, NBD_REP_ERR_INVALID, "NBD_OPT_EXTENDED_HEADERS takes no data");
    if (c->extended)
        return opt_error(c, o, NBD_REP_ERR_INVALID, "extended headers are already in use");
    c->extended = true;
    c->structured = true;
    return opt_reply(c, o->code, NBD_REP_ACK, NULL, 0);
}

/* Which of our contexts does @q select?  "base:" and "qemu:" select their
 * whole namespace; anything else selects nothing (and is no error). */
static void match_query(const char *q, bool *base, bool *depth)
{
    if (!strcmp(q, "base:") || !strcmp(q, "base:allocation"))
        *base = true;
    if (!strcmp(q, "qemu:") || !strcmp(q, "qemu:allocation-depth"))
        *depth = true;
}

static int do_meta_context(struct conn *c, const struct opt *o)
{
    bool set = o->code == NBD_OPT_SET_META_CONTEXT;
    if (!c->structured)
        return opt_error(c, o, NBD_REP_ERR_INVALID,
                         "metadata contexts need structured replies first");
    const uint8_t *p = o->data;
    uint32_t left = o->len;
    char *name = NULL;
    if (!take_string(&p, &left, &name) || left < 4) {
        free(name);
        return opt_error(c, o, NBD_REP_ERR_INVALID, "malformed metadata context request");
    }
    uint32_t nq = get32(p);
    p += 4;
    left -= 4;
    bool base = false, depth = false;
    for (uint32_t i = 0; i < nq; i++) {
        char *q;
        if (!take_string(&p, &left, &q)) {
            free(name);
            return opt_error(c, o, NBD_REP_ERR_INVALID, "malformed metadata context query");
        }
        match_query(q, &base, &depth);
        free(q);
    }
    if (left != 0) {
        free(name);
        return opt_error(c, o, NBD_REP_ERR_INVALID, "trailing bytes in the request");
    }
    if (!export_find(c->srv, name)) {
        int r = opt_error(c, o, NBD_REP_ERR_UNKNOWN, "export '%s' not found", name);
        free(name);
        return r;
    }
    if (nq == 0 && !set)
        base = depth = true;        /* LIST with no query lists everything */
    static const struct { uint32_t id; const char *name; } ctx[] = {
        { NBD_CTX_BASE_ALLOCATION, "base:allocation" },
        { NBD_CTX_ALLOCATION_DEPTH, "qemu:allocation-depth" },
    };
    bool want[2] = { base, depth };
    for (int i = 0; i < 2; i++) {
        if (!want[i])
            continue;
        uint8_t b[64];
        size_t n = strlen(ctx[i].name);
        put32(b, ctx[i].id);
        memcpy(b + 4, ctx[i].name, n);
        if (opt_reply(c, o->code, NBD_REP_META_CONTEXT, b, 4 + n) < 0) {
            free(name);
            return DROP;
        }
    }
    if (set) {
        c->meta_base = base;
        c->meta_depth = depth;
        free(c->meta_export);
        c->meta_export = name;
    } else {
        free(name);
    }
    return opt_reply(c, o->code, NBD_REP_ACK, NULL, 0);
}

static int dispatch(struct conn *c, const struct opt *o)
{
    switch (o->code) {
    case NBD_OPT_EXPORT_NAME:       return do_export_name(c, o);
    case NBD_OPT_ABORT:             return do_abort(c, o);
    case NBD_OPT_LIST:              return do_list(c, o);
    case NBD_OPT_INFO:
    case NBD_OPT_GO:                return do_info_go(c, o);
    case NBD_OPT_STRUCTURED_REPLY:  return do_structured_reply(c, o);
    case NBD_OPT_EXTENDED_HEADERS:  return do_extended_headers(c, o);
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:  return do_meta_context(c, o);
    case NBD_OPT_STARTTLS:
        return opt_error(c, o, NBD_REP_ERR_UNSUP, "TLS is not supported by this server");
    default:
        return opt_error(c, o, NBD_REP_ERR_UNSUP, "option %u is not supported", o->code);
    }
}

static void set_timeout(int fd, int seconds)
{
    struct timeval tv = { .tv_sec = seconds };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

int nbd_handshake(struct conn *c)
{
    set_timeout(c->fd, HANDSHAKE_SECONDS);
    uint8_t hello[18];
    put64(hello, NBD_MAGIC);
    put64(hello + 8, NBD_IHAVEOPT);
    put16(hello + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    uint8_t cf[4];
    if (wire_write(c->fd, hello, sizeof hello) < 0 || wire_read(c->fd, cf, 4) < 0)
        return DROP;
    uint32_t cflags = get32(cf);
    if (cflags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
        vlog(c->srv, "connection %u: unknown client flags %#x", c->id, cflags);
        return DROP;
    }
    c->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;

    uint8_t *data = malloc(NBD_MAX_OPTION_LEN);
    if (!data)
        return DROP;
    int r = DROP;
    for (int n = 0; n < MAX_OPTIONS; n++) {
        uint8_t h[16];
        if (wire_read(c->fd, h, sizeof h) < 0) {
            r = END;              /* the client went away while negotiating */
            break;
        }
        if (get64(h) != NBD_IHAVEOPT)
            break;
        struct opt o = { get32(h + 8), get32(h + 12), data };
        if (o.len > NBD_MAX_OPTION_LEN) {
            if (o.len > 16u << 20 || wire_skip(c->fd, o.len) < 0)
                break;            /* absurd: not worth reading */
            if (opt_error(c, &o, NBD_REP_ERR_TOO_BIG, "option data too long") < 0)
                break;
            continue;
        }
        if (wire_read(c->fd, data, o.len) < 0)
            break;
        r = dispatch(c, &o);
        if (r != GO_ON)
            break;
        r = DROP;
    }
    free(data);
    set_timeout(c->fd, 0);
    if (r == START) {
        vlog(c->srv, "connection %u: export '%s', %s replies", c->id, c->exp->name,
             c->extended ? "extended" : c->structured ? "structured" : "simple");
        return 0;
    }
    return r == END ? 1 : -1;
}
