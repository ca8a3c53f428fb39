#include "server/connection.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include "amqp/table.h"
#include "amqp/wire.h"
#include "amqp_methods.h"
#include "server/alarm.h"
#include "server/auth.h"
#include "server/broker.h"
#include "server/channel.h"
#include "server/log.h"
#include "server/persist.h"
#include "server/message.h"
#include "server/queue.h"
#include "server/vhost.h"
#include "common/xalloc.h"

#define FRAME_HEADER_SIZE 7
/* Deliveries to a connection pause while its output buffer holds more than this. */
#define OUTPUT_HIGH_WATERMARK (4u * 1024 * 1024)
/* Bodies up to this size are copied into the output buffer; larger ones are referenced. */
#define BODY_COPY_LIMIT (16u * 1024)
/* How long we wait for close-ok after sending connection.close. */
#define CLOSE_TIMEOUT_SEC 3

static const uint8_t protocol_header[8] = { 'A', 'M', 'Q', 'P', 0, 0, 9, 1 };


static void teardown_channels(struct connection *c);
static void schedule_free(struct connection *c);

/* ---- output ----------------------------------------------------------------------------
 * Frames are appended to c->outbuf and written once per loop turn, after every read and
 * dispatch callback of the turn (conn_flush_all, run by the broker's dispatch event): one
 * writev for all the frames a connection got in a turn. The write event is armed only
 * while the socket is full. */

static void want_flush(struct connection *c)
{
    c->sent_since_tick = true;
    if (evbuffer_get_length(c->outbuf) > OUTPUT_HIGH_WATERMARK)
        c->write_blocked = true;
    if (c->flush_pending)
        return;
    c->flush_pending = true;
    c->flush_next = c->b->flush_list;
    c->b->flush_list = c;
    broker_wake(c->b);
}

static void write_out(struct connection *c)
{
    evbuffer_add(c->outbuf, c->out.data, c->out.len);
    want_flush(c);
}

/* Writes what the socket takes. Returns -1 if the connection was freed. */
static int flush_now(struct connection *c)
{
    while (evbuffer_get_length(c->outbuf) > 0) {
        int n = evbuffer_write(c->outbuf, c->fd);
        if (n == 0)
            break;
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            log_info("connection %s: write failed: %s", c->peer, strerror(errno));
            conn_free(&c);
            return -1;
        }
    }
    size_t left = evbuffer_get_length(c->outbuf);
    if (left > 0) {
        event_add(c->write_ev, NULL);
    } else {
        event_del(c->write_ev);
        if (c->state == CONN_CLOSED) {
            schedule_free(c);
            return 0;
        }
    }
    /* Resume deliveries at half the high watermark, before the socket runs dry. */
    if (c->write_blocked && left <= OUTPUT_HIGH_WATERMARK / 2) {
        c->write_blocked = false;
        for (uint32_t i = 0; i < c->channels_cap; i++) {
            if (c->channels[i])
                channel_wake_consumers(c->channels[i]);
        }
    }
    return 0;
}

void conn_flush_all(struct broker *b)
{
    while (b->flush_list) {
        struct connection *c = b->flush_list;
        b->flush_list = c->flush_next;
        c->flush_pending = false;
        c->flush_next = NULL;
        if (!c->held_until)
            flush_now(c);
    }
}

void conn_hold_output(struct connection *c, uint64_t batch)
{
    if (!c->held_until)
        c->b->nheld++;
    c->held_until = batch;
}

void conn_release_output(struct broker *b, uint64_t committed)
{
    if (!b->nheld)
        return;
    for (struct connection *c = b->conns; c; c = c->next) {
        if (c->held_until && c->held_until <= committed) {
            c->held_until = 0;
            b->nheld--;
            want_flush(c);
        }
    }
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct connection *c = arg;
    if (c->held_until) { /* released by conn_release_output */
        event_del(c->write_ev);
        return;
    }
    flush_now(c);
}

static size_t frame_begin(struct abuf *b, uint8_t type, uint16_t channel)
{
    abuf_u8(b, type);
    abuf_u16(b, channel);
    size_t off = b->len;
    abuf_u32(b, 0);
    return off;
}

static void frame_end(struct abuf *b, size_t off)
{
    abuf_put_u32_at(b, off, (uint32_t)(b->len - off - 4));
    abuf_u8(b, AMQP_FRAME_END);
}

static void append_method(struct abuf *b, uint16_t channel, const struct amqp_method *m)
{
    size_t off = frame_begin(b, AMQP_FRAME_METHOD, channel);
    amqp_method_encode(m, b);
    frame_end(b, off);
}

