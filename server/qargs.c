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

/* The largest TTL or expiry RabbitMQ accepts: ten years in ms. */
#define MAX_TTL_MS 315360000000LL

struct check {
    const char *who;     /* "queue 'q' in vhost '/'" */
    char *err;
    size_t size;
};

static int fail(struct check *c, const char *arg, const char *reason)
{
    snprintf(c->err, c->size, "invalid arg '%s' for %s: %s", arg, c->who, reason);
    return -1;
}

/* An integer argument in [min, max] (min 0 or 1). Returns 0 (or 1 if absent), -1 after
 * writing RabbitMQ's text. */
static int int_arg(struct check *c, amqp_bytes args, const char *arg, int64_t min, int64_t max,
                   const char *too_large, int64_t *out)
{
    struct field_value v;
    if (table_get(args, arg, &v) != 1)
        return 1;
    int64_t n;
    char reason[96];
    if (v.type == 'T' || field_as_int64(&v, &n) != 0) {
        snprintf(reason, sizeof reason, "\"expected integer, got %s\"", qargs_type_name(v.type));
        return fail(c, arg, reason);
    }
    if (n < 0)
        snprintf(reason, sizeof reason, "{value_negative,%lld}", (long long)n);
    else if (n < min)
        snprintf(reason, sizeof reason, "{value_zero,%lld}", (long long)n);
    else if (n > max)
        snprintf(reason, sizeof reason, "{%s,%lld}", too_large, (long long)n);
    else {
        *out = n;
        return 0;
    }
    return fail(c, arg, reason);
}

/* A longstr argument. Returns 0 (or 1 if absent), -1 after writing RabbitMQ's text. */
static int str_arg(struct check *c, amqp_bytes args, const char *arg, amqp_bytes *out)
{
    struct field_value v;
    if (table_get(args, arg, &v) != 1)
        return 1;
    if (v.type != 'S') {
        char reason[64];
        snprintf(reason, sizeof reason, "{unacceptable_type,%s}", qargs_type_name(v.type));
        return fail(c, arg, reason);
    }
    *out = v.v.bytes;
    return 0;
}

/* A longstr argument that must be one of the values in `allowed` (NULL-terminated); its
 * index goes to *out. */
static int enum_arg(struct check *c, amqp_bytes args, const char *arg, const char *const *allowed,
                    const char *unsupported, int *out)
{
    amqp_bytes s;
    int rc = str_arg(c, args, arg, &s);
    if (rc != 0)
        return rc;
    for (int i = 0; allowed[i]; i++) {
        if (amqp_bytes_eq_cstr(s, allowed[i])) {
            *out = i;
            return 0;
        }
    }
    char reason[320];
    if (unsupported)
        snprintf(reason, sizeof reason, "\"unsupported %s '%.*s'\"", unsupported, (int)(s.len > 255 ? 255 : s.len),
                 (const char *)s.ptr);
    else
        snprintf(reason, sizeof reason, "invalid_overflow");
    return fail(c, arg, reason);
}

int qargs_parse(amqp_bytes args, struct qargs *q, const char *who, char *err, size_t size)
{
    struct check c = { who, err, size };
    memset(q, 0, sizeof *q);
    q->message_ttl = q->expires = q->max_length = q->max_length_bytes = q->delivery_limit = -1;
    q->overflow = OVERFLOW_DROP_HEAD;
    struct field_value v;
    int64_t n;
    int rc, choice;
    /* In RabbitMQ's order: the first failing check is the one reported. */
    if (table_get(args, "x-dead-letter-exchange", &v) == 1) {
        if (v.type != 'S') {
            snprintf(err, size, "invalid type '%s' for arg 'x-dead-letter-exchange' in %s", qargs_type_name(v.type),
                     who);
            return -1;
        }
        q->dlx = v.v.bytes;
        q->has_dlx = true;
    }
    static const char *const types[] = { "classic", "quorum", NULL };
    choice = 0;
    if (enum_arg(&c, args, "x-queue-type", types, "queue type", &choice) < 0)
        return -1;
    bool choice_quorum = choice == 1;
    if (int_arg(&c, args, "x-expires", 1, MAX_TTL_MS, "value_too_large", &q->expires) < 0 ||
        int_arg(&c, args, "x-message-ttl", 0, MAX_TTL_MS, "value_too_large", &q->message_ttl) < 0)
        return -1;
    rc = str_arg(&c, args, "x-dead-letter-routing-key", &q->dlrk);
    if (rc < 0)
        return -1;
    q->has_dlrk = rc == 0;
    if (q->has_dlrk && !q->has_dlx)
        return fail(&c, "x-dead-letter-routing-key", "routing_key_but_no_dlx_defined");
    if (int_arg(&c, args, "x-max-length", 0, INT64_MAX, "value_too_large", &q->max_length) < 0 ||
        int_arg(&c, args, "x-max-length-bytes", 0, INT64_MAX, "value_too_large", &q->max_length_bytes) < 0)
        return -1;
    n = 0;
    if (int_arg(&c, args, "x-max-priority", 0, 255, "max_value_exceeded", &n) < 0)
        return -1;
    q->max_priority = (uint8_t)n;
    static const char *const overflows[] = { "drop-head", "reject-publish", "reject-publish-dlx", NULL };
    choice = 0;
    if (enum_arg(&c, args, "x-overflow", overflows, NULL, &choice) < 0)
        return -1;
    q->overflow = (enum overflow)choice;
    static const char *const modes[] = { "default", "lazy", NULL };
    if (enum_arg(&c, args, "x-queue-mode", modes, "queue mode", &choice) < 0)
        return -1;
    if (table_get(args, "x-single-active-consumer", &v) == 1) {
        if (v.type != 't') {
            char reason[64];
            snprintf(reason, sizeof reason, "{unacceptable_type,%s}", qargs_type_name(v.type));
            return fail(&c, "x-single-active-consumer", reason);
        }
        q->single_active_consumer = v.v.i != 0;
    }
    if (table_get(args, "x-delivery-limit", &v) == 1) { /* as quorum queues have it; negative = none */
        if (v.type == 'T' || field_as_int64(&v, &n) != 0) {
            char reason[96];
            snprintf(reason, sizeof reason, "\"expected integer, got %s\"", qargs_type_name(v.type));
            return fail(&c, "x-delivery-limit", reason);
        }
        q->delivery_limit = n < 0 ? -1 : n;
        q->delivery_count_header = true;
    }
    q->quorum = choice_quorum;
    q->delivery_count_header |= choice_quorum;
    return 0;
}
