#include "server/sender_keys.h"

#include <stdio.h>
#include <string.h>

#include "amqp/abuf.h"
#include "amqp/table.h"
#include "amqp_methods.h"
#include "common/xalloc.h"
#include "server/exchange.h"
#include "server/message.h"
#include "server/qargs.h"

int sender_keys_check(amqp_bytes headers, char *err, size_t err_size)
{
    static const char *const names[] = { "CC", "BCC" };
    for (int i = 0; i < 2; i++) {
        struct field_value v;
        if (table_get(headers, names[i], &v) == 1 && v.type != 'A') {
            snprintf(err, err_size, "invalid message: {unacceptable_type_in_header,\"%s\",%s}", names[i],
                     qargs_type_name(v.type));
            return -1;
        }
    }
    return 0;
}

bool sender_keys_present(amqp_bytes headers)
{
    struct field_value v;
    return table_get(headers, "CC", &v) == 1 || table_get(headers, "BCC", &v) == 1;
}

static void merge(struct route_result *out, const struct route_result *more)
{
    for (size_t i = 0; i < more->n; i++) {
        bool seen = false;
        for (size_t k = 0; k < out->n && !seen; k++)
            seen = out->queues[k] == more->queues[i];
        if (seen)
            continue;
        if (out->n == out->cap) {
            out->cap = out->cap ? out->cap * 2 : 8;
            out->queues = xrealloc_array(out->queues, out->cap, sizeof *out->queues);
        }
        out->queues[out->n++] = more->queues[i];
    }
}

void sender_keys_route(struct exchange *x, amqp_bytes headers, struct route_result *out, struct route_result *tmp)
{
    static const char *const names[] = { "CC", "BCC" };
    for (int i = 0; i < 2; i++) {
        struct field_value arr, key;
        if (table_get(headers, names[i], &arr) != 1 || arr.type != 'A')
            continue;
        struct table_iter it;
        table_iter_init(&it, arr.v.bytes);
        while (array_next(&it, &key) == 1) {
            if (key.type != 'S' || key.v.bytes.len > 255)
                continue; /* RabbitMQ ignores elements that are not strings */
            exchange_route(x, key.v.bytes, headers, tmp);
            merge(out, tmp);
        }
    }
}

struct message *sender_keys_strip_bcc(struct message *m)
{
    struct field_value v;
    if (!m->has_headers || table_get(message_headers(m), "BCC", &v) != 1)
        return message_ref(m);
    struct amqp_basic_properties pr;
    amqp_bytes props = message_props(m);
    if (amqp_props_decode(props.ptr, props.len, &pr) != 0)
        return message_ref(m);
    struct abuf h, out;
    abuf_init(&h);
    abuf_init(&out);
    size_t t = table_begin(&h);
    struct table_iter it;
    table_iter_init(&it, pr.headers);
    amqp_bytes key;
    while (table_next(&it, &key, &v) == 1) {
        if (amqp_bytes_eq_cstr(key, "BCC"))
            continue;
        table_key_bytes(&h, key);
        field_put_value(&h, &v);
    }
    table_end(&h, t);
    pr.headers = amqp_bytes_of(h.data + 4, h.len - 4);
    amqp_props_encode(&pr, &out);
    struct amqp_basic_properties npr;
    struct message *copy = message_ref(m);
    if (amqp_props_decode(out.data, out.len, &npr) == 0) {
        message_unref(&copy);
        copy = message_new(m->id, message_exchange(m), message_rkey(m), out.data, out.len, &npr, m->body_len);
        if (m->body_len)
            memcpy(copy->body, m->body, m->body_len);
        copy->body_received = copy->body_len;
    }
    abuf_free(&h);
    abuf_free(&out);
    return copy;
}
