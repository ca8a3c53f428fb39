/* test_topic.c: the topic exchange index (exchanges/topic.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "exchanges/xpriv.h"
#include "exchanges/xtype.h"


#include "route_recorder.h"

/* Routes key and returns the sorted destinations joined by ',' (static buffer). */
static const char *route(void *idx, const char *key)
{
    static char out[4096];
    struct rec r = { .n = 0 };
    xtype_topic.route(idx, amqp_cstr(key), amqp_bytes_of(NULL, 0), rec_emit, &r);
    qsort(r.dest, r.n, sizeof r.dest[0], str_cmp);
    out[0] = '\0';
    for (size_t i = 0; i < r.n; i++) {
        if (i)
            strcat(out, ",");
        strcat(out, r.dest[i]);
    }
    return out;
}

static struct xbinding bind(const char *dest, const char *key)
{
    struct xbinding b = { (void *)dest, amqp_cstr(key), amqp_bytes_of(NULL, 0), NULL };
    return b;
}

static void test_find(void **state)
{
    (void)state;
    assert_ptr_equal(xtype_find(amqp_cstr("topic")), &xtype_topic);
    assert_null(xtype_topic.validate);
}

/* The three patterns of CONFORMANCE.md with exact destination sets. */
static void test_conformance_examples(void **state)
{
    (void)state;
    void *idx = xtype_topic.index_new();
    struct xbinding b[] = {
        bind("q1", "order.#"),
        bind("q2", "*.*.us"),
        bind("q3", "order.*.electronics"),
    };
    for (size_t i = 0; i < 3; i++)
        xtype_topic.add(idx, &b[i]);

    assert_string_equal(route(idx, "order"), "q1");
    assert_string_equal(route(idx, "order.new"), "q1");
    assert_string_equal(route(idx, "order.new.electronics"), "q1,q3");
    assert_string_equal(route(idx, "order.new.us"), "q1,q2");
    assert_string_equal(route(idx, "order.electronics"), "q1");
    assert_string_equal(route(idx, "order.new.electronics.us"), "q1");
    assert_string_equal(route(idx, "shipment.eu.us"), "q2");
    assert_string_equal(route(idx, "shipment.us"), "");
    assert_string_equal(route(idx, "a.b.c.us"), "");
    assert_string_equal(route(idx, "orders.new.electronics"), "");
    assert_string_equal(route(idx, "ORDER"), "");
    assert_string_equal(route(idx, ""), "");

    xtype_topic.index_free(idx);
}

static void test_hash_matches_everything(void **state)
{
    (void)state;
    void *idx = xtype_topic.index_new();
    struct xbinding b = bind("all", "#");
    xtype_topic.add(idx, &b);
    assert_string_equal(route(idx, ""), "all");
    assert_string_equal(route(idx, "a"), "all");
    assert_string_equal(route(idx, "a.b.c.d"), "all");
    assert_string_equal(route(idx, "."), "all");
    assert_string_equal(route(idx, "..."), "all");
    assert_string_equal(route(idx, "*"), "all");
    xtype_topic.index_free(idx);
}

static void test_star_is_one_word(void **state)
{
    (void)state;
    void *idx = xtype_topic.index_new();
    struct xbinding b[] = { bind("s", "*"), bind("ss", "*.*"), bind("sa", "*.a") };
    for (size_t i = 0; i < 3; i++)
        xtype_topic.add(idx, &b[i]);
    assert_string_equal(route(idx, ""), "");          /* no words */
    assert_string_equal(route(idx, "x"), "s");
    assert_string_equal(route(idx, "x.y"), "ss");
    assert_string_equal(route(idx, "x.a"), "sa,ss");
    assert_string_equal(route(idx, "x.y.z"), "");
    assert_string_equal(route(idx, "."), "ss");       /* two empty words */
    assert_string_equal(route(idx, ".a"), "sa,ss");
    xtype_topic.index_free(idx);
}

