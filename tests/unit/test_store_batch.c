/* Unit tests for storage/batch.c and storage/apply.c: building a batch (appending ops,
 * owning their fields) and applying it to a database made by storage/schema.c. Covers
 * what each op writes, that cancelled entries and messages without live entries are
 * skipped, that a range remove deletes exactly its range, that applying the same batch
 * twice leaves the state of applying it once (the writer's retry after an unknown
 * commit outcome), and that a batch whose write fails leaves nothing behind.
 * The store as the broker drives it is tested in test_store.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "server/log.h"
#include "storage/apply.h"
#include "storage/batch.h"
#include "storage/schema.h"
#include "store_helpers.h"

static const uint8_t PROPS[] = { 0x80, 0x00, 0x02, 0x00, 'x' }; /* any bytes, with a NUL */

struct fixture {
    char dir[32];
    sqlite3 *db;
    struct applier *ap;
    struct batch b;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    make_temp_dir(f->dir, sizeof f->dir);
    char path[64];
    snprintf(path, sizeof path, "%s/warren.db", f->dir);
    f->db = schema_open_writer(path);
    assert_non_null(f->db);
    f->ap = applier_new(f->db);
    assert_non_null(f->ap);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    batch_free(&f->b);
    applier_free(&f->ap);
    sqlite3_close(f->db);
    remove_tree(f->dir);
    free(f);
    return 0;
}

/* ---- building batches the way storage/store.c does ---------------------------------- */

static uint32_t add_message(struct batch *b, uint64_t id, const char *body, bool transient)
{
    struct op *o = batch_add(b, OP_MESSAGE);
    o->id = id;
    o->f[0] = amqp_cstr("ex");
    o->f[1] = amqp_cstr("rk");
    o->f[2] = amqp_bytes_of(PROPS, sizeof PROPS);
    o->f[3] = amqp_cstr(body);
    o->flag_a = transient;
    return b->n - 1;
}

static uint32_t add_entry(struct batch *b, uint64_t qid, uint64_t seq, uint32_t msg, bool shared, int64_t expires)
{
    b->ops[msg].live++;
    uint64_t id = b->ops[msg].id;
    struct op *o = batch_add(b, OP_ENTRY);
    o->qid = qid;
    o->seq = seq;
    o->id = id;
    o->msg_op = msg;
    o->flag_a = shared;
    o->expires = expires;
    return b->n - 1;
}

/* Removes entries seq..last_seq of qid, whose messages are id..last_id. */
static void add_remove(struct batch *b, uint64_t qid, uint64_t seq, uint64_t last_seq, uint64_t id,
                       uint64_t last_id, bool shared)
{
    struct op *o = batch_add(b, OP_REMOVE);
    o->qid = qid;
    o->seq = seq;
    o->last_seq = last_seq;
    o->id = id;
    o->last_id = last_id;
    o->flag_a = shared;
}

static void add_qid_seq(struct batch *b, enum op_kind kind, uint64_t qid, uint64_t seq)
{
    struct op *o = batch_add(b, kind);
    o->qid = qid;
    o->seq = seq;
}

static void add_queue(struct batch *b, uint64_t qid, const char *name, const char *args)
{
    struct op *o = batch_add(b, OP_QUEUE);
    o->qid = qid;
    o->f[0] = amqp_cstr("/");
    o->f[1] = amqp_cstr(name);
    o->f[2] = amqp_cstr(args);
}

static void add_exchange(struct batch *b, enum op_kind kind, const char *name)
{
    struct op *o = batch_add(b, kind);
    o->f[0] = amqp_cstr("/");
    o->f[1] = amqp_cstr(name);
    if (kind == OP_EXCHANGE) {
        o->f[2] = amqp_cstr("topic");
        o->f[3] = amqp_cstr("xargs");
        o->flag_b = true; /* internal */
    }
}

