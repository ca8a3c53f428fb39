#include "server/vhost.h"

#include <stdlib.h>

#include "server/channel.h"
#include "server/connection.h"
#include "server/exchange.h"
#include "server/persist.h"
#include "server/qpolicy.h"
#include "server/queue.h"
#include "common/xalloc.h"

static struct binding **incoming_of(struct binding *b)
{
    if (b->dest_is_exchange)
        return &((struct exchange *)b->xb.dest)->incoming;
    return &((struct queue *)b->xb.dest)->incoming;
}

static void predeclare(struct vhost *vh, const char *name, const struct xtype *type)
{
    struct exchange *x = exchange_new(vh, amqp_cstr(name), type, true, false, false, amqp_cstr(""));
    x->builtin = true;
    vhost_add_exchange(vh, x);
}

struct vhost *vhost_new(struct broker *b, const char *name)
{
    struct vhost *vh = xcalloc(1, sizeof *vh);
    vh->name = xstrndup(name, strlen(name));
    vh->broker = b;
    xmap_init(&vh->exchanges);
    xmap_init(&vh->queues);
    predeclare(vh, "", &xtype_direct);
    vh->default_exchange = vhost_exchange(vh, amqp_cstr(""));
    vh->default_exchange->is_default = true;
    predeclare(vh, "amq.direct", &xtype_direct);
    predeclare(vh, "amq.fanout", &xtype_fanout);
    predeclare(vh, "amq.topic", &xtype_topic);
    predeclare(vh, "amq.headers", &xtype_headers);
    predeclare(vh, "amq.match", &xtype_headers);
    return vh;
}

static void drop_queue(void *vh, void *q) { vhost_delete_queue(vh, q); }

static void unbind_all(void *vh, void *x_)
{
    (void)vh;
    struct exchange *x = x_;
    while (x->bindings)
        binding_remove(x->bindings, incoming_of(x->bindings));
}

static void drop_exchange(void *vh, void *x_)
{
    struct exchange *x = x_;
    xmap_del(&((struct vhost *)vh)->exchanges, exchange_name(x), xhash(exchange_name(x)));
    exchange_free(&x);
}

void vhost_free(struct vhost **vhp)
{
    struct vhost *vh = *vhp;
    *vhp = NULL;
    if (!vh)
        return;
    xmap_drain(&vh->queues, drop_queue, vh);
    /* Bindings first, so that deleting one exchange never auto-deletes another mid-walk. */
    for (size_t i = 0; i < vh->exchanges.cap; i++) {
        if (vh->exchanges.slots[i].val)
            unbind_all(vh, vh->exchanges.slots[i].val);
    }
    xmap_drain(&vh->exchanges, drop_exchange, vh);
    free(vh->name);
    free(vh);
}

struct exchange *vhost_exchange(struct vhost *vh, amqp_bytes name) { return xmap_find(&vh->exchanges, name); }
struct queue *vhost_queue(struct vhost *vh, amqp_bytes name) { return xmap_find(&vh->queues, name); }

void vhost_add_exchange(struct vhost *vh, struct exchange *x)
{
    xmap_put(&vh->exchanges, exchange_name(x), xhash(exchange_name(x)), x);
}

void vhost_add_queue(struct vhost *vh, struct queue *q) { xmap_put(&vh->queues, queue_name(q), xhash(queue_name(q)), q); }

void vhost_unbind(struct vhost *vh, struct binding *b)
{
    struct exchange *src = b->source;
    persist_binding(b, false);
    binding_remove(b, incoming_of(b));
    if (src->auto_delete && src->nbindings == 0 && !src->builtin)
        vhost_delete_exchange(vh, src);
}

unsigned vhost_delete_queue(struct vhost *vh, struct queue *q)
{
    persist_queue_deleted(q);
    q->deleted = true;
    qpolicy_free(q);
    while (q->nconsumers)
        consumer_queue_deleted(q->consumers[q->nconsumers - 1]);
    while (q->incoming)
        vhost_unbind(vh, q->incoming);
    xmap_del(&vh->queues, queue_name(q), xhash(queue_name(q)));
    if (q->owner)
        conn_remove_exclusive(q->owner, q);
    unsigned n = (unsigned)queue_purge(q);
    queue_unref(&q);
    return n;
}

void vhost_delete_exchange(struct vhost *vh, struct exchange *x)
{
    persist_exchange_deleted(x);
    while (x->bindings)
        binding_remove(x->bindings, incoming_of(x->bindings));
    while (x->incoming)
        vhost_unbind(vh, x->incoming);
    xmap_del(&vh->exchanges, exchange_name(x), xhash(exchange_name(x)));
    exchange_free(&x);
}
