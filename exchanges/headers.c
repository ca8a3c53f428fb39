/* headers.c: the headers exchange.
 *
 * Each binding's arguments say which message headers it wants; x-match picks the
 * rule: all (default), any, all-with-x, any-with-x. Plain all/any skip binding
 * arguments whose names start with "x-"; the -with-x forms compare them too. The
 * x-match argument itself is never compared. An argument of type V (void) asks only
 * that the header be present; any other argument asks for a header with the same
 * key, type and value. "all" with nothing to compare matches every message; "any"
 * with nothing to compare matches none.
 *
 * Routing checks every binding (as RabbitMQ does); the message's headers are sorted
 * once per publish so each argument costs a binary search. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amqp/table.h"
#include "exchanges/xpriv.h"
#include "exchanges/xtype.h"

enum hmode { HM_ALL, HM_ANY, HM_ALL_X, HM_ANY_X };

struct hentry {
    struct xbinding *b;
    enum hmode mode;   /* parsed from x-match at add() */
};

/* index_data of each binding is its position in v. */
struct headers_index {
    struct hentry *v;
    size_t n, cap;
};

/* One message header, for the sorted lookup array. */
struct hfield {
    amqp_bytes key;
    struct field_value val;
    size_t order;      /* position in the table: the first of equal keys wins */
};

#define HDR_STACK_FIELDS 32
#define ERR_SHOW_BYTES 64

static const char *tag_name(uint8_t tag)
{
    switch (tag) {
    case 't': return "bool";
    case 'b': return "byte";
    case 'B': return "unsignedbyte";
    case 's': return "short";
    case 'u': return "unsignedshort";
    case 'I': return "signedint";
    case 'i': return "unsignedint";
    case 'l': return "long";
    case 'f': return "float";
    case 'd': return "double";
    case 'D': return "decimal";
    case 'S': return "longstr";
    case 'A': return "array";
    case 'T': return "timestamp";
    case 'F': return "table";
    case 'V': return "void";
    case 'x': return "binary";
    default: return "unknown";
    }
}

/* Writes s as a quoted string into out (size outlen >= 4*ERR_SHOW_BYTES + 8), with
   '"', '\\' and non-printable bytes escaped and at most ERR_SHOW_BYTES bytes shown. */
static void quote_bytes(amqp_bytes s, char *out, size_t outlen)
{
    size_t o = 0;
    out[o++] = '"';
    size_t show = s.len < ERR_SHOW_BYTES ? s.len : ERR_SHOW_BYTES;
    for (size_t i = 0; i < show && o + 8 < outlen; i++) {
        uint8_t c = s.ptr[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c >= 0x7f) {
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02X", c);
        } else {
            out[o++] = (char)c;
        }
    }
    if (show < s.len && o + 4 < outlen) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o++] = '"';
    out[o] = '\0';
}

/* Reads x-match from args into *mode: 0, or -1 with RabbitMQ's reply text in err
   (if err is not NULL) when x-match is not a long string or not a known value. */
static int parse_mode(amqp_bytes args, enum hmode *mode, char *err, size_t errlen)
{
    struct field_value v;
    *mode = HM_ALL;
    if (!table_get(args, "x-match", &v))
        return 0;
    if (v.type != 'S') {
        if (err && errlen) {
            int64_t i;
            if (field_as_int64(&v, &i) == 0 || v.type == 't')
                snprintf(err, errlen,
                         "Invalid x-match field type %s (value %lld); expected longstr",
                         tag_name(v.type), v.type == 't' ? (long long)v.v.i : (long long)i);
            else
                snprintf(err, errlen, "Invalid x-match field type %s; expected longstr",
                         tag_name(v.type));
        }
        return -1;
    }
    amqp_bytes s = v.v.bytes;
    if (amqp_bytes_eq_cstr(s, "all"))
        *mode = HM_ALL;
    else if (amqp_bytes_eq_cstr(s, "any"))
        *mode = HM_ANY;
    else if (amqp_bytes_eq_cstr(s, "all-with-x"))
        *mode = HM_ALL_X;
    else if (amqp_bytes_eq_cstr(s, "any-with-x"))
        *mode = HM_ANY_X;
    else {
        if (err && errlen) {
            char q[4 * ERR_SHOW_BYTES + 8];
            quote_bytes(s, q, sizeof q);
            snprintf(err, errlen,
                     "Invalid x-match field value %s; expected all, any, all-with-x, "
                     "or any-with-x", q);
        }
        return -1;
    }
    return 0;
}

static int headers_validate(amqp_bytes key, amqp_bytes args, char *err, size_t errlen)
{
    enum hmode mode;
    (void)key;
    if (table_validate(args) != 0) {
        if (err && errlen)
            snprintf(err, errlen, "malformed binding arguments table");
        return -1;
    }
    return parse_mode(args, &mode, err, errlen);
}

static void *headers_new(void)
{
    return xcalloc(1, sizeof(struct headers_index));
}

static void headers_free(void *index)
{
    struct headers_index *h = index;
    if (!h)
        return;
    free(h->v);
    free(h);
}

