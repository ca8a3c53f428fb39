/* test_direct_fanout.c: the registry, the direct and the fanout exchange indexes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "exchanges/xtype.h"


#include "route_recorder.h"

/* Routes key (len bytes) through type t and returns the sorted destinations joined
   by ',' (static buffer). */
static const char *route_n(const struct xtype *t, void *idx, const void *key, size_t len)
{
    static char out[4096];
    struct rec r = { .n = 0 };
    t->route(idx, amqp_bytes_of(key, len), amqp_bytes_of(NULL, 0), rec_emit, &r);
    qsort(r.dest, r.n, sizeof r.dest[0], str_cmp);
    out[0] = '\0';
    for (size_t i = 0; i < r.n; i++) {
        if (i)
            strcat(out, ",");
        strcat(out, r.dest[i]);
    }
    return out;
}

static const char *route(const struct xtype *t, void *idx, const char *key)
{
    return route_n(t, idx, key, strlen(key));
}

static struct xbinding bind(const char *dest, const char *key)
{
    struct xbinding b = { (void *)dest, amqp_cstr(key), amqp_bytes_of(NULL, 0), NULL };
    return b;
}

static void test_registry(void **state)
{
    (void)state;
    assert_ptr_equal(xtype_find(amqp_cstr("direct")), &xtype_direct);
    assert_ptr_equal(xtype_find(amqp_cstr("fanout")), &xtype_fanout);
    assert_ptr_equal(xtype_find(amqp_cstr("topic")), &xtype_topic);
    assert_ptr_equal(xtype_find(amqp_cstr("headers")), &xtype_headers);
    assert_null(xtype_find(amqp_cstr("Direct")));
    assert_null(xtype_find(amqp_cstr("x-delayed-message")));
    assert_null(xtype_find(amqp_cstr("")));
    assert_null(xtype_find(amqp_bytes_of("direct", 5)));
    assert_null(xtype_find(amqp_bytes_of("direct\0", 7)));
    assert_string_equal(xtype_direct.name, "direct");
    assert_string_equal(xtype_fanout.name, "fanout");
    assert_string_equal(xtype_topic.name, "topic");
    assert_string_equal(xtype_headers.name, "headers");
    assert_null(xtype_direct.validate);
    assert_null(xtype_fanout.validate);
}

static void test_direct_exact(void **state)
{
    (void)state;
    const struct xtype *t = &xtype_direct;
    void *idx = t->index_new();
    assert_string_equal(route(t, idx, "a"), "");
    struct xbinding b[] = {
        bind("q1", "a"), bind("q2", "a"), bind("q3", "ab"), bind("q4", ""), bind("q5", "A"),
        bind("q6", "a.#"), bind("q1", "b"),
    };
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++)
        t->add(idx, &b[i]);
    assert_string_equal(route(t, idx, "a"), "q1,q2");
    assert_string_equal(route(t, idx, "ab"), "q3");
    assert_string_equal(route(t, idx, ""), "q4");
    assert_string_equal(route(t, idx, "A"), "q5");
    assert_string_equal(route(t, idx, "a.b"), "");     /* no wildcards */
    assert_string_equal(route(t, idx, "a.#"), "q6");
    assert_string_equal(route(t, idx, "b"), "q1");
    assert_string_equal(route(t, idx, "abc"), "");

    /* Remove the binding that first brought key "a": the key must survive. */
    t->remove(idx, &b[0]);
    assert_string_equal(route(t, idx, "a"), "q2");
    t->add(idx, &b[0]);
    assert_string_equal(route(t, idx, "a"), "q1,q2");
    t->remove(idx, &b[0]);
    t->remove(idx, &b[1]);
    assert_string_equal(route(t, idx, "a"), "");
    t->add(idx, &b[1]);
    assert_string_equal(route(t, idx, "a"), "q2");
    t->index_free(idx);   /* with bindings still in it */
    t->index_free(NULL);
}

