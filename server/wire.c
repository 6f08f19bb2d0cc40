/* wire.c — socket I/O that survives short reads and writes and signals, the
 * big-endian field helpers, the one errno-to-NBD-error mapping, and verbose
 * logging.
 *
 * Thread model: stateless; the send side is serialised by callers.
 */
#include "server.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

int wire_read(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = recv(fd, p, len, 0);
        if (n < 0 && errno == ENOTSOCK)
            n = read(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EPIPE;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int wire_skip(int fd, uint64_t len)
{
    uint8_t buf[65536];
    while (len > 0) {
        size_t n = len < sizeof buf ? (size_t)len : sizeof buf;
        int r = wire_read(fd, buf, n);
        if (r < 0)
            return r;
        len -= n;
    }
    return 0;
}

int wire_writev(int fd, struct iovec *iov, int niov)
{
    while (niov > 0) {
        struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t)niov };
        ssize_t n = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (n < 0 && errno == ENOTSOCK)
            n = writev(fd, iov, niov);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        while (niov > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            niov--;
        }
        if (niov > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
    return 0;
}

int wire_sendfile(int fd, int in_fd, uint64_t off, uint64_t len)
{
    while (len > 0) {
        off_t o = (off_t)off;
        size_t n = len < (1u << 30) ? (size_t)len : (1u << 30);
        ssize_t w = sendfile(fd, in_fd, &o, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (w == 0)
            return -EIO;         /* the file ended under us: the reply is cut */
        off += (uint64_t)w;
        len -= (uint64_t)w;
    }
    return 0;
}

int wire_write(int fd, const void *buf, size_t len)
{
    struct iovec iov = { (void *)buf, len };
    return wire_writev(fd, &iov, 1);
}

/* The protocol has a short list of errors; map every errno onto it. */
uint32_t nbd_errno(int neg_errno)
{
    switch (-neg_errno) {
    case 0: return NBD_SUCCESS;
    case EPERM: case EROFS: case EACCES: return NBD_EPERM;
    case ENOMEM: return NBD_ENOMEM;
    case EINVAL: return NBD_EINVAL;
    case ENOSPC: case EDQUOT: case EFBIG: return NBD_ENOSPC;
    case EOVERFLOW: return NBD_EOVERFLOW;
    case ENOTSUP: return NBD_ENOTSUP;
    case ESHUTDOWN: return NBD_ESHUTDOWN;
    default: return NBD_EIO;
    }
}

void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)); put16(p + 2, (uint16_t)v); }
void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)(v >> 32)); put32(p + 4, (uint32_t)v); }
uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }
uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

void vlog(const struct server *s, const char *fmt, ...)
{
    if (!s->opt->verbose)
        return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "vdisk-nbd: %s\n", buf);
}
