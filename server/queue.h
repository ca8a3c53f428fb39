/* Queues: ready messages in publish order, consumers served round-robin, and the
 * bookkeeping that lets a requeued message go back to its original position. */
#ifndef WARREN_QUEUE_H
#define WARREN_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "amqp/bytes.h"

struct message;
struct vhost;
struct connection;
struct consumer;
struct binding;

/* One message in one queue. seq orders the queue; a requeue puts the entry back by seq. */
struct qentry {
    struct message *msg;
    uint64_t seq;
    bool redelivered;
};

struct queue {
    char *name;
    size_t name_len;
    struct vhost *vh;
    bool durable, exclusive, auto_delete;
    struct connection *owner;   /* exclusive owner, else NULL */
    uint8_t *args;              /* raw arguments table */
    size_t args_len;

    struct qentry *ring;        /* ready messages: ring[(head + i) % cap], i < count */
    size_t head, count, cap;
    uint64_t next_seq;

    struct consumer **consumers;
    size_t nconsumers, consumers_cap, next_consumer;
    bool had_consumer;          /* for auto-delete: only after a first consumer went */
    size_t unacked;             /* delivered, not yet acked or requeued */

    struct binding *incoming;   /* bindings with this queue as destination */
    uint64_t route_mark;        /* routing dedup, see exchange_route */
    uint32_t refs;
    bool deleted;
    bool dirty;                 /* waiting in the broker's dispatch list */
    struct queue *dirty_next;
};

static inline amqp_bytes queue_name(const struct queue *q) { return amqp_bytes_of(q->name, q->name_len); }

/* Creates a queue with refs = 1 (held by its vhost). Never NULL. */
struct queue *queue_new(struct vhost *vh, amqp_bytes name, bool durable, bool exclusive,
                        bool auto_delete, struct connection *owner, amqp_bytes args);
void queue_ref(struct queue *q);
/* Drops a reference; frees the queue (and its remaining messages) at zero. */
void queue_unref(struct queue **qp);

/* Appends a message (the queue takes its own reference) and wakes dispatch. */
void queue_publish(struct queue *q, struct message *m);
/* Pops the head. Returns 1 and fills *out (the caller owns out->msg's reference), 0 if empty. */
int queue_pop(struct queue *q, struct qentry *out);
/* Puts a delivered entry back at its original position, marked redelivered; takes over
 * e's reference. A deleted queue just drops it. Wakes dispatch. */
void queue_requeue(struct queue *q, struct qentry e);
/* Removes every ready message; returns how many. */
size_t queue_purge(struct queue *q);

void queue_add_consumer(struct queue *q, struct consumer *c);
void queue_remove_consumer(struct queue *q, struct consumer *c);
/* Asks for a dispatch pass later in this loop turn (deliveries are batched). */
void queue_wake(struct queue *q);
/* Hands ready messages to consumers with credit, round-robin, until either runs out. */
void queue_dispatch(struct queue *q);

#endif