static void add_binding(struct batch *b, enum op_kind kind, const char *source, const char *dest,
                        bool dest_is_exchange, const char *rkey)
{
    struct op *o = batch_add(b, kind);
    o->f[0] = amqp_cstr("/");
    o->f[1] = amqp_cstr(source);
    o->f[2] = amqp_cstr(dest);
    o->f[3] = amqp_cstr(rkey);
    o->f[4] = amqp_cstr("");
    o->flag_a = dest_is_exchange;
}

/* Applies the fixture's batch, which must commit, and empties it. */
static void apply(struct fixture *f)
{
    char why[256] = "";
    int rc = applier_run(f->ap, &f->b, why, sizeof why);
    if (rc != SQLITE_OK)
        fail_msg("applier_run: %d %s", rc, why);
    batch_clear(&f->b);
}

static void assert_rows(struct fixture *f, const char *sql, const char *expected)
{
    assert_rows_on(f->db, sql, expected);
}

#define ENTRIES_SQL "SELECT queue_id, seq, msg_id, shared, transient, expires, size FROM entries ORDER BY 1, 2"
#define MESSAGE_IDS_SQL "SELECT id FROM messages ORDER BY id"

/* Everything in the database, one line per row. */
static const char *const DUMP_SQL[] = {
    "SELECT vhost, quote(name), type, auto_delete, internal, quote(args) FROM exchanges ORDER BY 1, 2",
    "SELECT id, vhost, quote(name), auto_delete, quote(args), delivered_seq FROM queues ORDER BY id",
    "SELECT vhost, quote(source), quote(dest), dest_is_exchange, quote(rkey), quote(args) FROM bindings "
    "ORDER BY 1, 2, 3, 4, 5",
    "SELECT id, quote(exchange), quote(rkey), quote(props), quote(body), transient FROM messages ORDER BY id",
    ENTRIES_SQL,
};

static char *dump(sqlite3 *db)
{
    size_t len = 0;
    char *out = NULL;
    for (size_t i = 0; i < sizeof DUMP_SQL / sizeof DUMP_SQL[0]; i++) {
        char *part = rows_text(db, DUMP_SQL[i]);
        out = realloc(out, len + strlen(part) + 4);
        assert_non_null(out);
        len += (size_t)sprintf(out + len, "%s--\n", part);
        free(part);
    }
    return out;
}

/* ---- batch.c ------------------------------------------------------------------------- */

static void test_batch_add_appends_zeroed_ops(void **state)
{
    struct fixture *f = *state;
    struct op *o = batch_add(&f->b, OP_ENTRY);
    assert_int_equal(o->kind, OP_ENTRY);
    assert_int_equal(o->msg_op, OP_NONE);
    assert_false(o->cancelled);
    assert_false(o->owned);
    assert_int_equal(o->live, 0);
    assert_int_equal(o->qid, 0);
    assert_null(o->cookie);
    o->id = 1;
    /* grow well past the first allocation: earlier ops keep their contents */
    for (uint64_t i = 2; i <= 1000; i++) {
        o = batch_add(&f->b, OP_REMOVE);
        o->id = i;
    }
    assert_int_equal(f->b.n, 1000);
    assert_true(f->b.cap >= 1000);
    assert_int_equal(f->b.ops[0].kind, OP_ENTRY);
    for (uint32_t i = 0; i < 1000; i++)
        assert_int_equal(f->b.ops[i].id, i + 1);

    f->b.bytes = 123;
    struct op *array = f->b.ops;
    uint32_t cap = f->b.cap;
    batch_clear(&f->b);
    assert_int_equal(f->b.n, 0);
    assert_int_equal(f->b.bytes, 0);
    assert_ptr_equal(f->b.ops, array); /* the array is kept for the next batch */
    assert_int_equal(f->b.cap, cap);

    batch_free(&f->b);
    assert_null(f->b.ops);
    assert_int_equal(f->b.cap, 0);
    assert_int_equal(f->b.n, 0);
}

