/* exchange.declare/delete/bind/unbind and queue.declare/bind/unbind/purge/delete, with
 * RabbitMQ's checks and reply texts (CONFORMANCE.md, "Errors" and "Entities"). */
#include <stdio.h>
#include <string.h>

#include "amqp/table.h"
#include "amqp_methods.h"
#include "server/channel_priv.h"
#include "server/connection.h"
#include "server/exchange.h"
#include "server/names.h"
#include "server/persist.h"
#include "server/qargs.h"
#include "server/qpolicy.h"
#include "server/reply_to.h"
#include "server/queue.h"
#include "server/vhost.h"

#define STR(b) (int)(b).len, (const char *)(b).ptr

static const char *bool_str(bool b) { return b ? "true" : "false"; }

static void reply(struct channel *ch, uint32_t id)
{
    struct amqp_method ok = { .id = id };
    conn_send_method(ch->conn, ch->id, &ok);
}

static bool has_amq_prefix(amqp_bytes name) { return name.len >= 4 && memcmp(name.ptr, "amq.", 4) == 0; }

/* RabbitMQ's wording: "'20'" when both sides have the argument, "the value '20' of type
 * 'signedint'" or "none" when only one side has it. */
static void describe(const struct field_value *v, bool present, bool both, char *out, size_t size)
{
    if (!present) {
        snprintf(out, size, "none");
        return;
    }
    char val[96];
    int64_t i;
    if (v->type == 'S' || v->type == 'x')
        snprintf(val, sizeof val, "%.*s", (int)(v->v.bytes.len < 80 ? v->v.bytes.len : 80), (const char *)v->v.bytes.ptr);
    else if (v->type == 't')
        snprintf(val, sizeof val, "%s", bool_str(v->v.i != 0));
    else if (field_as_int64(v, &i) == 0)
        snprintf(val, sizeof val, "%lld", (long long)i);
    else
        snprintf(val, sizeof val, "...");
    if (both)
        snprintf(out, size, "'%s'", val);
    else
        snprintf(out, size, "the value '%s' of type '%s'", val, qargs_type_name(v->type));
}

/* Compares the arguments RabbitMQ checks on redeclare; raises 406 naming the first that differs. */
static bool args_equivalent(struct channel *ch, uint32_t mid, const char *kind, amqp_bytes name,
                            amqp_bytes have, amqp_bytes got, const char *const *keys)
{
    for (size_t i = 0; keys[i]; i++) {
        struct field_value a, b;
        bool ha = table_get(have, keys[i], &a) == 1, hb = table_get(got, keys[i], &b) == 1;
        if (ha == hb && (!ha || field_value_equal(&a, &b)))
            continue;
        char recv[160], cur[160];
        describe(&b, hb, ha && hb, recv, sizeof recv);
        describe(&a, ha, ha && hb, cur, sizeof cur);
        channel_error(ch, AMQP_PRECONDITION_FAILED, mid,
                      "inequivalent arg '%s' for %s '%.*s' in vhost '%s': received %s but current is %s", keys[i],
                      kind, STR(name), ch->conn->vh->name, recv, cur);
        return false;
    }
    return true;
}

static bool flag_equivalent(struct channel *ch, uint32_t mid, const char *kind, amqp_bytes name,
                            const char *arg, bool have, bool got)
{
    if (have == got)
        return true;
    channel_error(ch, AMQP_PRECONDITION_FAILED, mid,
                  "inequivalent arg '%s' for %s '%.*s' in vhost '%s': received '%s' but current is '%s'", arg, kind,
                  STR(name), ch->conn->vh->name, bool_str(got), bool_str(have));
    return false;
}

static struct exchange *find_exchange(struct channel *ch, amqp_bytes name, uint32_t mid)
{
    struct exchange *x = vhost_exchange(ch->conn->vh, name);
    if (!x)
        channel_error(ch, AMQP_NOT_FOUND, mid, "no exchange '%.*s' in vhost '%s'", STR(name), ch->conn->vh->name);
    return x;
}

