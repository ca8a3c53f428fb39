#include "server/qstore.h"

#include <string.h>

#include "amqp_methods.h"
#include "server/broker.h"
#include "server/log.h"
#include "server/message.h"
#include "server/persist.h"
#include "server/qpolicy.h"
#include "server/queue.h"
#include "server/vhost.h"
#include "storage/store.h"

static struct store *store_of(const struct queue *q) { return q->vh->broker->store; }

/* A priority queue keeps all its messages in memory: its order is not the store's. */
static bool window_full(const struct queue *q)
{
    if (q->qa.max_priority)
        return false;
    return q->disk_count > 0 || q->count >= QUEUE_WINDOW || q->ring_bytes >= QUEUE_WINDOW_BYTES;
}

bool qstore_wants(const struct queue *q, const struct message *m)
{
    return q->store_id && store_of(q) && !q->deleted && (m->delivery_mode == 2 || window_full(q));
}

bool qstore_put(struct queue *q, struct qentry *e)
{
    struct broker *b = q->vh->broker;
    struct store *s = b->store;
    struct message *m = e->msg;
    uint64_t batch = store_open_batch(s);
    if (m->store_batch != batch) {
        m->store_op = store_put_message(s, m->id, message_exchange(m), message_rkey(m), message_props(m),
                                        amqp_bytes_of(m->body, m->body_len), m->delivery_mode != 2, message_ref(m));
        m->store_batch = batch;
    }
    uint32_t op = store_put_entry(s, q->store_id, e->seq, m->store_op, m->store_shared, e->expires_at);
    broker_wake(b);
    if (window_full(q)) {
        if (q->disk_count++ == 0)
            q->disk_seq = e->seq;
        q->disk_bytes += m->body_len;
        q->disk_batch = batch;
        return false;
    }
    e->stored = true;
    e->store_batch = batch;
    e->store_op = op;
    return true;
}

void qstore_remove(struct queue *q, struct qentry *e)
{
    struct store *s = store_of(q);
    if (!e->stored || q->deleted || !s)
        return;
    e->stored = false;
    if (!store_cancel_entry(s, e->store_batch, e->store_op))
        store_remove_entry(s, q->store_id, e->seq, e->msg->id, e->msg->store_shared);
    broker_wake(q->vh->broker);
}

void qstore_delivered(struct queue *q, const struct qentry *e)
{
    struct store *s = store_of(q);
    if (e->stored && s)
        store_set_delivered(s, q->store_id, e->seq, &q->delivered_batch, &q->delivered_op);
}

void qstore_purge_paged(struct queue *q)
{
    struct store *s = store_of(q);
    if (!q->disk_count)
        return;
    if (s && !q->deleted) {
        store_remove_from(s, q->store_id, q->disk_seq);
        broker_wake(q->vh->broker);
    }
    q->disk_count = 0;
    q->disk_bytes = 0;
}

/* Appends one entry read back from the store to the ring; false once the window's
 * bytes are used up. */
static bool load_one(void *arg, const struct store_entry *se)
{
    struct queue *q = arg;
    struct amqp_basic_properties pr;
    if (amqp_props_decode(se->props.ptr, se->props.len, &pr) != 0) {
        log_error("store: queue '%s': message %llu has unreadable properties; dropped", q->name,
                  (unsigned long long)se->msg_id);
        memset(&pr, 0, sizeof pr);
    }
    struct message *m = message_new(se->msg_id, se->exchange, se->rkey, se->props.ptr, se->props.len, &pr,
                                    se->body.len);
    if (se->body.len)
        memcpy(m->body, se->body.ptr, se->body.len);
    m->body_received = m->body_len;
    m->store_shared = se->shared;
    struct qentry e = {
        .msg = m,
        .seq = se->seq,
        .redelivered = se->seq <= q->delivered_seq,
        .deliveries = se->seq <= q->delivered_seq, /* counts from one delivery after a restart */
        .stored = true,
        .expires_at = se->expires,
    };
    if (m->ttl >= 0)
        q->has_msg_ttl = true;
    queue_put(q, e);
    if (e.expires_at)
        qpolicy_arm(q, e.expires_at);
    q->disk_count--;
    q->disk_bytes = q->disk_bytes > se->body.len ? q->disk_bytes - se->body.len : 0;
    q->disk_seq = se->seq + 1;
    return q->qa.max_priority || q->ring_bytes < QUEUE_WINDOW_BYTES;
}

size_t qstore_page_in(struct queue *q)
{
    struct store *s = store_of(q);
    bool all = q->qa.max_priority != 0; /* read whole: priority order spans the backlog */
    if (!q->disk_count || q->awaiting_commit || !s ||
        (!all && (q->count >= QUEUE_WINDOW || (q->count && q->ring_bytes >= QUEUE_WINDOW_BYTES))))
        return 0;
    long n = store_read_entries(s, q->store_id, q->disk_seq, all ? (size_t)q->disk_count : QUEUE_WINDOW - q->count,
                                load_one, q);
    if (n == 0 && store_committed(s) < q->disk_batch) {
        persist_wait_commit(q); /* the paged-out entries are still on their way to the disk */
        return 0;
    }
    if (n == 0 && q->disk_count) {
        log_error("store: queue '%s' should have %llu more messages in the store but has none; "
                  "counting them as gone", q->name, (unsigned long long)q->disk_count);
        q->disk_count = 0;
        q->disk_bytes = 0;
    }
    return n > 0 ? (size_t)n : 0;
}
