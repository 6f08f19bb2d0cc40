/* listen.c — where clients come from (TCP, a Unix socket, or sockets handed
 * over by systemd socket activation), the accept loop, the client limit
 * (-e), the server's lifetime (exit after the last client unless -t) and a
 * clean stop on SIGINT/SIGTERM.
 *
 * Thread model: serve() runs on the main thread.  Each accepted connection
 * gets its own detached thread; it reports its end through the wake pipe.
 * Signal handlers only write to that pipe.  The connection list and counters
 * are guarded by srv->lock.
 */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define BACKLOG 64
#define STOP_GRACE_SECONDS 5        /* requests in flight get this long at exit */

static int wake_fd = -1;            /* write end of the wake pipe, for handlers */
static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
    got_signal = sig;
    if (wake_fd >= 0) {
        int saved = errno;
        (void)!write(wake_fd, "s", 1);
        errno = saved;
    }
}

static int add_listener(struct server *s, int fd)
{
    int *n = realloc(s->listen_fds, (s->nlisten + 1) * sizeof *n);
    if (!n)
        return -ENOMEM;
    s->listen_fds = n;
    n[s->nlisten++] = fd;
    return 0;
}

/* systemd socket activation: LISTEN_PID names us, fds 3.. are listening. */
static int from_activation(struct server *s, bool *used, char *err, size_t errlen)
{
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    *used = false;
    if (!pid || !fds || strtol(pid, NULL, 10) != (long)getpid())
        return 0;
    long n = strtol(fds, NULL, 10);
    if (n <= 0 || n > 64)
        return 0;
    if (s->opt->socket_path || s->opt->port || s->opt->bind) {
        snprintf(err, errlen, "socket activation cannot be combined with -k, -p or -b");
        return -1;
    }
    for (int fd = 3; fd < 3 + n; fd++) {
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        if (add_listener(s, fd) < 0)
            return -1;
    }
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    *used = true;
    return 0;
}

static int unix_listener(struct server *s, const char *path, char *err, size_t errlen)
{
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof a.sun_path) {
        snprintf(err, errlen, "%s: socket path is too long", path);
        return -1;
    }
    strcpy(a.sun_path, path);
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen, "%s: exists and is not a socket", path);
            return -1;
        }
        /* A socket file nobody answers on is left over from a dead server. */
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        bool live = probe >= 0 && connect(probe, (struct sockaddr *)&a, sizeof a) == 0;
        if (probe >= 0)
            close(probe);
        if (live) {
            snprintf(err, errlen, "%s: another server is listening on this socket", path);
            return -1;
        }
        unlink(path);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, BACKLOG) < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    s->unlink_on_exit = strdup(path);
    return add_listener(s, fd);
}

static int tcp_listeners(struct server *s, char *err, size_t errlen)
{
    const char *port = s->opt->port ? s->opt->port : "10809";
    struct addrinfo hints = { .ai_flags = AI_PASSIVE, .ai_socktype = SOCK_STREAM };
    struct addrinfo *res;
    int g = getaddrinfo(s->opt->bind, port, &hints, &res);
    if (g != 0) {
        snprintf(err, errlen, "%s:%s: %s", s->opt->bind ? s->opt->bind : "*", port,
                 gai_strerror(g));
        return -1;
    }
    int last = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;                  /* e.g. no IPv6 on this host */
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (ai->ai_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, BACKLOG) < 0) {
            last = errno;
            close(fd);
            continue;
        }
        add_listener(s, fd);
    }
    freeaddrinfo(res);
    if (s->nlisten == 0) {
        snprintf(err, errlen, "cannot listen on %s port %s: %s",
                 s->opt->bind ? s->opt->bind : "any address", port, strerror(last));
        return -1;
    }
    return 0;
}

int listeners_open(struct server *s, char *err, size_t errlen)
{
    bool activated;
    if (from_activation(s, &activated, err, errlen) < 0)
        return -1;
    if (activated)
        return 0;
    if (s->opt->socket_path)
        return unix_listener(s, s->opt->socket_path, err, errlen);
    return tcp_listeners(s, err, errlen);
}

void listeners_close(struct server *s)
{
    for (size_t i = 0; i < s->nlisten; i++)
        close(s->listen_fds[i]);
    free(s->listen_fds);
    s->listen_fds = NULL;
    s->nlisten = 0;
    if (s->unlink_on_exit) {
        unlink(s->unlink_on_exit);
        free(s->unlink_on_exit);
        s->unlink_on_exit = NULL;
    }
}

/* ---------------------------------------------------------- connections */

