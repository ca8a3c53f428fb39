/* test_headers.c: the headers exchange index (exchanges/headers.c). */
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
#include "exchanges/xtype.h"

#define MAX_TABLES 512

/* Tables built by tbl(), freed after each test. */
static struct abuf tables[MAX_TABLES];
static size_t ntables;

static int free_tables(void **state)
{
    (void)state;
    for (size_t i = 0; i < ntables; i++)
        abuf_free(&tables[i]);
    ntables = 0;
    return 0;
}

/* Builds table contents (no length prefix) from "key=T:value,..." where T is
   S (long string), I (int32), l (int64), t (bool 0/1), V (void, no value) or
   F (nested table: value is a key=T:value list with ';' between entries). */
static amqp_bytes tbl(const char *spec);

static void put_entries(struct abuf *b, const char *spec, char sep)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", spec);
    char *save = NULL;
    char seps[2] = { sep, 0 };
    for (char *e = strtok_r(buf, seps, &save); e; e = strtok_r(NULL, seps, &save)) {
        char *eq = strchr(e, '=');
        assert_non_null(eq);
        *eq = '\0';
        const char *type = eq + 1, *val = type[1] == ':' ? type + 2 : "";
        table_key(b, e);
        switch (type[0]) {
        case 'S': field_put_longstr(b, amqp_cstr(val)); break;
        case 'I': field_put_i32(b, (int32_t)atol(val)); break;
        case 'l': field_put_i64(b, atoll(val)); break;
        case 't': field_put_bool(b, atoi(val) != 0); break;
        case 'V': field_put_void(b); break;
        case 'F': {
            struct abuf inner;
            abuf_init(&inner);
            put_entries(&inner, val, ';');
            field_put_table(b, amqp_bytes_of(inner.data, inner.len));
            abuf_free(&inner);
            break;
        }
        default: fail_msg("bad type in spec %s", type);
        }
    }
}

static amqp_bytes tbl(const char *spec)
{
    assert_true(ntables < MAX_TABLES);
    struct abuf *b = &tables[ntables++];
    abuf_init(b);
    put_entries(b, spec, ',');
    return amqp_bytes_of(b->data, b->len);
}

#include "route_recorder.h"

static const char *route_t(void *idx, amqp_bytes headers)
{
    static char out[4096];
    struct rec r = { .n = 0 };
    xtype_headers.route(idx, amqp_cstr("ignored"), headers, rec_emit, &r);
    qsort(r.dest, r.n, sizeof r.dest[0], str_cmp);
    out[0] = '\0';
    for (size_t i = 0; i < r.n; i++) {
        if (i)
            strcat(out, ",");
        strcat(out, r.dest[i]);
    }
    return out;
}

/* Routes a message whose headers are given as a tbl() spec. */
static const char *route(void *idx, const char *headers)
{
    return route_t(idx, tbl(headers));
}

static struct xbinding bind(const char *dest, const char *args)
{
    struct xbinding b = { (void *)dest, amqp_cstr(""), tbl(args), NULL };
    char err[256];
    assert_int_equal(xtype_headers.validate(b.key, b.args, err, sizeof err), 0);
    return b;
}

static int validate(const char *args, char *err, size_t errlen)
{
    err[0] = '\0';
    return xtype_headers.validate(amqp_cstr(""), tbl(args), err, errlen);
}

