/* Durable state: exchanges, queues, bindings and persistent messages, written by logical
 * operations that the event loop collects into batches and a writer thread commits, one
 * transaction per batch. No SQLite type appears here, so another engine can stand behind
 * the same calls.
 *
 * Threads: every function here is called from the event-loop thread only. The writer
 * thread is internal; it reports finished batches through store_notify_fd(), and the
 * loop then calls store_reap(), which runs the callbacks on the loop thread. */
#ifndef WARREN_STORE_H
#define WARREN_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "amqp/bytes.h"

struct store;

/* What the loop hears about the writer. */
struct store_callbacks {
    /* Every batch up to and including `batch` is committed. */
    void (*committed)(void *arg, uint64_t batch);
    /* Writing failed and is being retried (failing = true), or works again (false). */
    void (*failing)(void *arg, bool failing, const char *why);
    /* The batch that held this message no longer needs it (see store_put_message). */
    void (*release)(void *arg, void *cookie);
    void *arg;
};

/* Opens or creates DIR/warren.db and takes DIR/warren.lock. Refuses (returns NULL after
 * logging why, naming the file) a directory in use by another process, a file that is not
 * a Warren database, a corrupt one, or one with a newer schema. */
struct store *store_open(const char *dir, const struct store_callbacks *cb);
/* Commits what is pending (unless writing is failing), stops the writer, closes. */
void store_close(struct store **sp);
/* A descriptor that becomes readable when store_reap() has something to do. */
int store_notify_fd(const struct store *s);
/* Runs the callbacks for what the writer finished; then hands it the next batch. */
void store_reap(struct store *s);

/* ---- recovery: called once, after store_open and before any write ---- */

struct store_exchange {
    const char *vhost;
    amqp_bytes name, type, args;
    bool auto_delete, internal;
};
struct store_queue {
    uint64_t id;
    const char *vhost;
    amqp_bytes name, args;
    bool auto_delete;
    uint64_t count;          /* entries waiting */
    uint64_t bytes;          /* their body bytes */
    int64_t first_expiry;    /* the earliest expiry among them (ms since the epoch), 0 = none */
    uint64_t first_seq;      /* lowest entry seq (when count > 0) */
    uint64_t next_seq;       /* above every stored entry and the delivered mark */
    uint64_t delivered_seq;  /* entries up to this seq may have been delivered */
};
struct store_binding {
    const char *vhost;
    amqp_bytes source, dest, rkey, args;
    bool dest_is_exchange;
};
struct store_recovery {
    void (*exchange)(void *arg, const struct store_exchange *x);
    void (*queue)(void *arg, const struct store_queue *q);
    void (*binding)(void *arg, const struct store_binding *b);
    void *arg;
};
/* Drops paged-out transient messages, then reports every exchange, queue and binding.
 * Sets *max_message_id and *max_queue_id to the highest ids in use. Returns 0 or -1. */
int store_recover(struct store *s, const struct store_recovery *r, uint64_t *max_message_id,
                  uint64_t *max_queue_id);

/* ---- writes: collected in the open batch, committed by the writer ---- */

/* The id of the batch that writes go into now; batches commit in id order. */
uint64_t store_open_batch(const struct store *s);
/* The newest batch that holds writes (open or with the writer); <= store_committed()
 * when nothing is pending. */
uint64_t store_pending_batch(const struct store *s);
/* The highest batch id known committed. */
uint64_t store_committed(const struct store *s);
/* Bytes that the open batch holds: message data and the writes themselves (for
 * back-pressure while the writer is busy). */
size_t store_backlog(const struct store *s);
/* True while the writer is failing and retrying. */
bool store_failing(const struct store *s);

/* Stores a message once, whatever the number of queues that get entries for it. The
 * pointed-to bytes must stay valid until callbacks.release(cookie) is called. shared: it
 * has entries in more than one queue. Returns a handle for store_put_entry. */
uint32_t store_put_message(struct store *s, uint64_t id, amqp_bytes exchange, amqp_bytes rkey,
                           amqp_bytes props, amqp_bytes body, bool transient, void *cookie);
/* Puts message msg_handle (from store_put_message in this batch) in queue qid at seq;
 * expires: ms since the epoch, 0 = never.
 * Returns a handle that store_cancel_entry accepts while the batch is still open. */
uint32_t store_put_entry(struct store *s, uint64_t qid, uint64_t seq, uint32_t msg_handle, bool shared,
                         int64_t expires);
/* Undoes an entry put in batch `batch` if that batch is still open (the message was acked
 * before it was written); when no entry of the message is left, the message goes too.
 * Returns true if undone, false if the caller must store_remove_entry instead. */
bool store_cancel_entry(struct store *s, uint64_t batch, uint32_t handle);
/* Removes the entry qid/seq, and its message when no other queue holds it. */
void store_remove_entry(struct store *s, uint64_t qid, uint64_t seq, uint64_t msg_id, bool shared);
/* Removes every entry of qid with seq >= from_seq (and messages left without entries). */
void store_remove_from(struct store *s, uint64_t qid, uint64_t from_seq);
/* Records that entries of qid up to seq may have been delivered. op_batch and op_handle
 * remember the write so that later calls in the same batch update it in place. */
void store_set_delivered(struct store *s, uint64_t qid, uint64_t seq, uint64_t *op_batch, uint32_t *op_handle);

void store_put_exchange(struct store *s, const struct store_exchange *x);
void store_delete_exchange(struct store *s, const char *vhost, amqp_bytes name);
void store_put_queue(struct store *s, const struct store_queue *q);
/* Deletes the queue and all its entries. */
void store_delete_queue(struct store *s, uint64_t qid);
void store_put_binding(struct store *s, const struct store_binding *b);
void store_delete_binding(struct store *s, const struct store_binding *b);

/* Hands the open batch to the writer if it is idle (else it waits for the next reap).
 * Call once per loop turn. */
void store_submit(struct store *s);
/* Waits until everything written so far is committed. Sets *batch to the batch that
 * holds the last write. Returns 0, or -1 if writing is failing (the writes stay queued
 * and are retried; *batch commits later). Blocks the loop: for rare changes. */
int store_sync(struct store *s, uint64_t *batch);

/* ---- reads: the loop thread pages entries back in ---- */

struct store_entry {
    uint64_t seq, msg_id;
    int64_t expires;
    bool shared;
    amqp_bytes exchange, rkey, props, body; /* valid only during the callback */
};
/* Calls fn for up to limit committed entries of qid with seq >= from_seq, in seq order,
 * until fn returns false. Returns how many were passed to fn, or -1 after logging. */
long store_read_entries(struct store *s, uint64_t qid, uint64_t from_seq, size_t limit,
                        bool (*fn)(void *arg, const struct store_entry *e), void *arg);

#endif