static void test_own_fields_copies_and_terminates(void **state)
{
    struct fixture *f = *state;
    char name[] = "queue-name";
    const uint8_t args[] = { 'a', 0, 'b' };
    struct op *o = batch_add(&f->b, OP_QUEUE);
    o->f[0] = amqp_cstr("/");
    o->f[1] = amqp_cstr(name);
    o->f[2] = amqp_bytes_of(args, sizeof args);
    /* f[3] and f[4] stay empty */
    batch_own_fields(o);
    assert_true(o->owned);
    memset(name, 'X', sizeof name - 1); /* the caller's buffer may change afterwards */
    assert_ptr_not_equal(o->f[1].ptr, (const uint8_t *)name);
    assert_true(amqp_bytes_eq_cstr(o->f[1], "queue-name"));
    assert_int_equal(o->f[1].ptr[o->f[1].len], 0);
    assert_int_equal(o->f[2].len, 3);
    assert_memory_equal(o->f[2].ptr, args, 3);
    assert_int_equal(o->f[2].ptr[3], 0);
    for (int i = 3; i < OP_FIELDS; i++) {
        assert_non_null(o->f[i].ptr);
        assert_int_equal(o->f[i].len, 0);
        assert_int_equal(o->f[i].ptr[0], 0);
    }
    /* the copies are freed by batch_clear (a leak or double free shows under ASan) */
    batch_clear(&f->b);
    assert_int_equal(f->b.n, 0);
}

/* ---- apply.c ------------------------------------------------------------------------- */

static void test_apply_writes_each_kind(void **state)
{
    struct fixture *f = *state;
    struct batch *b = &f->b;
    add_exchange(b, OP_EXCHANGE, "events");
    add_queue(b, 4, "jobs", "qargs");
    add_binding(b, OP_BINDING, "events", "jobs", false, "a.#");
    uint32_t m = add_message(b, 10, "hello", false);
    add_entry(b, 4, 1, m, false, 1700000000123);
    uint32_t t = add_message(b, 11, "paged", true);
    add_entry(b, 4, 2, t, false, 0);
    add_qid_seq(b, OP_DELIVERED, 4, 1);
    apply(f);

    assert_rows(f, "SELECT vhost, name, type, auto_delete, internal, args FROM exchanges",
                "/ events topic 0 1 xargs\n");
    assert_rows(f, "SELECT id, vhost, name, auto_delete, args, delivered_seq FROM queues", "4 / jobs 0 qargs 1\n");
    assert_rows(f, "SELECT vhost, source, dest, dest_is_exchange, rkey, args FROM bindings",
                "/ events jobs 0 a.# \n");
    assert_rows(f, "SELECT id, exchange, rkey, hex(props), body, transient FROM messages ORDER BY id",
                "10 ex rk 8000020078 hello 0\n"
                "11 ex rk 8000020078 paged 1\n");
    /* an entry carries its message's transient flag and body size */
    assert_rows(f, ENTRIES_SQL,
                "4 1 10 0 0 1700000000123 5\n"
                "4 2 11 0 1 0 5\n");

    /* the delivered mark only moves up */
    add_qid_seq(b, OP_DELIVERED, 4, 7);
    add_qid_seq(b, OP_DELIVERED, 4, 3);
    apply(f);
    assert_rows(f, "SELECT delivered_seq FROM queues", "7\n");
}

static void test_apply_skips_cancelled_entries_and_dead_messages(void **state)
{
    struct fixture *f = *state;
    struct batch *b = &f->b;
    add_queue(b, 1, "q1", "");
    add_queue(b, 2, "q2", "");
    /* message 1: its only entry was cancelled (live back to 0): nothing is written */
    uint32_t m1 = add_message(b, 1, "one", false);
    uint32_t e1 = add_entry(b, 1, 1, m1, false, 0);
    b->ops[e1].cancelled = true;
    b->ops[m1].live--;
    /* message 2: one of its two entries cancelled: the message and the other entry stay */
    uint32_t m2 = add_message(b, 2, "two", false);
    uint32_t e2 = add_entry(b, 1, 2, m2, true, 0);
    add_entry(b, 2, 1, m2, true, 0);
    b->ops[e2].cancelled = true;
    b->ops[m2].live--;
    /* a cancelled op of another kind is skipped as well */
    add_qid_seq(b, OP_REMOVE_FROM, 2, 0);
    b->ops[b->n - 1].cancelled = true;
    apply(f);

    assert_rows(f, MESSAGE_IDS_SQL, "2\n");
    assert_rows(f, "SELECT queue_id, seq, msg_id, shared FROM entries ORDER BY 1, 2", "2 1 2 1\n");
}