void conn_send_method(struct connection *c, uint16_t channel, const struct amqp_method *m)
{
    if (c->state == CONN_CLOSED)
        return;
    abuf_reset(&c->out);
    append_method(&c->out, channel, m);
    write_out(c);
}

static void unref_body(const void *data, size_t len, void *arg)
{
    (void)data;
    (void)len;
    struct message *m = arg;
    message_unref(&m);
}

void conn_send_content(struct connection *c, uint16_t channel, const struct amqp_method *m,
                       struct message *msg)
{
    conn_send_content_props(c, channel, m, msg, message_props(msg));
}

void conn_send_content_props(struct connection *c, uint16_t channel, const struct amqp_method *m,
                             struct message *msg, amqp_bytes props)
{
    if (c->state == CONN_CLOSED)
        return;
    struct abuf *b = &c->out;
    abuf_reset(b);
    append_method(b, channel, m);
    size_t off = frame_begin(b, AMQP_FRAME_HEADER, channel);
    abuf_u16(b, AMQP_CLASS_BASIC);
    abuf_u16(b, 0);
    abuf_u64(b, msg->body_len);
    abuf_bytes(b, props.ptr, props.len);
    frame_end(b, off);
    size_t chunk_max = c->frame_max - 8;
    if (msg->body_len <= BODY_COPY_LIMIT) {
        for (uint64_t pos = 0; pos < msg->body_len; pos += chunk_max) {
            size_t n = msg->body_len - pos < chunk_max ? (size_t)(msg->body_len - pos) : chunk_max;
            off = frame_begin(b, AMQP_FRAME_BODY, channel);
            abuf_bytes(b, msg->body + pos, n);
            frame_end(b, off);
        }
        write_out(c);
        return;
    }
    write_out(c);
    struct evbuffer *out = c->outbuf;
    for (uint64_t pos = 0; pos < msg->body_len; pos += chunk_max) {
        size_t n = msg->body_len - pos < chunk_max ? (size_t)(msg->body_len - pos) : chunk_max;
        abuf_reset(b);
        frame_begin(b, AMQP_FRAME_BODY, channel);
        abuf_put_u32_at(b, 3, (uint32_t)n);
        evbuffer_add(out, b->data, b->len);
        evbuffer_add_reference(out, msg->body + pos, n, unref_body, message_ref(msg));
        uint8_t end = AMQP_FRAME_END;
        evbuffer_add(out, &end, 1);
    }
    want_flush(c);
}

bool conn_writable(const struct connection *c) { return !c->write_blocked && c->state == CONN_OPEN; }

/* ---- errors and closing ------------------------------------------------------------- */

static void format_reply(char *text, size_t size, int code, const char *fmt, va_list ap)
{
    const char *name = amqp_reply_name(code);
    int n = snprintf(text, size, "%s - ", name ? name : "ERROR");
    vsnprintf(text + n, size - (size_t)n, fmt, ap);
}

static void send_close(struct connection *c, int code, const char *text, uint32_t method_id)
{
    struct amqp_method m = { .id = AMQP_CONNECTION_CLOSE };
    m.a.connection_close.reply_code = (uint16_t)code;
    m.a.connection_close.reply_text = amqp_cstr(text);
    m.a.connection_close.class_id = (uint16_t)(method_id >> 16);
    m.a.connection_close.method_id = (uint16_t)(method_id & 0xffff);
    conn_send_method(c, 0, &m);
}

static void arm_timer(struct connection *c, int seconds)
{
    struct timeval tv = { seconds, 0 };
    evtimer_add(c->timer, &tv);
}

/* Heartbeat ticks come every half interval: a heartbeat frame goes out on a tick when
 * nothing else was sent during the previous one, and the peer is dropped once more than
 * two whole intervals (five ticks) passed with nothing received. */
#define MISSED_TICKS_LIMIT 5
static void arm_heartbeat(struct connection *c)
{
    unsigned ms = c->heartbeat * 500u;
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    evtimer_add(c->timer, &tv);
}

void conn_error(struct connection *c, int code, uint32_t method_id, const char *fmt, ...)
{
    if (c->state >= CONN_CLOSING)
        return;
    char text[256];
    va_list ap;
    va_start(ap, fmt);
    format_reply(text, sizeof text, code, fmt, ap);
    va_end(ap);
    const char *mname = amqp_method_name(method_id);
    log_warn("connection %s error: %d %s (method %s)", c->peer, code, text, mname ? mname : "none");
    send_close(c, code, text, method_id);
    c->state = CONN_CLOSING;
    if (!c->in_read)
        teardown_channels(c);
    arm_timer(c, CLOSE_TIMEOUT_SEC);
}

