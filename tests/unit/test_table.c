/* Unit tests for amqp/table.c: field tables and arrays with RabbitMQ's tags. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "amqp/abuf.h"
#include "amqp/table.h"

static amqp_bytes contents(const struct abuf *b, size_t off)
{
    /* the contents of a table written with table_begin at off */
    return amqp_bytes_of(b->data + off + 4, b->len - off - 4);
}

/* Copies bytes into a buffer of exactly that size, so ASan sees any over-read. */
static amqp_bytes exact_copy(const uint8_t *p, size_t n, uint8_t **owned)
{
    *owned = malloc(n ? n : 1);
    assert_non_null(*owned);
    if (n)
        memcpy(*owned, p, n);
    return amqp_bytes_of(*owned, n);
}

static void test_every_tag(void **state)
{
    (void)state;
    struct abuf b;
    abuf_init(&b);
    /* one entry per tag, keyed by the tag; the array is I 7, V, t 1 (8 bytes) */
    static const uint8_t table[] = {
        1, 't', 't', 1,
        1, 'b', 'b', 0xfe,
        1, 'B', 'B', 0xfe,
        1, 's', 's', 0xff, 0xfd,
        1, 'u', 'u', 0xff, 0xfd,
        1, 'I', 'I', 0xff, 0xff, 0xff, 0xfc,
        1, 'i', 'i', 0xff, 0xff, 0xff, 0xfc,
        1, 'l', 'l', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb,
        1, 'f', 'f', 0x3f, 0xc0, 0x00, 0x00,
        1, 'd', 'd', 0xc0, 0x04, 0, 0, 0, 0, 0, 0,
        1, 'D', 'D', 2, 0x00, 0x00, 0x30, 0x39,
        1, 'S', 'S', 0, 0, 0, 3, 'a', 'b', 'c',
        1, 'A', 'A', 0, 0, 0, 8, 'I', 0, 0, 0, 7, 'V', 't', 1,
        1, 'T', 'T', 0, 0, 0, 0, 0x5f, 0x5e, 0x10, 0x00,
        1, 'F', 'F', 0, 0, 0, 4, 1, 'k', 'b', 9,
        1, 'V', 'V',
        1, 'x', 'x', 0, 0, 0, 2, 0x00, 0xff,
    };
    amqp_bytes t = amqp_bytes_of(table, sizeof table);
    assert_int_equal(table_validate(t), 0);

    struct table_iter it;
    struct field_value v;
    amqp_bytes key;
    int n = 0;
    table_iter_init(&it, t);
    while (table_next(&it, &key, &v) == 1) {
        assert_int_equal(key.len, 1);
        assert_int_equal(key.ptr[0], v.type);   /* each key is its own tag */
        n++;
    }
    assert_int_equal(n, 17);

    assert_int_equal(table_get(t, "t", &v), 1);
    assert_int_equal(v.v.i, 1);
    assert_int_equal(table_get(t, "b", &v), 1);
    assert_int_equal(v.v.i, -2);
    assert_int_equal(table_get(t, "B", &v), 1);
    assert_int_equal(v.v.u, 254);
    assert_int_equal(table_get(t, "s", &v), 1);
    assert_int_equal(v.v.i, -3);
    assert_int_equal(table_get(t, "u", &v), 1);
    assert_int_equal(v.v.u, 65533);
    assert_int_equal(table_get(t, "I", &v), 1);
    assert_int_equal(v.v.i, -4);
    assert_int_equal(table_get(t, "i", &v), 1);
    assert_int_equal(v.v.u, 4294967292u);
    assert_int_equal(table_get(t, "l", &v), 1);
    assert_int_equal(v.v.i, -5);
    assert_int_equal(table_get(t, "f", &v), 1);
    assert_true(v.v.f == 1.5f);
    assert_int_equal(table_get(t, "d", &v), 1);
    assert_true(v.v.d == -2.5);
    assert_int_equal(table_get(t, "D", &v), 1);
    assert_int_equal(v.v.dec.scale, 2);
    assert_int_equal(v.v.dec.value, 12345);
    assert_int_equal(table_get(t, "S", &v), 1);
    assert_true(amqp_bytes_eq_cstr(v.v.bytes, "abc"));
    assert_true(field_is_string(&v));
    assert_int_equal(table_get(t, "T", &v), 1);
    assert_int_equal(v.v.u, 1600000000u);
    assert_int_equal(table_get(t, "V", &v), 1);
    assert_int_equal(v.type, 'V');
    assert_int_equal(table_get(t, "x", &v), 1);
    assert_int_equal(v.v.bytes.len, 2);
    assert_int_equal(v.v.bytes.ptr[1], 0xff);
    assert_false(field_is_string(&v));

    assert_int_equal(table_get(t, "F", &v), 1);
    assert_int_equal(table_validate(v.v.bytes), 0);
    struct field_value inner;
    assert_int_equal(table_get(v.v.bytes, "k", &inner), 1);
    assert_int_equal(inner.type, 'b');
    assert_int_equal(inner.v.i, 9);

    assert_int_equal(table_get(t, "A", &v), 1);
    assert_int_equal(array_validate(v.v.bytes), 0);
    table_iter_init(&it, v.v.bytes);
    assert_int_equal(array_next(&it, &inner), 1);
    assert_int_equal(inner.type, 'I');
    assert_int_equal(inner.v.i, 7);
    assert_int_equal(array_next(&it, &inner), 1);
    assert_int_equal(inner.type, 'V');
    assert_int_equal(array_next(&it, &inner), 1);
    assert_int_equal(inner.type, 't');
    assert_int_equal(array_next(&it, &inner), 0);

    assert_int_equal(table_get(t, "missing", &v), 0);

    /* re-encoding every decoded value gives back the same bytes */
    size_t off = table_begin(&b);
    table_iter_init(&it, t);
    while (table_next(&it, &key, &v) == 1) {
        table_key_bytes(&b, key);
        field_put_value(&b, &v);
    }
    table_end(&b, off);
    assert_int_equal(b.len, sizeof table + 4);
    assert_memory_equal(b.data + 4, table, sizeof table);
    assert_int_equal(b.data[3], sizeof table);
    abuf_free(&b);

}