/* Keys are bytes: NUL and high bytes count, and no prefix matches. */
static void test_direct_binary_keys(void **state)
{
    (void)state;
    const struct xtype *t = &xtype_direct;
    void *idx = t->index_new();
    static const uint8_t k1[] = { 'a', 0, 'b' }, k2[] = { 'a', 0 }, k3[] = { 0xff, 0xfe };
    struct xbinding b1 = { (void *)"k1", amqp_bytes_of(k1, 3), { NULL, 0 }, NULL };
    struct xbinding b2 = { (void *)"k2", amqp_bytes_of(k2, 2), { NULL, 0 }, NULL };
    struct xbinding b3 = { (void *)"k3", amqp_bytes_of(k3, 2), { NULL, 0 }, NULL };
    t->add(idx, &b1);
    t->add(idx, &b2);
    t->add(idx, &b3);
    assert_string_equal(route_n(t, idx, k1, 3), "k1");
    assert_string_equal(route_n(t, idx, k2, 2), "k2");
    assert_string_equal(route_n(t, idx, k2, 1), "");
    assert_string_equal(route_n(t, idx, k3, 2), "k3");
    t->remove(idx, &b1);
    t->remove(idx, &b2);
    t->remove(idx, &b3);
    assert_string_equal(route_n(t, idx, k1, 3), "");
    t->index_free(idx);
}

/* Many keys exercise growth, shrinking and deletion inside the hash table. */
static void test_direct_many_keys(void **state)
{
    (void)state;
    enum { N = 20000 };
    const struct xtype *t = &xtype_direct;
    void *idx = t->index_new();
    struct xbinding *b = calloc(N, sizeof *b);
    char (*keys)[24] = calloc(N, sizeof *keys);
    char (*names)[16] = calloc(N, sizeof *names);
    assert_non_null(b);
    assert_non_null(keys);
    assert_non_null(names);
    for (int i = 0; i < N; i++) {
        snprintf(keys[i], sizeof keys[i], "key-%d", i / 2);   /* two bindings per key */
        snprintf(names[i], sizeof names[i], "q%05d", i);
        b[i] = bind(names[i], keys[i]);
        t->add(idx, &b[i]);
    }
    for (int k = 0; k < N / 2; k += 777) {
        char key[24], want[32];
        snprintf(key, sizeof key, "key-%d", k);
        snprintf(want, sizeof want, "q%05d,q%05d", 2 * k, 2 * k + 1);
        assert_string_equal(route(t, idx, key), want);
    }
    assert_string_equal(route(t, idx, "key-10000"), "");
    /* Remove every key divisible by 3 (both bindings) and one binding of every key
       divisible by 5 but not 3. */
    for (int k = 0; k < N / 2; k++) {
        if (k % 3 == 0) {
            t->remove(idx, &b[2 * k]);
            t->remove(idx, &b[2 * k + 1]);
        } else if (k % 5 == 0) {
            t->remove(idx, &b[2 * k + 1]);
        }
    }
    for (int k = 0; k < N / 2; k++) {
        char key[24], want[32];
        snprintf(key, sizeof key, "key-%d", k);
        if (k % 3 == 0)
            want[0] = '\0';
        else if (k % 5 == 0)
            snprintf(want, sizeof want, "q%05d", 2 * k);
        else
            snprintf(want, sizeof want, "q%05d,q%05d", 2 * k, 2 * k + 1);
        assert_string_equal(route(t, idx, key), want);
    }
    /* Remove the rest, then add a few back. */
    for (int k = 0; k < N / 2; k++) {
        if (k % 3 == 0)
            continue;
        t->remove(idx, &b[2 * k]);
        if (k % 5 != 0)
            t->remove(idx, &b[2 * k + 1]);
    }
    assert_string_equal(route(t, idx, "key-1"), "");
    t->add(idx, &b[2]);
    assert_string_equal(route(t, idx, "key-1"), "q00002");
    t->index_free(idx);
    free(b);
    free(keys);
    free(names);
}