static bool not_default(struct channel *ch, amqp_bytes name, uint32_t mid)
{
    if (name.len != 0)
        return true;
    channel_error(ch, AMQP_ACCESS_REFUSED, mid, "operation not permitted on the default exchange");
    return false;
}

static bool args_wellformed(struct channel *ch, amqp_bytes args, uint32_t mid)
{
    struct field_value v;
    if (table_get(args, "alternate-exchange", &v) == 1 && v.type != 'S') {
        channel_error(ch, AMQP_PRECONDITION_FAILED, mid, "invalid arg 'alternate-exchange': expected a string");
        return false;
    }
    return true;
}

static const char *const exchange_checked_args[] = { "alternate-exchange", NULL };

static void exchange_declare(struct channel *ch, const struct amqp_exchange_declare *d)
{
    const uint32_t mid = AMQP_EXCHANGE_DECLARE;
    struct vhost *vh = ch->conn->vh;
    if (!not_default(ch, d->exchange, mid))
        return;
    struct exchange *x = vhost_exchange(vh, d->exchange);
    if (d->passive) {
        if (!x && !find_exchange(ch, d->exchange, mid))
            return;
        if (!d->nowait)
            reply(ch, AMQP_EXCHANGE_DECLARE_OK);
        return;
    }
    const struct xtype *type = xtype_find(d->type);
    if (!type) {
        conn_error(ch->conn, AMQP_COMMAND_INVALID, mid, "invalid exchange type '%.*s'", STR(d->type));
        return;
    }
    if (x) {
        if (strcmp(x->type->name, type->name) != 0) {
            channel_error(ch, AMQP_PRECONDITION_FAILED, mid,
                          "inequivalent arg 'type' for exchange '%.*s' in vhost '%s': received '%.*s' but current is '%s'",
                          STR(d->exchange), vh->name, STR(d->type), x->type->name);
            return;
        }
        if (!flag_equivalent(ch, mid, "exchange", d->exchange, "durable", x->durable, d->durable) ||
            !flag_equivalent(ch, mid, "exchange", d->exchange, "auto_delete", x->auto_delete, d->auto_delete) ||
            !flag_equivalent(ch, mid, "exchange", d->exchange, "internal", x->internal, d->internal) ||
            !args_equivalent(ch, mid, "exchange", d->exchange, amqp_bytes_of(x->args, x->args_len), d->arguments,
                             exchange_checked_args))
            return;
    } else {
        if (has_amq_prefix(d->exchange)) {
            channel_error(ch, AMQP_ACCESS_REFUSED, mid, "exchange name '%.*s' contains reserved prefix 'amq.*'",
                          STR(d->exchange));
            return;
        }
        if (!args_wellformed(ch, d->arguments, mid))
            return;
        x = exchange_new(vh, d->exchange, type, d->durable, d->auto_delete, d->internal, d->arguments);
        vhost_add_exchange(vh, x);
        persist_exchange_added(x);
    }
    if (!d->nowait)
        reply(ch, AMQP_EXCHANGE_DECLARE_OK);
}

static void exchange_delete(struct channel *ch, const struct amqp_exchange_delete *d)
{
    const uint32_t mid = AMQP_EXCHANGE_DELETE;
    struct vhost *vh = ch->conn->vh;
    if (!not_default(ch, d->exchange, mid))
        return;
    if (has_amq_prefix(d->exchange)) {
        channel_error(ch, AMQP_ACCESS_REFUSED, mid, "deletion of system exchange '%.*s' in vhost '%s' not allowed",
                      STR(d->exchange), vh->name);
        return;
    }
    struct exchange *x = vhost_exchange(vh, d->exchange);
    if (x) {
        if (d->if_unused && x->nbindings > 0) {
            channel_error(ch, AMQP_PRECONDITION_FAILED, mid, "exchange '%.*s' in vhost '%s' in use",
                          STR(d->exchange), vh->name);
            return;
        }
        vhost_delete_exchange(vh, x);
    }
    if (!d->nowait)
        reply(ch, AMQP_EXCHANGE_DELETE_OK);
}