static void test_empty_words(void **state)
{
    (void)state;
    void *idx = xtype_topic.index_new();
    struct xbinding b[] = {
        bind("a*b", "a.*.b"), bind("ab", "a.b"), bind("a#b", "a.#.b"),
        bind("a..b", "a..b"), bind("a.", "a."), bind("a.*", "a.*"), bind("a.#", "a.#"),
        bind("empty", ""), bind(".", "."),
    };
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++)
        xtype_topic.add(idx, &b[i]);
    assert_string_equal(route(idx, "a..b"), "a#b,a*b,a.#,a..b");
    assert_string_equal(route(idx, "a.b"), "a#b,a.#,a.*,ab");
    assert_string_equal(route(idx, "a."), "a.,a.#,a.*");
    assert_string_equal(route(idx, "a"), "a.#");
    assert_string_equal(route(idx, ""), "empty");
    assert_string_equal(route(idx, "."), ".");
    assert_string_equal(route(idx, "a.x.y.b"), "a#b,a.#");
    assert_string_equal(route(idx, "a.x.y.c"), "a.#");
    assert_string_equal(route(idx, "a.b.b"), "a#b,a*b,a.#");
    xtype_topic.index_free(idx);
}

static void test_hash_in_middle_and_ends(void **state)
{
    (void)state;
    void *idx = xtype_topic.index_new();
    struct xbinding b[] = {
        bind("h.x", "#.x"), bind("x.h", "x.#"), bind("h.x.h", "#.x.#"),
        bind("s.h", "*.#"), bind("h.s", "#.*"), bind("hh", "#.#"),
    };
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++)
        xtype_topic.add(idx, &b[i]);
    assert_string_equal(route(idx, ""), "hh");
    assert_string_equal(route(idx, "x"), "h.s,h.x,h.x.h,hh,s.h,x.h");
    assert_string_equal(route(idx, "y"), "h.s,hh,s.h");
    assert_string_equal(route(idx, "y.x"), "h.s,h.x,h.x.h,hh,s.h");
    assert_string_equal(route(idx, "x.y"), "h.s,h.x.h,hh,s.h,x.h");
    assert_string_equal(route(idx, "y.x.y"), "h.s,h.x.h,hh,s.h");
    assert_string_equal(route(idx, "x.x"), "h.s,h.x,h.x.h,hh,s.h,x.h");
    xtype_topic.index_free(idx);
}

/* A '*' or '#' in a routing key is an ordinary word there. */
static void test_wildcards_in_routing_key_are_literal(void **state)
{
    (void)state;
    void *idx = xtype_topic.index_new();
    struct xbinding b[] = { bind("lit", "a.b"), bind("star", "a.*") };
    xtype_topic.add(idx, &b[0]);
    xtype_topic.add(idx, &b[1]);
    assert_string_equal(route(idx, "a.*"), "star");
    assert_string_equal(route(idx, "a.#"), "star");
    assert_string_equal(route(idx, "a.b"), "lit,star");
    xtype_topic.index_free(idx);
}

/* Binding keys and routing keys are bytes: NUL and high bytes are word characters. */
static void test_binary_words(void **state)
{
    (void)state;
    void *idx = xtype_topic.index_new();
    static const uint8_t k1[] = { 'a', 0, '.', 0xff };
    struct xbinding b = { (void *)"bin", amqp_bytes_of(k1, sizeof k1), { NULL, 0 }, NULL };
    xtype_topic.add(idx, &b);
    struct rec r = { .n = 0 };
    xtype_topic.route(idx, amqp_bytes_of(k1, sizeof k1), amqp_bytes_of(NULL, 0), rec_emit, &r);
    assert_int_equal(r.n, 1);
    r.n = 0;
    xtype_topic.route(idx, amqp_bytes_of(k1, 1), amqp_bytes_of(NULL, 0), rec_emit, &r);
    assert_int_equal(r.n, 0);
    xtype_topic.remove(idx, &b);
    xtype_topic.index_free(idx);
}

