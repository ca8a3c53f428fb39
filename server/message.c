#include "server/message.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amqp_methods.h"
#include "common/xalloc.h"

static uint64_t live_bytes;

static size_t footprint(const struct message *m)
{
    return sizeof *m + m->exchange_len + m->rkey_len + m->props_len + m->body_len;
}

uint64_t message_memory(void) { return live_bytes; }

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
    if (pr->flags & AMQP_PROP_EXPIRATION) /* checked at publish; stored ones were */
        message_parse_expiration(pr->expiration, &m->ttl, NULL, 0);
    m->priority = (pr->flags & AMQP_PROP_PRIORITY) ? pr->priority : 0;
    m->has_headers = (pr->flags & AMQP_PROP_HEADERS) != 0;
    m->headers_off = m->has_headers ? (uint32_t)(pr->headers.ptr - props) : 0;
    m->headers_len = m->has_headers ? (uint32_t)pr->headers.len : 0;
    m->body_len = body_len;
    m->body_received = 0;
    m->body = inline_body ? m->data + meta : xmalloc(body_len);
    live_bytes += footprint(m);
    return m;
}

int message_parse_expiration(amqp_bytes s, int64_t *ms, char *reason, size_t size)
{
    /* As Erlang's string:to_integer reads it: optional sign, digits, nothing after. */
    size_t i = 0;
    bool neg = false;
    if (i < s.len && (s.ptr[i] == '+' || s.ptr[i] == '-'))
        neg = s.ptr[i++] == '-';
    size_t digits = i;
    uint64_t v = 0;
    bool huge = false;
    for (; i < s.len && s.ptr[i] >= '0' && s.ptr[i] <= '9'; i++) {
        if (v > (UINT64_MAX - 9) / 10)
            huge = true;
        else
            v = v * 10 + (uint64_t)(s.ptr[i] - '0');
    }
    if (i == digits) {
        snprintf(reason, size, "no_integer");
        return -1;
    }
    if (i < s.len) {
        snprintf(reason, size, "{leftover_string,\"%.*s\"}", (int)(s.len - i), (const char *)s.ptr + i);
        return -1;
    }
    const char *num = (const char *)s.ptr + digits;
    int numlen = (int)(s.len - digits);
    while (numlen > 1 && *num == '0') { /* Erlang prints the integer, not the text */
        num++;
        numlen--;
    }
    if (neg && v != 0) {
        snprintf(reason, size, "{value_negative,-%.*s}", numlen, num);
        return -1;
    }
    if (huge || v > (uint64_t)MESSAGE_MAX_TTL_MS) {
        snprintf(reason, size, "{value_too_large,%.*s}", numlen, num);
        return -1;
    }
    *ms = (int64_t)v;
    return 0;
}

void message_unref(struct message **mp)
{
    struct message *m = *mp;
    *mp = NULL;
    if (!m || --m->refs > 0)
        return;
    live_bytes -= footprint(m);
    if (m->body_len > MESSAGE_INLINE_BODY)
        free(m->body);
    free(m);
}