static void test_writers(void **state)
{
    (void)state;
    struct abuf b;
    abuf_init(&b);
    size_t off = table_begin(&b);
    table_key(&b, "on");
    field_put_bool(&b, true);
    table_key(&b, "s");
    field_put_longstr(&b, amqp_cstr("hi"));
    table_key(&b, "n");
    field_put_i32(&b, -2);
    table_key(&b, "L");
    field_put_i64(&b, 1);
    table_key(&b, "ts");
    field_put_timestamp(&b, 258);
    table_key(&b, "v");
    field_put_void(&b);
    table_key(&b, "t");
    field_put_table(&b, amqp_bytes_of("\x01k\x74\x00", 4));
    table_end(&b, off);
    static const uint8_t want[] = {
        0, 0, 0, 58,
        2, 'o', 'n', 't', 1,
        1, 's', 'S', 0, 0, 0, 2, 'h', 'i',
        1, 'n', 'I', 0xff, 0xff, 0xff, 0xfe,
        1, 'L', 'l', 0, 0, 0, 0, 0, 0, 0, 1,
        2, 't', 's', 'T', 0, 0, 0, 0, 0, 0, 1, 2,
        1, 'v', 'V',
        1, 't', 'F', 0, 0, 0, 4, 1, 'k', 't', 0,
    };
    assert_int_equal(b.len, sizeof want);
    assert_memory_equal(b.data, want, sizeof want);
    assert_int_equal(table_validate(contents(&b, off)), 0);

    /* a nested table written with table_begin/table_end inside another */
    abuf_reset(&b);
    off = table_begin(&b);
    table_key(&b, "x");
    abuf_u8(&b, 'F');
    size_t inner = table_begin(&b);
    table_key(&b, "y");
    field_put_bool(&b, false);
    table_end(&b, inner);
    table_end(&b, off);
    assert_int_equal(table_validate(contents(&b, off)), 0);
    struct field_value v, w;
    assert_int_equal(table_get(contents(&b, off), "x", &v), 1);
    assert_int_equal(v.type, 'F');
    assert_int_equal(table_get(v.v.bytes, "y", &w), 1);
    assert_int_equal(w.type, 't');
    assert_int_equal(w.v.i, 0);
    abuf_free(&b);
}