static void test_add_remove_readd_and_prune(void **state)
{
    (void)state;
    void *idx = xtype_topic.index_new();
    assert_int_equal(topic_node_count(idx), 1);
    struct xbinding b1 = bind("q1", "a.b.c"), b2 = bind("q2", "a.b.c"), b3 = bind("q3", "a.#");
    xtype_topic.add(idx, &b1);
    assert_int_equal(topic_node_count(idx), 4);      /* root, a, b, c */
    xtype_topic.add(idx, &b2);                        /* same key shares the node */
    assert_int_equal(topic_node_count(idx), 4);
    xtype_topic.add(idx, &b3);
    assert_int_equal(topic_node_count(idx), 5);
    assert_string_equal(route(idx, "a.b.c"), "q1,q2,q3");

    xtype_topic.remove(idx, &b1);
    assert_string_equal(route(idx, "a.b.c"), "q2,q3");
    assert_int_equal(topic_node_count(idx), 5);
    xtype_topic.remove(idx, &b2);
    assert_string_equal(route(idx, "a.b.c"), "q3");
    assert_int_equal(topic_node_count(idx), 3);      /* root, a, # */
    xtype_topic.add(idx, &b1);
    assert_string_equal(route(idx, "a.b.c"), "q1,q3");
    xtype_topic.remove(idx, &b3);
    assert_string_equal(route(idx, "a"), "");
    assert_string_equal(route(idx, "a.b.c"), "q1");
    xtype_topic.remove(idx, &b1);
    assert_int_equal(topic_node_count(idx), 1);
    assert_string_equal(route(idx, "a.b.c"), "");

    /* Removing a binding keeps its siblings' positions right. */
    struct xbinding many[10];
    char names[10][16];
    for (int i = 0; i < 10; i++) {
        snprintf(names[i], sizeof names[i], "m%d", i);
        many[i] = bind(names[i], "x.*");
        xtype_topic.add(idx, &many[i]);
    }
    xtype_topic.remove(idx, &many[0]);
    xtype_topic.remove(idx, &many[5]);
    xtype_topic.remove(idx, &many[9]);
    assert_string_equal(route(idx, "x.y"), "m1,m2,m3,m4,m6,m7,m8");
    for (int i = 1; i < 9; i++)
        if (i != 5)
            xtype_topic.remove(idx, &many[i]);
    assert_int_equal(topic_node_count(idx), 1);
    xtype_topic.index_free(idx);
}

/* What is promised about duplicates: one emit per binding per publish, even when a
   pattern matches a key in several ways; distinct bindings to one destination are
   each emitted. */
static void test_duplicates(void **state)
{
    (void)state;
    void *idx = xtype_topic.index_new();
    struct xbinding b[] = {
        bind("q1", "a.*"), bind("q1", "#.b"),      /* same dest, two patterns */
        bind("q2", "a.b"), bind("q3", "a.b"),      /* same key, two dests */
        bind("q4", "#.a.#"),                       /* matches a.a in two ways */
    };
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++)
        xtype_topic.add(idx, &b[i]);
    assert_string_equal(route(idx, "a.b"), "q1,q1,q2,q3,q4");
    assert_string_equal(route(idx, "a.a"), "q1,q4");
    assert_string_equal(route(idx, "a.a.a.a"), "q4");
    xtype_topic.index_free(idx);
}

/* Consecutive '#' collapse: "#.#.#.#" is one '#' node and means "#". */
static void test_hash_runs_collapse(void **state)
{
    (void)state;
    void *idx = xtype_topic.index_new();
    struct xbinding b1 = bind("h4", "#.#.#.#"), b2 = bind("h1", "#");
    xtype_topic.add(idx, &b1);
    assert_int_equal(topic_node_count(idx), 2);
    xtype_topic.add(idx, &b2);
    assert_int_equal(topic_node_count(idx), 2);
    assert_string_equal(route(idx, ""), "h1,h4");
    assert_string_equal(route(idx, "a.b.c"), "h1,h4");
    xtype_topic.remove(idx, &b1);
    xtype_topic.remove(idx, &b2);
    assert_int_equal(topic_node_count(idx), 1);
    xtype_topic.index_free(idx);
}

/* Patterns that make a backtracking matcher exponential must cost at most
   (words + 1) x nodes node visits here. */
static void test_no_exponential_blowup(void **state)
{
    (void)state;
    void *idx = xtype_topic.index_new();
    static char key[400], pat1[200], pat2[200];
    size_t o = 0;
    for (int i = 0; i < 120; i++)
        o += (size_t)snprintf(key + o, sizeof key - o, i ? ".a" : "a");
    strcpy(pat1, "#");
    for (int i = 0; i < 40; i++)
        strcat(pat1, ".#");
    strcat(pat1, ".b");                                  /* #.#.#....#.b: no match */
    strcpy(pat2, "#");
    for (int i = 0; i < 20; i++)
        strcat(pat2, ".a.#");                            /* #.a.#.a.# ... : matches */
    struct xbinding b1 = bind("p1", pat1), b2 = bind("p2", pat2);
    struct xbinding b3 = bind("p3", "#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.c");
    xtype_topic.add(idx, &b1);
    xtype_topic.add(idx, &b2);
    xtype_topic.add(idx, &b3);
    size_t nodes = topic_node_count(idx);
    assert_true(nodes < 50);

    assert_string_equal(route(idx, key), "p2");
    uint64_t steps = topic_last_route_steps(idx);
    assert_true(steps > 0);
    assert_true(steps <= (uint64_t)(120 + 1) * nodes);

    /* key of 120 'a' words then 'b': p1 matches */
    strcat(key, ".b");
    assert_string_equal(route(idx, key), "p1,p2");
    assert_true(topic_last_route_steps(idx) <= (uint64_t)(121 + 1) * nodes);
    xtype_topic.index_free(idx);
}

