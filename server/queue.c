#include "server/queue.h"

#include <stdlib.h>
#include <string.h>

#include "server/broker.h"
#include "server/channel.h"
#include "server/message.h"
#include "server/deadletter.h"
#include "server/persist.h"
#include "server/qpolicy.h"
#include "server/qstore.h"
#include "server/vhost.h"
#include "common/xalloc.h"

struct queue *queue_new(struct vhost *vh, amqp_bytes name, bool durable, bool exclusive,
                        bool auto_delete, struct connection *owner, amqp_bytes args)
{
    struct queue *q = xcalloc(1, sizeof *q);
    q->name = xstrndup(name.ptr, name.len);
    q->name_len = name.len;
    q->vh = vh;
    q->durable = durable;
    q->exclusive = exclusive;
    q->auto_delete = auto_delete;
    q->owner = owner;
    q->args = xmalloc(args.len);
    memcpy(q->args, args.ptr, args.len);
    q->args_len = args.len;
    char err[256];
    if (qargs_parse(amqp_bytes_of(q->args, q->args_len), &q->qa, "queue", err, sizeof err) != 0)
        qargs_parse(amqp_bytes_of("", 0), &q->qa, "queue", err, sizeof err); /* checked at declare */
    q->refs = 1;
    q->next_seq = 1;
    return q;
}

void queue_ref(struct queue *q) { q->refs++; }

void queue_unref(struct queue **qp)
{
    struct queue *q = *qp;
    *qp = NULL;
    if (!q || --q->refs > 0)
        return;
    queue_purge(q);
    qpolicy_free(q);
    free(q->ring);
    free(q->consumers);
    free(q->args);
    free(q->name);
    free(q);
}

static struct qentry *at(struct queue *q, size_t i) { return &q->ring[(q->head + i) & (q->cap - 1)]; }

static void grow(struct queue *q)
{
    size_t ncap = q->cap ? q->cap * 2 : 16;
    struct qentry *n = xmalloc(ncap * sizeof *n);
    for (size_t i = 0; i < q->count; i++)
        n[i] = *at(q, i);
    free(q->ring);
    q->ring = n;
    q->cap = ncap;
    q->head = 0;
}

static uint8_t entry_priority(const struct queue *q, const struct qentry *e)
{
    return e->msg->priority < q->qa.max_priority ? e->msg->priority : q->qa.max_priority;
}

/* The queue's order: by seq; in a priority queue, highest priority first, then by seq. */
static bool goes_before(const struct queue *q, const struct qentry *a, const struct qentry *b)
{
    if (q->qa.max_priority) {
        uint8_t pa = entry_priority(q, a), pb = entry_priority(q, b);
        if (pa != pb)
            return pa > pb;
    }
    return a->seq < b->seq;
}

/* Puts e in its place in the ring: usually at one end, else found by binary search. */
static void insert_ordered(struct queue *q, struct qentry e)
{
    if (q->count == q->cap)
        grow(q);
    size_t pos;
    if (q->count == 0 || !goes_before(q, &e, at(q, q->count - 1))) {
        pos = q->count;
    } else if (goes_before(q, &e, at(q, 0))) {
        pos = 0;
    } else {
        size_t lo = 1, hi = q->count - 1;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (goes_before(q, at(q, mid), &e))
                lo = mid + 1;
            else
                hi = mid;
        }
        pos = lo;
    }
    if (pos == 0) {
        q->head = (q->head + q->cap - 1) & (q->cap - 1);
    } else {
        for (size_t i = q->count; i > pos; i--)
            *at(q, i) = *at(q, i - 1);
    }
    *at(q, pos) = e;
    q->count++;
    q->ring_bytes += e.msg->body_len;
}

static void push_tail(struct queue *q, struct qentry e)
{
    if (q->qa.max_priority) {
        insert_ordered(q, e);
        return;
    }
    if (q->count == q->cap)
        grow(q);
    *at(q, q->count++) = e;
    q->ring_bytes += e.msg->body_len;
}

bool queue_publish(struct queue *q, struct message *m)
{
    if (!qpolicy_admit(q, m))
        return false;
    struct qentry e = { .msg = m, .seq = q->next_seq++ };
    bool deliver_now;
    if (!qpolicy_stamp(q, &e, &deliver_now)) {
        deadletter(q, m, DL_EXPIRED); /* TTL 0 and nobody to take it */
        return true;
    }
    if (qstore_wants(q, m) && !qstore_put(q, &e)) {
        qpolicy_trim(q); /* paged out: only in the store until the window drains */
        return true;
    }
    message_ref(m);
    push_tail(q, e);
    if (e.expires_at)
        qpolicy_arm(q, e.expires_at);
    /* A message a consumer can take now never counts against a length limit: hand it over
     * before trimming (as RabbitMQ does), not at the end of the loop turn. */
    if ((q->qa.max_length >= 0 || q->qa.max_length_bytes >= 0) && q->nconsumers)
        queue_dispatch(q);
    qpolicy_trim(q);
    if (deliver_now)
        queue_dispatch(q);
    else if (q->nconsumers)
        queue_wake(q);
    return true;
}

void queue_put(struct queue *q, struct qentry e) { push_tail(q, e); }

