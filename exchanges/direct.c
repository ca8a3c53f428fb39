/* direct.c: the direct exchange. A hash map from binding key (compared byte for byte)
   to the bindings with that key; a publish costs one lookup plus its matches. */
#include <stdlib.h>
#include <string.h>

#include "exchanges/xpriv.h"
#include "exchanges/xtype.h"

/* All bindings with one key. The key is copied here because the binding that first
   brought it may be removed while others with the same key remain. */
struct dentry {
    struct xvec binds;
    size_t klen;
    uint8_t key[];
};

struct direct_index {
    struct xmap keys;   /* key -> struct dentry */
};

static void *direct_new(void)
{
    struct direct_index *d = xmalloc(sizeof *d);
    xmap_init(&d->keys);
    return d;
}

static void direct_free(void *index)
{
    struct direct_index *d = index;
    if (!d)
        return;
    for (size_t i = 0; i < d->keys.cap; i++) {
        struct dentry *e = d->keys.slots[i].val;
        if (e) {
            xvec_free(&e->binds);
            free(e);
        }
    }
    xmap_free(&d->keys);
    free(d);
}

static void direct_add(void *index, struct xbinding *b)
{
    struct direct_index *d = index;
    uint64_t h = xhash(b->key);
    struct dentry *e = xmap_get(&d->keys, b->key, h);
    if (!e) {
        if (b->key.len > SIZE_MAX - sizeof *e)
            abort();
        e = xmalloc(sizeof *e + b->key.len);
        e->binds = (struct xvec){ 0 };
        e->klen = b->key.len;
        if (b->key.len)
            memcpy(e->key, b->key.ptr, b->key.len);
        xmap_put(&d->keys, amqp_bytes_of(e->key, e->klen), h, e);
    }
    xvec_push(&e->binds, b);
}

static void direct_remove(void *index, struct xbinding *b)
{
    struct direct_index *d = index;
    uint64_t h = xhash(b->key);
    struct dentry *e = xmap_get(&d->keys, b->key, h);
    if (!e)
        abort();  /* never added: the caller broke the contract */
    xvec_remove(&e->binds, b);
    if (e->binds.n == 0) {
        xmap_del(&d->keys, b->key, h);
        free(e);
    }
}

/* Emits every binding whose key equals routing_key. emit must not add or remove
   bindings of this index (it may route through it again). */
static void direct_route(void *index, amqp_bytes routing_key, amqp_bytes headers,
                         xroute_emit emit, void *ctx)
{
    struct direct_index *d = index;
    (void)headers;
    if (d->keys.count == 0)
        return;
    struct dentry *e = xmap_get(&d->keys, routing_key, xhash(routing_key));
    if (!e)
        return;
    for (size_t i = 0; i < e->binds.n; i++)
        emit(ctx, e->binds.v[i]);
}

const struct xtype xtype_direct = {
    .name = "direct",
    .index_new = direct_new,
    .index_free = direct_free,
    .validate = NULL,
    .add = direct_add,
    .remove = direct_remove,
    .route = direct_route,
};
