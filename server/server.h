/* server.h — what the parts of vdisk-nbd share: options, exports, the server
 * and a connection.
 *
 * Thread model: the main thread accepts connections; each connection has one
 * thread that negotiates, then a pool of worker threads that take turns
 * reading a request and each execute the one they read, replying in any
 * order (replies are serialised by the connection's send lock, so they go
 * out whole).  The
 * exports and the images under them are shared by all connections; the
 * image library is safe for that.
 */
#ifndef VDISK_SERVER_H
#define VDISK_SERVER_H

#include "blockfmt.h"
#include "nbd-protocol.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct nbd_options {
    const char *image;
    const char *format;
    const char *port;           /* default "10809" */
    const char *bind;           /* NULL: all addresses */
    const char *socket_path;    /* -k */
    const char *export_name;    /* default "" */
    const char *description;
    const char *load_snapshot;  /* -l */
    const char *pid_file;
    int partition;              /* -P, -1 when not given */
    bool partitions;            /* --partitions */
    bool read_only, snapshot, persistent, fork, verbose, force_share;
    bool rw;                    /* --rw: write through to a remote (URI) image */
    unsigned shared;            /* -e: maximum clients */
    unsigned threads;           /* workers per connection */
    /* kernel attach (-c/-d) */
    const char *connect_dev;    /* -c DEV or "auto" */
    const char *disconnect_dev; /* -d DEV */
    bool list_attached, foreground, force;
    bool list_exports;          /* -L: list another server's exports */
    unsigned connections;       /* sockets for -c */
    unsigned timeout;           /* seconds before the kernel fails a request */
};

struct export {
    char *name;                 /* what clients ask for */
    char *description;          /* may be "" */
    struct bf_image *img;       /* the server's disk, or a slice of it (owned) */
};

struct conn;

struct server {
    const struct nbd_options *opt;
    struct bf_image *disk;      /* owned; exports point into it */
    bool writable;
    struct export *exports;
    size_t nexports;

    int *listen_fds;
    size_t nlisten;
    char *unlink_on_exit;       /* Unix socket we created */

    pthread_mutex_t lock;       /* guards the fields below */
    struct conn *conns;         /* live connections */
    unsigned nclients;
    bool had_client;
    int wake[2];                /* pipe: a connection ended, or a signal came */
    atomic_bool stopping;
};

struct request {
    uint16_t flags, type;
    uint64_t cookie, offset, length;
    uint8_t *payload;           /* WRITE data, malloc'd */
    int early_error;            /* NBD error found while reading, 0 if none */
};

struct conn {
    struct server *srv;
    int fd;
    unsigned id;
    struct conn *next;          /* in srv->conns */

    /* negotiated */
    bool no_zeroes, structured, extended;
    bool meta_base, meta_depth; /* selected metadata contexts */
    char *meta_export;          /* export the contexts were selected for */
    struct export *exp;
    uint16_t tflags;

    /* transmission */
    pthread_mutex_t send_lock;
    pthread_mutex_t read_lock;  /* the worker reading the next request holds it */
    bool reader_done;           /* DISC, EOF or a protocol error: read no more */
    atomic_bool dead;           /* a send failed: the client is gone */
};

/* attach.c: the -c, -d and --list-attached modes; each returns an exit status */
int attach_main(struct server *s);
int detach_main(const struct nbd_options *o);
int list_attached_main(void);

/* list-exports.c: the -L mode; returns an exit status */
int list_exports_main(const struct nbd_options *o);

/* exports.c */
int exports_build(struct server *s, char *err, size_t errlen);
struct export *export_find(struct server *s, const char *name);
void exports_free(struct server *s);

/* listen.c */
int listeners_open(struct server *s, char *err, size_t errlen);
int serve(struct server *s);
/* Serve @fd on its own thread.  With @direct, the socket is already in the
 * transmission phase for that export (a kernel socket: simple replies). */
void server_add_conn(struct server *s, int fd, struct export *direct, uint16_t tflags);
void listeners_close(struct server *s);

/* handshake.c: 0 = transmission starts, 1 = client ended cleanly, -1 = drop */
int nbd_handshake(struct conn *c);
uint16_t export_tflags(const struct conn *c, const struct export *e);

/* transmission.c */
void nbd_transmission(struct conn *c);

/* commands.c */
void handle_request(struct conn *c, struct request *r);

/* reply.c — each sends one whole reply (or chunk) under the send lock */
int reply_ok(struct conn *c, const struct request *r);
int reply_error(struct conn *c, const struct request *r, uint32_t nbd_err, const char *msg);
int reply_simple_data(struct conn *c, const struct request *r, const void *data, size_t len);
int reply_chunks(struct conn *c, const struct request *r, struct iovec *iov, int niov);
/* The whole answer to READ @r: one data reply (simple, or a single
 * structured chunk) whose payload is the file ranges @runs, in order. */
int reply_read_from_files(struct conn *c, const struct request *r,
                          const struct bf_location *runs, size_t n);
/* Encode a chunk header into @hdr (32 bytes room); returns its length. */
size_t chunk_header(const struct conn *c, const struct request *r, uint8_t *hdr,
                    uint16_t flags, uint16_t type, uint64_t payload_len);

/* daemon.c */
/* Start a new session and point stdin/stdout (and stderr unless
 * @keep_stderr) at /dev/null, so a background server holds no terminal or
 * pipe of its caller open. */
void detach_from_terminal(bool keep_stderr);
/* Write @pid to @path; -1 with a message on stderr on failure. */
int write_pid_file(const char *path, pid_t pid);

/* wire.c */
int wire_read(int fd, void *buf, size_t len);      /* 0, -EPIPE at EOF, -errno */
int wire_skip(int fd, uint64_t len);
int wire_writev(int fd, struct iovec *iov, int niov);
int wire_write(int fd, const void *buf, size_t len);
/* @len bytes of @in_fd at @off, with sendfile(2); -EIO if the file ends first. */
int wire_sendfile(int fd, int in_fd, uint64_t off, uint64_t len);
uint32_t nbd_errno(int neg_errno);                   /* -errno -> NBD_E* */
void put16(uint8_t *p, uint16_t v);
void put32(uint8_t *p, uint32_t v);
void put64(uint8_t *p, uint64_t v);
uint16_t get16(const uint8_t *p);
uint32_t get32(const uint8_t *p);
uint64_t get64(const uint8_t *p);
void vlog(const struct server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
