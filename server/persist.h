/* The broker's side of the store: opening it and rebuilding durable exchanges, queues
 * and bindings at startup, writing entity changes, the once-per-turn commit, and what
 * happens when a commit lands (confirms, paging) or writing fails (the disk alarm). */
#ifndef WARREN_PERSIST_H
#define WARREN_PERSIST_H

#include <stdbool.h>

struct broker;
struct exchange;
struct queue;
struct binding;
struct connection;

/* Opens the store in the data directory and recovers durable state into the vhosts.
 * Returns 0, or -1 after logging why. */
int persist_open(struct broker *b);
/* Commits what is pending and closes the store; later persist_* calls do nothing. */
void persist_close(struct broker *b);
/* End of a loop turn: commits entity changes before their replies go out (blocking), or
 * hands the batch of message writes to the writer. */
void persist_end_of_turn(struct broker *b);

/* Entity changes; each does nothing for entities that are not durable. */
void persist_exchange_added(struct exchange *x);
void persist_exchange_deleted(struct exchange *x);
/* Gives a durable, non-exclusive queue its store id and writes it. */
void persist_queue_added(struct queue *q);
void persist_queue_deleted(struct queue *q);
/* q was purged: its removals commit before purge-ok goes out. */
void persist_queue_purged(struct queue *q);
void persist_binding(struct binding *bd, bool added);

/* Commits everything pending now, blocking the loop. Returns 0, or -1 if writing fails. */
int persist_sync_now(struct broker *b);
/* Call after handling a method of c that may have changed durable entities: if it did,
 * c's reply goes out only once the change is committed. */
void persist_reply_waits(struct connection *c);

/* Wakes q when the next batch commits (its paged-out entries wait for it). */
void persist_wait_commit(struct queue *q);

/* True if more message data waits for the writer than one batch should hold: publishers
 * are not read until a commit lands (server/alarm.h). */
bool persist_backlog_full(const struct broker *b);

/* True (and q is woken after the next commit) if stored queue q must not deliver now:
 * every delivery's ack adds a write, and the writer is too far behind. */
bool persist_hold_deliveries(struct queue *q);

#endif