void conn_force_close(struct connection *c, const char *reason)
{
    if (c->state < CONN_OPEN) {
        schedule_free(c);
        return;
    }
    if (c->state >= CONN_CLOSING)
        return;
    char text[256];
    snprintf(text, sizeof text, "CONNECTION_FORCED - broker forced connection closure with reason '%s'", reason);
    log_info("connection %s closing: %s", c->peer, text);
    send_close(c, AMQP_CONNECTION_FORCED, text, 0);
    c->state = CONN_CLOSING;
    teardown_channels(c);
    arm_timer(c, CLOSE_TIMEOUT_SEC);
}

static void teardown_channels(struct connection *c)
{
    for (uint32_t i = 0; i < c->channels_cap; i++) {
        if (c->channels[i])
            channel_free(&c->channels[i]);
    }
    while (c->nexclusive) {
        struct queue *q = c->exclusive[c->nexclusive - 1];
        vhost_delete_queue(q->vh, q); /* removes it from c->exclusive */
    }
}

void conn_add_exclusive(struct connection *c, struct queue *q)
{
    if (c->nexclusive == c->exclusive_cap) {
        c->exclusive_cap = c->exclusive_cap ? c->exclusive_cap * 2 : 4;
        c->exclusive = xrealloc(c->exclusive, c->exclusive_cap * sizeof *c->exclusive);
    }
    c->exclusive[c->nexclusive++] = q;
}

void conn_remove_exclusive(struct connection *c, struct queue *q)
{
    for (uint32_t i = 0; i < c->nexclusive; i++) {
        if (c->exclusive[i] == q) {
            c->exclusive[i] = c->exclusive[--c->nexclusive];
            q->owner = NULL;
            return;
        }
    }
}

void conn_free(struct connection **cp)
{
    struct connection *c = *cp;
    *cp = NULL;
    if (!c)
        return;
    teardown_channels(c);
    struct broker *b = c->b;
    if (c->prev)
        c->prev->next = c->next;
    else
        b->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    b->nconns--;
    if (c->state >= CONN_OPEN)
        log_info("connection %s closed (user '%s')", c->peer, c->user);
    else
        log_debug("connection %s closed before it was opened", c->peer);
    if (c->held_until)
        b->nheld--;
    if (c->flush_pending) {
        struct connection **pp = &b->flush_list;
        while (*pp != c)
            pp = &(*pp)->flush_next;
        *pp = c->flush_next;
    }
    event_free(c->read_ev);
    event_free(c->write_ev);
    evutil_closesocket(c->fd);
    free(c->pending);
    evbuffer_free(c->outbuf);
    event_free(c->timer);
    free(c->channels);
    free(c->exclusive);
    abuf_free(&c->out);
    free(c);
    broker_connection_gone(b, NULL);
}

/* Frees the connection from the loop, after the current callback. */
static void schedule_free(struct connection *c)
{
    c->state = CONN_CLOSED;
    c->free_pending = true;
    event_del(c->read_ev);
    struct timeval tv = { 0, 0 };
    evtimer_add(c->timer, &tv);
}

/* Closes once the output (e.g. a close-ok) has reached the socket. */
static void close_after_flush(struct connection *c)
{
    c->state = CONN_CLOSED;
    event_del(c->read_ev);
    if (evbuffer_get_length(c->outbuf) == 0) {
        schedule_free(c);
    } else {
        want_flush(c);
        arm_timer(c, CLOSE_TIMEOUT_SEC);
    }
}

/* ---- handshake ---------------------------------------------------------------------- */

static void put_str(struct abuf *b, const char *key, const char *val)
{
    table_key(b, key);
    field_put_longstr(b, amqp_cstr(val));
}