static void test_validate(void **state)
{
    (void)state;
    char err[256];
    assert_ptr_equal(xtype_find(amqp_cstr("headers")), &xtype_headers);
    assert_int_equal(validate("", err, sizeof err), 0);
    assert_int_equal(validate("a=S:1", err, sizeof err), 0);
    assert_int_equal(validate("x-match=S:all", err, sizeof err), 0);
    assert_int_equal(validate("x-match=S:any,a=I:1", err, sizeof err), 0);
    assert_int_equal(validate("x-match=S:all-with-x", err, sizeof err), 0);
    assert_int_equal(validate("x-match=S:any-with-x", err, sizeof err), 0);

    assert_int_equal(validate("x-match=S:foo", err, sizeof err), -1);
    assert_string_equal(err, "Invalid x-match field value \"foo\"; expected all, any, "
                             "all-with-x, or any-with-x");
    assert_int_equal(validate("x-match=S:ALL", err, sizeof err), -1);
    assert_int_equal(validate("x-match=S:", err, sizeof err), -1);
    assert_string_equal(err, "Invalid x-match field value \"\"; expected all, any, "
                             "all-with-x, or any-with-x");
    assert_int_equal(validate("x-match=I:1", err, sizeof err), -1);
    assert_string_equal(err, "Invalid x-match field type signedint (value 1); expected longstr");
    assert_int_equal(validate("x-match=V", err, sizeof err), -1);
    assert_string_equal(err, "Invalid x-match field type void; expected longstr");
    assert_int_equal(validate("x-match=F:a=S:all", err, sizeof err), -1);
    assert_string_equal(err, "Invalid x-match field type table; expected longstr");

    /* A short buffer truncates, still NUL-terminated. */
    char small[8];
    assert_int_equal(validate("x-match=S:nope", small, sizeof small), -1);
    assert_string_equal(small, "Invalid");

    /* Malformed table. */
    static const uint8_t bad[] = { 3, 'a', 'b' };
    assert_int_equal(xtype_headers.validate(amqp_cstr(""), amqp_bytes_of(bad, sizeof bad),
                                            err, sizeof err), -1);
}

static void test_all(void **state)
{
    (void)state;
    void *idx = xtype_headers.index_new();
    struct xbinding b1 = bind("all", "x-match=S:all,format=S:pdf,type=S:report");
    struct xbinding b2 = bind("dflt", "format=S:pdf,type=S:report");   /* no x-match */
    xtype_headers.add(idx, &b1);
    xtype_headers.add(idx, &b2);
    assert_string_equal(route(idx, "format=S:pdf,type=S:report"), "all,dflt");
    assert_string_equal(route(idx, "type=S:report,format=S:pdf"), "all,dflt");
    assert_string_equal(route(idx, "format=S:pdf,type=S:report,extra=I:1"), "all,dflt");
    assert_string_equal(route(idx, "format=S:pdf"), "");
    assert_string_equal(route(idx, "format=S:pdf,type=S:log"), "");
    assert_string_equal(route(idx, "format=S:PDF,type=S:report"), "");
    assert_string_equal(route(idx, ""), "");
    assert_string_equal(route_t(idx, amqp_bytes_of(NULL, 0)), "");
    xtype_headers.index_free(idx);
}

static void test_any(void **state)
{
    (void)state;
    void *idx = xtype_headers.index_new();
    struct xbinding b = bind("any", "x-match=S:any,format=S:pdf,type=S:log");
    xtype_headers.add(idx, &b);
    assert_string_equal(route(idx, "type=S:log"), "any");
    assert_string_equal(route(idx, "format=S:pdf"), "any");
    assert_string_equal(route(idx, "format=S:zip,type=S:log"), "any");
    assert_string_equal(route(idx, "format=S:zip,type=S:report"), "");
    assert_string_equal(route(idx, "other=S:pdf"), "");
    assert_string_equal(route_t(idx, amqp_bytes_of(NULL, 0)), "");
    xtype_headers.index_free(idx);
}

/* "all" with nothing to compare matches every message, "any" none. */
static void test_empty_args(void **state)
{
    (void)state;
    void *idx = xtype_headers.index_new();
    struct xbinding b[] = {
        bind("none", ""), bind("all", "x-match=S:all"), bind("any", "x-match=S:any"),
        bind("allx", "x-match=S:all,x-only=S:1"), bind("anyx", "x-match=S:any,x-only=S:1"),
        bind("allwx", "x-match=S:all-with-x"), bind("anywx", "x-match=S:any-with-x"),
    };
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++)
        xtype_headers.add(idx, &b[i]);
    assert_string_equal(route_t(idx, amqp_bytes_of(NULL, 0)), "all,allwx,allx,none");
    assert_string_equal(route(idx, "a=S:1,x-only=S:1"), "all,allwx,allx,none");
    xtype_headers.index_free(idx);
}