static void test_sign_and_bool(void **state)
{
    (void)state;
    static const uint8_t t[] = {
        1, 'a', 'b', 0x80,
        1, 'b', 's', 0x80, 0x00,
        1, 'c', 'I', 0x80, 0, 0, 0,
        1, 'd', 'l', 0x80, 0, 0, 0, 0, 0, 0, 0,
        1, 'e', 't', 2,
        1, 'f', 'T', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    };
    amqp_bytes tb = amqp_bytes_of(t, sizeof t);
    struct field_value v;
    int64_t x;
    assert_int_equal(table_validate(tb), 0);
    assert_int_equal(table_get(tb, "a", &v), 1);
    assert_int_equal(field_as_int64(&v, &x), 0);
    assert_int_equal(x, -128);
    assert_int_equal(table_get(tb, "b", &v), 1);
    assert_int_equal(field_as_int64(&v, &x), 0);
    assert_int_equal(x, -32768);
    assert_int_equal(table_get(tb, "c", &v), 1);
    assert_int_equal(field_as_int64(&v, &x), 0);
    assert_true(x == INT32_MIN);
    assert_int_equal(table_get(tb, "d", &v), 1);
    assert_int_equal(field_as_int64(&v, &x), 0);
    assert_true(x == INT64_MIN);
    assert_int_equal(table_get(tb, "e", &v), 1);
    assert_int_equal(v.v.i, 1);                  /* any non-zero octet is true */
    assert_int_equal(field_as_int64(&v, &x), -1); /* bool is not an integer */
    assert_int_equal(table_get(tb, "f", &v), 1);
    assert_int_equal(field_as_int64(&v, &x), -1); /* T above INT64_MAX */
}

static void test_as_int64(void **state)
{
    (void)state;
    struct field_value v;
    int64_t x = 0;
    const char ints[] = "bBsuIilT";
    for (const char *c = ints; *c; c++) {
        memset(&v, 0, sizeof v);
        v.type = (uint8_t)*c;
        if (strchr("bsIl", *c))
            v.v.i = -7;
        else
            v.v.u = 7;
        assert_int_equal(field_as_int64(&v, &x), 0);
        assert_int_equal(x, strchr("bsIl", *c) ? -7 : 7);
    }
    const char others[] = "tfdDSAFVx";
    for (const char *c = others; *c; c++) {
        memset(&v, 0, sizeof v);
        v.type = (uint8_t)*c;
        assert_int_equal(field_as_int64(&v, &x), -1);
    }
}

/* Writes an entry nesting `levels` more tables/arrays around a bool: with
 * use_array, pairs of levels are an array holding a table. */
static void nest(struct abuf *b, int levels, bool use_array)
{
    if (levels == 0) {
        table_key(b, "leaf");
        field_put_bool(b, true);
        return;
    }
    table_key(b, "n");
    bool pair = use_array && levels >= 2;
    abuf_u8(b, pair ? 'A' : 'F');
    size_t off = table_begin(b);
    if (pair) {
        abuf_u8(b, 'F');
        size_t inner = table_begin(b);
        nest(b, levels - 2, use_array);
        table_end(b, inner);
    } else {
        nest(b, levels - 1, use_array);
    }
    table_end(b, off);
}

static void test_depth_limit(void **state)
{
    (void)state;
    struct abuf b;
    abuf_init(&b);
    /* outer table (depth 1) + 31 nested tables = depth 32: accepted */
    nest(&b, TABLE_MAX_DEPTH - 1, false);
    assert_int_equal(table_validate(amqp_bytes_of(b.data, b.len)), 0);
    abuf_reset(&b);
    nest(&b, TABLE_MAX_DEPTH, false);
    assert_int_equal(table_validate(amqp_bytes_of(b.data, b.len)), -1);
    /* arrays count as levels too */
    abuf_reset(&b);
    nest(&b, TABLE_MAX_DEPTH - 1, true);
    assert_int_equal(table_validate(amqp_bytes_of(b.data, b.len)), 0);
    abuf_reset(&b);
    nest(&b, TABLE_MAX_DEPTH, true);
    assert_int_equal(table_validate(amqp_bytes_of(b.data, b.len)), -1);

    /* very deep input is refused without deep recursion */
    abuf_reset(&b);
    nest(&b, 5000, false);
    amqp_bytes deep = amqp_bytes_of(b.data, b.len);
    assert_int_equal(table_validate(deep), -1);
    assert_false(table_equal(deep, amqp_bytes_of(b.data, b.len - 1)));
    char text[512];   /* room for more than TABLE_MAX_DEPTH levels of "n={" */
    assert_int_equal(table_to_text(deep, text, sizeof text), -1);
    abuf_free(&b);
}