static void send_start(struct connection *c)
{
    struct abuf props;
    abuf_init(&props);
    size_t off = table_begin(&props);
    put_str(&props, "product", "Warren");
    put_str(&props, "version", WARREN_VERSION);
    put_str(&props, "platform", "C11/libevent");
    put_str(&props, "copyright", "Copyright (c) 2026 the Warren authors");
    put_str(&props, "information", "Licensed under the MIT licence");
    put_str(&props, "cluster_name", "warren");
    table_key(&props, "capabilities");
    abuf_u8(&props, 'F');
    size_t caps = table_begin(&props);
    static const char *const implemented[] = {
        "publisher_confirms", "exchange_exchange_bindings", "basic.nack", "consumer_cancel_notify",
        "authentication_failure_close", "per_consumer_qos", "connection.blocked",
    };
    for (size_t i = 0; i < sizeof implemented / sizeof *implemented; i++) {
        table_key(&props, implemented[i]);
        field_put_bool(&props, true);
    }
    table_end(&props, caps);
    table_end(&props, off);
    struct amqp_method m = { .id = AMQP_CONNECTION_START };
    m.a.connection_start.version_major = 0;
    m.a.connection_start.version_minor = 9;
    m.a.connection_start.server_properties = amqp_bytes_of(props.data + 4, props.len - 4);
    m.a.connection_start.mechanisms = amqp_cstr("PLAIN AMQPLAIN");
    m.a.connection_start.locales = amqp_cstr("en_US");
    conn_send_method(c, 0, &m);
    abuf_free(&props);
}

static bool client_capability(amqp_bytes client_props, const char *name)
{
    struct field_value caps, v;
    if (table_get(client_props, "capabilities", &caps) != 1 || caps.type != 'F')
        return false;
    return table_get(caps.v.bytes, name, &v) == 1 && v.type == 't' && v.v.i;
}

/* kombu (Celery's transport, on py-amqp) sends basic.qos with global=true only to a server
 * whose product is "RabbitMQ"; to any other it sends global=false meaning, as the 0-9-1
 * spec has it, the whole channel, and raises that limit later for consumers it already has.
 * So for py-amqp clients global=false is read as RabbitMQ's channel-wide global=true. */
static bool expects_spec_qos(amqp_bytes client_props)
{
    struct field_value v;
    return table_get(client_props, "product", &v) == 1 && (v.type == 'S' || v.type == 'x') &&
           amqp_bytes_eq_cstr(v.v.bytes, "py-amqp");
}

static void handle_start_ok(struct connection *c, const struct amqp_connection_start_ok *so)
{
    c->cap_cancel_notify = client_capability(so->client_properties, "consumer_cancel_notify");
    c->cap_blocked = client_capability(so->client_properties, "connection.blocked");
    c->qos_spec_semantics = expects_spec_qos(so->client_properties);
    char mech[32];
    snprintf(mech, sizeof mech, "%.*s", (int)(so->mechanism.len < 31 ? so->mechanism.len : 31),
             (const char *)so->mechanism.ptr);
    const char *why = NULL;
    int rc = auth_check(mech, so->response, c->peer_is_loopback, c->user, sizeof c->user, &why);
    if (rc == AUTH_UNKNOWN_MECHANISM) {
        conn_error(c, AMQP_ACCESS_REFUSED, AMQP_CONNECTION_START_OK,
                   "unsupported authentication mechanism '%s'", mech);
        return;
    }
    if (rc != AUTH_OK) {
        log_warn("connection %s: login refused for user '%s': %s", c->peer, c->user, why);
        conn_error(c, AMQP_ACCESS_REFUSED, AMQP_CONNECTION_START_OK,
                   "Login was refused using authentication mechanism %s. For details see the broker logfile.",
                   mech);
        return;
    }
    struct amqp_method m = { .id = AMQP_CONNECTION_TUNE };
    m.a.connection_tune.channel_max = c->b->cfg.channel_max;
    m.a.connection_tune.frame_max = c->b->cfg.frame_max;
    m.a.connection_tune.heartbeat = c->b->cfg.heartbeat;
    conn_send_method(c, 0, &m);
    c->state = CONN_AWAIT_TUNE_OK;
}

/* RabbitMQ's rule: a client value must be non-zero, at least the minimum and at most ours. */
static bool negotiated_ok(struct connection *c, const char *field, uint32_t client, uint32_t min, uint32_t max)
{
    if (client != 0 && client < min) {
        conn_error(c, AMQP_NOT_ALLOWED, AMQP_CONNECTION_TUNE_OK,
                   "negotiated %s = %u is lower than the minimum allowed value (%u)", field, client, min);
        return false;
    }
    if (max != 0 && (client == 0 || client > max)) {
        conn_error(c, AMQP_NOT_ALLOWED, AMQP_CONNECTION_TUNE_OK,
                   "negotiated %s = %u is higher than the maximum allowed value (%u)", field, client, max);
        return false;
    }
    return true;
}

static void handle_tune_ok(struct connection *c, const struct amqp_connection_tune_ok *t)
{
    if (!negotiated_ok(c, "frame_max", t->frame_max, AMQP_FRAME_MIN_SIZE, c->b->cfg.frame_max) ||
        !negotiated_ok(c, "channel_max", t->channel_max, 1, c->b->cfg.channel_max))
        return;
    c->frame_max = t->frame_max;
    c->channel_max = t->channel_max;
    c->heartbeat = t->heartbeat;
    c->state = CONN_AWAIT_OPEN;
    evtimer_del(c->timer);
    if (c->heartbeat)
        arm_heartbeat(c);
}

