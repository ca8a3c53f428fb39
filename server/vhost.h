/* A virtual host: its exchanges and queues by name, and the operations that keep the
 * routing graph consistent (deleting a queue removes its bindings, auto-delete, ...). */
#ifndef WARREN_VHOST_H
#define WARREN_VHOST_H

#include <stdbool.h>

#include "amqp/bytes.h"
#include "common/xmap.h"

struct broker;
struct exchange;
struct queue;
struct binding;

struct vhost {
    char *name;
    struct broker *broker;
    struct xmap exchanges;
    struct xmap queues;
    struct exchange *default_exchange;
};

/* Creates a vhost with the default exchange and amq.* predeclared. Never NULL. */
struct vhost *vhost_new(struct broker *b, const char *name);
void vhost_free(struct vhost **vhp);

struct exchange *vhost_exchange(struct vhost *vh, amqp_bytes name);
struct queue *vhost_queue(struct vhost *vh, amqp_bytes name);
void vhost_add_exchange(struct vhost *vh, struct exchange *x);
void vhost_add_queue(struct vhost *vh, struct queue *q);

/* Deletes a queue: cancels its consumers (notifying clients that asked for it), removes its
 * bindings (auto-deleting exchanges left without bindings) and drops it from the map.
 * Returns the number of ready messages it had. */
unsigned vhost_delete_queue(struct vhost *vh, struct queue *q);
/* Deletes an exchange and every binding from or to it. */
void vhost_delete_exchange(struct vhost *vh, struct exchange *x);
/* Removes a binding and auto-deletes its source if that was its last binding. */
void vhost_unbind(struct vhost *vh, struct binding *b);

#endif