static void test_malformed(void **state)
{
    (void)state;
    static const struct { const char *what; uint8_t bytes[16]; size_t len; } bad[] = {
        { "key length past end", { 5, 'a', 'b' }, 3 },
        { "no tag", { 1, 'a' }, 2 },
        { "unknown tag", { 1, 'a', 'Z', 0 }, 4 },
        { "PDF tag U", { 1, 'a', 'U', 0, 1 }, 5 },
        { "truncated I", { 1, 'a', 'I', 0, 0, 1 }, 6 },
        { "S past end", { 1, 'a', 'S', 0, 0, 0, 9, 'x' }, 8 },
        { "S huge", { 1, 'a', 'S', 0xff, 0xff, 0xff, 0xff, 'x' }, 8 },
        { "F past end", { 1, 'a', 'F', 0, 0, 0, 5, 1, 'k', 'V' }, 10 },
        { "A past end", { 1, 'a', 'A', 0, 0, 0, 2, 'V' }, 8 },
        { "bad inside F", { 1, 'a', 'F', 0, 0, 0, 3, 1, 'k', 'Q' }, 10 },
        { "bad inside A", { 1, 'a', 'A', 0, 0, 0, 1, 'Q' }, 8 },
        { "x past end", { 1, 'a', 'x', 0, 0, 1, 0 }, 7 },
        { "D truncated", { 1, 'a', 'D', 2, 0, 0, 0 }, 7 },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint8_t *owned;
        amqp_bytes t = exact_copy(bad[i].bytes, bad[i].len, &owned);
        struct field_value v;
        char text[128];
        assert_int_equal(table_validate(t), -1);
        assert_int_equal(table_get(t, "zz", &v), 0);
        assert_int_equal(table_to_text(t, text, sizeof text), -1);
        assert_non_null(strstr(text, "<malformed>"));
        free(owned);
    }
    /* an array whose element tag is unknown */
    uint8_t *owned;
    amqp_bytes a = exact_copy((const uint8_t *)"V\x01", 2, &owned);
    assert_int_equal(array_validate(a), -1);
    free(owned);
    /* empty table and array are fine */
    assert_int_equal(table_validate(amqp_bytes_of(NULL, 0)), 0);
    assert_int_equal(array_validate(amqp_bytes_of(NULL, 0)), 0);
}

/* Cutting a valid table anywhere must be caught unless the cut falls between
 * two entries, and must never read outside the cut copy. */
static void test_truncation(void **state)
{
    (void)state;
    struct abuf b;
    abuf_init(&b);
    size_t off = table_begin(&b);
    table_key(&b, "name");
    field_put_longstr(&b, amqp_cstr("value"));
    table_key(&b, "nested");
    abuf_u8(&b, 'F');
    size_t in = table_begin(&b);
    table_key(&b, "n");
    field_put_i64(&b, 42);
    table_key(&b, "arr");
    abuf_u8(&b, 'A');
    size_t arr = table_begin(&b);
    abuf_u8(&b, 'I');
    abuf_u32(&b, 1);
    abuf_u8(&b, 'S');
    abuf_longstr(&b, amqp_cstr("two"));
    table_end(&b, arr);
    table_end(&b, in);
    table_key(&b, "d");
    abuf_u8(&b, 'D');
    abuf_u8(&b, 1);
    abuf_u32(&b, 5);
    table_end(&b, off);
    amqp_bytes full = contents(&b, off);
    assert_int_equal(table_validate(full), 0);

    /* entry boundaries */
    size_t bounds[8], nb = 0;
    struct table_iter it;
    struct field_value v;
    amqp_bytes key;
    table_iter_init(&it, full);
    bounds[nb++] = 0;
    while (table_next(&it, &key, &v) == 1)
        bounds[nb++] = it.r.pos;
    assert_int_equal(nb, 4);

    for (size_t n = 0; n < full.len; n++) {
        uint8_t *owned;
        amqp_bytes t = exact_copy(full.ptr, n, &owned);
        bool boundary = false;
        for (size_t k = 0; k < nb; k++)
            boundary |= bounds[k] == n;
        assert_int_equal(table_validate(t), boundary ? 0 : -1);
        char text[16];
        (void)table_to_text(t, text, sizeof text);
        (void)table_get(t, "d", &v);
        (void)table_equal(t, full);
        free(owned);
    }
    abuf_free(&b);
}

static void put_entry(struct abuf *b, const char *k, int32_t v)
{
    table_key(b, k);
    field_put_i32(b, v);
}

