/* cache.c — a bounded LRU of fixed-size blocks (L2 tables, decompressed
 * clusters, grain tables), keyed by a 64-bit number (usually a host offset).
 *
 * Thread model: one mutex guards the table and the LRU list.  Loading a
 * missing block runs outside the lock, so a slow read does not stall hits;
 * two threads missing the same key may both load it and the second copy is
 * dropped.  A block handed out is pinned and is not evicted or freed until
 * bf_cache_put(); when every block is pinned the cache hands out a private
 * block instead of growing.
 */
#include "internal.h"

#include <stdlib.h>

struct bf_cache_ent {
    uint64_t key;
    void *data;
    unsigned pins;
    bool detached;                 /* not in the table: freed at the last put */
    struct bf_cache_ent *hnext;    /* hash chain */
    struct bf_cache_ent *prev, *next;  /* LRU list, most recent first */
};

struct bf_cache {
    pthread_mutex_t lock;
    size_t block_size;
    size_t max_entries, n_entries;
    size_t nbuckets;
    struct bf_cache_ent **buckets;
    struct bf_cache_ent lru;       /* sentinel */
};

struct bf_cache *bf_cache_new(size_t block_size, size_t max_bytes)
{
    struct bf_cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->block_size = block_size;
    c->max_entries = max_bytes / block_size;
    if (c->max_entries < 4)
        c->max_entries = 4;
    c->nbuckets = 16;
    while (c->nbuckets < c->max_entries * 2)
        c->nbuckets *= 2;
    c->buckets = calloc(c->nbuckets, sizeof *c->buckets);
    if (!c->buckets) {
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->lock, NULL);
    c->lru.next = c->lru.prev = &c->lru;
    return c;
}

size_t bf_cache_block_size(const struct bf_cache *c)
{
    return c->block_size;
}

static void free_ent(struct bf_cache_ent *e)
{
    free(e->data);
    free(e);
}

void bf_cache_free(struct bf_cache *c)
{
    if (!c)
        return;
    for (struct bf_cache_ent *e = c->lru.next, *n; e != &c->lru; e = n) {
        n = e->next;
        free_ent(e);
    }
    free(c->buckets);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static size_t bucket_of(const struct bf_cache *c, uint64_t key)
{
    key ^= key >> 29;
    key *= 0xbf58476d1ce4e5b9ull;
    key ^= key >> 32;
    return (size_t)key & (c->nbuckets - 1);
}

static struct bf_cache_ent *lookup(struct bf_cache *c, uint64_t key)
{
    for (struct bf_cache_ent *e = c->buckets[bucket_of(c, key)]; e; e = e->hnext)
        if (e->key == key)
            return e;
    return NULL;
}

static void lru_unlink(struct bf_cache_ent *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
}

static void lru_push_front(struct bf_cache *c, struct bf_cache_ent *e)
{
    e->next = c->lru.next;
    e->prev = &c->lru;
    c->lru.next->prev = e;
    c->lru.next = e;
}

static void hash_remove(struct bf_cache *c, struct bf_cache_ent *e)
{
    struct bf_cache_ent **pp = &c->buckets[bucket_of(c, e->key)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
}

/* Caller holds the lock.  Insert a freshly loaded block, evicting the least
 * recently used unpinned one when full. */
static struct bf_cache_ent *insert(struct bf_cache *c, uint64_t key, void *data)
{
    struct bf_cache_ent *e = NULL;
    if (c->n_entries >= c->max_entries) {
        for (struct bf_cache_ent *v = c->lru.prev; v != &c->lru; v = v->prev)
            if (v->pins == 0) {
                e = v;
                break;
            }
        if (e) {
            hash_remove(c, e);
            lru_unlink(e);
            free(e->data);
            c->n_entries--;
        }
    }
    if (!e) {
        e = malloc(sizeof *e);
        if (!e)
            return NULL;
    }
    e->key = key;
    e->data = data;
    e->pins = 1;
    e->detached = false;
    if (c->n_entries >= c->max_entries) {   /* everything pinned: private block */
        e->detached = true;
        e->hnext = NULL;
        e->prev = e->next = e;
        return e;
    }
    size_t b = bucket_of(c, key);
    e->hnext = c->buckets[b];
    c->buckets[b] = e;
    lru_push_front(c, e);
    c->n_entries++;
    return e;
}

int bf_cache_get(struct bf_cache *c, uint64_t key, bf_cache_load_fn load, void *ctx,
                 const void **data, struct bf_cache_ent **ent)
{
    pthread_mutex_lock(&c->lock);
    struct bf_cache_ent *e = lookup(c, key);
    if (e) {
        e->pins++;
        lru_unlink(e);
        lru_push_front(c, e);
        pthread_mutex_unlock(&c->lock);
        *data = e->data;
        *ent = e;
        return 0;
    }
    pthread_mutex_unlock(&c->lock);

    void *buf = malloc(c->block_size);
    if (!buf)
        return -ENOMEM;
    int r = load(ctx, key, buf);
    if (r < 0) {
        free(buf);
        return r;
    }

    pthread_mutex_lock(&c->lock);
    e = lookup(c, key);
    if (e) {                         /* another thread loaded it meanwhile */
        e->pins++;
        free(buf);
    } else {
        e = insert(c, key, buf);
        if (!e) {
            pthread_mutex_unlock(&c->lock);
            free(buf);
            return -ENOMEM;
        }
    }
    pthread_mutex_unlock(&c->lock);
    *data = e->data;
    *ent = e;
    return 0;
}

void bf_cache_put(struct bf_cache *c, struct bf_cache_ent *e)
{
    pthread_mutex_lock(&c->lock);
    bool gone = --e->pins == 0 && e->detached;
    pthread_mutex_unlock(&c->lock);
    if (gone)
        free_ent(e);
}

void bf_cache_drop(struct bf_cache *c, uint64_t key)
{
    pthread_mutex_lock(&c->lock);
    struct bf_cache_ent *e = lookup(c, key);
    bool gone = false;
    if (e) {
        hash_remove(c, e);
        lru_unlink(e);
        c->n_entries--;
        e->detached = true;
        e->prev = e->next = e;
        gone = e->pins == 0;
    }
    pthread_mutex_unlock(&c->lock);
    if (gone)
        free_ent(e);
}