static void handle_open(struct connection *c, const struct amqp_connection_open *o)
{
    c->vh = broker_find_vhost(c->b, o->virtual_host);
    if (!c->vh) {
        conn_error(c, AMQP_NOT_ALLOWED, AMQP_CONNECTION_OPEN, "vhost %.*s not found",
                   (int)o->virtual_host.len, (const char *)o->virtual_host.ptr);
        return;
    }
    struct amqp_method m = { .id = AMQP_CONNECTION_OPEN_OK };
    conn_send_method(c, 0, &m);
    c->state = CONN_OPEN;
    log_info("connection %s opened (user '%s', vhost '%s', heartbeat %us, frame_max %u)", c->peer, c->user,
             c->vh->name, c->heartbeat, c->frame_max);
}

/* ---- frames ------------------------------------------------------------------------- */

static void handle_channel0(struct connection *c, const struct amqp_method *m)
{
    if (c->state == CONN_CLOSING) {
        if (m->id == AMQP_CONNECTION_CLOSE_OK) {
            close_after_flush(c);
        } else if (m->id == AMQP_CONNECTION_CLOSE) {
            struct amqp_method ok = { .id = AMQP_CONNECTION_CLOSE_OK };
            conn_send_method(c, 0, &ok);
            close_after_flush(c);
        }
        return;
    }
    switch (c->state) {
    case CONN_AWAIT_START_OK:
        if (m->id != AMQP_CONNECTION_START_OK)
            break;
        handle_start_ok(c, &m->a.connection_start_ok);
        return;
    case CONN_AWAIT_TUNE_OK:
        if (m->id != AMQP_CONNECTION_TUNE_OK)
            break;
        handle_tune_ok(c, &m->a.connection_tune_ok);
        return;
    case CONN_AWAIT_OPEN:
        if (m->id != AMQP_CONNECTION_OPEN)
            break;
        handle_open(c, &m->a.connection_open);
        return;
    case CONN_OPEN:
        if (m->id == AMQP_CONNECTION_CLOSE) {
            log_debug("connection %s: client closed: %u %.*s", c->peer, m->a.connection_close.reply_code,
                      (int)m->a.connection_close.reply_text.len,
                      (const char *)m->a.connection_close.reply_text.ptr);
            c->state = CONN_CLOSING; /* stops further frames; channels go below */
            teardown_channels(c);
            struct amqp_method ok = { .id = AMQP_CONNECTION_CLOSE_OK };
            conn_send_method(c, 0, &ok);
            close_after_flush(c);
            return;
        }
        if (m->id == AMQP_CONNECTION_UPDATE_SECRET) {
            struct amqp_method ok = { .id = AMQP_CONNECTION_UPDATE_SECRET_OK };
            conn_send_method(c, 0, &ok);
            return;
        }
        if (m->id == AMQP_CONNECTION_BLOCKED || m->id == AMQP_CONNECTION_UNBLOCKED)
            return;
        break;
    default:
        break;
    }
    const char *name = amqp_method_name(m->id);
    conn_error(c, AMQP_COMMAND_INVALID, m->id, "unexpected method %s on channel 0", name ? name : "?");
}

static struct channel *get_channel(struct connection *c, uint16_t id)
{
    return id < c->channels_cap ? c->channels[id] : NULL;
}

static void open_channel(struct connection *c, uint16_t id)
{
    if (id >= c->channels_cap) {
        uint32_t ncap = c->channels_cap ? c->channels_cap : 8;
        while (ncap <= id)
            ncap *= 2;
        c->channels = xrealloc(c->channels, ncap * sizeof *c->channels);
        memset(c->channels + c->channels_cap, 0, (ncap - c->channels_cap) * sizeof *c->channels);
        c->channels_cap = ncap;
    }
    c->channels[id] = channel_new(c, id);
    struct amqp_method ok = { .id = AMQP_CHANNEL_OPEN_OK };
    conn_send_method(c, id, &ok);
}

