/* Consumers and deliveries: basic.qos/consume/cancel/get, the channel's unacked deliveries,
 * ack/nack/reject/recover, and the prefetch credit that gates dispatch. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amqp/abuf.h"
#include "amqp/table.h"
#include "amqp_methods.h"
#include "server/broker.h"
#include "server/channel_priv.h"
#include "server/deadletter.h"
#include "server/connection.h"
#include "server/message.h"
#include "server/names.h"
#include "server/persist.h"
#include "server/qargs.h"
#include "server/qpolicy.h"
#include "server/queue.h"
#include "server/reply_to.h"
#include "server/vhost.h"
#include "common/xalloc.h"

#define STR(b) (int)(b).len, (const char *)(b).ptr

/* ---- the unacked list: ua[ua_head .. ua_len), ordered by tag, holes have q == NULL ---- */

static struct unacked *ua_push(struct channel *ch)
{
    if (ch->ua_len == ch->ua_cap) {
        if (ch->ua_head > 0) { /* reuse the space before head first */
            memmove(ch->ua, ch->ua + ch->ua_head, (ch->ua_len - ch->ua_head) * sizeof *ch->ua);
            ch->ua_len -= ch->ua_head;
            ch->ua_head = 0;
        }
        if (ch->ua_len == ch->ua_cap) {
            ch->ua_cap = ch->ua_cap ? ch->ua_cap * 2 : 16;
            ch->ua = xrealloc(ch->ua, ch->ua_cap * sizeof *ch->ua);
        }
    }
    ch->ua_live++;
    return &ch->ua[ch->ua_len++];
}

/* Compacts holes away once they outnumber the live records. */
static void ua_tidy(struct channel *ch)
{
    while (ch->ua_head < ch->ua_len && !ch->ua[ch->ua_head].q)
        ch->ua_head++;
    if (ch->ua_head == ch->ua_len) {
        ch->ua_head = ch->ua_len = 0;
        return;
    }
    size_t span = ch->ua_len - ch->ua_head;
    if (span < 64 || span < 2 * ch->ua_live)
        return;
    size_t w = 0;
    for (size_t i = ch->ua_head; i < ch->ua_len; i++) {
        if (ch->ua[i].q)
            ch->ua[w++] = ch->ua[i];
    }
    ch->ua_head = 0;
    ch->ua_len = w;
}

/* The live, not tx-pending record with this tag, or NULL. */
static struct unacked *ua_find(struct channel *ch, uint64_t tag)
{
    size_t lo = ch->ua_head, hi = ch->ua_len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ch->ua[mid].tag < tag)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < ch->ua_len && ch->ua[lo].tag == tag && ch->ua[lo].q && ch->ua[lo].tx_action == UA_LIVE)
        return &ch->ua[lo];
    return NULL;
}

/* Ends one delivery: ack (drop), requeue or drop; releases its credit. */
static void ua_settle(struct channel *ch, struct unacked *u, uint8_t action)
{
    struct queue *q = u->q;
    if (u->c)
        u->c->unacked--;
    if (u->counted)
        ch->unacked_counted--;
    q->unacked--;
    if (action == UA_TX_REQUEUE) {
        queue_requeue(q, u->e);
    } else {
        if (action == UA_TX_DROP)
            queue_drop(q, &u->e, DL_REJECTED); /* dead-lettered if the queue says so */
        else {
            queue_settle(q, &u->e);
            message_unref(&u->e.msg);
        }
    }
    queue_unref(&u->q);
    ch->ua_live--;
}

/* ---- credit and delivery ------------------------------------------------------------- */

bool consumer_has_credit(const struct consumer *c)
{
    const struct channel *ch = c->ch;
    if (ch->state != CH_OPEN || !ch->flow_active || !conn_writable(ch->conn))
        return false;
    if (c->no_ack)
        return true;
    if (c->prefetch && c->unacked >= c->prefetch)
        return false;
    return !ch->prefetch_global || ch->unacked_counted < ch->prefetch_global;
}

