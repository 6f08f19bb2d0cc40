/* list-exports.c — `vdisk-nbd -L [-k SOCKET | -b HOST] [-p PORT]`: list the
 * exports of an NBD server, with size, description, flags, block sizes and
 * metadata contexts, in the shape of `qemu-nbd -L`.
 *
 * Uses libnbd in option mode: NBD_OPT_LIST for the names and descriptions,
 * then NBD_OPT_INFO (and NBD_OPT_LIST_META_CONTEXT) for each export; a
 * server that does not answer one export's question still gets the others
 * listed.  Every step waits at most LIST_TIMEOUT seconds, so a server that
 * accepts the connection but never negotiates (qemu-nbd busy with its one
 * client) gives an error instead of a hang.
 *
 * Exit status: 0 listed, 1 error.
 * Thread model: single-threaded.
 */
#include "server.h"

#include <libnbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LIST_TIMEOUT 30   /* seconds for each step */

struct export_entry {
    char *name, *desc;
};

struct export_list {
    struct export_entry *e;
    size_t n;
    bool nomem;
};

struct done {
    bool done;
    int err;
};

static int on_done(void *user_data, int *error)
{
    struct done *d = user_data;
    d->done = true;
    d->err = *error;
    return 1;
}

static int on_export(void *user_data, const char *name, const char *description)
{
    struct export_list *l = user_data;
    struct export_entry *n = realloc(l->e, (l->n + 1) * sizeof *n);
    if (!n) {
        l->nomem = true;
        return 0;
    }
    l->e = n;
    n[l->n].name = strdup(name);
    n[l->n].desc = strdup(description ? description : "");
    if (!n[l->n].name || !n[l->n].desc) {
        free(n[l->n].name);
        free(n[l->n].desc);
        l->nomem = true;
        return 0;
    }
    l->n++;
    return 0;
}

static int on_context(void *user_data, const char *name)
{
    unsigned *count = user_data;
    if (*count < 1000)
        printf("   %s\n", name);
    (*count)++;
    return 0;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

/* libnbd's last message without the name of the call it starts with. */
static const char *msg(void)
{
    const char *m = nbd_get_error();
    if (!m)
        return "unknown error";
    const char *c = strncmp(m, "nbd_", 4) == 0 ? strstr(m, ": ") : NULL;
    return c ? c + 2 : m;
}

/* Run @h's state machine until @d is done (or, with @d NULL, until the
 * handle is no longer connecting).  0, or -1 with a message printed. */
static int await(struct nbd_handle *h, struct done *d, const char *what)
{
    double end = now() + LIST_TIMEOUT;
    while (d ? !d->done : nbd_aio_is_connecting(h) > 0) {
        double left = end - now();
        if (left <= 0) {
            fprintf(stderr, "vdisk-nbd: %s: no answer from the NBD server within %d seconds\n",
                    what, LIST_TIMEOUT);
            return -1;
        }
        if (nbd_poll(h, (int)(left * 1000) + 1) < 0) {
            fprintf(stderr, "vdisk-nbd: %s: %s\n", what, msg());
            return -1;
        }
    }
    if (d && d->err) {
        fprintf(stderr, "vdisk-nbd: %s: %s\n", what, strerror(d->err));
        return -1;
    }
    return 0;
}

static void print_flags(struct nbd_handle *h)
{
    static const struct { int (*fn)(struct nbd_handle *); const char *name; } f[] = {
        { nbd_is_read_only, "readonly" }, { nbd_can_flush, "flush" }, { nbd_can_fua, "fua" },
        { nbd_is_rotational, "rotational" }, { nbd_can_trim, "trim" },
        { nbd_can_zero, "zeroes" }, { nbd_can_df, "df" }, { nbd_can_multi_conn, "multi" },
        { nbd_can_cache, "cache" }, { nbd_can_fast_zero, "fast-zero" },
    };
    printf("  flags: (");
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].fn(h) > 0)
            printf(" %s", f[i].name);
    printf(" )\n");
}