static void handle_channel_method(struct connection *c, uint16_t id, const struct amqp_method *m)
{
    struct channel *ch = get_channel(c, id);
    if (id > c->channel_max) {
        uint32_t open = 0;
        for (uint32_t i = 0; i < c->channels_cap; i++)
            open += c->channels[i] != NULL;
        if (open >= c->channel_max)
            conn_error(c, AMQP_NOT_ALLOWED, m->id,
                       "number of channels opened (%u) has reached the negotiated channel_max (%u)", open,
                       c->channel_max);
        else
            conn_error(c, AMQP_NOT_ALLOWED, m->id, "channel number %u is above the negotiated channel_max (%u)",
                       id, c->channel_max);
        return;
    }
    if (m->id == AMQP_CHANNEL_OPEN) {
        if (ch) {
            conn_error(c, AMQP_CHANNEL_ERROR, m->id, "second 'channel.open' seen");
            return;
        }
        open_channel(c, id);
        return;
    }
    if (!ch && m->id == AMQP_CHANNEL_CLOSE_OK)
        return; /* the close-ok of a close that crossed the client's own channel.close */
    if (!ch) {
        conn_error(c, AMQP_CHANNEL_ERROR, m->id, "expected 'channel.open'");
        return;
    }
    if (ch->state == CH_CLOSING) {
        if (m->id == AMQP_CHANNEL_CLOSE_OK) {
            channel_free(&c->channels[id]);
        } else if (m->id == AMQP_CHANNEL_CLOSE) {
            struct amqp_method ok = { .id = AMQP_CHANNEL_CLOSE_OK };
            conn_send_method(c, id, &ok);
            channel_free(&c->channels[id]);
        }
        return;
    }
    if (m->id == AMQP_CHANNEL_CLOSE) {
        channel_free(&c->channels[id]);
        struct amqp_method ok = { .id = AMQP_CHANNEL_CLOSE_OK };
        conn_send_method(c, id, &ok);
        return;
    }
    if (m->id == AMQP_CHANNEL_CLOSE_OK)
        return; /* nothing to do: we had not asked */
    if ((m->id >> 16) == AMQP_CLASS_CONNECTION) {
        conn_error(c, AMQP_COMMAND_INVALID, m->id, "connection method on channel %u", id);
        return;
    }
    channel_handle_method(ch, m);
}

/* Handles one complete non-body frame. */
static void handle_frame(struct connection *c, uint8_t type, uint16_t chid, const uint8_t *p, uint32_t size)
{
    if (type == AMQP_FRAME_HEARTBEAT) {
        if (chid != 0)
            conn_error(c, AMQP_UNEXPECTED_FRAME, 0, "heartbeat frame on channel %u", chid);
        else if (size != 0)
            conn_error(c, AMQP_FRAME_ERROR, 0, "heartbeat frame with a %u-byte payload", size);
        return;
    }
    if (c->state == CONN_CLOSING && chid != 0)
        return;
    if (type == AMQP_FRAME_METHOD) {
        struct amqp_method m;
        int rc = amqp_method_decode(p, size, &m);
        if (rc == AMQP_DECODE_UNKNOWN) {
            conn_error(c, AMQP_COMMAND_INVALID, m.id, "unknown method class %u method %u", m.id >> 16,
                       m.id & 0xffff);
            return;
        }
        if (rc != AMQP_DECODE_OK) {
            const char *name = amqp_method_name(m.id);
            conn_error(c, AMQP_FRAME_ERROR, m.id, "cannot decode the arguments of %s", name ? name : "a method");
            return;
        }
        if (chid == 0) {
            handle_channel0(c, &m);
            return;
        }
        if (c->state != CONN_OPEN) {
            conn_error(c, AMQP_CHANNEL_ERROR, m.id, "channel %u used before connection.open", chid);
            return;
        }
        handle_channel_method(c, chid, &m);
        return;
    }
    if (type == AMQP_FRAME_HEADER || type == AMQP_FRAME_BODY) {
        struct channel *ch = get_channel(c, chid);
        if (chid == 0 || c->state != CONN_OPEN || !ch) {
            conn_error(c, AMQP_UNEXPECTED_FRAME, 0, "content frame on channel %u that is not open", chid);
            return;
        }
        if (ch->state == CH_CLOSING)
            return;
        if (type == AMQP_FRAME_HEADER) {
            channel_handle_header(ch, p, size);
        } else {
            uint8_t *dst = channel_body_dest(ch, size);
            if (dst) {
                memcpy(dst, p, size);
                channel_body_done(ch, size);
            }
        }
        return;
    }
    conn_error(c, AMQP_FRAME_ERROR, 0, "unknown frame type %u", type);
}

/* Parses the whole frames in buf[0..len) and returns how many bytes they took; the rest
 * is an incomplete frame, kept for the next read. */