static void test_equal(void **state)
{
    (void)state;
    struct abuf a, b;
    abuf_init(&a);
    abuf_init(&b);

    size_t oa = table_begin(&a);
    put_entry(&a, "x-match", 1);
    put_entry(&a, "format", 2);
    table_key(&a, "sub");
    abuf_u8(&a, 'F');
    size_t sa = table_begin(&a);
    put_entry(&a, "p", 1);
    put_entry(&a, "q", 2);
    table_end(&a, sa);
    table_end(&a, oa);

    size_t ob = table_begin(&b);
    table_key(&b, "sub");
    abuf_u8(&b, 'F');
    size_t sb = table_begin(&b);
    put_entry(&b, "q", 2);
    put_entry(&b, "p", 1);
    table_end(&b, sb);
    put_entry(&b, "format", 2);
    put_entry(&b, "x-match", 1);
    table_end(&b, ob);

    amqp_bytes ta = contents(&a, oa), tb = contents(&b, ob);
    assert_false(amqp_bytes_eq(ta, tb));
    assert_true(table_equal(ta, tb));
    assert_true(table_equal(tb, ta));
    assert_true(table_equal(amqp_bytes_of(NULL, 0), amqp_bytes_of(NULL, 0)));
    assert_false(table_equal(ta, amqp_bytes_of(NULL, 0)));

    /* one extra key */
    abuf_reset(&b);
    ob = table_begin(&b);
    put_entry(&b, "x-match", 1);
    put_entry(&b, "format", 2);
    table_key(&b, "sub");
    abuf_u8(&b, 'F');
    sb = table_begin(&b);
    put_entry(&b, "p", 1);
    put_entry(&b, "q", 2);
    table_end(&b, sb);
    put_entry(&b, "extra", 0);
    table_end(&b, ob);
    assert_false(table_equal(ta, contents(&b, ob)));
    assert_false(table_equal(contents(&b, ob), ta));

    /* same keys, one value differs (type differs: 'I' 2 vs 'l' 2) */
    abuf_reset(&b);
    ob = table_begin(&b);
    put_entry(&b, "x-match", 1);
    table_key(&b, "format");
    field_put_i64(&b, 2);
    table_key(&b, "sub");
    field_put_table(&b, amqp_bytes_of(NULL, 0));
    table_end(&b, ob);
    assert_false(table_equal(ta, contents(&b, ob)));

    /* duplicate keys: the first occurrence counts */
    abuf_reset(&a);
    oa = table_begin(&a);
    put_entry(&a, "k", 1);
    put_entry(&a, "k", 2);
    table_end(&a, oa);
    abuf_reset(&b);
    ob = table_begin(&b);
    put_entry(&b, "k", 1);
    table_end(&b, ob);
    assert_true(table_equal(contents(&a, oa), contents(&b, ob)));
    abuf_reset(&b);
    ob = table_begin(&b);
    put_entry(&b, "k", 2);
    table_end(&b, ob);
    assert_false(table_equal(contents(&a, oa), contents(&b, ob)));

    /* large tables (heap path): 100 keys, reversed order */
    abuf_reset(&a);
    abuf_reset(&b);
    oa = table_begin(&a);
    ob = table_begin(&b);
    char k[16];
    for (int i = 0; i < 100; i++) {
        snprintf(k, sizeof k, "key%d", i);
        put_entry(&a, k, i);
        snprintf(k, sizeof k, "key%d", 99 - i);
        put_entry(&b, k, 99 - i);
    }
    table_end(&a, oa);
    table_end(&b, ob);
    assert_true(table_equal(contents(&a, oa), contents(&b, ob)));
    b.data[b.len - 1] ^= 1;   /* last value (key0) differs */
    assert_false(table_equal(contents(&a, oa), contents(&b, ob)));

    /* field_value_equal on scalars */
    struct field_value x = { .type = 'S' }, y = { .type = 'S' };
    x.v.bytes = amqp_cstr("same");
    y.v.bytes = amqp_cstr("same");
    assert_true(field_value_equal(&x, &y));
    y.v.bytes = amqp_cstr("diff");
    assert_false(field_value_equal(&x, &y));
    y.type = 'x';
    y.v.bytes = amqp_cstr("same");
    assert_false(field_value_equal(&x, &y));
    struct field_value d1 = { .type = 'd' }, d2 = { .type = 'd' };
    d1.v.d = 0.5;
    d2.v.d = 0.5;
    assert_true(field_value_equal(&d1, &d2));
    d2.v.d = 0.25;
    assert_false(field_value_equal(&d1, &d2));
    struct field_value v1 = { .type = 'V' }, v2 = { .type = 'V' };
    assert_true(field_value_equal(&v1, &v2));

    /* arrays: element-wise, nested tables order-insensitive */
    static const uint8_t arr1[] = { 'F', 0, 0, 0, 6, 1, 'a', 'V', 1, 'b', 'V', 'I', 0, 0, 0, 1 };
    static const uint8_t arr2[] = { 'F', 0, 0, 0, 6, 1, 'b', 'V', 1, 'a', 'V', 'I', 0, 0, 0, 1 };
    static const uint8_t arr3[] = { 'F', 0, 0, 0, 6, 1, 'b', 'V', 1, 'a', 'V', 'I', 0, 0, 0, 2 };
    struct field_value a1 = { .type = 'A' }, a2 = { .type = 'A' }, a3 = { .type = 'A' };
    a1.v.bytes = amqp_bytes_of(arr1, sizeof arr1);
    a2.v.bytes = amqp_bytes_of(arr2, sizeof arr2);
    a3.v.bytes = amqp_bytes_of(arr3, sizeof arr3);
    assert_true(field_value_equal(&a1, &a2));
    assert_false(field_value_equal(&a1, &a3));
    assert_false(field_value_equal(&a1, &(struct field_value){ .type = 'A' }));

    abuf_free(&a);
    abuf_free(&b);
}

