/* Channel lifecycle, method routing, channel errors, publish assembly, routing of
 * published messages, publisher confirms and transactions. */
#include "server/channel.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amqp/wire.h"
#include "amqp_methods.h"
#include "server/alarm.h"
#include "server/broker.h"
#include "server/channel_priv.h"
#include "server/connection.h"
#include "server/exchange.h"
#include "server/log.h"
#include "server/message.h"
#include "server/qstore.h"
#include "server/reply_to.h"
#include "server/sender_keys.h"
#include "storage/store.h"
#include "server/vhost.h"
#include "common/xalloc.h"

#define STR(b) (int)(b).len, (const char *)(b).ptr

struct channel *channel_new(struct connection *c, uint16_t id)
{
    struct channel *ch = xcalloc(1, sizeof *ch);
    ch->conn = c;
    ch->id = id;
    ch->state = CH_OPEN;
    ch->flow_active = true;
    log_debug("connection %s: channel %u opened", c->peer, id);
    return ch;
}

static void drop_publish(struct channel *ch)
{
    message_unref(&ch->pub_msg);
    ch->pub = PUB_IDLE;
}

static void release(struct channel *ch)
{
    drop_publish(ch);
    consumer_release_all(ch);
    for (size_t i = 0; i < ch->ntx_pubs; i++)
        message_unref(&ch->tx_pubs[i].msg);
    ch->ntx_pubs = 0;
}

static void stop_waiting(struct channel *ch)
{
    struct broker *b = ch->conn->b;
    if (ch->wait_prev)
        ch->wait_prev->wait_next = ch->wait_next;
    else if (b->commit_waiters == ch)
        b->commit_waiters = ch->wait_next;
    else
        return; /* not in the list */
    if (ch->wait_next)
        ch->wait_next->wait_prev = ch->wait_prev;
    ch->wait_next = ch->wait_prev = NULL;
    ch->waits_head = ch->waits_len = 0;
}

void channel_free(struct channel **chp)
{
    struct channel *ch = *chp;
    *chp = NULL;
    if (!ch)
        return;
    release(ch);
    reply_to_channel_gone(ch);
    stop_waiting(ch);
    free(ch->waits);
    free(ch->ua);
    free(ch->consumers);
    free(ch->tx_pubs);
    free(ch);
}

void channel_error(struct channel *ch, int code, uint32_t method_id, const char *fmt, ...)
{
    char text[256];
    const char *name = amqp_reply_name(code);
    int n = snprintf(text, sizeof text, "%s - ", name ? name : "ERROR");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text + n, sizeof text - (size_t)n, fmt, ap);
    va_end(ap);
    if (amqp_reply_is_hard_error(code)) {
        conn_error(ch->conn, code, method_id, "%s", text + n);
        return;
    }
    if (ch->state != CH_OPEN)
        return;
    const char *mname = amqp_method_name(method_id);
    log_warn("connection %s channel %u error: %s (method %s)", ch->conn->peer, ch->id, text, mname ? mname : "none");
    struct amqp_method m = { .id = AMQP_CHANNEL_CLOSE };
    m.a.channel_close.reply_code = (uint16_t)code;
    m.a.channel_close.reply_text = amqp_cstr(text);
    m.a.channel_close.class_id = (uint16_t)(method_id >> 16);
    m.a.channel_close.method_id = (uint16_t)(method_id & 0xffff);
    conn_send_method(ch->conn, ch->id, &m);
    ch->state = CH_CLOSING;
    release(ch);
}

/* ---- publishing ----------------------------------------------------------------------- */

static void send_return(struct channel *ch, struct message *msg)
{
    struct amqp_method r = { .id = AMQP_BASIC_RETURN };
    r.a.basic_return.reply_code = AMQP_NO_ROUTE;
    r.a.basic_return.reply_text = amqp_cstr("NO_ROUTE");
    r.a.basic_return.exchange = message_exchange(msg);
    r.a.basic_return.routing_key = message_rkey(msg);
    conn_send_content(ch->conn, ch->id, &r, msg);
}

/* What became of a routed publish, for its confirm. */
enum routed { ROUTED, ROUTED_STORED, ROUTED_REFUSED };

/* Routes a complete message and hands it to its queues; consumes the caller's reference.
 * ROUTED_STORED: written to the store (its confirm waits for the commit); ROUTED_REFUSED:
 * a queue refused it (x-overflow reject-publish): the publisher gets a nack. */