static size_t read_frames(struct connection *c, const uint8_t *buf, size_t len)
{
    size_t pos = 0;
    uint32_t limit = c->frame_max ? c->frame_max : c->b->cfg.frame_max;
    while (c->state != CONN_CLOSED && len - pos >= FRAME_HEADER_SIZE) {
        const uint8_t *h = buf + pos;
        uint8_t type = h[0];
        uint16_t chid = (uint16_t)(h[1] << 8 | h[2]);
        uint32_t size = (uint32_t)h[3] << 24 | (uint32_t)h[4] << 16 | (uint32_t)h[5] << 8 | h[6];
        if (type != AMQP_FRAME_METHOD && type != AMQP_FRAME_HEADER && type != AMQP_FRAME_BODY &&
            type != AMQP_FRAME_HEARTBEAT) {
            conn_error(c, AMQP_FRAME_ERROR, 0, "unknown frame type %u", type);
            return len;
        }
        if ((uint64_t)size + 8 > limit) {
            conn_error(c, AMQP_FRAME_ERROR, 0, "frame size %u exceeds the frame_max %u", size + 8, limit);
            return len;
        }
        if (len - pos < (size_t)size + 8)
            break;
        if (h[FRAME_HEADER_SIZE + size] != AMQP_FRAME_END) {
            conn_error(c, AMQP_FRAME_ERROR, 0, "frame end byte 0x%02x instead of 0xce", h[FRAME_HEADER_SIZE + size]);
            return len;
        }
        handle_frame(c, type, chid, h + FRAME_HEADER_SIZE, size);
        pos += (size_t)size + 8;
        if (c->frame_max)
            limit = c->frame_max;
        if (c->alarm_blocked) /* a publish completed during an alarm: the rest waits */
            break;
    }
    return pos;
}

/* Handles the protocol header, then frames. Returns the bytes consumed. */
static size_t read_input(struct connection *c, const uint8_t *buf, size_t len)
{
    size_t pos = 0;
    if (c->state == CONN_AWAIT_HEADER) {
        if (len < sizeof protocol_header)
            return 0;
        pos = sizeof protocol_header;
        if (memcmp(buf, protocol_header, sizeof protocol_header) != 0) {
            log_warn("connection %s: bad protocol header, replying with ours and closing", c->peer);
            evbuffer_add(c->outbuf, protocol_header, sizeof protocol_header);
            close_after_flush(c);
            return len;
        }
        send_start(c);
        c->state = CONN_AWAIT_START_OK;
        arm_timer(c, 10); /* handshake timeout */
    }
    return pos + read_frames(c, buf + pos, len - pos);
}

static void send_blocked(struct connection *c, const char *reason)
{
    if (!c->cap_blocked || c->blocked_sent || c->state != CONN_OPEN)
        return;
    struct amqp_method m = { .id = AMQP_CONNECTION_BLOCKED };
    m.a.connection_blocked.reason = amqp_cstr(reason);
    conn_send_method(c, 0, &m);
    c->blocked_sent = true;
}

static void pause_reading(struct connection *c)
{
    if (c->read_paused)
        return;
    c->read_paused = true;
    event_del(c->read_ev);
    const char *reason = alarm_reason(c->b);
    if (reason)
        send_blocked(c, reason);
}

void conn_notify_blocked(struct broker *b, const char *reason)
{
    for (struct connection *c = b->conns; c; c = c->next)
        if (c->publisher)
            send_blocked(c, reason);
}

void conn_resume_publishers(struct broker *b)
{
    bool alarm = alarm_reason(b) != NULL;
    for (struct connection *c = b->conns; c; c = c->next) {
        if (!alarm)
            c->alarm_blocked = false;
        if (c->read_paused && !alarm_holds_publisher(c)) {
            c->read_paused = false;
            if (c->state != CONN_CLOSED) {
                event_add(c->read_ev, NULL);
                if (c->pending_len) /* frames held back: parse them even if nothing new comes */
                    event_active(c->read_ev, EV_READ, 0);
            }
        }
        if (c->blocked_sent && !alarm) {
            c->blocked_sent = false;
            if (c->state == CONN_OPEN) {
                struct amqp_method m = { .id = AMQP_CONNECTION_UNBLOCKED };
                conn_send_method(c, 0, &m);
            }
        }
    }
}

/* Input goes through one broker-wide buffer (the loop is single-threaded): the bytes left
 * over from the connection's last read are put in front, one read appends what the socket
 * has, whole frames are parsed in place, and what is left (an incomplete frame, or the
 * frames after a publish that blocked the connection) is copied back to the connection.
 * An idle connection holds no buffer. */
