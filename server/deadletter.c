#include "server/deadletter.h"

#include <string.h>
#include <sys/time.h>

#include "amqp/abuf.h"
#include "amqp/table.h"
#include "amqp_methods.h"
#include "server/broker.h"
#include "server/exchange.h"
#include "server/log.h"
#include "server/message.h"
#include "server/qstore.h"
#include "server/queue.h"
#include "server/vhost.h"

static const char *const REASONS[] = {
    [DL_REJECTED] = "rejected", [DL_EXPIRED] = "expired", [DL_MAXLEN] = "maxlen",
    [DL_DELIVERY_LIMIT] = "delivery_limit",
};

static bool str_eq(const struct field_value *v, amqp_bytes s)
{
    return (v->type == 'S' || v->type == 'x') && amqp_bytes_eq(v->v.bytes, s);
}

static bool death_matches(amqp_bytes death, amqp_bytes queue, const char *reason)
{
    struct field_value q, r;
    return table_get(death, "queue", &q) == 1 && str_eq(&q, queue) && table_get(death, "reason", &r) == 1 &&
           str_eq(&r, amqp_cstr(reason));
}

/* Writes one new x-death entry; keys in RabbitMQ's (sorted) order. */
static void put_new_death(struct abuf *b, struct message *m, amqp_bytes queue, const char *reason,
                          const struct amqp_basic_properties *pr)
{
    abuf_u8(b, 'F');
    size_t t = table_begin(b);
    table_key(b, "count");
    field_put_i64(b, 1);
    table_key(b, "exchange");
    field_put_longstr(b, message_exchange(m));
    if (pr->flags & AMQP_PROP_EXPIRATION) {
        table_key(b, "original-expiration");
        field_put_longstr(b, pr->expiration);
    }
    table_key(b, "queue");
    field_put_longstr(b, queue);
    table_key(b, "reason");
    field_put_longstr(b, amqp_cstr(reason));
    table_key(b, "routing-keys");
    abuf_u8(b, 'A');
    size_t a = table_begin(b);
    field_put_longstr(b, message_rkey(m));
    table_end(b, a);
    struct timeval now;
    gettimeofday(&now, NULL);
    table_key(b, "time");
    field_put_timestamp(b, (uint64_t)now.tv_sec);
    table_end(b, t);
}

/* Copies an existing x-death entry with its count raised by one. */
static void put_counted_death(struct abuf *b, amqp_bytes death)
{
    abuf_u8(b, 'F');
    size_t t = table_begin(b);
    struct table_iter it;
    table_iter_init(&it, death);
    amqp_bytes key;
    struct field_value v;
    while (table_next(&it, &key, &v) == 1) {
        table_key_bytes(b, key);
        int64_t n;
        if (amqp_bytes_eq_cstr(key, "count") && field_as_int64(&v, &n) == 0)
            field_put_i64(b, n + 1);
        else
            field_put_value(b, &v);
    }
    table_end(b, t);
}

/* The headers of the dead-lettered copy: x-death with this death first, x-first-death-*
 * set once, everything else as it was. */
static void build_headers(struct abuf *b, struct message *m, amqp_bytes queue, const char *reason,
                          const struct amqp_basic_properties *pr)
{
    amqp_bytes old = (pr->flags & AMQP_PROP_HEADERS) ? pr->headers : amqp_bytes_of("", 0);
    struct field_value deaths = { 0 }, v;
    bool had_deaths = table_get(old, "x-death", &deaths) == 1 && deaths.type == 'A';
    bool had_first = table_get(old, "x-first-death-reason", &v) == 1;

    size_t t = table_begin(b);
    table_key(b, "x-death");
    abuf_u8(b, 'A');
    size_t a = table_begin(b);
    amqp_bytes matched = { 0 };
    bool found = false;
    struct table_iter it;
    if (had_deaths) {
        table_iter_init(&it, deaths.v.bytes);
        while (array_next(&it, &v) == 1) {
            if (!found && v.type == 'F' && death_matches(v.v.bytes, queue, reason)) {
                matched = v.v.bytes;
                found = true;
            }
        }
    }
    if (found)
        put_counted_death(b, matched);
    else
        put_new_death(b, m, queue, reason, pr);
    if (had_deaths) {
        table_iter_init(&it, deaths.v.bytes);
        while (array_next(&it, &v) == 1) {
            if (!(v.type == 'F' && v.v.bytes.ptr == matched.ptr))
                field_put_value(b, &v);
        }
    }
    table_end(b, a);
    if (!had_first) {
        table_key(b, "x-first-death-exchange");
        field_put_longstr(b, message_exchange(m));
        table_key(b, "x-first-death-queue");
        field_put_longstr(b, queue);
        table_key(b, "x-first-death-reason");
        field_put_longstr(b, amqp_cstr(reason));
    }
    amqp_bytes key;
    table_iter_init(&it, old);
    while (table_next(&it, &key, &v) == 1) {
        if (amqp_bytes_eq_cstr(key, "x-death"))
            continue;
        table_key_bytes(b, key);
        field_put_value(b, &v);
    }
    table_end(b, t);
}

