#include "server/exchange.h"

#include <stdlib.h>
#include <string.h>

#include "amqp/table.h"
#include "server/broker.h"
#include "server/queue.h"
#include "server/vhost.h"
#include "common/xalloc.h"

struct exchange *exchange_new(struct vhost *vh, amqp_bytes name, const struct xtype *type,
                              bool durable, bool auto_delete, bool internal, amqp_bytes args)
{
    struct exchange *x = xcalloc(1, sizeof *x);
    x->name = xstrndup(name.ptr, name.len);
    x->name_len = name.len;
    x->vh = vh;
    x->type = type;
    x->index = type->index_new();
    x->durable = durable;
    x->auto_delete = auto_delete;
    x->internal = internal;
    x->args = xmalloc(args.len);
    memcpy(x->args, args.ptr, args.len);
    x->args_len = args.len;
    struct field_value v;
    if (table_get(args, "alternate-exchange", &v) == 1 && v.type == 'S')
        x->alternate = xstrndup(v.v.bytes.ptr, v.v.bytes.len);
    return x;
}

void exchange_free(struct exchange **xp)
{
    struct exchange *x = *xp;
    *xp = NULL;
    if (!x)
        return;
    x->type->index_free(x->index);
    free(x->alternate);
    free(x->args);
    free(x->name);
    free(x);
}

void route_result_free(struct route_result *r)
{
    free(r->queues);
    free(r->pending);
    memset(r, 0, sizeof *r);
}

struct route_ctx {
    struct route_result *out;
    uint64_t gen;
    size_t matched;            /* bindings matched by the exchange being routed */
};

static void add_queue(struct route_ctx *rc, struct queue *q)
{
    if (q->route_mark == rc->gen)
        return;
    q->route_mark = rc->gen;
    struct route_result *r = rc->out;
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 8;
        r->queues = xrealloc(r->queues, r->cap * sizeof *r->queues);
    }
    r->queues[r->n++] = q;
}

static void add_exchange(struct route_ctx *rc, struct exchange *x)
{
    if (x->route_mark == rc->gen)
        return;
    x->route_mark = rc->gen;
    struct route_result *r = rc->out;
    if (r->npending == r->pending_cap) {
        r->pending_cap = r->pending_cap ? r->pending_cap * 2 : 4;
        r->pending = xrealloc(r->pending, r->pending_cap * sizeof *r->pending);
    }
    r->pending[r->npending++] = x;
}

static void emit(void *ctx, struct xbinding *xb)
{
    struct route_ctx *rc = ctx;
    struct binding *b = (struct binding *)xb;
    rc->matched++;
    if (b->dest_is_exchange)
        add_exchange(rc, xb->dest);
    else
        add_queue(rc, xb->dest);
}

void exchange_route(struct exchange *x, amqp_bytes rkey, amqp_bytes headers, struct route_result *out)
{
    out->n = 0;
    out->npending = 0;
    struct broker *b = x->vh->broker;
    struct route_ctx rc = { .out = out, .gen = ++b->route_gen };
    add_exchange(&rc, x);
    for (size_t i = 0; i < out->npending; i++) {
        struct exchange *cur = out->pending[i];
        rc.matched = 0;
        if (cur->is_default) {
            struct queue *q = vhost_queue(cur->vh, rkey);
            if (q) {
                rc.matched++;
                add_queue(&rc, q);
            }
        } else {
            cur->type->route(cur->index, rkey, headers, emit, &rc);
        }
        if (rc.matched == 0 && cur->alternate) {
            struct exchange *ae = vhost_exchange(cur->vh, amqp_cstr(cur->alternate));
            if (ae)
                add_exchange(&rc, ae);
        }
    }
}

struct binding *binding_find(struct exchange *source, void *dest, amqp_bytes key, amqp_bytes args)
{
    for (struct binding *b = source->bindings; b; b = b->src_next) {
        if (b->xb.dest == dest && amqp_bytes_eq(b->xb.key, key) && table_equal(b->xb.args, args))
            return b;
    }
    return NULL;
}

struct binding *binding_add(struct exchange *source, void *dest, bool dest_is_exchange,
                            struct binding **dest_incoming, amqp_bytes key, amqp_bytes args)
{
    struct binding *b = xcalloc(1, sizeof *b + key.len + args.len);
    memcpy(b->data, key.ptr, key.len);
    memcpy(b->data + key.len, args.ptr, args.len);
    b->xb.dest = dest;
    b->xb.key = amqp_bytes_of(b->data, key.len);
    b->xb.args = amqp_bytes_of(b->data + key.len, args.len);
    b->source = source;
    b->dest_is_exchange = dest_is_exchange;
    b->src_next = source->bindings;
    if (source->bindings)
        source->bindings->src_prev = b;
    source->bindings = b;
    source->nbindings++;
    b->dst_next = *dest_incoming;
    if (*dest_incoming)
        (*dest_incoming)->dst_prev = b;
    *dest_incoming = b;
    source->type->add(source->index, &b->xb);
    return b;
}

void binding_remove(struct binding *b, struct binding **dest_incoming)
{
    struct exchange *source = b->source;
    source->type->remove(source->index, &b->xb);
    if (b->src_prev)
        b->src_prev->src_next = b->src_next;
    else
        source->bindings = b->src_next;
    if (b->src_next)
        b->src_next->src_prev = b->src_prev;
    source->nbindings--;
    if (b->dst_prev)
        b->dst_prev->dst_next = b->dst_next;
    else
        *dest_incoming = b->dst_next;
    if (b->dst_next)
        b->dst_next->dst_prev = b->dst_prev;
    free(b);
}
