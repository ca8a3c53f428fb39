/* Queues: ready messages in publish order, consumers served round-robin, and the
 * bookkeeping that lets a requeued message go back to its original position. */
#ifndef WARREN_QUEUE_H
#define WARREN_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "amqp/bytes.h"
#include "server/qargs.h"

struct message;
struct vhost;
struct connection;
struct consumer;
struct binding;

/* One message in one queue. seq orders the queue; a requeue puts the entry back by seq.
 * stored: the entry has a row in the store (or an insert in batch store_batch, op store_op). */
struct qentry {
    struct message *msg;
    uint64_t seq;
    int64_t expires_at;         /* ms since the epoch; 0 = never */
    uint64_t store_batch;
    uint32_t store_op;
    bool redelivered;
    bool stored;
    uint16_t deliveries;        /* times delivered (x-delivery-count, x-delivery-limit); saturates */
};

/* A stored queue keeps at most this many ready messages (and bytes) in memory; the rest
 * wait in the store and are paged in as the window drains. */
#define QUEUE_WINDOW 4096
#define QUEUE_WINDOW_BYTES (8u * 1024 * 1024)

struct queue {
    char *name;
    size_t name_len;
    struct vhost *vh;
    bool durable, exclusive, auto_delete;
    struct connection *owner;   /* exclusive owner, else NULL */
    uint8_t *args;              /* raw arguments table */
    size_t args_len;
    struct qargs qa;            /* the arguments Warren acts on, parsed from args */

    struct qentry *ring;        /* ready messages: ring[(head + i) % cap], i < count */
    size_t head, count, cap;
    size_t ring_bytes;          /* body bytes of the ring's messages */
    uint64_t next_seq;

    uint64_t store_id;          /* durable, not exclusive: its id in the store; else 0 */
    uint64_t disk_count;        /* ready entries paged out: in the store only, after the ring */
    uint64_t disk_seq;          /* the lowest seq among them */
    uint64_t disk_bytes;        /* their body bytes */
    uint64_t disk_batch;        /* the batch that paged the newest of them out */
    uint64_t delivered_seq;     /* before the last restart, entries up to here were delivered */
    uint64_t delivered_batch;   /* the store's delivered mark for this queue, see store_set_delivered */
    uint32_t delivered_op;
    bool awaiting_commit;       /* paging in waits for disk_batch to commit */

    int64_t next_expiry;        /* deadline of expiry_ev (ms since the epoch); 0 = not armed */
    struct event *expiry_ev;
    struct event *unused_ev;    /* x-expires countdown */
    bool has_msg_ttl;           /* an entry has its own TTL: expiry scans the whole ring */
    bool trim_pending;          /* requeues may have put it over its length limit */

    struct consumer **consumers;
    size_t nconsumers, consumers_cap, next_consumer;
    bool had_consumer;          /* for auto-delete: only after a first consumer went */
    bool consumer_priorities;   /* a consumer has an x-priority: dispatch compares them */
    size_t unacked;             /* delivered, not yet acked or requeued */

    struct binding *incoming;   /* bindings with this queue as destination */
    uint64_t route_mark;        /* routing dedup, see exchange_route */
    uint32_t refs;
    bool deleted;
    bool dirty;                 /* waiting in the broker's dispatch list */
    struct queue *dirty_next;
};

static inline amqp_bytes queue_name(const struct queue *q) { return amqp_bytes_of(q->name, q->name_len); }
/* Ready messages, in memory and paged out, and their body bytes. */
static inline uint64_t queue_ready(const struct queue *q) { return q->count + q->disk_count; }
static inline uint64_t queue_ready_bytes(const struct queue *q) { return q->ring_bytes + q->disk_bytes; }

/* Creates a queue with refs = 1 (held by its vhost). Never NULL. */
struct queue *queue_new(struct vhost *vh, amqp_bytes name, bool durable, bool exclusive,
                        bool auto_delete, struct connection *owner, amqp_bytes args);
void queue_ref(struct queue *q);
/* Drops a reference; frees the queue (and its remaining messages) at zero. */
void queue_unref(struct queue **qp);

/* Appends a message (the queue takes its own reference) and wakes dispatch, applying
 * the queue's TTL and length limit (which may dead-letter or drop messages). Returns false
 * if the queue refused it (x-overflow reject-publish): the publisher gets a nack. */
bool queue_publish(struct queue *q, struct message *m);
/* Pops the head (paging in from the store first if the ring is empty; expired entries
 * are dead-lettered and skipped). Returns 1 and fills
 * *out (the caller owns out->msg's reference), 0 if nothing is ready. */
int queue_pop(struct queue *q, struct qentry *out);
/* The entry out of queue_pop is done with for good (acked, dropped, sent with no-ack):
 * removes it from the store. */
void queue_settle(struct queue *q, struct qentry *e);
/* Puts a delivered entry back at its original position, marked redelivered; takes over
 * e's reference. A deleted queue just drops it. Wakes dispatch. */
void queue_requeue(struct queue *q, struct qentry e);
/* Puts an entry into the ring in queue order (one paged in from the store, or one kept
 * by an expiry scan); no policy is applied. */
void queue_put(struct queue *q, struct qentry e);
/* Removes the head without expiry checks. Returns 1 and fills *out, 0 if the ring is empty. */
int queue_pop_ring(struct queue *q, struct qentry *out);
/* Drops e for good (the caller's reference goes): dead-letters it for reason (an enum
 * dl_reason) if the queue has a dead-letter exchange, and removes it from the store. */
void queue_drop(struct queue *q, struct qentry *e, int reason);
/* Removes every ready message, in memory and in the store; returns how many. */
size_t queue_purge(struct queue *q);

void queue_add_consumer(struct queue *q, struct consumer *c);
void queue_remove_consumer(struct queue *q, struct consumer *c);
/* Asks for a dispatch pass later in this loop turn (deliveries are batched). */
void queue_wake(struct queue *q);
/* Hands ready messages to consumers with credit, round-robin, until either runs out. */
void queue_dispatch(struct queue *q);

#endif