static enum routed route_message(struct channel *ch, struct message *msg, bool mandatory)
{
    struct vhost *vh = ch->conn->vh;
    struct exchange *x = vhost_exchange(vh, message_exchange(msg));
    struct route_result *r = &ch->conn->b->route;
    r->n = 0;
    bool replied;
    if (x && x->is_default && reply_to_route(ch->conn->b, message_rkey(msg), msg, &replied)) {
        if (!replied && mandatory)
            send_return(ch, msg);
        message_unref(&msg);
        return ROUTED;
    }
    if (x)
        exchange_route(x, message_rkey(msg), message_headers(msg), r);
    if (x && msg->has_headers && sender_keys_present(message_headers(msg))) {
        sender_keys_route(x, message_headers(msg), r, &ch->conn->b->route_extra);
        struct message *delivered = sender_keys_strip_bcc(msg);
        message_unref(&msg);
        msg = delivered;
    }
    if (r->n == 0 && mandatory)
        send_return(ch, msg);
    size_t stored = 0;
    for (size_t i = 0; i < r->n && stored < 2; i++)
        stored += qstore_wants(r->queues[i], msg);
    msg->store_shared = stored > 1;
    bool refused = false; /* dead-lettering inside routes with its own result, not r */
    for (size_t i = 0; i < r->n; i++)
        refused |= !queue_publish(r->queues[i], msg);
    enum routed how = refused ? ROUTED_REFUSED : msg->store_batch ? ROUTED_STORED : ROUTED;
    message_unref(&msg);
    return how;
}

/* Queues a reply until the open store batch commits. Replies keep their order: once one
 * waits, every later one waits behind it. */
static void wait_commit(struct channel *ch, uint64_t seq, enum wait_kind kind)
{
    struct broker *b = ch->conn->b;
    /* The newest batch with writes: this reply's writes (if any) are in it, and so are
     * those of every earlier waiting reply. An empty open batch would never commit. */
    uint64_t batch = store_pending_batch(b->store);
    if (ch->waits_len > ch->waits_head) {
        struct commit_wait *last = &ch->waits[ch->waits_len - 1];
        if (last->batch == batch && last->kind == WAIT_ACK && kind == WAIT_ACK) {
            last->seq = seq;
            return;
        }
    } else {
        ch->waits_head = ch->waits_len = 0;
        ch->wait_prev = NULL;
        ch->wait_next = b->commit_waiters;
        if (b->commit_waiters)
            b->commit_waiters->wait_prev = ch;
        b->commit_waiters = ch;
    }
    if (ch->waits_len == ch->waits_cap) {
        ch->waits_cap = ch->waits_cap ? ch->waits_cap * 2 : 8;
        ch->waits = xrealloc_array(ch->waits, ch->waits_cap, sizeof *ch->waits);
    }
    ch->waits[ch->waits_len++] = (struct commit_wait){ batch, seq, kind };
}

static bool has_waits(const struct channel *ch) { return ch->waits_len > ch->waits_head; }

/* basic.nack for publish seq, after the acks of everything before it. */
static void send_nack(struct channel *ch, uint64_t seq)
{
    ch->ready_seq = seq - 1;
    channel_flush_confirms(ch);
    if (ch->state == CH_OPEN) {
        struct amqp_method m = { .id = AMQP_BASIC_NACK };
        m.a.basic_nack.delivery_tag = seq;
        m.a.basic_nack.requeue = true; /* as RabbitMQ sets it on publisher nacks */
        conn_send_method(ch->conn, ch->id, &m);
    }
    ch->ready_seq = ch->confirmed_seq = seq;
}

void channel_committed(struct channel *ch, uint64_t batch)
{
    while (has_waits(ch) && ch->waits[ch->waits_head].batch <= batch) {
        struct commit_wait *w = &ch->waits[ch->waits_head++];
        if (w->kind == WAIT_TX_OK) {
            channel_flush_confirms(ch);
            struct amqp_method ok = { .id = AMQP_TX_COMMIT_OK };
            if (ch->state == CH_OPEN)
                conn_send_method(ch->conn, ch->id, &ok);
        } else if (w->kind == WAIT_NACK) {
            send_nack(ch, w->seq);
        } else {
            ch->ready_seq = w->seq;
        }
    }
    channel_flush_confirms(ch);
    if (!has_waits(ch))
        stop_waiting(ch);
}