static void *conn_thread(void *arg)
{
    struct conn *c = arg;
    struct server *s = c->srv;
    if (c->exp || nbd_handshake(c) == 0)     /* kernel sockets skip the handshake */
        nbd_transmission(c);

    pthread_mutex_lock(&s->lock);
    for (struct conn **pp = &s->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    pthread_mutex_unlock(&s->lock);
    close(c->fd);       /* off the list first: stop_connections() shuts listed fds down */
    vlog(s, "connection %u: closed", c->id);
    pthread_mutex_destroy(&c->send_lock);
    pthread_mutex_destroy(&c->read_lock);
    free(c->meta_export);
    free(c);

    /* Counted out last, and the main thread woken under the lock: once
     * serve() reads nclients == 0 it closes the wake pipe, so no thread may
     * touch it (or anything of the connection) after that. */
    pthread_mutex_lock(&s->lock);
    s->nclients--;
    (void)!write(s->wake[1], "c", 1);
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

void server_add_conn(struct server *s, int fd, struct export *direct, uint16_t tflags)
{
    static unsigned next_id;
    struct conn *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return;
    }
    c->srv = s;
    c->fd = fd;
    c->id = ++next_id;
    c->exp = direct;
    c->tflags = tflags;
    pthread_mutex_init(&c->send_lock, NULL);
    pthread_mutex_init(&c->read_lock, NULL);
    atomic_init(&c->dead, false);

    pthread_mutex_lock(&s->lock);
    c->next = s->conns;
    s->conns = c;
    s->nclients++;
    s->had_client = true;
    pthread_mutex_unlock(&s->lock);

    vlog(s, "connection %u: %s", c->id, direct ? "kernel socket" : "accepted");
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    if (pthread_create(&t, &attr, conn_thread, c) != 0) {
        pthread_mutex_lock(&s->lock);
        s->conns = c->next;
        s->nclients--;
        pthread_mutex_unlock(&s->lock);
        close(fd);
        free(c);
    }
    pthread_attr_destroy(&attr);
}

/* Ask every connection to finish: no more requests are read; the ones in
 * flight complete and are answered. */
static void stop_connections(struct server *s, int how)
{
    /* SHUT_RDWR (after STOP_GRACE_SECONDS) ends them at once: a client
     * that never reads its replies would keep a worker blocked in send()
     * and the server from ever exiting. */
    pthread_mutex_lock(&s->lock);
    for (struct conn *c = s->conns; c; c = c->next)
        shutdown(c->fd, how);
    pthread_mutex_unlock(&s->lock);
}

int serve(struct server *s)
{
    if (pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) < 0)
        return -errno;
    wake_fd = s->wake[1];
    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct pollfd *pfd = calloc(s->nlisten + 1, sizeof *pfd);
    if (!pfd)
        return -ENOMEM;
    for (;;) {
        pthread_mutex_lock(&s->lock);
        unsigned n = s->nclients;
        bool done = !s->opt->persistent && s->had_client && n == 0;
        pthread_mutex_unlock(&s->lock);
        if (done || got_signal)
            break;
        nfds_t np = 1;
        pfd[0] = (struct pollfd){ .fd = s->wake[0], .events = POLLIN };
        /* at the limit (-e; 0 = no limit), new clients wait in the backlog */
        if (s->opt->shared == 0 || n < s->opt->shared)
            for (size_t i = 0; i < s->nlisten; i++)
                pfd[np++] = (struct pollfd){ .fd = s->listen_fds[i], .events = POLLIN };
        if (poll(pfd, np, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pfd[0].revents) {
            char buf[64];
            while (read(s->wake[0], buf, sizeof buf) > 0)
                ;
        }
        for (nfds_t i = 1; i < np; i++) {
            if (!(pfd[i].revents & POLLIN))
                continue;
            int fd = accept4(pfd[i].fd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0)
                server_add_conn(s, fd, NULL, 0);
        }
    }
    free(pfd);

    if (got_signal)
        vlog(s, "signal %d: finishing the requests in flight", (int)got_signal);
    atomic_store(&s->stopping, true);
    stop_connections(s, SHUT_RD);
    time_t hard_stop = time(NULL) + STOP_GRACE_SECONDS;
    for (;;) {                          /* wait for every connection thread */
        pthread_mutex_lock(&s->lock);
        unsigned n = s->nclients;
        pthread_mutex_unlock(&s->lock);
        if (n == 0)
            break;
        if (hard_stop && time(NULL) >= hard_stop) {
            vlog(s, "%u connection(s) still busy after %d s: closing them", n,
                 STOP_GRACE_SECONDS);
            stop_connections(s, SHUT_RDWR);
            hard_stop = 0;
        }
        struct pollfd w = { .fd = s->wake[0], .events = POLLIN };
        poll(&w, 1, 1000);
        char buf[64];
        while (read(s->wake[0], buf, sizeof buf) > 0)
            ;
    }
    wake_fd = -1;
    close(s->wake[0]);
    close(s->wake[1]);
    return 0;
}
