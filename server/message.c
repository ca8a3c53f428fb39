#include "server/message.h"

#include <stdlib.h>
#include <string.h>

#include "amqp_methods.h"
#include "common/xalloc.h"

struct message *message_new(uint64_t id, amqp_bytes exchange, amqp_bytes rkey,
                            const uint8_t *props, size_t props_len,
                            const struct amqp_basic_properties *pr, uint64_t body_len)
{
    size_t meta = exchange.len + rkey.len + props_len;
    bool inline_body = body_len <= MESSAGE_INLINE_BODY;
    struct message *m = xmalloc(sizeof *m + meta + (inline_body ? body_len : 0));
    m->refs = 1;
    m->id = id;
    m->store_shared = false;
    m->store_op = 0;
    m->store_batch = 0;
    m->exchange_len = (uint8_t)exchange.len;
    m->rkey_len = (uint8_t)rkey.len;
    m->props_len = (uint32_t)props_len;
    memcpy(m->data, exchange.ptr, exchange.len);
    memcpy(m->data + exchange.len, rkey.ptr, rkey.len);
    memcpy(m->data + exchange.len + rkey.len, props, props_len);
    m->delivery_mode = (pr->flags & AMQP_PROP_DELIVERY_MODE) ? pr->delivery_mode : 0;
    m->ttl = -1;
    if (pr->flags & AMQP_PROP_EXPIRATION)
        message_parse_expiration(pr->expiration, &m->ttl);
    m->priority = (pr->flags & AMQP_PROP_PRIORITY) ? pr->priority : 0;
    m->has_headers = (pr->flags & AMQP_PROP_HEADERS) != 0;
    m->headers_off = m->has_headers ? (uint32_t)(pr->headers.ptr - props) : 0;
    m->headers_len = m->has_headers ? (uint32_t)pr->headers.len : 0;
    m->body_len = body_len;
    m->body_received = 0;
    m->body = inline_body ? m->data + meta : xmalloc(body_len);
    return m;
}

int message_parse_expiration(amqp_bytes s, int64_t *ms)
{
    if (s.len == 0 || s.len > 18)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < s.len; i++) {
        if (s.ptr[i] < '0' || s.ptr[i] > '9')
            return -1;
        v = v * 10 + (s.ptr[i] - '0');
    }
    *ms = v;
    return 0;
}

void message_unref(struct message **mp)
{
    struct message *m = *mp;
    *mp = NULL;
    if (!m || --m->refs > 0)
        return;
    if (m->body_len > MESSAGE_INLINE_BODY)
        free(m->body);
    free(m);
}