static void test_get(void **state)
{
    (void)state;
    struct abuf b;
    abuf_init(&b);
    size_t off = table_begin(&b);
    put_entry(&b, "a", 1);
    put_entry(&b, "bb", 2);
    put_entry(&b, "a", 3);
    table_end(&b, off);
    amqp_bytes t = contents(&b, off);
    struct field_value v;
    assert_int_equal(table_get(t, "a", &v), 1);
    assert_int_equal(v.v.i, 1);              /* first match */
    assert_int_equal(table_get(t, "bb", &v), 1);
    assert_int_equal(v.v.i, 2);
    assert_int_equal(table_get(t, "b", &v), 0);
    assert_int_equal(table_get(t, "", &v), 0);
    assert_int_equal(table_get_bytes(t, amqp_bytes_of("bbx", 2), &v), 1);
    /* malformed after the entry: the entry before is still found, later ones not */
    b.data[b.len - 6] = 'Q';                 /* tag of the last entry */
    assert_int_equal(table_get(t, "bb", &v), 1);
    assert_int_equal(table_get(t, "zz", &v), 0);
    abuf_free(&b);
}

static void test_to_text(void **state)
{
    (void)state;
    struct abuf b;
    abuf_init(&b);
    size_t off = table_begin(&b);
    table_key(&b, "x-match");
    field_put_longstr(&b, amqp_cstr("all"));
    table_key(&b, "n");
    field_put_i32(&b, -5);
    table_key(&b, "q");
    field_put_longstr(&b, amqp_bytes_of("a\"\n", 3));
    table_key(&b, "t");
    abuf_u8(&b, 'F');
    size_t in = table_begin(&b);
    table_key(&b, "ok");
    field_put_bool(&b, true);
    table_end(&b, in);
    table_key(&b, "l");
    abuf_u8(&b, 'A');
    size_t arr = table_begin(&b);
    abuf_u8(&b, 'b');
    abuf_u8(&b, 1);
    abuf_u8(&b, 'V');
    table_end(&b, arr);
    table_end(&b, off);
    amqp_bytes t = contents(&b, off);

    const char *want = "{x-match=\"all\", n=-5, q=\"a\\\"\\x0a\", t={ok=true}, l=[1, void]}";
    char out[128];
    assert_int_equal(table_to_text(t, out, sizeof out), (int)strlen(want));
    assert_string_equal(out, want);

    /* every buffer size: NUL-terminated, never longer than outlen - 1 */
    for (size_t n = 0; n <= strlen(want) + 1; n++) {
        char *small = malloc(n ? n : 1);
        assert_non_null(small);
        int r = table_to_text(t, small, n);
        if (n > 0) {
            assert_true(r >= 0 && (size_t)r < n);
            assert_int_equal(strlen(small), (size_t)r);
            if (n <= strlen(want)) {
                if (n >= 4)
                    assert_string_equal(small + r - 3, "...");
                assert_memory_equal(small, want, r >= 3 && n >= 4 ? (size_t)r - 3 : (size_t)r);
            } else {
                assert_string_equal(small, want);
            }
        }
        free(small);
    }
    abuf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_tag),
        cmocka_unit_test(test_writers),
        cmocka_unit_test(test_sign_and_bool),
        cmocka_unit_test(test_as_int64),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_equal),
        cmocka_unit_test(test_get),
        cmocka_unit_test(test_to_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