static void complete_publish(struct channel *ch)
{
    if (alarm_reason(ch->conn->b)) /* RabbitMQ holds a connection once it publishes */
        ch->conn->alarm_blocked = true;
    struct message *msg = ch->pub_msg;
    ch->pub_msg = NULL;
    ch->pub = PUB_IDLE;
    if (ch->tx) {
        if (ch->ntx_pubs == ch->tx_pubs_cap) {
            ch->tx_pubs_cap = ch->tx_pubs_cap ? ch->tx_pubs_cap * 2 : 8;
            ch->tx_pubs = xrealloc(ch->tx_pubs, ch->tx_pubs_cap * sizeof *ch->tx_pubs);
        }
        ch->tx_pubs[ch->ntx_pubs++] = (struct tx_publish){ msg, ch->pub_mandatory };
        return;
    }
    enum routed how = route_message(ch, msg, ch->pub_mandatory);
    if (!ch->confirm)
        return;
    if (how == ROUTED_REFUSED)
        has_waits(ch) ? wait_commit(ch, ch->publish_seq, WAIT_NACK) : send_nack(ch, ch->publish_seq);
    else if (how == ROUTED_STORED || has_waits(ch))
        wait_commit(ch, ch->publish_seq, WAIT_ACK);
    else
        ch->ready_seq = ch->publish_seq;
}

static void handle_publish(struct channel *ch, const struct amqp_basic_publish *p)
{
    if (p->immediate) {
        conn_error(ch->conn, AMQP_NOT_IMPLEMENTED, AMQP_BASIC_PUBLISH, "immediate=true");
        return;
    }
    struct exchange *x = vhost_exchange(ch->conn->vh, p->exchange);
    if (!x) {
        channel_error(ch, AMQP_NOT_FOUND, AMQP_BASIC_PUBLISH, "no exchange '%.*s' in vhost '%s'", STR(p->exchange),
                      ch->conn->vh->name);
        return;
    }
    if (x->internal) {
        channel_error(ch, AMQP_ACCESS_REFUSED, AMQP_BASIC_PUBLISH, "cannot publish to internal exchange '%.*s' in vhost '%s'",
                      STR(p->exchange), ch->conn->vh->name);
        return;
    }
    memcpy(ch->pub_exchange, p->exchange.ptr, p->exchange.len);
    ch->pub_exchange_len = (uint8_t)p->exchange.len;
    memcpy(ch->pub_rkey, p->routing_key.ptr, p->routing_key.len);
    ch->pub_rkey_len = (uint8_t)p->routing_key.len;
    ch->pub_mandatory = p->mandatory;
    ch->pub = PUB_AWAIT_HEADER;
    ch->conn->publisher = true;
    if (ch->confirm)
        ch->publish_seq++;
}