static void headers_add(void *index, struct xbinding *b)
{
    struct headers_index *h = index;
    enum hmode mode;
    if (parse_mode(b->args, &mode, NULL, 0) != 0)
        mode = HM_ALL;  /* not validated: fall back to the default like RabbitMQ */
    if (h->n == h->cap) {
        size_t ncap = h->cap ? h->cap * 2 : 8;
        h->v = xrealloc_array(h->v, ncap, sizeof *h->v);
        h->cap = ncap;
    }
    b->index_data = (void *)(uintptr_t)h->n;
    h->v[h->n].b = b;
    h->v[h->n].mode = mode;
    h->n++;
}

static void headers_remove(void *index, struct xbinding *b)
{
    struct headers_index *h = index;
    size_t pos = (size_t)(uintptr_t)b->index_data;
    if (pos >= h->n || h->v[pos].b != b)
        abort();  /* never added: the caller broke the contract */
    h->v[pos] = h->v[--h->n];
    h->v[pos].b->index_data = (void *)(uintptr_t)pos;
    b->index_data = NULL;
    if (h->n == 0) {
        free(h->v);
        h->v = NULL;
        h->cap = 0;
    } else if (h->cap > 8 && h->n * 4 < h->cap) {
        h->cap /= 2;
        h->v = xrealloc_array(h->v, h->cap, sizeof *h->v);
    }
}

static int key_cmp(amqp_bytes a, amqp_bytes b)
{
    size_t n = a.len < b.len ? a.len : b.len;
    int c = n ? memcmp(a.ptr, b.ptr, n) : 0;
    if (c)
        return c;
    return a.len < b.len ? -1 : a.len > b.len;
}

static int hfield_cmp(const void *pa, const void *pb)
{
    const struct hfield *a = pa, *b = pb;
    int c = key_cmp(a->key, b->key);
    if (c)
        return c;
    return a->order < b->order ? -1 : a->order > b->order;
}

/* Fills f (room for cap) with the headers' entries sorted by key, keeping only the
   first entry of each key; returns the count. Reading stops at a malformed entry. */
static size_t collect_headers(amqp_bytes headers, struct hfield *f, size_t cap)
{
    struct table_iter it;
    size_t n = 0;
    table_iter_init(&it, headers);
    while (n < cap && table_next(&it, &f[n].key, &f[n].val) == 1) {
        f[n].order = n;
        n++;
    }
    qsort(f, n, sizeof *f, hfield_cmp);
    size_t out = 0;
    for (size_t i = 0; i < n; i++)
        if (out == 0 || !amqp_bytes_eq(f[out - 1].key, f[i].key))
            f[out++] = f[i];
    return out;
}

/* Number of entries readable from the headers table (up to a malformed one). */
static size_t count_headers(amqp_bytes headers)
{
    struct table_iter it;
    amqp_bytes k;
    struct field_value v;
    size_t n = 0;
    table_iter_init(&it, headers);
    while (table_next(&it, &k, &v) == 1)
        n++;
    return n;
}

static const struct hfield *find_header(const struct hfield *f, size_t n, amqp_bytes key)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = key_cmp(f[mid].key, key);
        if (c == 0)
            return &f[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static bool starts_with_x(amqp_bytes k)
{
    return k.len >= 2 && k.ptr[0] == 'x' && k.ptr[1] == '-';
}

/* Whether one binding (args, mode) matches the sorted headers f[0..n). */
static bool binding_matches(amqp_bytes args, enum hmode mode, const struct hfield *f,
                            size_t n)
{
    bool want_all = mode == HM_ALL || mode == HM_ALL_X;
    bool with_x = mode == HM_ALL_X || mode == HM_ANY_X;
    struct table_iter it;
    amqp_bytes k;
    struct field_value v;
    table_iter_init(&it, args);
    while (table_next(&it, &k, &v) == 1) {
        if (amqp_bytes_eq_cstr(k, "x-match"))
            continue;
        if (!with_x && starts_with_x(k))
            continue;
        const struct hfield *hf = find_header(f, n, k);
        bool ok = hf && (v.type == 'V' || field_value_equal(&v, &hf->val));
        if (want_all && !ok)
            return false;
        if (!want_all && ok)
            return true;
    }
    return want_all;
}

/* Emits each binding whose arguments match the message headers. emit must not add or
   remove bindings of this index. */
static void headers_route(void *index, amqp_bytes routing_key, amqp_bytes headers,
                          xroute_emit emit, void *ctx)
{
    struct headers_index *h = index;
    (void)routing_key;
    if (h->n == 0)
        return;

    struct hfield stack[HDR_STACK_FIELDS];
    struct hfield *f = stack;
    size_t cap = HDR_STACK_FIELDS;
    size_t total = count_headers(headers);
    if (total > cap) {
        f = xrealloc_array(NULL, total, sizeof *f);
        cap = total;
    }
    size_t n = collect_headers(headers, f, cap);

    for (size_t i = 0; i < h->n; i++) {
        struct hentry *e = &h->v[i];
        if (binding_matches(e->b->args, e->mode, f, n))
            emit(ctx, e->b);
    }
    if (f != stack)
        free(f);
}

const struct xtype xtype_headers = {
    .name = "headers",
    .index_new = headers_new,
    .index_free = headers_free,
    .validate = headers_validate,
    .add = headers_add,
    .remove = headers_remove,
    .route = headers_route,
};