static uint64_t record_delivery(struct channel *ch, struct queue *q, struct consumer *c, struct qentry e)
{
    struct unacked *u = ua_push(ch);
    u->tag = ++ch->next_tag;
    u->q = q;
    queue_ref(q);
    u->c = c;
    u->e = e;
    u->tx_action = UA_LIVE;
    u->counted = c != NULL;
    u->delivered_at = ch->conn->b->cfg.consumer_timeout_ms ? qpolicy_now() : 0;
    q->unacked++;
    if (c) {
        c->unacked++;
        ch->unacked_counted++;
    }
    return u->tag;
}

/* The properties a delivery carries: the message's own, or with x-delivery-count (the
 * number of earlier deliveries) appended to the headers for queues that count them. */
static amqp_bytes delivery_props(const struct queue *q, const struct qentry *e, struct abuf *scratch)
{
    amqp_bytes props = message_props(e->msg);
    struct amqp_basic_properties pr;
    if (!q->qa.delivery_count_header || amqp_props_decode(props.ptr, props.len, &pr) != 0)
        return props;
    struct abuf h;
    abuf_init(&h);
    size_t t = table_begin(&h);
    struct table_iter it;
    table_iter_init(&it, (pr.flags & AMQP_PROP_HEADERS) ? pr.headers : amqp_bytes_of("", 0));
    amqp_bytes key;
    struct field_value v;
    while (table_next(&it, &key, &v) == 1) {
        if (amqp_bytes_eq_cstr(key, "x-delivery-count"))
            continue;
        table_key_bytes(&h, key);
        field_put_value(&h, &v);
    }
    table_key(&h, "x-delivery-count");
    field_put_i64(&h, e->deliveries ? e->deliveries - 1 : 0);
    table_end(&h, t);
    pr.headers = amqp_bytes_of(h.data + 4, h.len - 4);
    pr.flags |= AMQP_PROP_HEADERS;
    abuf_reset(scratch);
    amqp_props_encode(&pr, scratch);
    abuf_free(&h);
    return amqp_bytes_of(scratch->data, scratch->len);
}

void consumer_deliver(struct consumer *c, struct qentry e)
{
    struct channel *ch = c->ch;
    struct amqp_method m = { .id = AMQP_BASIC_DELIVER };
    struct amqp_basic_deliver *d = &m.a.basic_deliver;
    d->consumer_tag = amqp_bytes_of(c->tag, c->tag_len);
    d->redelivered = e.redelivered;
    d->exchange = message_exchange(e.msg);
    d->routing_key = message_rkey(e.msg);
    if (c->no_ack) {
        d->delivery_tag = ++ch->next_tag;
        conn_send_content_props(ch->conn, ch->id, &m, e.msg, delivery_props(c->q, &e, &ch->conn->b->scratch));
        queue_settle(c->q, &e);
        message_unref(&e.msg);
        return;
    }
    struct message *msg = e.msg;
    amqp_bytes props = delivery_props(c->q, &e, &ch->conn->b->scratch);
    d->delivery_tag = record_delivery(ch, c->q, c, e);
    conn_send_content_props(ch->conn, ch->id, &m, msg, props);
}

void consumer_check_timeout(struct channel *ch, int64_t now, uint32_t timeout_ms)
{
    if (ch->state != CH_OPEN)
        return;
    for (size_t i = ch->ua_head; i < ch->ua_len; i++) {
        const struct unacked *u = &ch->ua[i];
        if (!u->q)
            continue;
        if (now - u->delivered_at > (int64_t)timeout_ms)
            channel_error(ch, AMQP_PRECONDITION_FAILED, 0,
                          "delivery acknowledgement on channel %u timed out. Timeout value used: %u ms. This "
                          "timeout value can be configured, see consumers doc guide to learn more",
                          ch->id, timeout_ms);
        return; /* the oldest live delivery decides */
    }
}

void channel_wake_consumers(struct channel *ch)
{
    for (size_t i = 0; i < ch->nconsumers; i++)
        queue_wake(ch->consumers[i]->q);
}

/* ---- consumers ------------------------------------------------------------------------ */

