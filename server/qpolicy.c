#include "server/qpolicy.h"

#include <event2/event.h>
#include <sys/time.h>

#include "server/broker.h"
#include "server/channel.h"
#include "server/deadletter.h"
#include "server/log.h"
#include "server/message.h"
#include "server/qstore.h"
#include "server/queue.h"
#include "server/vhost.h"

int64_t qpolicy_now(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* ---- length limits --------------------------------------------------------------------- */

static bool over_limit(const struct queue *q, uint64_t extra_count, uint64_t extra_bytes)
{
    return (q->qa.max_length >= 0 && queue_ready(q) + extra_count > (uint64_t)q->qa.max_length) ||
           (q->qa.max_length_bytes >= 0 && queue_ready_bytes(q) + extra_bytes > (uint64_t)q->qa.max_length_bytes);
}

bool qpolicy_admit(struct queue *q, struct message *m)
{
    if (q->qa.overflow == OVERFLOW_DROP_HEAD || !over_limit(q, 1, m->body_len))
        return true;
    if (q->qa.overflow == OVERFLOW_REJECT_PUBLISH_DLX)
        deadletter(q, m, DL_MAXLEN);
    return false;
}

void qpolicy_trim(struct queue *q)
{
    if (q->qa.overflow != OVERFLOW_DROP_HEAD)
        return;
    while (queue_ready(q) > 0 && over_limit(q, 0, 0)) {
        if (q->count == 0)
            qstore_page_in(q);
        struct qentry e;
        if (!queue_pop_ring(q, &e))
            return; /* the head waits for its commit; trimmed on the next publish */
        queue_drop(q, &e, DL_MAXLEN);
    }
}

/* ---- TTL ------------------------------------------------------------------------------- */

static bool consumer_ready(const struct queue *q)
{
    for (size_t i = 0; i < q->nconsumers; i++) {
        if (consumer_has_credit(q->consumers[i]))
            return true;
    }
    return false;
}

bool qpolicy_stamp(struct queue *q, struct qentry *e, bool *deliver_now)
{
    int64_t ttl = q->qa.message_ttl;
    if (e->msg->ttl >= 0) {
        q->has_msg_ttl = true;
        if (ttl < 0 || e->msg->ttl < ttl)
            ttl = e->msg->ttl;
    }
    *deliver_now = false;
    e->expires_at = 0;
    if (ttl < 0)
        return true;
    e->expires_at = qpolicy_now() + ttl;
    if (ttl > 0)
        return true;
    /* TTL 0: delivered at once if a consumer can take it now, else expired at once. */
    if (q->count > 0 || !consumer_ready(q))
        return false;
    *deliver_now = true;
    return true;
}

static void expire_now(struct queue *q);

static void on_expiry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct queue *q = arg;
    q->next_expiry = 0;
    queue_ref(q);
    if (!q->deleted)
        expire_now(q);
    queue_unref(&q);
}

void qpolicy_arm(struct queue *q, int64_t expires_at)
{
    if (q->deleted || (q->next_expiry && q->next_expiry <= expires_at))
        return;
    if (!q->expiry_ev)
        q->expiry_ev = evtimer_new(q->vh->broker->base, on_expiry, q);
    int64_t wait = expires_at - qpolicy_now() + 1; /* expired means strictly past */
    if (wait < 0)
        wait = 0;
    struct timeval tv = { (time_t)(wait / 1000), (suseconds_t)(wait % 1000) * 1000 };
    evtimer_add(q->expiry_ev, &tv);
    q->next_expiry = expires_at;
}

/* Removes the expired entries anywhere in the ring, keeping the others in order. */
static void drop_expired_inside(struct queue *q, int64_t now)
{
    size_t n = q->count;
    struct qentry e;
    for (size_t i = 0; i < n; i++) {
        queue_pop_ring(q, &e);
        if (qpolicy_expired(&e, now))
            queue_drop(q, &e, DL_EXPIRED);
        else
            queue_put(q, e);
    }
}

/* Dead-letters what has expired (head first, paging in as the ring empties; the whole
 * ring when entries have their own TTLs) and re-arms the timer for the next expiry. */
static void expire_now(struct queue *q)
{
    int64_t now = qpolicy_now();
    struct qentry e;
    for (;;) {
        if (q->count == 0 && q->disk_count && qstore_page_in(q) == 0)
            break;
        if (q->count == 0 || !qpolicy_expired(&q->ring[q->head], now))
            break;
        queue_pop_ring(q, &e);
        queue_drop(q, &e, DL_EXPIRED);
    }
    bool full_scan = q->has_msg_ttl || q->qa.max_priority; /* the head is not the oldest */
    if (full_scan)
        drop_expired_inside(q, now);
    int64_t next = 0;
    size_t scan = full_scan ? q->count : (q->count ? 1 : 0);
    for (size_t i = 0; i < scan; i++) {
        int64_t t = q->ring[(q->head + i) & (q->cap - 1)].expires_at;
        if (t && (!next || t < next))
            next = t;
    }
    if (next)
        qpolicy_arm(q, next);
    else if (q->count == 0 && q->disk_count)
        qpolicy_arm(q, now + 1000); /* entries wait to be paged in (not committed yet) */
}

/* ---- x-expires ------------------------------------------------------------------------- */

static void on_unused(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct queue *q = arg;
    if (q->deleted || q->nconsumers > 0)
        return; /* a consumer came: touched again when the last one goes */
    log_info("queue '%s' in vhost '%s' expired after %lld ms unused (x-expires)", q->name, q->vh->name,
             (long long)q->qa.expires);
    vhost_delete_queue(q->vh, q);
}

void qpolicy_touch(struct queue *q)
{
    if (q->qa.expires < 0 || q->deleted)
        return;
    if (!q->unused_ev)
        q->unused_ev = evtimer_new(q->vh->broker->base, on_unused, q);
    struct timeval tv = { (time_t)(q->qa.expires / 1000), (suseconds_t)(q->qa.expires % 1000) * 1000 };
    evtimer_add(q->unused_ev, &tv);
}

void qpolicy_free(struct queue *q)
{
    if (q->expiry_ev)
        event_free(q->expiry_ev);
    if (q->unused_ev)
        event_free(q->unused_ev);
    q->expiry_ev = q->unused_ev = NULL;
}