/* Validates binding arguments for the source's type; raises 406 with the type's reason. */
static bool binding_args_ok(struct channel *ch, struct exchange *src, amqp_bytes key, amqp_bytes args, uint32_t mid)
{
    char err[200];
    if (!src->type->validate || src->type->validate(key, args, err, sizeof err) == 0)
        return true;
    channel_error(ch, AMQP_PRECONDITION_FAILED, mid, "%s", err);
    return false;
}

/* Shared by exchange.bind/unbind and queue.bind/unbind once both ends are resolved. */
static bool bind_or_unbind(struct channel *ch, bool bind, struct exchange *src, void *dest, bool dest_is_exchange,
                           amqp_bytes key, amqp_bytes args, uint32_t mid)
{
    struct binding *b = binding_find(src, dest, key, args);
    if (bind) {
        if (!b) {
            if (!binding_args_ok(ch, src, key, args, mid))
                return false;
            struct binding **incoming = dest_is_exchange ? &((struct exchange *)dest)->incoming
                                                         : &((struct queue *)dest)->incoming;
            persist_binding(binding_add(src, dest, dest_is_exchange, incoming, key, args), true);
        }
    } else if (b) {
        vhost_unbind(ch->conn->vh, b);
    }
    return true;
}

static void exchange_bind(struct channel *ch, const struct amqp_exchange_bind *d, bool bind)
{
    const uint32_t mid = bind ? AMQP_EXCHANGE_BIND : AMQP_EXCHANGE_UNBIND;
    if (!not_default(ch, d->destination, mid) || !not_default(ch, d->source, mid))
        return;
    struct exchange *dest = find_exchange(ch, d->destination, mid);
    if (!dest)
        return;
    struct exchange *src = find_exchange(ch, d->source, mid);
    if (!src)
        return;
    if (!bind_or_unbind(ch, bind, src, dest, true, d->routing_key, d->arguments, mid))
        return;
    if (!d->nowait)
        reply(ch, bind ? AMQP_EXCHANGE_BIND_OK : AMQP_EXCHANGE_UNBIND_OK);
}

static void remember_queue(struct channel *ch, amqp_bytes name)
{
    memcpy(ch->last_queue, name.ptr, name.len);
    ch->last_queue_len = (uint8_t)name.len;
}

static void raise_locked(struct channel *ch, struct queue *q, uint32_t mid)
{
    channel_error(ch, AMQP_RESOURCE_LOCKED, mid,
                  "cannot obtain exclusive access to locked queue '%.*s' in vhost '%s'. It could be originally "
                  "declared on another connection or the exclusive property value does not match that of the "
                  "original declaration.",
                  (int)q->name_len, q->name, ch->conn->vh->name);
}

/* Exclusive queues may be used by their own connection only (checked before anything else). */
static bool locked_out(struct channel *ch, struct queue *q, uint32_t mid)
{
    if (!q->exclusive || q->owner == ch->conn)
        return false;
    raise_locked(ch, q, mid);
    return true;
}

struct queue *channel_use_queue(struct channel *ch, amqp_bytes name, uint32_t mid)
{
    if (name.len == 0) {
        if (ch->last_queue_len == 0) {
            channel_error(ch, AMQP_NOT_FOUND, mid, "no previously declared queue");
            return NULL;
        }
        name = amqp_bytes_of(ch->last_queue, ch->last_queue_len);
    }
    struct queue *q = vhost_queue(ch->conn->vh, name);
    if (!q) {
        channel_error(ch, AMQP_NOT_FOUND, mid, "no queue '%.*s' in vhost '%s'", STR(name), ch->conn->vh->name);
        return NULL;
    }
    return locked_out(ch, q, mid) ? NULL : q;
}

static void send_declare_ok(struct channel *ch, struct queue *q)
{
    struct amqp_method ok = { .id = AMQP_QUEUE_DECLARE_OK };
    ok.a.queue_declare_ok.queue = queue_name(q);
    ok.a.queue_declare_ok.message_count = (uint32_t)queue_ready(q);
    ok.a.queue_declare_ok.consumer_count = (uint32_t)q->nconsumers;
    conn_send_method(ch->conn, ch->id, &ok);
}

