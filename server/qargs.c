#include "server/qargs.h"

#include <stdio.h>
#include <string.h>

#include "amqp/table.h"

const char *qargs_type_name(uint8_t t)
{
    switch (t) {
    case 'S': return "longstr";
    case 'I': return "signedint";
    case 'l': return "long";
    case 't': return "bool";
    case 'F': return "table";
    case 'A': return "array";
    case 'b': return "byte";
    case 's': return "short";
    case 'd': return "double";
    case 'f': return "float";
    case 'T': return "timestamp";
    case 'D': return "decimal";
    case 'V': return "void";
    case 'x': return "binary";
    default: return "unsigned";
    }
}

/* An integer argument at least `min`. Returns 0 or -1 with the reason. */
static int int_arg(const struct field_value *v, int64_t min, int64_t max, int64_t *out, char *reason, size_t size)
{
    int64_t n;
    if (v->type == 'T' || field_as_int64(v, &n) != 0) {
        snprintf(reason, size, "{unacceptable_type,%s}", qargs_type_name(v->type));
        return -1;
    }
    if (n < min) {
        snprintf(reason, size, n < 0 ? "{value_negative,%lld}" : "{value_zero,%lld}", (long long)n);
        return -1;
    }
    if (n > max) {
        snprintf(reason, size, "{value_too_large,%lld,%lld}", (long long)n, (long long)max);
        return -1;
    }
    *out = n;
    return 0;
}

static int str_arg(const struct field_value *v, amqp_bytes *out, char *reason, size_t size)
{
    if (v->type != 'S') {
        snprintf(reason, size, "{unacceptable_type,%s}", qargs_type_name(v->type));
        return -1;
    }
    *out = v->v.bytes;
    return 0;
}

int qargs_parse(amqp_bytes args, struct qargs *q, const char **bad_arg, char *reason, size_t size)
{
    memset(q, 0, sizeof *q);
    q->message_ttl = q->expires = q->max_length = q->max_length_bytes = q->delivery_limit = -1;
    q->overflow = OVERFLOW_DROP_HEAD;
    struct table_iter it;
    table_iter_init(&it, args);
    amqp_bytes key;
    struct field_value v;
    int64_t n;
    while (table_next(&it, &key, &v) == 1) {
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)key.len, (const char *)key.ptr);
        int rc = 0;
        *bad_arg = NULL;
        if (!strcmp(name, "x-message-ttl")) {
            *bad_arg = "x-message-ttl";
            rc = int_arg(&v, 0, 4294967295LL, &q->message_ttl, reason, size);
        } else if (!strcmp(name, "x-expires")) {
            *bad_arg = "x-expires";
            rc = int_arg(&v, 1, 4294967295LL, &q->expires, reason, size);
        } else if (!strcmp(name, "x-max-length")) {
            *bad_arg = "x-max-length";
            rc = int_arg(&v, 0, INT64_MAX, &q->max_length, reason, size);
        } else if (!strcmp(name, "x-max-length-bytes")) {
            *bad_arg = "x-max-length-bytes";
            rc = int_arg(&v, 0, INT64_MAX, &q->max_length_bytes, reason, size);
        } else if (!strcmp(name, "x-delivery-limit")) {
            *bad_arg = "x-delivery-limit";
            rc = int_arg(&v, 0, INT64_MAX, &q->delivery_limit, reason, size);
        } else if (!strcmp(name, "x-max-priority")) {
            *bad_arg = "x-max-priority";
            rc = int_arg(&v, 0, 255, &n, reason, size);
            q->max_priority = (uint8_t)n;
        } else if (!strcmp(name, "x-dead-letter-exchange")) {
            *bad_arg = "x-dead-letter-exchange";
            rc = str_arg(&v, &q->dlx, reason, size);
            q->has_dlx = rc == 0;
        } else if (!strcmp(name, "x-dead-letter-routing-key")) {
            *bad_arg = "x-dead-letter-routing-key";
            rc = str_arg(&v, &q->dlrk, reason, size);
            q->has_dlrk = rc == 0;
        } else if (!strcmp(name, "x-overflow")) {
            *bad_arg = "x-overflow";
            amqp_bytes s;
            rc = str_arg(&v, &s, reason, size);
            if (rc == 0 && amqp_bytes_eq_cstr(s, "drop-head"))
                q->overflow = OVERFLOW_DROP_HEAD;
            else if (rc == 0 && amqp_bytes_eq_cstr(s, "reject-publish"))
                q->overflow = OVERFLOW_REJECT_PUBLISH;
            else if (rc == 0 && amqp_bytes_eq_cstr(s, "reject-publish-dlx"))
                q->overflow = OVERFLOW_REJECT_PUBLISH_DLX;
            else if (rc == 0) {
                snprintf(reason, size, "{invalid_overflow,<<\"%.*s\">>}", (int)s.len, (const char *)s.ptr);
                rc = -1;
            }
        } else if (!strcmp(name, "x-single-active-consumer")) {
            *bad_arg = "x-single-active-consumer";
            if (v.type != 't') {
                snprintf(reason, size, "{unacceptable_type,%s}", qargs_type_name(v.type));
                rc = -1;
            } else {
                q->single_active_consumer = v.v.i != 0;
            }
        }
        if (rc != 0)
            return -1;
    }
    if (q->has_dlrk && !q->has_dlx) {
        *bad_arg = "x-dead-letter-routing-key";
        snprintf(reason, size, "routing_key_but_no_dlx_defined");
        return -1;
    }
    return 0;
}
