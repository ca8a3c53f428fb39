/* table.c: AMQP field tables and arrays (RabbitMQ's tags), read in place. */
#include "amqp/table.h"

#include <assert.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Sign conversions written out so they do not depend on implementation-defined
 * casts of out-of-range values. */
static int64_t sext8(uint8_t x) { return x >= 0x80u ? (int64_t)x - 0x100 : (int64_t)x; }
static int64_t sext16(uint16_t x) { return x >= 0x8000u ? (int64_t)x - 0x10000 : (int64_t)x; }
static int64_t sext32(uint32_t x)
{
    return x >= 0x80000000u ? (int64_t)x - (int64_t)0x100000000 : (int64_t)x;
}
static int64_t sext64(uint64_t x)
{
    return x > (uint64_t)INT64_MAX ? -(int64_t)(~x) - 1 : (int64_t)x;
}

/* Reads the value of a field with the given tag. 0 ok; -1 truncated or unknown
 * tag, with the reader's position unchanged. Nested contents are not checked. */
static int read_value(struct wire_reader *r, uint8_t tag, struct field_value *v)
{
    size_t save = r->pos;
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    int rc = -1;

    v->type = tag;
    switch (tag) {
    case 't':
        if ((rc = wire_u8(r, &u8)) == 0)
            v->v.i = u8 != 0;
        break;
    case 'b':
        if ((rc = wire_u8(r, &u8)) == 0)
            v->v.i = sext8(u8);
        break;
    case 'B':
        if ((rc = wire_u8(r, &u8)) == 0)
            v->v.u = u8;
        break;
    case 's':
        if ((rc = wire_u16(r, &u16)) == 0)
            v->v.i = sext16(u16);
        break;
    case 'u':
        if ((rc = wire_u16(r, &u16)) == 0)
            v->v.u = u16;
        break;
    case 'I':
        if ((rc = wire_u32(r, &u32)) == 0)
            v->v.i = sext32(u32);
        break;
    case 'i':
        if ((rc = wire_u32(r, &u32)) == 0)
            v->v.u = u32;
        break;
    case 'l':
        if ((rc = wire_u64(r, &u64)) == 0)
            v->v.i = sext64(u64);
        break;
    case 'T':
        if ((rc = wire_u64(r, &u64)) == 0)
            v->v.u = u64;
        break;
    case 'f':
        if ((rc = wire_u32(r, &u32)) == 0)
            memcpy(&v->v.f, &u32, sizeof v->v.f);
        break;
    case 'd':
        if ((rc = wire_u64(r, &u64)) == 0)
            memcpy(&v->v.d, &u64, sizeof v->v.d);
        break;
    case 'D':
        if ((rc = wire_u8(r, &u8)) == 0 && (rc = wire_u32(r, &u32)) == 0) {
            v->v.dec.scale = u8;
            v->v.dec.value = u32;
        }
        break;
    case 'S':
    case 'x':
    case 'A':
    case 'F':
        rc = wire_longstr(r, &v->v.bytes);
        break;
    case 'V':
        rc = 0;
        break;
    default:
        rc = -1;
        break;
    }
    if (rc < 0)
        r->pos = save;
    return rc;
}

void table_iter_init(struct table_iter *it, amqp_bytes t)
{
    wire_init(&it->r, t.ptr, t.len);
}

int table_next(struct table_iter *it, amqp_bytes *key, struct field_value *v)
{
    struct wire_reader *r = &it->r;
    size_t save = r->pos;
    uint8_t tag;

    if (wire_left(r) == 0)
        return 0;
    if (wire_shortstr(r, key) < 0 || wire_u8(r, &tag) < 0 || read_value(r, tag, v) < 0) {
        r->pos = save;
        return -1;
    }
    return 1;
}

