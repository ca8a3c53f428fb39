/* A stored queue's side of the store: writing its entries, removing them, recording
 * deliveries, and paging entries out when the in-memory window is full and back in as it
 * drains. Stored queues are the durable, non-exclusive ones (queue->store_id != 0). */
#ifndef WARREN_QSTORE_H
#define WARREN_QSTORE_H

#include <stdbool.h>
#include <stddef.h>

struct queue;
struct qentry;
struct message;

/* True if publishing m to q writes to the store: a persistent message, or any message
 * once q's window is full. */
bool qstore_wants(const struct queue *q, const struct message *m);
/* Writes the entry e (seq and msg filled in) for a message that qstore_wants. Returns
 * true if e stays in memory (marked stored), false if it was paged out: then q holds no
 * reference to e->msg and counts it in disk_count. */
bool qstore_put(struct queue *q, struct qentry *e);
/* e has left q for good: removes its row (or undoes its insert if not yet handed over). */
void qstore_remove(struct queue *q, struct qentry *e);
/* e was just handed to a consumer or basic.get: moves q's delivered mark. */
void qstore_delivered(struct queue *q, const struct qentry *e);
/* Drops every paged-out entry of q from the store. */
void qstore_purge_paged(struct queue *q);
/* Moves paged-out entries into q's ring, up to the window. Returns how many. If the
 * entries are not committed yet, arranges a wake-up after the commit and returns 0. */
size_t qstore_page_in(struct queue *q);

#endif