void channel_handle_header(struct channel *ch, const uint8_t *p, size_t len)
{
    if (ch->pub != PUB_AWAIT_HEADER) {
        conn_error(ch->conn, AMQP_UNEXPECTED_FRAME, ch->pub == PUB_IDLE ? 0 : AMQP_BASIC_PUBLISH,
                   ch->pub == PUB_IDLE ? "expected method frame, got non method frame instead"
                                       : "expected content body, got non content body frame instead");
        return;
    }
    struct wire_reader r;
    wire_init(&r, p, len);
    uint16_t class_id, weight;
    uint64_t body_size;
    if (wire_u16(&r, &class_id) || wire_u16(&r, &weight) || wire_u64(&r, &body_size)) {
        conn_error(ch->conn, AMQP_FRAME_ERROR, AMQP_BASIC_PUBLISH, "content header frame too short");
        return;
    }
    if (class_id != AMQP_CLASS_BASIC) {
        conn_error(ch->conn, AMQP_UNEXPECTED_FRAME, AMQP_BASIC_PUBLISH,
                   "expected content header for class 60, got class %u", class_id);
        return;
    }
    if (body_size > MESSAGE_MAX_BODY) {
        channel_error(ch, AMQP_PRECONDITION_FAILED, AMQP_BASIC_PUBLISH,
                      "message size %llu is larger than configured max size %u", (unsigned long long)body_size,
                      MESSAGE_MAX_BODY);
        return;
    }
    struct amqp_basic_properties pr;
    const uint8_t *props = p + r.pos;
    size_t props_len = len - r.pos;
    if (amqp_props_decode(props, props_len, &pr) != 0) {
        conn_error(ch->conn, AMQP_SYNTAX_ERROR, AMQP_BASIC_PUBLISH, "malformed content header properties");
        return;
    }
    if ((pr.flags & AMQP_PROP_USER_ID) && !amqp_bytes_eq_cstr(pr.user_id, ch->conn->user)) {
        channel_error(ch, AMQP_PRECONDITION_FAILED, AMQP_BASIC_PUBLISH,
                      "user_id property set to '%.*s' but authenticated user was '%s'", STR(pr.user_id),
                      ch->conn->user);
        return;
    }
    int64_t ttl;
    char reason[96];
    if ((pr.flags & AMQP_PROP_HEADERS) && sender_keys_check(pr.headers, reason, sizeof reason) != 0) {
        channel_error(ch, AMQP_PRECONDITION_FAILED, AMQP_BASIC_PUBLISH, "%s", reason);
        return;
    }
    if ((pr.flags & AMQP_PROP_EXPIRATION) && message_parse_expiration(pr.expiration, &ttl, reason, sizeof reason) != 0) {
        channel_error(ch, AMQP_PRECONDITION_FAILED, AMQP_BASIC_PUBLISH, "invalid expiration '%.*s': %s",
                      (int)(pr.expiration.len > 100 ? 100 : pr.expiration.len), (const char *)pr.expiration.ptr, reason);
        return;
    }
    struct abuf rewritten;
    abuf_init(&rewritten);
    if ((pr.flags & AMQP_PROP_REPLY_TO) && reply_to_is_pseudo_queue(pr.reply_to)) {
        if (!reply_to_rewrite(ch, &pr)) {
            abuf_free(&rewritten);
            return;
        }
        amqp_props_encode(&pr, &rewritten);
        props = rewritten.data;
        props_len = rewritten.len;
        if (amqp_props_decode(props, props_len, &pr) != 0) { /* re-read: views into the new bytes */
            abuf_free(&rewritten);
            conn_error(ch->conn, AMQP_INTERNAL_ERROR, AMQP_BASIC_PUBLISH, "cannot re-encode properties");
            return;
        }
    }
    struct broker *b = ch->conn->b;
    ch->pub_msg = message_new(++b->next_message_id, amqp_bytes_of(ch->pub_exchange, ch->pub_exchange_len),
                              amqp_bytes_of(ch->pub_rkey, ch->pub_rkey_len), props, props_len, &pr, body_size);
    abuf_free(&rewritten);
    ch->pub = PUB_AWAIT_BODY;
    if (body_size == 0)
        complete_publish(ch);
}

uint8_t *channel_body_dest(struct channel *ch, size_t size)
{
    if (ch->pub != PUB_AWAIT_BODY) {
        conn_error(ch->conn, AMQP_UNEXPECTED_FRAME, ch->pub == PUB_IDLE ? 0 : AMQP_BASIC_PUBLISH,
                   ch->pub == PUB_IDLE ? "expected method frame, got non method frame instead"
                                       : "expected content header for class 60, got non content header frame instead");
        return NULL;
    }
    struct message *m = ch->pub_msg;
    if (size > m->body_len - m->body_received) {
        conn_error(ch->conn, AMQP_UNEXPECTED_FRAME, AMQP_BASIC_PUBLISH,
                   "content body frame of %zu bytes exceeds the %llu bytes left of the declared body size", size,
                   (unsigned long long)(m->body_len - m->body_received));
        return NULL;
    }
    return m->body + m->body_received;
}

void channel_body_done(struct channel *ch, size_t size)
{
    ch->pub_msg->body_received += size;
    if (ch->pub_msg->body_received == ch->pub_msg->body_len)
        complete_publish(ch);
}

void channel_flush_confirms(struct channel *ch)
{
    if (ch->state != CH_OPEN || ch->ready_seq <= ch->confirmed_seq)
        return;
    struct amqp_method m = { .id = AMQP_BASIC_ACK };
    m.a.basic_ack.delivery_tag = ch->ready_seq;
    m.a.basic_ack.multiple = ch->ready_seq - ch->confirmed_seq > 1;
    conn_send_method(ch->conn, ch->id, &m);
    ch->confirmed_seq = ch->ready_seq;
}

/* ---- confirm and tx ------------------------------------------------------------------ */

static void reply(struct channel *ch, uint32_t id)
{
    struct amqp_method ok = { .id = id };
    conn_send_method(ch->conn, ch->id, &ok);
}

static void confirm_select(struct channel *ch, const struct amqp_confirm_select *s)
{
    if (ch->tx) {
        channel_error(ch, AMQP_PRECONDITION_FAILED, AMQP_CONFIRM_SELECT, "cannot switch from tx to confirm mode");
        return;
    }
    ch->confirm = true;
    if (!s->nowait)
        reply(ch, AMQP_CONFIRM_SELECT_OK);
}