int array_next(struct table_iter *it, struct field_value *v)
{
    struct wire_reader *r = &it->r;
    size_t save = r->pos;
    uint8_t tag;

    if (wire_left(r) == 0)
        return 0;
    if (wire_u8(r, &tag) < 0 || read_value(r, tag, v) < 0) {
        r->pos = save;
        return -1;
    }
    return 1;
}

/* Validates table (or array) contents at nesting depth `depth` (1 = outermost). */
static int validate(amqp_bytes t, bool is_array, int depth)
{
    struct table_iter it;
    struct field_value v;
    amqp_bytes key;
    int rc;

    if (depth > TABLE_MAX_DEPTH)
        return -1;
    table_iter_init(&it, t);
    while ((rc = is_array ? array_next(&it, &v) : table_next(&it, &key, &v)) == 1) {
        if (v.type == 'F' && validate(v.v.bytes, false, depth + 1) < 0)
            return -1;
        if (v.type == 'A' && validate(v.v.bytes, true, depth + 1) < 0)
            return -1;
    }
    return rc;
}

int table_validate(amqp_bytes t)
{
    return validate(t, false, 1);
}

int array_validate(amqp_bytes a)
{
    return validate(a, true, 1);
}

int table_get_bytes(amqp_bytes t, amqp_bytes key, struct field_value *v)
{
    struct table_iter it;
    amqp_bytes k;

    table_iter_init(&it, t);
    while (table_next(&it, &k, v) == 1) {
        if (amqp_bytes_eq(k, key))
            return 1;
    }
    return 0;
}

int table_get(amqp_bytes t, const char *key, struct field_value *v)
{
    return table_get_bytes(t, amqp_cstr(key), v);
}

/* ---- equality ---- */

static bool table_equal_d(amqp_bytes a, amqp_bytes b, int depth);

static bool array_equal_d(amqp_bytes a, amqp_bytes b, int depth);

static bool value_equal_d(const struct field_value *a, const struct field_value *b, int depth)
{
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case 't': case 'b': case 's': case 'I': case 'l':
        return a->v.i == b->v.i;
    case 'B': case 'u': case 'i': case 'T':
        return a->v.u == b->v.u;
    case 'f':
        return memcmp(&a->v.f, &b->v.f, sizeof a->v.f) == 0;
    case 'd':
        return memcmp(&a->v.d, &b->v.d, sizeof a->v.d) == 0;
    case 'D':
        return a->v.dec.scale == b->v.dec.scale && a->v.dec.value == b->v.dec.value;
    case 'S': case 'x':
        return amqp_bytes_eq(a->v.bytes, b->v.bytes);
    case 'F':
        return table_equal_d(a->v.bytes, b->v.bytes, depth + 1);
    case 'A':
        return array_equal_d(a->v.bytes, b->v.bytes, depth + 1);
    case 'V':
        return true;
    default:
        return false;
    }
}

bool field_value_equal(const struct field_value *a, const struct field_value *b)
{
    return value_equal_d(a, b, 1);
}

/* Arrays are equal if their elements are pairwise equal (nested tables compared
 * without regard to key order). */
static bool array_equal_d(amqp_bytes a, amqp_bytes b, int depth)
{
    struct table_iter ia, ib;
    struct field_value va, vb;

    if (amqp_bytes_eq(a, b))
        return true;
    if (depth > TABLE_MAX_DEPTH)
        return false;
    table_iter_init(&ia, a);
    table_iter_init(&ib, b);
    for (;;) {
        int ra = array_next(&ia, &va), rb = array_next(&ib, &vb);
        if (ra < 0 || rb < 0 || ra != rb)
            return false;
        if (ra == 0)
            return true;
        if (!value_equal_d(&va, &vb, depth))
            return false;
    }
}

/* An entry of a table being compared: where its key starts (the length octet). */
struct entry_set {
    const uint8_t **e;
    size_t n;
    const uint8_t *end;          /* end of the table */
    const uint8_t *local[16];    /* storage for small tables */
};

