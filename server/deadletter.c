#include "server/deadletter.h"

#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "amqp/abuf.h"
#include "amqp/table.h"
#include "amqp_methods.h"
#include "common/xalloc.h"
#include "server/broker.h"
#include "server/exchange.h"
#include "server/log.h"
#include "server/message.h"
#include "server/qstore.h"
#include "server/sender_keys.h"
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

struct hfield {
    amqp_bytes key;
    amqp_bytes val;     /* tag + encoded value */
};

static int cmp_field(const void *a, const void *b)
{
    const struct hfield *x = a, *y = b;
    size_t n = x->key.len < y->key.len ? x->key.len : y->key.len;
    int c = memcmp(x->key.ptr, y->key.ptr, n);
    return c ? c : (x->key.len > y->key.len) - (x->key.len < y->key.len);
}

/* Writes the fields of a table, sorted by key if asked (RabbitMQ sorts the entries it
 * rewrites, and the whole header table when it writes x-death). */
static void put_fields(struct abuf *b, struct hfield *f, size_t n, bool sorted)
{
    if (sorted)
        qsort(f, n, sizeof *f, cmp_field);
    for (size_t i = 0; i < n; i++) {
        table_key_bytes(b, f[i].key);
        abuf_bytes(b, f[i].val.ptr, f[i].val.len);
    }
}

/* Encodes one value into scratch and returns a view of it (valid until scratch grows:
 * callers encode everything first, then take the views). */
static size_t put_str(struct abuf *scratch, amqp_bytes s)
{
    size_t off = scratch->len;
    field_put_longstr(scratch, s);
    return off;
}

/* Writes one new x-death entry: in RabbitMQ's build order for a message's first death,
 * sorted for any later one. */
static void put_new_death(struct abuf *b, struct message *m, amqp_bytes queue, const char *reason,
                          const struct amqp_basic_properties *pr, bool sorted)
{
    struct abuf v;
    abuf_init(&v);
    size_t o_count = v.len;
    field_put_i64(&v, 1);
    size_t o_reason = put_str(&v, amqp_cstr(reason));
    size_t o_queue = put_str(&v, queue);
    size_t o_time = v.len;
    struct timeval now;
    gettimeofday(&now, NULL);
    field_put_timestamp(&v, (uint64_t)now.tv_sec);
    size_t o_exchange = put_str(&v, message_exchange(m));
    size_t o_keys = v.len;
    abuf_u8(&v, 'A');
    size_t a = table_begin(&v);
    field_put_longstr(&v, message_rkey(m));
    struct field_value cc, key;
    if ((pr->flags & AMQP_PROP_HEADERS) && table_get(pr->headers, "CC", &cc) == 1 && cc.type == 'A') {
        struct table_iter it; /* the CC keys count as routing keys; BCC ones are gone by now */
        table_iter_init(&it, cc.v.bytes);
        while (array_next(&it, &key) == 1) {
            if (key.type == 'S')
                field_put_longstr(&v, key.v.bytes);
        }
    }
    table_end(&v, a);
    size_t o_exp = put_str(&v, (pr->flags & AMQP_PROP_EXPIRATION) ? pr->expiration : amqp_bytes_of("", 0));
    size_t o_end = v.len;
#define SPAN(from, to) amqp_bytes_of(v.data + (from), (to) - (from))
    struct hfield f[] = {
        { amqp_cstr("count"), SPAN(o_count, o_reason) },
        { amqp_cstr("reason"), SPAN(o_reason, o_queue) },
        { amqp_cstr("queue"), SPAN(o_queue, o_time) },
        { amqp_cstr("time"), SPAN(o_time, o_exchange) },
        { amqp_cstr("exchange"), SPAN(o_exchange, o_keys) },
        { amqp_cstr("routing-keys"), SPAN(o_keys, o_exp) },
        { amqp_cstr("original-expiration"), SPAN(o_exp, o_end) },
    };
#undef SPAN
    size_t n = (pr->flags & AMQP_PROP_EXPIRATION) ? 7 : 6;
    abuf_u8(b, 'F');
    size_t t = table_begin(b);
    put_fields(b, f, n, sorted);
    table_end(b, t);
    abuf_free(&v);
}

/* Copies an existing x-death entry with its count raised by one and its keys sorted;
 * nothing else changes (time and exchange stay those of the first such death). */
static void put_counted_death(struct abuf *b, amqp_bytes death)
{
    struct abuf v;
    abuf_init(&v);
    size_t n = 0, cap = 8;
    struct hfield *f = xcalloc(cap, sizeof *f);
    size_t *offs = xcalloc(cap + 1, sizeof *offs);
    struct table_iter it;
    table_iter_init(&it, death);
    amqp_bytes key;
    struct field_value fv;
    while (table_next(&it, &key, &fv) == 1) {
        if (n == cap) {
            cap *= 2;
            f = xrealloc_array(f, cap, sizeof *f);
            offs = xrealloc_array(offs, cap + 1, sizeof *offs);
        }
        offs[n] = v.len;
        f[n].key = key;
        int64_t c;
        if (amqp_bytes_eq_cstr(key, "count") && field_as_int64(&fv, &c) == 0)
            field_put_i64(&v, c + 1);
        else
            field_put_value(&v, &fv);
        n++;
    }
    offs[n] = v.len;
    for (size_t i = 0; i < n; i++)
        f[i].val = amqp_bytes_of(v.data + offs[i], offs[i + 1] - offs[i]);
    abuf_u8(b, 'F');
    size_t t = table_begin(b);
    put_fields(b, f, n, true);
    table_end(b, t);
    free(f);
    free(offs);
    abuf_free(&v);
}