/* NBD_OPT_INFO and the metadata contexts of one export. */
static void print_export(struct nbd_handle *h, const struct export_entry *e)
{
    printf(" export: '%s'\n", e->name);
    if (nbd_set_export_name(h, e->name) < 0) {
        printf("  (no details: %s)\n", msg());
        return;
    }
    struct done d = { 0 };
    if (nbd_aio_opt_info(h, (nbd_completion_callback){ .callback = on_done, .user_data = &d }) < 0 ||
        await(h, &d, "info") < 0) {
        printf("  (no details: the server did not answer NBD_OPT_INFO)\n");
        return;
    }
    char *desc = e->desc[0] ? NULL : nbd_get_export_description(h);
    if (e->desc[0] || desc)
        printf("  description: %s\n", e->desc[0] ? e->desc : desc);
    free(desc);
    printf("  size:  %lld\n", (long long)nbd_get_size(h));
    print_flags(h);
    printf("  min block: %lld\n", (long long)nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM));
    printf("  opt block: %lld\n", (long long)nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED));
    printf("  max block: %lld\n", (long long)nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM));

    /* contexts: ask with an empty query list, so the server names them all */
    unsigned count = 0;
    struct done c = { 0 };
    printf("  available meta contexts:\n");
    if (nbd_aio_opt_list_meta_context(h, (nbd_context_callback){ .callback = on_context,
                                                                 .user_data = &count },
                                      (nbd_completion_callback){ .callback = on_done,
                                                                 .user_data = &c }) < 0 ||
        await(h, &c, "meta contexts") < 0)
        printf("   (the server did not list them)\n");
}

int list_exports_main(const struct nbd_options *o)
{
    struct nbd_handle *h = nbd_create();
    if (!h) {
        fprintf(stderr, "vdisk-nbd: %s\n", msg());
        return 1;
    }
    struct export_list l = { 0 };
    int rc = 1;
    const char *host = o->bind ? o->bind : "localhost";
    const char *port = o->port ? o->port : "10809";
    char where[1200];
    if (o->socket_path)
        snprintf(where, sizeof where, "%s", o->socket_path);
    else
        snprintf(where, sizeof where, "%s port %s", host, port);
    if (nbd_set_opt_mode(h, true) < 0 || nbd_set_full_info(h, true) < 0 ||
        (o->socket_path ? nbd_aio_connect_unix(h, o->socket_path)
                        : nbd_aio_connect_tcp(h, host, port)) < 0) {
        fprintf(stderr, "vdisk-nbd: %s: %s\n", where, msg());
        goto out;
    }
    if (await(h, NULL, where) < 0)
        goto out;
    if (nbd_aio_is_negotiating(h) <= 0) {
        fprintf(stderr, "vdisk-nbd: %s: the server does not negotiate options (an old-style "
                        "server?), so it cannot list its exports: %s\n", where, msg());
        goto out;
    }
    struct done d = { 0 };
    if (nbd_aio_opt_list(h, (nbd_list_callback){ .callback = on_export, .user_data = &l },
                         (nbd_completion_callback){ .callback = on_done, .user_data = &d }) < 0) {
        fprintf(stderr, "vdisk-nbd: %s: %s\n", where, msg());
        goto out;
    }
    if (await(h, &d, "list exports") < 0)
        goto out;
    if (l.nomem) {
        fprintf(stderr, "vdisk-nbd: out of memory\n");
        goto out;
    }
    nbd_clear_meta_contexts(h);
    printf("exports available: %zu\n", l.n);
    for (size_t i = 0; i < l.n; i++)
        print_export(h, &l.e[i]);
    if (nbd_aio_opt_abort(h) == 0) {   /* end the negotiation politely */
        double end = now() + 2;
        while (nbd_aio_is_closed(h) <= 0 && nbd_aio_is_dead(h) <= 0 && now() < end &&
               nbd_poll(h, 100) >= 0)
            ;
    }
    rc = fflush(stdout) == 0 ? 0 : 1;
out:
    for (size_t i = 0; i < l.n; i++) {
        free(l.e[i].name);
        free(l.e[i].desc);
    }
    free(l.e);
    nbd_close(h);
    return rc;
}