static struct consumer *find_consumer(struct channel *ch, amqp_bytes tag)
{
    for (size_t i = 0; i < ch->nconsumers; i++) {
        struct consumer *c = ch->consumers[i];
        if (amqp_bytes_eq(amqp_bytes_of(c->tag, c->tag_len), tag))
            return c;
    }
    return NULL;
}

/* Unlinks c from its channel and queue and frees it. Its unacked deliveries stay on the
 * channel (they can still be acked). Returns the queue, for the auto-delete check. */
static struct queue *detach(struct consumer *c)
{
    struct channel *ch = c->ch;
    for (size_t i = 0; i < ch->nconsumers; i++) {
        if (ch->consumers[i] == c) {
            ch->consumers[i] = ch->consumers[--ch->nconsumers];
            break;
        }
    }
    for (size_t i = ch->ua_head; i < ch->ua_len; i++) {
        if (ch->ua[i].c == c)
            ch->ua[i].c = NULL;
    }
    struct queue *q = c->q;
    queue_remove_consumer(q, c);
    free(c);
    return q;
}

static void maybe_auto_delete(struct queue *q)
{
    if (q->nconsumers == 0)
        qpolicy_touch(q);
    /* Not while stopping: a durable auto-delete queue outlives a restart, as in RabbitMQ. */
    if (q->auto_delete && q->had_consumer && q->nconsumers == 0 && !q->deleted && !q->vh->broker->stopping)
        vhost_delete_queue(q->vh, q);
}

void consumer_queue_deleted(struct consumer *c)
{
    struct channel *ch = c->ch;
    if (ch->conn->cap_cancel_notify && ch->state == CH_OPEN) {
        struct amqp_method m = { .id = AMQP_BASIC_CANCEL };
        m.a.basic_cancel.consumer_tag = amqp_bytes_of(c->tag, c->tag_len);
        m.a.basic_cancel.nowait = true;
        conn_send_method(ch->conn, ch->id, &m);
    }
    detach(c);
}

static void basic_consume(struct channel *ch, const struct amqp_basic_consume *bc)
{
    const uint32_t mid = AMQP_BASIC_CONSUME;
    if (reply_to_is_pseudo_queue(bc->queue)) {
        reply_to_consume(ch, bc);
        return;
    }
    struct queue *q = channel_use_queue(ch, bc->queue, mid);
    if (!q)
        return;
    char tag[256];
    amqp_bytes t = bc->consumer_tag;
    if (t.len == 0) {
        size_t n = names_generate(tag, sizeof tag, "amq.ctag-");
        t = amqp_bytes_of(tag, n);
    } else if (find_consumer(ch, t)) {
        conn_error(ch->conn, AMQP_NOT_ALLOWED, mid, "attempt to reuse consumer tag '%.*s'", STR(t));
        return;
    }
    for (size_t i = 0; i < q->nconsumers; i++) {
        if (q->consumers[i]->exclusive || bc->exclusive) {
            channel_error(ch, AMQP_ACCESS_REFUSED, mid, "queue '%.*s' in vhost '%s' in exclusive use",
                          (int)q->name_len, q->name, q->vh->name);
            return;
        }
    }
    struct field_value prio;
    int64_t priority = 0;
    if (table_get(bc->arguments, "x-priority", &prio) == 1 && (prio.type == 'T' || field_as_int64(&prio, &priority) != 0)) {
        channel_error(ch, AMQP_PRECONDITION_FAILED, mid,
                      "invalid arg 'x-priority' for queue '%.*s' in vhost '%s': \"expected integer, got %s\"",
                      (int)q->name_len, q->name, q->vh->name, qargs_type_name(prio.type));
        return;
    }
    struct consumer *c = xcalloc(1, sizeof *c);
    c->ch = ch;
    c->q = q;
    memcpy(c->tag, t.ptr, t.len);
    c->tag_len = (uint8_t)t.len;
    c->no_ack = bc->no_ack;
    c->exclusive = bc->exclusive;
    c->prefetch = ch->prefetch_consumer;
    c->priority = (int32_t)(priority > INT32_MAX ? INT32_MAX : priority < INT32_MIN ? INT32_MIN : priority);
    if (ch->nconsumers == ch->consumers_cap) {
        ch->consumers_cap = ch->consumers_cap ? ch->consumers_cap * 2 : 4;
        ch->consumers = xrealloc(ch->consumers, ch->consumers_cap * sizeof *ch->consumers);
    }
    ch->consumers[ch->nconsumers++] = c;
    if (!bc->nowait) {
        struct amqp_method ok = { .id = AMQP_BASIC_CONSUME_OK };
        ok.a.basic_consume_ok.consumer_tag = t;
        conn_send_method(ch->conn, ch->id, &ok);
    }
    queue_add_consumer(q, c); /* dispatch runs later this turn, after consume-ok went out */
}

