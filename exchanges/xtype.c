/* xtype.c: the exchange-type registry and the helpers shared by the indexes. */
#include "exchanges/xtype.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "exchanges/xpriv.h"

static const struct xtype *const all_types[] = {
    &xtype_direct, &xtype_fanout, &xtype_topic, &xtype_headers,
};

const struct xtype *xtype_find(amqp_bytes name)
{
    for (size_t i = 0; i < sizeof all_types / sizeof all_types[0]; i++)
        if (amqp_bytes_eq_cstr(name, all_types[i]->name))
            return all_types[i];
    return NULL;
}

/* ---- xvec ---- */

void xvec_push(struct xvec *x, struct xbinding *b)
{
    if (x->n == x->cap) {
        size_t ncap = x->cap ? x->cap * 2 : 4;
        x->v = xrealloc_array(x->v, ncap, sizeof *x->v);
        x->cap = ncap;
    }
    b->index_data = (void *)(uintptr_t)x->n;
    x->v[x->n++] = b;
}

void xvec_remove(struct xvec *x, struct xbinding *b)
{
    size_t pos = (size_t)(uintptr_t)b->index_data;
    assert(pos < x->n && x->v[pos] == b);
    if (pos >= x->n || x->v[pos] != b)
        abort();  /* not added here: the caller broke the contract */
    x->v[pos] = x->v[--x->n];
    x->v[pos]->index_data = (void *)(uintptr_t)pos;
    b->index_data = NULL;
    if (x->n == 0) {
        xvec_free(x);
    } else if (x->cap > 8 && x->n * 4 < x->cap) {
        x->cap /= 2;
        x->v = xrealloc_array(x->v, x->cap, sizeof *x->v);
    }
}

void xvec_free(struct xvec *x)
{
    free(x->v);
    x->v = NULL;
    x->n = x->cap = 0;
}