static void test_range_remove_deletes_exactly_its_range(void **state)
{
    struct fixture *f = *state;
    struct batch *b = &f->b;
    add_queue(b, 1, "q1", "");
    add_queue(b, 2, "q2", "");
    for (uint64_t seq = 1; seq <= 6; seq++)
        add_entry(b, 1, seq, add_message(b, 10 + seq, "m", false), false, 0);
    add_entry(b, 2, 3, add_message(b, 20, "other", false), false, 0);
    apply(f);

    add_remove(b, 1, 2, 4, 12, 14, false); /* entries 2..4, messages 12..14 */
    apply(f);
    assert_rows(f, "SELECT queue_id, seq, msg_id FROM entries ORDER BY 1, 2",
                "1 1 11\n1 5 15\n1 6 16\n2 3 20\n");
    assert_rows(f, MESSAGE_IDS_SQL, "11\n15\n16\n20\n");

    /* a single remove of a shared entry keeps a message another queue holds */
    uint32_t m = add_message(b, 30, "shared", false);
    add_entry(b, 1, 7, m, true, 0);
    add_entry(b, 2, 4, m, true, 0);
    apply(f);
    add_remove(b, 1, 7, 7, 30, 30, true);
    apply(f);
    assert_rows(f, MESSAGE_IDS_SQL, "11\n15\n16\n20\n30\n");
    add_remove(b, 2, 4, 4, 30, 30, true);
    apply(f);
    assert_rows(f, MESSAGE_IDS_SQL, "11\n15\n16\n20\n");
    assert_rows(f, "SELECT queue_id, seq FROM entries ORDER BY 1, 2", "1 1\n1 5\n1 6\n2 3\n");
}

/* A batch with one op of every kind, on top of what setup_state() wrote. */
static void build_mixed_batch(struct batch *b)
{
    add_exchange(b, OP_EXCHANGE, "new-x");
    add_exchange(b, OP_EXCHANGE_DEL, "old-x");
    add_queue(b, 3, "new-q", "");
    add_binding(b, OP_BINDING, "new-x", "new-q", false, "k");
    add_binding(b, OP_BINDING_DEL, "keep-x", "q1", false, "gone");
    uint32_t m = add_message(b, 50, "fresh", false);
    add_entry(b, 1, 10, m, true, 0);
    add_entry(b, 3, 1, m, true, 99);
    uint32_t dead = add_message(b, 51, "acked before written", false);
    uint32_t e = add_entry(b, 3, 2, dead, false, 0);
    b->ops[e].cancelled = true;
    b->ops[dead].live--;
    add_remove(b, 1, 1, 1, 1, 1, false);       /* single */
    add_remove(b, 1, 2, 3, 2, 3, false);       /* range */
    add_remove(b, 1, 4, 4, 40, 40, true);      /* shared, still held by queue 2 */
    add_qid_seq(b, OP_REMOVE_FROM, 2, 2);      /* queue 2 keeps seq 1 */
    add_qid_seq(b, OP_DELIVERED, 1, 6);
    add_qid_seq(b, OP_QUEUE_DEL, 4, 0);
}