static void basic_cancel(struct channel *ch, const struct amqp_basic_cancel *bc)
{
    struct consumer *c = reply_to_cancel(ch, bc->consumer_tag) ? NULL : find_consumer(ch, bc->consumer_tag);
    if (!bc->nowait) {
        struct amqp_method ok = { .id = AMQP_BASIC_CANCEL_OK };
        ok.a.basic_cancel_ok.consumer_tag = bc->consumer_tag;
        conn_send_method(ch->conn, ch->id, &ok);
    }
    if (c)
        maybe_auto_delete(detach(c));
}

static void basic_qos(struct channel *ch, const struct amqp_basic_qos *qos)
{
    if (qos->prefetch_size != 0) {
        conn_error(ch->conn, AMQP_NOT_IMPLEMENTED, AMQP_BASIC_QOS, "prefetch_size!=0 (%u)", qos->prefetch_size);
        return;
    }
    if (qos->global || ch->conn->qos_spec_semantics)
        ch->prefetch_global = qos->prefetch_count;
    else
        ch->prefetch_consumer = qos->prefetch_count;
    struct amqp_method ok = { .id = AMQP_BASIC_QOS_OK };
    conn_send_method(ch->conn, ch->id, &ok);
    channel_wake_consumers(ch);
}

static void basic_get(struct channel *ch, const struct amqp_basic_get *g)
{
    struct queue *q = channel_use_queue(ch, g->queue, AMQP_BASIC_GET);
    if (!q)
        return;
    qpolicy_touch(q);
    struct qentry e;
    int got = queue_pop(q, &e);
    if (!got && q->disk_count && persist_sync_now(ch->conn->b) == 0)
        got = queue_pop(q, &e); /* the paged-out messages were still on their way to disk */
    if (!got) {
        struct amqp_method empty = { .id = AMQP_BASIC_GET_EMPTY };
        conn_send_method(ch->conn, ch->id, &empty);
        return;
    }
    struct amqp_method m = { .id = AMQP_BASIC_GET_OK };
    struct amqp_basic_get_ok *ok = &m.a.basic_get_ok;
    ok->redelivered = e.redelivered;
    ok->exchange = message_exchange(e.msg);
    ok->routing_key = message_rkey(e.msg);
    ok->message_count = (uint32_t)queue_ready(q);
    struct message *msg = e.msg;
    amqp_bytes props = delivery_props(q, &e, &ch->conn->b->scratch);
    if (g->no_ack) {
        ok->delivery_tag = ++ch->next_tag;
        conn_send_content_props(ch->conn, ch->id, &m, msg, props);
        queue_settle(q, &e);
        message_unref(&e.msg);
        return;
    }
    ok->delivery_tag = record_delivery(ch, q, NULL, e);
    conn_send_content_props(ch->conn, ch->id, &m, msg, props);
}

/* ---- ack, nack, reject, recover ----------------------------------------------------- */

/* Applies action to the delivery tag (or, with multiple, every one up to it; tag 0 with
 * multiple = all). In a transaction the records are only marked, for commit. Unknown tag:
 * 406 and nothing changes, as RabbitMQ does. */