static int key_cmp(const void *pa, const void *pb)
{
    const uint8_t *a = *(const uint8_t *const *)pa, *b = *(const uint8_t *const *)pb;
    size_t n = a[0] < b[0] ? a[0] : b[0];
    int c = memcmp(a + 1, b + 1, n);
    if (c)
        return c;
    if (a[0] != b[0])
        return a[0] < b[0] ? -1 : 1;
    return a < b ? -1 : a > b;   /* same key: first occurrence first */
}

/* Collects the entries of t, sorted by key, keeping only the first occurrence
 * of each key. 0 ok, -1 malformed. Frees nothing: call entries_free. */
static int entries_load(struct entry_set *s, amqp_bytes t)
{
    struct table_iter it;
    struct field_value v;
    amqp_bytes key;
    size_t n = 0, i, k;
    int rc;

    s->e = s->local;
    s->n = 0;
    s->end = t.len ? t.ptr + t.len : t.ptr;
    table_iter_init(&it, t);
    while ((rc = table_next(&it, &key, &v)) == 1)
        n++;
    if (rc < 0)
        return -1;
    if (n > sizeof s->local / sizeof s->local[0]) {
        /* n <= t.len / 2 (each entry takes at least 2 bytes), so this is bounded. */
        s->e = malloc(n * sizeof *s->e);
        if (!s->e)
            amqp_oom();
    }
    table_iter_init(&it, t);
    for (i = 0; i < n; i++) {
        s->e[i] = it.r.p + it.r.pos;
        table_next(&it, &key, &v);
    }
    qsort(s->e, n, sizeof *s->e, key_cmp);
    for (i = 0, k = 0; i < n; i++) {
        const uint8_t *p = s->e[i];
        if (k > 0 && s->e[k - 1][0] == p[0] && memcmp(s->e[k - 1] + 1, p + 1, p[0]) == 0)
            continue;
        s->e[k++] = p;
    }
    s->n = k;
    return 0;
}

static void entries_free(struct entry_set *s)
{
    if (s->e != s->local)
        free(s->e);
    s->e = s->local;
}

/* Decodes the value of the (well-formed) entry whose key starts at p. */
static void entry_value(const struct entry_set *s, const uint8_t *p, struct field_value *v)
{
    struct table_iter it;
    amqp_bytes key;
    wire_init(&it.r, p, (size_t)(s->end - p));
    int rc = table_next(&it, &key, v);
    assert(rc == 1);
    (void)rc;
}

static bool table_equal_d(amqp_bytes a, amqp_bytes b, int depth)
{
    struct entry_set sa, sb;
    bool eq = false;

    if (amqp_bytes_eq(a, b))
        return true;
    if (depth > TABLE_MAX_DEPTH)
        return false;
    int ra = entries_load(&sa, a);
    int rb = entries_load(&sb, b);
    if (ra == 0 && rb == 0 && sa.n == sb.n) {
        eq = true;
        for (size_t i = 0; eq && i < sa.n; i++) {
            struct field_value va, vb;
            const uint8_t *ka = sa.e[i], *kb = sb.e[i];
            if (ka[0] != kb[0] || memcmp(ka + 1, kb + 1, ka[0]) != 0) {
                eq = false;
                break;
            }
            entry_value(&sa, ka, &va);
            entry_value(&sb, kb, &vb);
            eq = value_equal_d(&va, &vb, depth);
        }
    }
    entries_free(&sa);
    entries_free(&sb);
    return eq;
}

bool table_equal(amqp_bytes a, amqp_bytes b)
{
    return table_equal_d(a, b, 1);
}

int field_as_int64(const struct field_value *v, int64_t *out)
{
    switch (v->type) {
    case 'b': case 's': case 'I': case 'l':
        *out = v->v.i;
        return 0;
    case 'B': case 'u': case 'i': case 'T':
        if (v->v.u > (uint64_t)INT64_MAX)
            return -1;
        *out = (int64_t)v->v.u;
        return 0;
    default:
        return -1;
    }
}