/* The headers of the dead-lettered copy: x-death with this death first (an existing entry
 * for the same queue and reason counted up and moved to the front), x-first-death-* when
 * this is the first death, x-last-death-* always, everything else as it was; the whole
 * table sorted by key. */
static void build_headers(struct abuf *b, struct message *m, amqp_bytes queue, const char *reason,
                          const struct amqp_basic_properties *pr, bool drop_cc)
{
    amqp_bytes old = (pr->flags & AMQP_PROP_HEADERS) ? pr->headers : amqp_bytes_of("", 0);
    struct field_value deaths = { 0 }, v;
    bool had_xdeath = table_get(old, "x-death", &deaths) == 1;
    bool had_deaths = had_xdeath && deaths.type == 'A';

    /* The new x-death value. */
    struct abuf xd;
    abuf_init(&xd);
    abuf_u8(&xd, 'A');
    size_t a = table_begin(&xd);
    amqp_bytes matched = { 0 };
    struct table_iter it;
    if (had_deaths) {
        table_iter_init(&it, deaths.v.bytes);
        while (!matched.ptr && array_next(&it, &v) == 1) {
            if (v.type == 'F' && death_matches(v.v.bytes, queue, reason))
                matched = v.v.bytes;
        }
    }
    if (matched.ptr)
        put_counted_death(&xd, matched);
    else
        put_new_death(&xd, m, queue, reason, pr, had_deaths);
    if (had_deaths) {
        table_iter_init(&it, deaths.v.bytes);
        while (array_next(&it, &v) == 1) {
            if (!(v.type == 'F' && v.v.bytes.ptr == matched.ptr))
                field_put_value(&xd, &v);
        }
    }
    table_end(&xd, a);

    /* x-first-death-* values, written only at a message's first death. */
    struct abuf first;
    abuf_init(&first);
    size_t o1 = put_str(&first, message_exchange(m));
    size_t o2 = put_str(&first, queue);
    size_t o3 = put_str(&first, amqp_cstr(reason));
    size_t o4 = first.len;

    size_t n = 0, cap = 16;
    struct hfield *f = xcalloc(cap, sizeof *f);
    f[n++] = (struct hfield){ amqp_cstr("x-death"), amqp_bytes_of(xd.data, xd.len) };
    /* x-last-death-* (CONFORMANCE.md; RabbitMQ 3.13 and later): this death, every time. */
    f[n++] = (struct hfield){ amqp_cstr("x-last-death-exchange"), amqp_bytes_of(first.data + o1, o2 - o1) };
    f[n++] = (struct hfield){ amqp_cstr("x-last-death-queue"), amqp_bytes_of(first.data + o2, o3 - o2) };
    f[n++] = (struct hfield){ amqp_cstr("x-last-death-reason"), amqp_bytes_of(first.data + o3, o4 - o3) };
    if (!had_xdeath) {
        f[n++] = (struct hfield){ amqp_cstr("x-first-death-exchange"), amqp_bytes_of(first.data + o1, o2 - o1) };
        f[n++] = (struct hfield){ amqp_cstr("x-first-death-queue"), amqp_bytes_of(first.data + o2, o3 - o2) };
        f[n++] = (struct hfield){ amqp_cstr("x-first-death-reason"), amqp_bytes_of(first.data + o3, o4 - o3) };
    }
    amqp_bytes key;
    table_iter_init(&it, old);
    for (;;) {
        size_t start = it.r.pos;
        if (table_next(&it, &key, &v) != 1)
            break;
        bool replaced = amqp_bytes_eq_cstr(key, "x-death") || amqp_bytes_eq_cstr(key, "x-last-death-exchange") ||
                        amqp_bytes_eq_cstr(key, "x-last-death-queue") || amqp_bytes_eq_cstr(key, "x-last-death-reason") ||
                        (!had_xdeath && key.len > 14 && memcmp(key.ptr, "x-first-death-", 14) == 0 &&
                         (amqp_bytes_eq_cstr(key, "x-first-death-exchange") ||
                          amqp_bytes_eq_cstr(key, "x-first-death-queue") ||
                          amqp_bytes_eq_cstr(key, "x-first-death-reason")));
        if (replaced || (drop_cc && amqp_bytes_eq_cstr(key, "CC")))
            continue;
        if (n == cap) {
            cap *= 2;
            f = xrealloc_array(f, cap, sizeof *f);
        }
        size_t val_start = start + 1 + key.len; /* shortstr key: length octet + bytes */
        f[n++] = (struct hfield){ key, amqp_bytes_of(old.ptr + val_start, it.r.pos - val_start) };
    }
    size_t t = table_begin(b);
    put_fields(b, f, n, true);
    table_end(b, t);
    free(f);
    abuf_free(&first);
    abuf_free(&xd);
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
    /* A dead-letter routing key replaces the CC keys too, as in RabbitMQ. */
    build_headers(&headers, m, queue_name(q), REASONS[reason], &pr, q->qa.has_dlrk);
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
    struct route_result r = { 0 }, extra = { 0 };
    exchange_route(x, rkey, message_headers(copy), &r);
    if (!q->qa.has_dlrk && copy->has_headers && sender_keys_present(message_headers(copy)))
        sender_keys_route(x, message_headers(copy), &r, &extra);
    route_result_free(&extra);
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