/* Many bindings on one key, removed from the middle. */
static void test_direct_many_bindings_one_key(void **state)
{
    (void)state;
    enum { N = 100 };
    const struct xtype *t = &xtype_direct;
    void *idx = t->index_new();
    struct xbinding b[N];
    char names[N][16];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "q%02d", i);
        b[i] = bind(names[i], "k");
        t->add(idx, &b[i]);
    }
    struct rec r = { .n = 0 };
    t->route(idx, amqp_cstr("k"), amqp_bytes_of(NULL, 0), rec_emit, &r);
    assert_int_equal(r.n, N);
    for (int i = 0; i < N; i++)
        if (i % 10 != 3)
            t->remove(idx, &b[i]);
    assert_string_equal(route(t, idx, "k"), "q03,q13,q23,q33,q43,q53,q63,q73,q83,q93");
    for (int i = 3; i < N; i += 10)
        t->remove(idx, &b[i]);
    assert_string_equal(route(t, idx, "k"), "");
    t->index_free(idx);
}

static void test_fanout(void **state)
{
    (void)state;
    const struct xtype *t = &xtype_fanout;
    void *idx = t->index_new();
    assert_string_equal(route(t, idx, "x"), "");
    struct xbinding b[] = { bind("q1", "a"), bind("q2", ""), bind("q3", "#"), bind("q1", "z") };
    for (size_t i = 0; i < 4; i++)
        t->add(idx, &b[i]);
    assert_string_equal(route(t, idx, "x"), "q1,q1,q2,q3");
    assert_string_equal(route(t, idx, ""), "q1,q1,q2,q3");
    t->remove(idx, &b[1]);
    assert_string_equal(route(t, idx, "whatever"), "q1,q1,q3");
    t->remove(idx, &b[0]);
    t->remove(idx, &b[3]);
    assert_string_equal(route(t, idx, "x"), "q3");
    t->add(idx, &b[1]);
    assert_string_equal(route(t, idx, "x"), "q2,q3");
    t->remove(idx, &b[1]);
    t->remove(idx, &b[2]);
    assert_string_equal(route(t, idx, "x"), "");
    t->add(idx, &b[0]);
    assert_string_equal(route(t, idx, "x"), "q1");
    t->index_free(idx);
}

static void count_emit(void *ctx, struct xbinding *b)
{
    (void)b;
    (*(size_t *)ctx)++;
}

static void test_fanout_many(void **state)
{
    (void)state;
    enum { N = 5000 };
    const struct xtype *t = &xtype_fanout;
    void *idx = t->index_new();
    struct xbinding *b = calloc(N, sizeof *b);
    assert_non_null(b);
    for (int i = 0; i < N; i++) {
        b[i] = bind("q", "");
        t->add(idx, &b[i]);
    }
    size_t n = 0;
    t->route(idx, amqp_cstr(""), amqp_bytes_of(NULL, 0), count_emit, &n);
    assert_int_equal(n, N);
    for (int i = 0; i < N; i += 2)
        t->remove(idx, &b[i]);
    n = 0;
    t->route(idx, amqp_cstr(""), amqp_bytes_of(NULL, 0), count_emit, &n);
    assert_int_equal(n, N / 2);
    for (int i = 1; i < N; i += 2)
        t->remove(idx, &b[i]);
    n = 0;
    t->route(idx, amqp_cstr(""), amqp_bytes_of(NULL, 0), count_emit, &n);
    assert_int_equal(n, 0);
    t->index_free(idx);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_direct_exact),
        cmocka_unit_test(test_direct_binary_keys),
        cmocka_unit_test(test_direct_many_keys),
        cmocka_unit_test(test_direct_many_bindings_one_key),
        cmocka_unit_test(test_fanout),
        cmocka_unit_test(test_fanout_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
