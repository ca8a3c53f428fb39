/* Dead-lettering: a message that leaves a queue rejected, expired, dropped by a length
 * limit or over its delivery limit is republished to the queue's dead-letter exchange
 * with RabbitMQ's x-death history (CONFORMANCE.md, "Dead lettering"). */
#ifndef WARREN_DEADLETTER_H
#define WARREN_DEADLETTER_H

struct queue;
struct message;

enum dl_reason { DL_REJECTED, DL_EXPIRED, DL_MAXLEN, DL_DELIVERY_LIMIT };

/* If q has a dead-letter exchange that exists, publishes a copy of m to it: expiration
 * removed (kept as original-expiration), x-death and x-first-death-* updated, routed with
 * q's dead-letter routing key or m's own, skipping queues where it would cycle without a
 * rejection. The caller still owns m and removes its entry from q. */
void deadletter(struct queue *q, struct message *m, enum dl_reason reason);

#endif