bool field_is_string(const struct field_value *v)
{
    return v->type == 'S';
}

/* ---- writers ---- */

size_t table_begin(struct abuf *b)
{
    size_t off = b->len;
    abuf_u32(b, 0);
    return off;
}

void table_end(struct abuf *b, size_t off)
{
    assert(off + 4 <= b->len);
    size_t n = b->len - off - 4;
    assert(n <= UINT32_MAX);
    abuf_put_u32_at(b, off, (uint32_t)n);
}

void table_key(struct abuf *b, const char *key)
{
    abuf_shortstr(b, amqp_cstr(key));
}

void table_key_bytes(struct abuf *b, amqp_bytes key)
{
    abuf_shortstr(b, key);
}

void field_put_bool(struct abuf *b, bool v)
{
    abuf_u8(b, 't');
    abuf_u8(b, v ? 1 : 0);
}

void field_put_longstr(struct abuf *b, amqp_bytes s)
{
    abuf_u8(b, 'S');
    abuf_longstr(b, s);
}

void field_put_i32(struct abuf *b, int32_t v)
{
    abuf_u8(b, 'I');
    abuf_u32(b, (uint32_t)v);
}

void field_put_i64(struct abuf *b, int64_t v)
{
    abuf_u8(b, 'l');
    abuf_u64(b, (uint64_t)v);
}

void field_put_timestamp(struct abuf *b, uint64_t v)
{
    abuf_u8(b, 'T');
    abuf_u64(b, v);
}

void field_put_table(struct abuf *b, amqp_bytes contents)
{
    abuf_u8(b, 'F');
    abuf_longstr(b, contents);
}

void field_put_void(struct abuf *b)
{
    abuf_u8(b, 'V');
}

void field_put_value(struct abuf *b, const struct field_value *v)
{
    uint32_t u32;
    uint64_t u64;

    abuf_u8(b, v->type);
    switch (v->type) {
    case 't': abuf_u8(b, v->v.i ? 1 : 0); break;
    case 'b': abuf_u8(b, (uint8_t)v->v.i); break;
    case 'B': abuf_u8(b, (uint8_t)v->v.u); break;
    case 's': abuf_u16(b, (uint16_t)v->v.i); break;
    case 'u': abuf_u16(b, (uint16_t)v->v.u); break;
    case 'I': abuf_u32(b, (uint32_t)v->v.i); break;
    case 'i': abuf_u32(b, (uint32_t)v->v.u); break;
    case 'l': abuf_u64(b, (uint64_t)v->v.i); break;
    case 'T': abuf_u64(b, v->v.u); break;
    case 'f':
        memcpy(&u32, &v->v.f, sizeof u32);
        abuf_u32(b, u32);
        break;
    case 'd':
        memcpy(&u64, &v->v.d, sizeof u64);
        abuf_u64(b, u64);
        break;
    case 'D':
        abuf_u8(b, v->v.dec.scale);
        abuf_u32(b, v->v.dec.value);
        break;
    case 'S': case 'x': case 'A': case 'F':
        abuf_longstr(b, v->v.bytes);
        break;
    case 'V':
        break;
    default:
        assert(!"field_put_value: unknown tag");
        break;
    }
}

/* ---- text form ---- */

struct text {
    char *out;
    size_t cap, len;   /* cap = outlen; len never exceeds cap - 1 */
    bool truncated;
};

static void text_put(struct text *t, const char *s, size_t n)
{
    if (t->cap == 0) {
        t->truncated = t->truncated || n > 0;
        return;
    }
    size_t room = t->cap - 1 - t->len;
    if (n > room) {
        n = room;
        t->truncated = true;
    }
    memcpy(t->out + t->len, s, n);
    t->len += n;
    t->out[t->len] = '\0';
}

static void text_str(struct text *t, const char *s)
{
    text_put(t, s, strlen(s));
}

