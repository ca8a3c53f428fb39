/* fanout.c: the fanout exchange; every binding matches every message. */
#include <stdlib.h>

#include "exchanges/xpriv.h"
#include "exchanges/xtype.h"

struct fanout_index {
    struct xvec binds;
};

static void *fanout_new(void)
{
    struct fanout_index *f = xmalloc(sizeof *f);
    f->binds = (struct xvec){ 0 };
    return f;
}

static void fanout_free(void *index)
{
    struct fanout_index *f = index;
    if (!f)
        return;
    xvec_free(&f->binds);
    free(f);
}

static void fanout_add(void *index, struct xbinding *b)
{
    xvec_push(&((struct fanout_index *)index)->binds, b);
}

static void fanout_remove(void *index, struct xbinding *b)
{
    xvec_remove(&((struct fanout_index *)index)->binds, b);
}

/* Emits every binding, ignoring key and headers. emit must not add or remove
   bindings of this index. */
static void fanout_route(void *index, amqp_bytes routing_key, amqp_bytes headers,
                         xroute_emit emit, void *ctx)
{
    struct fanout_index *f = index;
    (void)routing_key;
    (void)headers;
    for (size_t i = 0; i < f->binds.n; i++)
        emit(ctx, f->binds.v[i]);
}

const struct xtype xtype_fanout = {
    .name = "fanout",
    .index_new = fanout_new,
    .index_free = fanout_free,
    .validate = NULL,
    .add = fanout_add,
    .remove = fanout_remove,
    .route = fanout_route,
};