static const char *const queue_checked_args[] = {
    "x-expires", "x-message-ttl", "x-dead-letter-exchange", "x-dead-letter-routing-key", "x-max-length",
    "x-max-length-bytes", "x-max-priority", "x-overflow", "x-queue-mode", "x-queue-type",
    "x-single-active-consumer", "x-delivery-limit", NULL,
};

static void handle_queue_declare(struct channel *ch, const struct amqp_queue_declare *d)
{
    const uint32_t mid = AMQP_QUEUE_DECLARE;
    struct vhost *vh = ch->conn->vh;
    amqp_bytes name = d->queue;
    char generated[64];
    if (reply_to_is_pseudo_queue(name) || reply_to_is_live_name(ch->conn->b, name)) {
        /* RabbitMQ answers for the pseudo-queue, and for a reply name while it is in use */
        struct amqp_method ok = { .id = AMQP_QUEUE_DECLARE_OK };
        ok.a.queue_declare_ok.queue = name;
        ok.a.queue_declare_ok.consumer_count = 1;
        if (!d->nowait)
            conn_send_method(ch->conn, ch->id, &ok);
        return;
    }
    if (d->passive) {
        struct queue *q = channel_use_queue(ch, name, mid);
        if (!q)
            return;
        remember_queue(ch, queue_name(q));
        qpolicy_touch(q);
        if (!d->nowait)
            send_declare_ok(ch, q);
        return;
    }
    if (name.len == 0) {
        size_t n = names_generate(generated, sizeof generated, "amq.gen-");
        name = amqp_bytes_of(generated, n);
    }
    struct queue *q = vhost_queue(vh, name);
    if (q) {
        if (locked_out(ch, q, mid))
            return;
        if (d->exclusive && !q->exclusive) {
            raise_locked(ch, q, mid);
            return;
        }
        if (!flag_equivalent(ch, mid, "queue", name, "durable", q->durable, d->durable) ||
            !flag_equivalent(ch, mid, "queue", name, "auto_delete", q->auto_delete, d->auto_delete) ||
            !args_equivalent(ch, mid, "queue", name, amqp_bytes_of(q->args, q->args_len), d->arguments,
                             queue_checked_args))
            return;
    } else {
        if (has_amq_prefix(name) && d->queue.len != 0) {
            channel_error(ch, AMQP_ACCESS_REFUSED, mid, "queue name '%.*s' contains reserved prefix 'amq.*'",
                          STR(name));
            return;
        }
        struct qargs qa;
        char who[320], err[512];
        snprintf(who, sizeof who, "queue '%.*s' in vhost '%s'", STR(name), vh->name);
        if (qargs_parse(d->arguments, &qa, who, err, sizeof err) != 0) {
            channel_error(ch, AMQP_PRECONDITION_FAILED, mid, "%s", err);
            return;
        }
        if (qa.quorum && !d->durable) {
            channel_error(ch, AMQP_PRECONDITION_FAILED, mid, "invalid property 'non-durable' for %s", who);
            return;
        }
        q = queue_new(vh, name, d->durable && !d->exclusive, d->exclusive, d->auto_delete,
                      d->exclusive ? ch->conn : NULL, d->arguments);
        vhost_add_queue(vh, q);
        if (d->exclusive)
            conn_add_exclusive(ch->conn, q);
        binding_add(vh->default_exchange, q, false, &q->incoming, name, amqp_cstr(""));
        persist_queue_added(q);
    }
    remember_queue(ch, name);
    qpolicy_touch(q);
    if (!d->nowait)
        send_declare_ok(ch, q);
}