int queue_pop_ring(struct queue *q, struct qentry *out)
{
    if (q->count == 0)
        return 0;
    *out = *at(q, 0);
    q->head = (q->head + 1) & (q->cap - 1);
    q->count--;
    q->ring_bytes -= out->msg->body_len;
    return 1;
}

int queue_pop(struct queue *q, struct qentry *out)
{
    int64_t now = 0;
    for (;;) {
        if (q->count == 0 && q->disk_count)
            qstore_page_in(q);
        if (!queue_pop_ring(q, out))
            return 0;
        if (out->expires_at && !now)
            now = qpolicy_now();
        if (!qpolicy_expired(out, now))
            break;
        queue_drop(q, out, DL_EXPIRED); /* never delivered once expired */
    }
    qstore_delivered(q, out);
    if (out->deliveries < UINT16_MAX)
        out->deliveries++;
    return 1;
}

void queue_settle(struct queue *q, struct qentry *e) { qstore_remove(q, e); }

void queue_drop(struct queue *q, struct qentry *e, int reason)
{
    if (!q->deleted)
        deadletter(q, e->msg, (enum dl_reason)reason);
    qstore_remove(q, e);
    message_unref(&e->msg);
}

void queue_requeue(struct queue *q, struct qentry e)
{
    if (q->deleted) {
        message_unref(&e.msg);
        return;
    }
    e.redelivered = true;
    if (q->qa.delivery_limit >= 0 && e.deliveries > q->qa.delivery_limit) {
        queue_drop(q, &e, DL_DELIVERY_LIMIT); /* delivered too often: dead-lettered instead */
        return;
    }
    insert_ordered(q, e); /* back to its original position */
    if (e.expires_at)
        qpolicy_arm(q, e.expires_at); /* it keeps its expiry: maybe already past */
    if (q->qa.max_length >= 0 || q->qa.max_length_bytes >= 0) {
        q->trim_pending = true; /* after every requeue of this settle, oldest dropped first */
        queue_wake(q);
    }
    if (q->nconsumers)
        queue_wake(q);
}

size_t queue_purge(struct queue *q)
{
    size_t n = (size_t)queue_ready(q);
    struct qentry e;
    while (queue_pop_ring(q, &e)) {
        qstore_remove(q, &e);
        message_unref(&e.msg);
    }
    qstore_purge_paged(q);
    return n;
}

void queue_add_consumer(struct queue *q, struct consumer *c)
{
    if (q->nconsumers == q->consumers_cap) {
        q->consumers_cap = q->consumers_cap ? q->consumers_cap * 2 : 4;
        q->consumers = xrealloc(q->consumers, q->consumers_cap * sizeof *q->consumers);
    }
    q->consumers[q->nconsumers++] = c;
    q->had_consumer = true;
    if (c->priority)
        q->consumer_priorities = true;
    queue_wake(q);
}

void queue_remove_consumer(struct queue *q, struct consumer *c)
{
    for (size_t i = 0; i < q->nconsumers; i++) {
        if (q->consumers[i] != c)
            continue;
        memmove(&q->consumers[i], &q->consumers[i + 1], (q->nconsumers - i - 1) * sizeof c);
        q->nconsumers--;
        if (q->next_consumer > i)
            q->next_consumer--;
        if (q->next_consumer >= q->nconsumers)
            q->next_consumer = 0;
        return;
    }
}

void queue_wake(struct queue *q)
{
    if (!q->dirty && !q->deleted)
        broker_mark_dirty(q->vh->broker, q);
}

/* The consumer the next message goes to: round-robin over those with credit; only the
 * first (oldest) consumer with x-single-active-consumer; with consumer priorities
 * (x-priority), the highest priority that has credit, round-robin among equals. */
static struct consumer *pick_consumer(struct queue *q)
{
    if (q->qa.single_active_consumer)
        return consumer_has_credit(q->consumers[0]) ? q->consumers[0] : NULL;
    struct consumer *best = NULL;
    size_t best_i = 0;
    for (size_t k = 0; k < q->nconsumers; k++) {
        size_t i = (q->next_consumer + k) % q->nconsumers;
        struct consumer *c = q->consumers[i];
        if ((!best || c->priority > best->priority) && consumer_has_credit(c)) {
            best = c;
            best_i = i;
            if (!q->consumer_priorities)
                break;
        }
    }
    if (best)
        q->next_consumer = (best_i + 1) % q->nconsumers;
    return best;
}

void queue_dispatch(struct queue *q)
{
    if (q->trim_pending) {
        q->trim_pending = false;
        qpolicy_trim(q);
    }
    if (persist_hold_deliveries(q))
        return;
    if (q->disk_count && q->count < QUEUE_WINDOW / 2 && q->ring_bytes < QUEUE_WINDOW_BYTES / 2 && q->nconsumers)
        qstore_page_in(q);
    while (queue_ready(q) > 0 && q->nconsumers > 0) {
        struct consumer *c = pick_consumer(q);
        if (!c)
            return;
        struct qentry e;
        if (!queue_pop(q, &e))
            return; /* paged-out entries not committed yet: woken after the commit */
        consumer_deliver(c, e);
    }
}