/* RabbitMQ's cycle rule: dead-lettering into a queue already in the x-death history is a
 * cycle (and dropped) unless a rejection happened since then. Rejections never cycle. */
static bool cycles(amqp_bytes headers, amqp_bytes target, enum dl_reason reason)
{
    struct field_value deaths, d, q, r;
    if (reason == DL_REJECTED || table_get(headers, "x-death", &deaths) != 1 || deaths.type != 'A')
        return false;
    struct table_iter it;
    table_iter_init(&it, deaths.v.bytes);
    while (array_next(&it, &d) == 1) {
        if (d.type != 'F')
            continue;
        if (table_get(d.v.bytes, "reason", &r) == 1 && str_eq(&r, amqp_cstr("rejected")))
            return false;
        if (table_get(d.v.bytes, "queue", &q) == 1 && str_eq(&q, target))
            return true;
    }
    return false;
}

void deadletter(struct queue *q, struct message *m, enum dl_reason reason)
{
    if (!q->qa.has_dlx)
        return;
    struct vhost *vh = q->vh;
    struct broker *b = vh->broker;
    struct exchange *x = vhost_exchange(vh, q->qa.dlx);
    if (!x) {
        log_debug("queue '%s': dead-letter exchange '%.*s' does not exist; message dropped", q->name,
                  (int)q->qa.dlx.len, (const char *)q->qa.dlx.ptr);
        return;
    }
    struct amqp_basic_properties pr;
    amqp_bytes props = message_props(m);
    if (amqp_props_decode(props.ptr, props.len, &pr) != 0)
        return;
    struct abuf headers, out;
    abuf_init(&headers);
    abuf_init(&out);
    build_headers(&headers, m, queue_name(q), REASONS[reason], &pr);
    pr.headers = amqp_bytes_of(headers.data + 4, headers.len - 4);
    pr.flags |= AMQP_PROP_HEADERS;
    pr.flags &= (uint16_t)~AMQP_PROP_EXPIRATION;
    amqp_props_encode(&pr, &out);
    struct amqp_basic_properties npr;
    amqp_bytes rkey = q->qa.has_dlrk ? q->qa.dlrk : message_rkey(m);
    struct message *copy = NULL;
    if (amqp_props_decode(out.data, out.len, &npr) == 0) {
        copy = message_new(++b->next_message_id, exchange_name(x), rkey, out.data, out.len, &npr, m->body_len);
        if (m->body_len)
            memcpy(copy->body, m->body, m->body_len);
        copy->body_received = copy->body_len;
    }
    abuf_free(&headers);
    abuf_free(&out);
    if (!copy)
        return;
    /* Its own result: this may run inside the routing of another publish. */
    struct route_result r = { 0 };
    exchange_route(x, rkey, message_headers(copy), &r);
    size_t n = 0;
    for (size_t i = 0; i < r.n; i++) {
        if (!cycles(message_headers(copy), queue_name(r.queues[i]), reason))
            r.queues[n++] = r.queues[i];
    }
    size_t stored = 0;
    for (size_t i = 0; i < n && stored < 2; i++)
        stored += qstore_wants(r.queues[i], copy);
    copy->store_shared = stored > 1;
    for (size_t i = 0; i < n; i++)
        queue_publish(r.queues[i], copy);
    route_result_free(&r);
    message_unref(&copy);
}