static void queue_bind(struct channel *ch, amqp_bytes qname, amqp_bytes xname, amqp_bytes key, amqp_bytes args,
                       bool nowait, bool bind)
{
    const uint32_t mid = bind ? AMQP_QUEUE_BIND : AMQP_QUEUE_UNBIND;
    struct queue *q = channel_use_queue(ch, qname, mid);
    if (!q || !not_default(ch, xname, mid))
        return;
    struct exchange *x = find_exchange(ch, xname, mid);
    if (!x)
        return;
    if (!bind_or_unbind(ch, bind, x, q, false, key, args, mid))
        return;
    if (!nowait)
        reply(ch, bind ? AMQP_QUEUE_BIND_OK : AMQP_QUEUE_UNBIND_OK);
}

static void handle_queue_purge(struct channel *ch, const struct amqp_queue_purge *d)
{
    struct queue *q = channel_use_queue(ch, d->queue, AMQP_QUEUE_PURGE);
    if (!q)
        return;
    size_t n = queue_purge(q);
    persist_queue_purged(q);
    if (d->nowait)
        return;
    struct amqp_method ok = { .id = AMQP_QUEUE_PURGE_OK };
    ok.a.queue_purge_ok.message_count = (uint32_t)n;
    conn_send_method(ch->conn, ch->id, &ok);
}

static void handle_queue_delete(struct channel *ch, const struct amqp_queue_delete *d)
{
    const uint32_t mid = AMQP_QUEUE_DELETE;
    struct vhost *vh = ch->conn->vh;
    amqp_bytes name = d->queue.len ? d->queue : amqp_bytes_of(ch->last_queue, ch->last_queue_len);
    struct queue *q = vhost_queue(vh, name);
    unsigned n = 0;
    if (q) {
        if (locked_out(ch, q, mid))
            return;
        if (d->if_unused && q->nconsumers > 0) {
            channel_error(ch, AMQP_PRECONDITION_FAILED, mid, "queue '%.*s' in vhost '%s' in use", STR(name), vh->name);
            return;
        }
        if (d->if_empty && queue_ready(q) > 0) {
            channel_error(ch, AMQP_PRECONDITION_FAILED, mid, "queue '%.*s' in vhost '%s' not empty", STR(name),
                          vh->name);
            return;
        }
        n = vhost_delete_queue(vh, q);
    }
    if (d->nowait)
        return;
    struct amqp_method ok = { .id = AMQP_QUEUE_DELETE_OK };
    ok.a.queue_delete_ok.message_count = n;
    conn_send_method(ch->conn, ch->id, &ok);
}

static void handle(struct channel *ch, const struct amqp_method *m);

void entities_handle(struct channel *ch, const struct amqp_method *m)
{
    handle(ch, m);
    persist_reply_waits(ch->conn);
}

static void handle(struct channel *ch, const struct amqp_method *m)
{
    switch (m->id) {
    case AMQP_EXCHANGE_DECLARE: exchange_declare(ch, &m->a.exchange_declare); break;
    case AMQP_EXCHANGE_DELETE: exchange_delete(ch, &m->a.exchange_delete); break;
    case AMQP_EXCHANGE_BIND: exchange_bind(ch, &m->a.exchange_bind, true); break;
    case AMQP_EXCHANGE_UNBIND:
        exchange_bind(ch, (const struct amqp_exchange_bind *)&m->a.exchange_unbind, false);
        break;
    case AMQP_QUEUE_DECLARE: handle_queue_declare(ch, &m->a.queue_declare); break;
    case AMQP_QUEUE_BIND: {
        const struct amqp_queue_bind *d = &m->a.queue_bind;
        queue_bind(ch, d->queue, d->exchange, d->routing_key, d->arguments, d->nowait, true);
        break;
    }
    case AMQP_QUEUE_UNBIND: {
        const struct amqp_queue_unbind *d = &m->a.queue_unbind;
        queue_bind(ch, d->queue, d->exchange, d->routing_key, d->arguments, false, false);
        break;
    }
    case AMQP_QUEUE_PURGE: handle_queue_purge(ch, &m->a.queue_purge); break;
    case AMQP_QUEUE_DELETE: handle_queue_delete(ch, &m->a.queue_delete); break;
    default:
        conn_error(ch->conn, AMQP_COMMAND_INVALID, m->id, "unexpected method %s", amqp_method_name(m->id));
        break;
    }
}