/* Writes bytes with '"' and '\\' escaped and non-printable bytes as \xNN. */
static void text_escaped(struct text *t, amqp_bytes s)
{
    char tmp[8];
    for (size_t i = 0; i < s.len && !t->truncated; i++) {
        uint8_t c = s.ptr[i];
        if (c == '"' || c == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)c;
            text_put(t, tmp, 2);
        } else if (c < 0x20 || c >= 0x7f) {
            snprintf(tmp, sizeof tmp, "\\x%02x", c);
            text_put(t, tmp, 4);
        } else {
            text_put(t, (const char *)&c, 1);
        }
    }
}

static int text_contents(struct text *t, amqp_bytes c, bool is_array, int depth);

static int text_value(struct text *t, const struct field_value *v, int depth)
{
    char tmp[64];
    switch (v->type) {
    case 't':
        text_str(t, v->v.i ? "true" : "false");
        return 0;
    case 'b': case 's': case 'I': case 'l':
        snprintf(tmp, sizeof tmp, "%" PRId64, v->v.i);
        break;
    case 'B': case 'u': case 'i':
        snprintf(tmp, sizeof tmp, "%" PRIu64, v->v.u);
        break;
    case 'T':
        snprintf(tmp, sizeof tmp, "T%" PRIu64, v->v.u);
        break;
    case 'f':
        snprintf(tmp, sizeof tmp, "%g", (double)v->v.f);
        break;
    case 'd':
        snprintf(tmp, sizeof tmp, "%g", v->v.d);
        break;
    case 'D':
        snprintf(tmp, sizeof tmp, "%" PRIu32 "e-%u", v->v.dec.value, (unsigned)v->v.dec.scale);
        break;
    case 'S':
        text_str(t, "\"");
        text_escaped(t, v->v.bytes);
        text_str(t, "\"");
        return 0;
    case 'x':
        snprintf(tmp, sizeof tmp, "<%zu bytes>", v->v.bytes.len);
        break;
    case 'V':
        snprintf(tmp, sizeof tmp, "void");
        break;
    case 'F':
        return text_contents(t, v->v.bytes, false, depth + 1);
    case 'A':
        return text_contents(t, v->v.bytes, true, depth + 1);
    default:
        return -1;
    }
    text_str(t, tmp);
    return 0;
}

/* Writes {k=v, ...} or [v, ...]; -1 if malformed or nested too deep. */
static int text_contents(struct text *t, amqp_bytes c, bool is_array, int depth)
{
    struct table_iter it;
    struct field_value v;
    amqp_bytes key;
    int rc = 0, n = 0;

    if (depth > TABLE_MAX_DEPTH)
        return -1;
    text_str(t, is_array ? "[" : "{");
    table_iter_init(&it, c);
    while (!t->truncated &&
           (rc = is_array ? array_next(&it, &v) : table_next(&it, &key, &v)) == 1) {
        if (n++ > 0)
            text_str(t, ", ");
        if (!is_array) {
            text_escaped(t, key);
            text_str(t, "=");
        }
        if (text_value(t, &v, depth) < 0)
            return -1;
    }
    if (t->truncated)
        return 0;
    if (rc < 0)
        return -1;
    text_str(t, is_array ? "]" : "}");
    return 0;
}

int table_to_text(amqp_bytes t, char *out, size_t outlen)
{
    struct text tx = { out, outlen, 0, false };

    if (outlen > 0)
        out[0] = '\0';
    int rc = text_contents(&tx, t, false, 1);
    if (rc < 0 && !tx.truncated) {
        text_str(&tx, "<malformed>");
    }
    if (tx.truncated && outlen >= 4) {
        size_t at = tx.len >= 3 ? tx.len - 3 : 0;
        memcpy(out + at, "...", 3);
        tx.len = at + 3;
        out[tx.len] = '\0';
    }
    if (rc < 0)
        return -1;
    return tx.len > INT_MAX ? INT_MAX : (int)tx.len;
}