/* Thousands of bindings: a publish visits only the few nodes on its paths. */
static void test_many_bindings_route_cost(void **state)
{
    (void)state;
    enum { N = 5000 };
    void *idx = xtype_topic.index_new();
    struct xbinding *b = calloc(N, sizeof *b);
    char (*keys)[32] = calloc(N, sizeof *keys);
    char (*names)[16] = calloc(N, sizeof *names);
    assert_non_null(b);
    assert_non_null(keys);
    assert_non_null(names);
    for (int i = 0; i < N; i++) {
        snprintf(keys[i], sizeof keys[i], "region%d.*.k%d", i % 100, i);
        snprintf(names[i], sizeof names[i], "q%d", i);
        b[i] = bind(names[i], keys[i]);
        xtype_topic.add(idx, &b[i]);
    }
    assert_string_equal(route(idx, "region42.x.k4242"), "q4242");
    assert_true(topic_last_route_steps(idx) <= 5);
    assert_string_equal(route(idx, "region43.x.k4242"), "");
    assert_true(topic_last_route_steps(idx) <= 5);
    assert_string_equal(route(idx, "nowhere.x.y"), "");
    assert_true(topic_last_route_steps(idx) <= 2);

    for (int i = 0; i < N; i += 2)
        xtype_topic.remove(idx, &b[i]);
    assert_string_equal(route(idx, "region42.x.k4242"), "");
    assert_string_equal(route(idx, "region43.x.k4243"), "q4243");
    for (int i = 1; i < N; i += 2)
        xtype_topic.remove(idx, &b[i]);
    assert_int_equal(topic_node_count(idx), 1);
    xtype_topic.index_free(idx);
    free(b);
    free(keys);
    free(names);
}

/* emit may route through the same index again (exchange-to-exchange loops). */
struct nested {
    void *idx;
    struct rec inner;
    size_t outer;
};

static void nested_emit(void *ctx, struct xbinding *b)
{
    struct nested *n = ctx;
    (void)b;
    n->outer++;
    xtype_topic.route(n->idx, amqp_cstr("x.y"), amqp_bytes_of(NULL, 0), rec_emit, &n->inner);
}

static void test_reentrant_route(void **state)
{
    (void)state;
    void *idx = xtype_topic.index_new();
    struct xbinding b[] = { bind("q1", "x.*"), bind("q2", "#"), bind("q3", "a.b") };
    for (size_t i = 0; i < 3; i++)
        xtype_topic.add(idx, &b[i]);
    struct nested n = { .idx = idx };
    xtype_topic.route(idx, amqp_cstr("a.b"), amqp_bytes_of(NULL, 0), nested_emit, &n);
    assert_int_equal(n.outer, 2);        /* q2, q3 */
    assert_int_equal(n.inner.n, 4);      /* q1, q2 twice */
    xtype_topic.index_free(idx);
}

/* Freeing an index that still holds bindings frees its nodes, not the bindings. */
static void test_free_nonempty(void **state)
{
    (void)state;
    void *idx = xtype_topic.index_new();
    struct xbinding b[] = { bind("q1", "a.b.c.d"), bind("q2", "a.*.#"), bind("q3", "#.z") };
    for (size_t i = 0; i < 3; i++)
        xtype_topic.add(idx, &b[i]);
    xtype_topic.index_free(idx);
    assert_string_equal(b[0].dest, "q1");
    xtype_topic.index_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_find),
        cmocka_unit_test(test_conformance_examples),
        cmocka_unit_test(test_hash_matches_everything),
        cmocka_unit_test(test_star_is_one_word),
        cmocka_unit_test(test_empty_words),
        cmocka_unit_test(test_hash_in_middle_and_ends),
        cmocka_unit_test(test_wildcards_in_routing_key_are_literal),
        cmocka_unit_test(test_binary_words),
        cmocka_unit_test(test_add_remove_readd_and_prune),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_hash_runs_collapse),
        cmocka_unit_test(test_no_exponential_blowup),
        cmocka_unit_test(test_many_bindings_route_cost),
        cmocka_unit_test(test_reentrant_route),
        cmocka_unit_test(test_free_nonempty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