static void settle(struct channel *ch, uint64_t tag, bool multiple, uint8_t action, uint32_t mid)
{
    size_t first, last; /* index range [first, last] */
    if (multiple && tag == 0) {
        if (ch->ua_live == 0)
            return;
        first = ch->ua_head;
        last = ch->ua_len - 1;
    } else {
        struct unacked *u = ua_find(ch, tag);
        if (!u) {
            channel_error(ch, AMQP_PRECONDITION_FAILED, mid, "unknown delivery tag %llu", (unsigned long long)tag);
            return;
        }
        last = (size_t)(u - ch->ua);
        first = multiple ? ch->ua_head : last;
    }
    /* Requeues from the newest down, so each goes to the front of its queue; acks and
     * drops from the oldest up, so dead letters keep their order. */
    bool down = action == UA_TX_REQUEUE;
    for (size_t k = 0; k <= last - first; k++) {
        struct unacked *u = &ch->ua[down ? last - k : first + k];
        if (!u->q || u->tx_action != UA_LIVE)
            continue;
        if (ch->tx)
            u->tx_action = action;
        else
            ua_settle(ch, u, action);
    }
    ua_tidy(ch);
    if (!ch->tx)
        channel_wake_consumers(ch);
}

void consumer_tx_commit(struct channel *ch)
{
    for (size_t i = ch->ua_len; i-- > ch->ua_head;) {
        struct unacked *u = &ch->ua[i];
        if (u->q && u->tx_action != UA_LIVE)
            ua_settle(ch, u, u->tx_action);
    }
    ua_tidy(ch);
    channel_wake_consumers(ch);
}

void consumer_tx_rollback(struct channel *ch)
{
    for (size_t i = ch->ua_head; i < ch->ua_len; i++)
        ch->ua[i].tx_action = UA_LIVE;
}

static void requeue_all(struct channel *ch)
{
    for (size_t i = ch->ua_len; i-- > ch->ua_head;) {
        if (ch->ua[i].q)
            ua_settle(ch, &ch->ua[i], UA_TX_REQUEUE);
    }
    ch->ua_head = ch->ua_len = 0;
}

static void basic_recover(struct channel *ch, bool requeue, uint32_t mid)
{
    if (!requeue) {
        conn_error(ch->conn, AMQP_NOT_IMPLEMENTED, mid, "requeue=false");
        return;
    }
    requeue_all(ch);
    if (mid == AMQP_BASIC_RECOVER) {
        struct amqp_method ok = { .id = AMQP_BASIC_RECOVER_OK };
        conn_send_method(ch->conn, ch->id, &ok);
    }
}

void consumer_release_all(struct channel *ch)
{
    requeue_all(ch);
    while (ch->nconsumers)
        maybe_auto_delete(detach(ch->consumers[ch->nconsumers - 1]));
}

void consumer_handle(struct channel *ch, const struct amqp_method *m)
{
    switch (m->id) {
    case AMQP_BASIC_QOS: basic_qos(ch, &m->a.basic_qos); break;
    case AMQP_BASIC_CONSUME: basic_consume(ch, &m->a.basic_consume); break;
    case AMQP_BASIC_CANCEL: basic_cancel(ch, &m->a.basic_cancel); break;
    case AMQP_BASIC_GET: basic_get(ch, &m->a.basic_get); break;
    case AMQP_BASIC_ACK:
        settle(ch, m->a.basic_ack.delivery_tag, m->a.basic_ack.multiple, UA_TX_ACK, m->id);
        break;
    case AMQP_BASIC_REJECT:
        settle(ch, m->a.basic_reject.delivery_tag, false,
               m->a.basic_reject.requeue ? UA_TX_REQUEUE : UA_TX_DROP, m->id);
        break;
    case AMQP_BASIC_NACK:
        settle(ch, m->a.basic_nack.delivery_tag, m->a.basic_nack.multiple,
               m->a.basic_nack.requeue ? UA_TX_REQUEUE : UA_TX_DROP, m->id);
        break;
    case AMQP_BASIC_RECOVER: basic_recover(ch, m->a.basic_recover.requeue, m->id); break;
    case AMQP_BASIC_RECOVER_ASYNC: basic_recover(ch, m->a.basic_recover_async.requeue, m->id); break;
    default:
        conn_error(ch->conn, AMQP_COMMAND_INVALID, m->id, "unexpected method %s from client",
                   amqp_method_name(m->id));
        break;
    }
}