static void test_with_x(void **state)
{
    (void)state;
    void *idx = xtype_headers.index_new();
    struct xbinding b[] = {
        bind("all", "x-match=S:all,x-tenant=S:a,format=S:pdf"),
        bind("allwx", "x-match=S:all-with-x,x-tenant=S:a,format=S:pdf"),
        bind("any", "x-match=S:any,x-tenant=S:a"),
        bind("anywx", "x-match=S:any-with-x,x-tenant=S:a,format=S:zip"),
    };
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++)
        xtype_headers.add(idx, &b[i]);
    assert_string_equal(route(idx, "format=S:pdf"), "all");
    assert_string_equal(route(idx, "format=S:pdf,x-tenant=S:a"), "all,allwx,anywx");
    assert_string_equal(route(idx, "format=S:pdf,x-tenant=S:b"), "all");
    assert_string_equal(route(idx, "x-tenant=S:a"), "anywx");
    assert_string_equal(route(idx, "format=S:zip"), "anywx");
    /* x-match itself is never compared, even by the -with-x forms. */
    assert_string_equal(route(idx, "x-match=S:all-with-x,format=S:pdf,x-tenant=S:a"),
                        "all,allwx,anywx");
    xtype_headers.index_free(idx);
}

/* A void argument asks only that the header be present, whatever its value. */
static void test_void(void **state)
{
    (void)state;
    void *idx = xtype_headers.index_new();
    struct xbinding b1 = bind("all", "flag=V,kind=S:a");
    struct xbinding b2 = bind("any", "x-match=S:any,flag=V");
    xtype_headers.add(idx, &b1);
    xtype_headers.add(idx, &b2);
    assert_string_equal(route(idx, "flag=S:anything,kind=S:a"), "all,any");
    assert_string_equal(route(idx, "flag=I:0,kind=S:a"), "all,any");
    assert_string_equal(route(idx, "flag=V,kind=S:a"), "all,any");
    assert_string_equal(route(idx, "flag=t:0"), "any");
    assert_string_equal(route(idx, "kind=S:a"), "");
    assert_string_equal(route(idx, "flags=S:x,kind=S:a"), "");
    xtype_headers.index_free(idx);
}

/* Values match only with the same type: int 1 is neither string "1" nor long 1. */
static void test_type_mismatch(void **state)
{
    (void)state;
    void *idx = xtype_headers.index_new();
    struct xbinding b1 = bind("int", "n=I:1");
    struct xbinding b2 = bind("str", "n=S:1");
    struct xbinding b3 = bind("long", "n=l:1");
    struct xbinding b4 = bind("bool", "n=t:1");
    xtype_headers.add(idx, &b1);
    xtype_headers.add(idx, &b2);
    xtype_headers.add(idx, &b3);
    xtype_headers.add(idx, &b4);
    assert_string_equal(route(idx, "n=I:1"), "int");
    assert_string_equal(route(idx, "n=S:1"), "str");
    assert_string_equal(route(idx, "n=l:1"), "long");
    assert_string_equal(route(idx, "n=t:1"), "bool");
    assert_string_equal(route(idx, "n=I:2"), "");
    assert_string_equal(route(idx, "n=V"), "");
    xtype_headers.index_free(idx);
}

static void test_nested_table_value(void **state)
{
    (void)state;
    void *idx = xtype_headers.index_new();
    struct xbinding b = bind("t", "cfg=F:a=I:1;b=S:x");
    xtype_headers.add(idx, &b);
    assert_string_equal(route(idx, "cfg=F:a=I:1;b=S:x"), "t");
    assert_string_equal(route(idx, "cfg=F:b=S:x;a=I:1"), "t");     /* order-insensitive */
    assert_string_equal(route(idx, "cfg=F:a=I:1"), "");
    assert_string_equal(route(idx, "cfg=F:a=I:2;b=S:x"), "");
    xtype_headers.index_free(idx);
}

/* A header repeated in the message counts with its first value (as table_get). */
static void test_repeated_header_first_wins(void **state)
{
    (void)state;
    void *idx = xtype_headers.index_new();
    struct xbinding b1 = bind("one", "k=I:1"), b2 = bind("two", "k=I:2");
    xtype_headers.add(idx, &b1);
    xtype_headers.add(idx, &b2);
    assert_string_equal(route(idx, "k=I:1,k=I:2"), "one");
    assert_string_equal(route(idx, "k=I:2,k=I:1"), "two");
    xtype_headers.index_free(idx);
}