/* Entities and entries for build_mixed_batch() to change. */
static void setup_state(struct batch *b)
{
    add_exchange(b, OP_EXCHANGE, "old-x");
    add_exchange(b, OP_EXCHANGE, "keep-x");
    add_queue(b, 1, "q1", "");
    add_queue(b, 2, "q2", "");
    add_queue(b, 4, "doomed", "");
    add_binding(b, OP_BINDING, "old-x", "q1", false, "a");
    add_binding(b, OP_BINDING, "keep-x", "q1", false, "gone");
    add_binding(b, OP_BINDING, "keep-x", "q1", false, "stays");
    add_binding(b, OP_BINDING, "keep-x", "doomed", false, "d");
    for (uint64_t seq = 1; seq <= 3; seq++)
        add_entry(b, 1, seq, add_message(b, seq, "m", false), false, 0);
    uint32_t shared = add_message(b, 40, "shared", false);
    add_entry(b, 1, 4, shared, true, 0);
    add_entry(b, 2, 1, shared, true, 0);
    add_entry(b, 2, 2, add_message(b, 41, "q2 own", false), false, 0);
    add_entry(b, 4, 1, add_message(b, 42, "doomed own", false), false, 0);
}

static void test_batch_applied_twice_leaves_same_state(void **state)
{
    struct fixture *f = *state;
    setup_state(&f->b);
    apply(f);
    char *before = dump(f->db);

    /* once */
    build_mixed_batch(&f->b);
    apply(f);
    char *once = dump(f->db);
    assert_string_not_equal(once, before);
    assert_rows(f, "SELECT name FROM exchanges ORDER BY 1", "keep-x\nnew-x\n");
    assert_rows(f, "SELECT id, name, delivered_seq FROM queues ORDER BY 1", "1 q1 6\n2 q2 0\n3 new-q 0\n");
    assert_rows(f, "SELECT source, dest, rkey FROM bindings ORDER BY 1, 2, 3", "keep-x q1 stays\nnew-x new-q k\n");
    assert_rows(f, MESSAGE_IDS_SQL, "40\n50\n");
    assert_rows(f, "SELECT queue_id, seq, msg_id, shared, expires FROM entries ORDER BY 1, 2",
                "1 10 50 1 0\n2 1 40 1 0\n3 1 50 1 99\n");

    /* again, on top of the first application: as after a commit whose outcome was unknown */
    build_mixed_batch(&f->b);
    apply(f);
    char *twice = dump(f->db);
    assert_string_equal(twice, once);

    free(before);
    free(once);
    free(twice);
}

static void test_failed_batch_is_rolled_back_whole(void **state)
{
    struct fixture *f = *state;
    add_queue(&f->b, 1, "q1", "");
    apply(f);
    char *before = dump(f->db);
    /* a write late in the batch fails */
    assert_int_equal(schema_exec(f->db, "CREATE TRIGGER refuse BEFORE INSERT ON bindings "
                                        "BEGIN SELECT RAISE(ABORT, 'binding refused'); END"),
                     SQLITE_OK);
    struct batch *b = &f->b;
    add_entry(b, 1, 1, add_message(b, 1, "m", false), false, 0);
    add_exchange(b, OP_EXCHANGE, "x");
    add_binding(b, OP_BINDING, "x", "q1", false, "k");
    char why[256] = "";
    int rc = applier_run(f->ap, b, why, sizeof why);
    assert_int_not_equal(rc, SQLITE_OK);
    assert_int_equal(rc & 0xff, SQLITE_CONSTRAINT);
    assert_non_null(strstr(why, "write failed"));
    assert_non_null(strstr(why, "binding refused"));
    assert_true(sqlite3_get_autocommit(f->db)); /* no transaction left open */
    char *after = dump(f->db);
    assert_string_equal(after, before);

    /* once the cause is gone the same batch commits */
    assert_int_equal(schema_exec(f->db, "DROP TRIGGER refuse"), SQLITE_OK);
    apply(f);
    assert_rows(f, MESSAGE_IDS_SQL, "1\n");
    assert_rows(f, "SELECT source, dest FROM bindings", "x q1\n");
    free(before);
    free(after);
}

int main(void)
{
    log_set_level(WLOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_batch_add_appends_zeroed_ops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_own_fields_copies_and_terminates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_apply_writes_each_kind, setup, teardown),
        cmocka_unit_test_setup_teardown(test_apply_skips_cancelled_entries_and_dead_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_range_remove_deletes_exactly_its_range, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_applied_twice_leaves_same_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_batch_is_rolled_back_whole, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