static void tx_method(struct channel *ch, uint32_t id)
{
    if (id == AMQP_TX_SELECT) {
        if (ch->confirm) {
            channel_error(ch, AMQP_PRECONDITION_FAILED, id, "cannot switch from confirm to tx mode");
            return;
        }
        ch->tx = true;
        reply(ch, AMQP_TX_SELECT_OK);
        return;
    }
    if (!ch->tx) {
        channel_error(ch, AMQP_PRECONDITION_FAILED, id, "channel is not transactional");
        return;
    }
    if (id == AMQP_TX_COMMIT) {
        bool written = false;
        for (size_t i = 0; i < ch->ntx_pubs; i++) {
            written |= route_message(ch, ch->tx_pubs[i].msg, ch->tx_pubs[i].mandatory) == ROUTED_STORED;
            ch->tx_pubs[i].msg = NULL;
        }
        ch->ntx_pubs = 0;
        consumer_tx_commit(ch);
        struct store *s = ch->conn->b->store;
        if (s && store_pending_batch(s) > store_committed(s))
            written = true; /* the acks' removes (or other writes) must be on disk first */
        if (written || has_waits(ch))
            wait_commit(ch, 0, WAIT_TX_OK); /* commit-ok once the messages are on disk */
        else
            reply(ch, AMQP_TX_COMMIT_OK);
    } else {
        for (size_t i = 0; i < ch->ntx_pubs; i++)
            message_unref(&ch->tx_pubs[i].msg);
        ch->ntx_pubs = 0;
        consumer_tx_rollback(ch);
        reply(ch, AMQP_TX_ROLLBACK_OK);
    }
}

/* RabbitMQ refuses active=false (a client pausing the server's deliveries) with 540;
 * so do we, since clients pause with basic.qos or basic.cancel instead. */
static void channel_flow(struct channel *ch, bool active)
{
    if (!active) {
        conn_error(ch->conn, AMQP_NOT_IMPLEMENTED, AMQP_CHANNEL_FLOW, "active=false");
        return;
    }
    ch->flow_active = active;
    struct amqp_method ok = { .id = AMQP_CHANNEL_FLOW_OK };
    ok.a.channel_flow_ok.active = active;
    conn_send_method(ch->conn, ch->id, &ok);
    if (active)
        channel_wake_consumers(ch);
}

void channel_handle_method(struct channel *ch, const struct amqp_method *m)
{
    if (ch->pub != PUB_IDLE) {
        conn_error(ch->conn, AMQP_UNEXPECTED_FRAME, AMQP_BASIC_PUBLISH,
                   ch->pub == PUB_AWAIT_HEADER
                       ? "expected content header for class 60, got non content header frame instead"
                       : "expected content body, got non content body frame instead");
        return;
    }
    switch (m->id >> 16) {
    case AMQP_CLASS_EXCHANGE:
    case AMQP_CLASS_QUEUE:
        entities_handle(ch, m);
        return;
    case AMQP_CLASS_BASIC:
        if (m->id == AMQP_BASIC_PUBLISH)
            handle_publish(ch, &m->a.basic_publish);
        else
            consumer_handle(ch, m);
        return;
    case AMQP_CLASS_CONFIRM:
        if (m->id == AMQP_CONFIRM_SELECT) {
            confirm_select(ch, &m->a.confirm_select);
            return;
        }
        break;
    case AMQP_CLASS_TX:
        if (m->id == AMQP_TX_SELECT || m->id == AMQP_TX_COMMIT || m->id == AMQP_TX_ROLLBACK) {
            tx_method(ch, m->id);
            return;
        }
        break;
    case AMQP_CLASS_CHANNEL:
        if (m->id == AMQP_CHANNEL_FLOW) {
            channel_flow(ch, m->a.channel_flow.active);
            return;
        }
        if (m->id == AMQP_CHANNEL_FLOW_OK)
            return;
        break;
    case AMQP_CLASS_ACCESS:
        if (m->id == AMQP_ACCESS_REQUEST) {
            struct amqp_method ok = { .id = AMQP_ACCESS_REQUEST_OK };
            ok.a.access_request_ok.ticket = 1;
            conn_send_method(ch->conn, ch->id, &ok);
            return;
        }
        break;
    default:
        break;
    }
    const char *name = amqp_method_name(m->id);
    conn_error(ch->conn, AMQP_COMMAND_INVALID, m->id, "unexpected method %s from client", name ? name : "?");
}