/* More headers than the on-stack lookup array holds. */
static void test_many_headers(void **state)
{
    (void)state;
    void *idx = xtype_headers.index_new();
    struct xbinding b = bind("q", "h0=I:0,h39=I:39,h20=I:20");
    xtype_headers.add(idx, &b);
    char spec[1024] = "";
    for (int i = 39; i >= 0; i--) {
        char e[24];
        snprintf(e, sizeof e, "%sh%d=I:%d", i == 39 ? "" : ",", i, i);
        strcat(spec, e);
    }
    assert_string_equal(route(idx, spec), "q");
    strcat(spec, ",zz=S:1");
    assert_string_equal(route(idx, spec), "q");
    xtype_headers.index_free(idx);
}

/* A malformed headers table is read up to the bad entry, never past its end. */
static void test_malformed_headers(void **state)
{
    (void)state;
    void *idx = xtype_headers.index_new();
    struct xbinding b1 = bind("a", "a=I:1"), b2 = bind("all", "");
    xtype_headers.add(idx, &b1);
    xtype_headers.add(idx, &b2);
    amqp_bytes good = tbl("a=I:1");
    uint8_t buf[64];
    memcpy(buf, good.ptr, good.len);
    buf[good.len] = 5;            /* key length past the end */
    buf[good.len + 1] = 'b';
    assert_string_equal(route_t(idx, amqp_bytes_of(buf, good.len + 2)), "a,all");
    static const uint8_t junk[] = { 0xff, 0xff, 0xff };
    assert_string_equal(route_t(idx, amqp_bytes_of(junk, sizeof junk)), "all");
    xtype_headers.index_free(idx);
}

static void test_add_remove_many(void **state)
{
    (void)state;
    enum { N = 2000 };
    void *idx = xtype_headers.index_new();
    struct xbinding *b = calloc(N, sizeof *b);
    char (*names)[16] = calloc(N, sizeof *names);
    assert_non_null(b);
    assert_non_null(names);
    for (int i = 0; i < N; i++) {
        char spec[64];
        snprintf(names[i], sizeof names[i], "q%d", i);
        snprintf(spec, sizeof spec, "x-match=S:%s,id=I:%d", i % 2 ? "any" : "all", i % 100);
        b[i] = (struct xbinding){ names[i], amqp_cstr(""), { NULL, 0 }, NULL };
        /* tables come from a pool of MAX_TABLES: share one per id/mode pair */
        if (i < 200) {
            b[i].args = tbl(spec);
        } else {
            b[i].args = b[i % 200].args;
        }
        xtype_headers.add(idx, &b[i]);
    }
    struct rec r = { .n = 0 };
    xtype_headers.route(idx, amqp_cstr(""), tbl("id=I:42"), rec_emit, &r);
    assert_int_equal(r.n, N / 100);
    for (int i = 0; i < N; i++)
        if (i % 100 != 42 || i >= 1000)
            xtype_headers.remove(idx, &b[i]);
    assert_string_equal(route(idx, "id=I:42"), "q142,q242,q342,q42,q442,q542,q642,q742,q842,q942");
    for (int i = 42; i < 1000; i += 100)
        xtype_headers.remove(idx, &b[i]);
    assert_string_equal(route(idx, "id=I:42"), "");
    xtype_headers.add(idx, &b[42]);
    assert_string_equal(route(idx, "id=I:42"), "q42");
    xtype_headers.index_free(idx);
    free(b);
    free(names);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_validate, free_tables),
        cmocka_unit_test_teardown(test_all, free_tables),
        cmocka_unit_test_teardown(test_any, free_tables),
        cmocka_unit_test_teardown(test_empty_args, free_tables),
        cmocka_unit_test_teardown(test_with_x, free_tables),
        cmocka_unit_test_teardown(test_void, free_tables),
        cmocka_unit_test_teardown(test_type_mismatch, free_tables),
        cmocka_unit_test_teardown(test_nested_table_value, free_tables),
        cmocka_unit_test_teardown(test_repeated_header_first_wins, free_tables),
        cmocka_unit_test_teardown(test_many_headers, free_tables),
        cmocka_unit_test_teardown(test_malformed_headers, free_tables),
        cmocka_unit_test_teardown(test_add_remove_many, free_tables),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
