/* Exchanges and bindings: the routing graph of a vhost. Routing follows exchange-to-exchange
 * bindings and alternate exchanges and returns each queue once. */
#ifndef WARREN_EXCHANGE_H
#define WARREN_EXCHANGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "amqp/bytes.h"
#include "exchanges/xtype.h"

struct vhost;
struct queue;

struct binding {
    struct xbinding xb;          /* xb.dest is a struct queue * or a struct exchange * */
    struct exchange *source;
    bool dest_is_exchange;
    struct binding *src_next, *src_prev; /* in source->bindings */
    struct binding *dst_next, *dst_prev; /* in the destination's incoming list */
    uint8_t data[];              /* key and args bytes */
};

struct exchange {
    char *name;
    size_t name_len;
    struct vhost *vh;
    const struct xtype *type;
    void *index;
    bool durable, auto_delete, internal;
    bool builtin;                /* "" and amq.*: cannot be declared or deleted by clients */
    bool is_default;             /* "": routes to the queue named by the routing key */
    uint8_t *args;
    size_t args_len;
    char *alternate;             /* alternate-exchange name or NULL */
    struct binding *bindings;    /* as source */
    size_t nbindings;
    struct binding *incoming;    /* exchange-to-exchange bindings with this as destination */
    uint64_t route_mark;
};

static inline amqp_bytes exchange_name(const struct exchange *x) { return amqp_bytes_of(x->name, x->name_len); }

/* Creates an exchange (not yet in any vhost map). Never NULL. */
struct exchange *exchange_new(struct vhost *vh, amqp_bytes name, const struct xtype *type,
                              bool durable, bool auto_delete, bool internal, amqp_bytes args);
/* Frees an exchange that has no bindings left. */
void exchange_free(struct exchange **xp);

/* Where exchange_route collects queues; kept and reused by its owner so that routing a
 * message allocates nothing once the arrays have grown. */
struct route_result {
    struct queue **queues;
    size_t n, cap;
    struct exchange **pending; /* exchanges still to route through (e2e, alternate) */
    size_t npending, pending_cap;
};
void route_result_free(struct route_result *r);

/* Collects in out (reset first) every queue the message reaches from x, each once. */
void exchange_route(struct exchange *x, amqp_bytes rkey, amqp_bytes headers, struct route_result *out);

/* Finds the binding source->dest with this key and args, or NULL. */
struct binding *binding_find(struct exchange *source, void *dest, amqp_bytes key, amqp_bytes args);
/* Adds a binding (validated by the caller with source->type->validate). Never NULL. */
struct binding *binding_add(struct exchange *source, void *dest, bool dest_is_exchange,
                            struct binding **dest_incoming, amqp_bytes key, amqp_bytes args);
/* Removes and frees a binding. */
void binding_remove(struct binding *b, struct binding **dest_incoming);

#endif