static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct connection *c = arg;
    struct broker *b = c->b;
    if (alarm_holds_publisher(c)) {
        pause_reading(c);
        return;
    }
    uint8_t *buf = b->readbuf;
    size_t len = c->pending_len;
    if (len)
        memcpy(buf, c->pending, len);
    size_t room = READBUF_SIZE(b) - len;
    if (room > 0) {
        ssize_t n = read(fd, buf + len, room < READ_CHUNK ? room : READ_CHUNK);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            if (len == 0)
                return;
            n = 0; /* nothing new: parse what was held back */
        } else if (n <= 0) {
            if (c->state != CONN_CLOSED && c->state >= CONN_OPEN)
                log_info("connection %s: client closed the socket%s", c->peer,
                         c->state == CONN_OPEN ? " without connection.close" : "");
            conn_free(&c);
            return;
        }
        len += (size_t)n;
    }
    c->recv_since_tick = true;
    c->in_read = true;
    size_t used = read_input(c, buf, len);
    for (uint32_t i = 0; i < c->channels_cap; i++) {
        if (c->channels[i])
            channel_flush_confirms(c->channels[i]);
    }
    c->in_read = false;
    if (c->state == CONN_CLOSING)
        teardown_channels(c);
    size_t left = c->state == CONN_CLOSED ? 0 : len - used;
    if (left > c->pending_cap) {
        c->pending = xrealloc(c->pending, left);
        c->pending_cap = (uint32_t)left;
    } else if (left == 0 && c->pending_cap > 4096) {
        free(c->pending); /* a large frame went through: do not keep its buffer */
        c->pending = NULL;
        c->pending_cap = 0;
    }
    if (left)
        memcpy(c->pending, buf + used, left);
    c->pending_len = (uint32_t)left;
    if (c->publisher) /* publishes are where memory grows: look before the next read */
        alarm_check_memory(b);
    if (alarm_holds_publisher(c))
        pause_reading(c);
}

/* Heartbeats, handshake and close timeouts, deferred free. */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct connection *c = arg;
    if (c->free_pending || c->state == CONN_CLOSED || c->state == CONN_CLOSING) {
        if (c->state == CONN_CLOSING)
            log_warn("connection %s: no close-ok within %ds, closing the socket", c->peer, CLOSE_TIMEOUT_SEC);
        conn_free(&c);
        return;
    }
    if (c->state < CONN_AWAIT_OPEN) {
        log_warn("connection %s: handshake timed out", c->peer);
        conn_free(&c);
        return;
    }
    if (c->heartbeat == 0)
        return;
    if (c->recv_since_tick || c->read_paused) { /* a held publisher's heartbeats wait unread */
        c->missed_ticks = 0;
    } else if (++c->missed_ticks >= MISSED_TICKS_LIMIT) {
        log_warn("connection %s: missed heartbeats from client, timeout: %us", c->peer, c->heartbeat);
        conn_free(&c);
        return;
    }
    c->recv_since_tick = false;
    if (!c->sent_since_tick) {
        static const uint8_t hb[8] = { AMQP_FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, AMQP_FRAME_END };
        evbuffer_add(c->outbuf, hb, sizeof hb);
        want_flush(c);
    }
    c->sent_since_tick = false;
    arm_heartbeat(c);
}

void conn_accept(struct broker *b, int fd, const struct sockaddr *addr, int addrlen)
{
    (void)addrlen;
    struct connection *c = xcalloc(1, sizeof *c);
    c->b = b;
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        port = ntohs(in->sin_port);
        c->peer_is_loopback = (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    } else if (addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        port = ntohs(in6->sin6_port);
        c->peer_is_loopback = IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr) ||
                              (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && in6->sin6_addr.s6_addr[12] == 127);
    }
    snprintf(c->peer, sizeof c->peer, addr->sa_family == AF_INET6 ? "[%s]:%d" : "%s:%d", host, port);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    evutil_make_socket_nonblocking(fd);
    c->fd = fd;
    c->outbuf = evbuffer_new();
    c->read_ev = event_new(b->base, fd, EV_READ | EV_PERSIST, on_readable, c);
    c->write_ev = event_new(b->base, fd, EV_WRITE | EV_PERSIST, on_writable, c);
    c->timer = evtimer_new(b->base, on_timer, c);
    abuf_init(&c->out);
    event_add(c->read_ev, NULL);
    c->next = b->conns;
    if (b->conns)
        b->conns->prev = c;
    b->conns = c;
    b->nconns++;
    arm_timer(c, 10);
    log_debug("connection %s accepted", c->peer);
    if (b->stopping)
        schedule_free(c);
}
