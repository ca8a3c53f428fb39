/* Unit tests for the store (storage/store.h), driven as server/persist.c and
 * server/qstore.c drive it: open a fresh data directory, write entities, messages and
 * entries into batches, hand them to the writer (store_submit), wait on the notification
 * fd and reap, close, reopen and check that recovery and store_read_entries give back
 * exactly what was committed. Covers: entities and their deletes, message fields, entry
 * order, delivered marks, expiry and size totals, removes (single, merged into ranges,
 * remove-from, queue delete), shared messages, transient messages, cancellation of
 * entries in the open batch, group commit and the callbacks, close committing what is
 * pending; refusals (lock held, not a database, another application's database, older or
 * newer schema, corrupt file); disk-full and I/O-error retries through storage/faultvfs.c.
 * What a batch writes in SQL terms is tested in test_store_batch.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "server/log.h"
#include "storage/batch.h" /* sizeof(struct op): store_backlog() counts ops */
#include "storage/store.h"
#include "store_helpers.h"

/* Bound on any wait for the writer thread; a healthy commit takes milliseconds, a failed
 * one is retried every 250 ms. */
#define WAIT_MS 10000
/* Ends the whole binary (exit 1) if a call that cannot be given a bound of its own
 * (store_sync, store_close) ever hangs. */
#define WATCHDOG_S 30

#define OP_SIZE sizeof(struct op)

static const uint8_t PROPS[] = { 0x98, 0x00, 0x0a, 't', 'e', 'x', 't', '/', 'p', 'l', 'a', 'i', 'n', 0x02 };
static const uint8_t ARGS_A[] = { 0, 0, 0, 9, 5, 'x', '-', 't', 't', 'l', 'I', 0, 0, 0, 7 };
static const uint8_t ARGS_B[] = { 'b', 0, 'b' };

/* ---- what the store reports --------------------------------------------------------- */

#define MAX_EVENTS 32

struct events {
    struct store *s;              /* for what callbacks look at */
    uint64_t committed[MAX_EVENTS];
    size_t released_at[MAX_EVENTS];  /* releases seen by the time of committed[i] */
    size_t backlog_at[MAX_EVENTS];   /* store_backlog() at committed[i] */
    size_t ncommitted;
    size_t released;
    bool failing;
    int failing_on, failing_off;
    char why[256];
};

/* A message's body lives in a heap block that is its cookie: release frees it, so ASan
 * reports a read of the body after release and a second release as a double free. */
struct held_body {
    size_t len;
    uint8_t bytes[];
};

static void on_committed(void *arg, uint64_t batch)
{
    struct events *ev = arg;
    if (ev->ncommitted < MAX_EVENTS) {
        ev->committed[ev->ncommitted] = batch;
        ev->released_at[ev->ncommitted] = ev->released;
        ev->backlog_at[ev->ncommitted] = store_backlog(ev->s);
    }
    ev->ncommitted++;
}

static void on_failing(void *arg, bool failing, const char *why)
{
    struct events *ev = arg;
    ev->failing = failing;
    if (failing) {
        ev->failing_on++;
        snprintf(ev->why, sizeof ev->why, "%s", why);
    } else {
        ev->failing_off++;
    }
}

static void on_release(void *arg, void *cookie)
{
    struct events *ev = arg;
    ev->released++;
    free(cookie);
}

/* ---- what recovery reports ---------------------------------------------------------- */

#define MAX_RECOVERED 16

struct blob {
    uint8_t bytes[64];
    size_t len;
};

struct rec_exchange {
    char vhost[16];
    struct blob name, type, args;
    bool auto_delete, internal;
};

struct rec_queue {
    struct store_queue q; /* q.vhost, q.name and q.args are not kept: see below */
    char vhost[16];
    struct blob name, args;
};

struct rec_binding {
    char vhost[16];
    struct blob source, dest, rkey, args;
    bool dest_is_exchange;
};

struct recovered {
    struct rec_exchange x[MAX_RECOVERED];
    struct rec_queue q[MAX_RECOVERED];
    struct rec_binding b[MAX_RECOVERED];
    size_t nx, nq, nb;
    uint64_t max_message_id, max_queue_id;
};

static void blob_set(struct blob *b, amqp_bytes v)
{
    assert_true(v.len <= sizeof b->bytes);
    if (v.len)
        memcpy(b->bytes, v.ptr, v.len);
    b->len = v.len;
}

static bool blob_is(const struct blob *b, const void *p, size_t n)
{
    return b->len == n && (n == 0 || memcmp(b->bytes, p, n) == 0);
}

static bool blob_is_str(const struct blob *b, const char *s) { return blob_is(b, s, strlen(s)); }

static void copy_vhost(char *out, size_t size, const char *vhost)
{
    assert_true(strlen(vhost) < size);
    strcpy(out, vhost);
}

static void recover_exchange(void *arg, const struct store_exchange *x)
{
    struct recovered *r = arg;
    assert_true(r->nx < MAX_RECOVERED);
    struct rec_exchange *o = &r->x[r->nx++];
    copy_vhost(o->vhost, sizeof o->vhost, x->vhost);
    blob_set(&o->name, x->name);
    blob_set(&o->type, x->type);
    blob_set(&o->args, x->args);
    o->auto_delete = x->auto_delete;
    o->internal = x->internal;
}

static void recover_queue(void *arg, const struct store_queue *q)
{
    struct recovered *r = arg;
    assert_true(r->nq < MAX_RECOVERED);
    struct rec_queue *o = &r->q[r->nq++];
    o->q = *q;
    o->q.vhost = NULL;
    o->q.name = o->q.args = amqp_bytes_of(NULL, 0);
    copy_vhost(o->vhost, sizeof o->vhost, q->vhost);
    blob_set(&o->name, q->name);
    blob_set(&o->args, q->args);
}

static void recover_binding(void *arg, const struct store_binding *b)
{
    struct recovered *r = arg;
    assert_true(r->nb < MAX_RECOVERED);
    struct rec_binding *o = &r->b[r->nb++];
    copy_vhost(o->vhost, sizeof o->vhost, b->vhost);
    blob_set(&o->source, b->source);
    blob_set(&o->dest, b->dest);
    blob_set(&o->rkey, b->rkey);
    blob_set(&o->args, b->args);
    o->dest_is_exchange = b->dest_is_exchange;
}

/* ---- the fixture: a fresh data directory and the store open on it ------------------- */

struct fixture {
    char dir[32];
    char db_path[64];
    struct store *s;
    struct events ev;
    struct recovered rec;
    int saved_stderr;     /* >= 0 while stderr goes to log_path */
    char log_path[64];
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    make_temp_dir(f->dir, sizeof f->dir);
    snprintf(f->db_path, sizeof f->db_path, "%s/warren.db", f->dir);
    f->saved_stderr = -1;
    *state = f;
    return 0;
}

/* Starts sending stderr (where the store logs) to a file in the data directory. */
static void capture_stderr(struct fixture *f)
{
    snprintf(f->log_path, sizeof f->log_path, "%s/stderr.log", f->dir);
    fflush(stderr);
    f->saved_stderr = dup(STDERR_FILENO);
    assert_true(f->saved_stderr >= 0);
    int fd = open(f->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    close(fd);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, 0, SEEK_END), 0);
    long n = ftell(fp);
    assert_true(n >= 0);
    rewind(fp);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
    buf[n] = 0;
    fclose(fp);
    if (len)
        *len = (size_t)n;
    return buf;
}

/* Puts stderr back and returns what was logged meanwhile (the caller frees it). */
static char *end_capture(struct fixture *f)
{
    fflush(stderr);
    dup2(f->saved_stderr, STDERR_FILENO);
    close(f->saved_stderr);
    f->saved_stderr = -1;
    return read_file(f->log_path, NULL);
}

static void clear_fault(void);

static int teardown(void **state)
{
    struct fixture *f = *state;
    clear_fault(); /* a failed fault test must not leave writes failing */
    log_set_level(WLOG_WARN);
    if (f->saved_stderr >= 0) { /* a check failed while capturing: show what was logged */
        char *log = end_capture(f);
        fputs(log, stderr);
        free(log);
    }
    store_close(&f->s);
    remove_tree(f->dir);
    free(f);
    return 0;
}

/* Opens the store on the fixture's directory and runs recovery into f->rec. */
static void open_store(struct fixture *f)
{
    assert_null(f->s);
    struct store_callbacks cb = { on_committed, on_failing, on_release, &f->ev };
    memset(&f->ev, 0, sizeof f->ev);
    f->s = store_open(f->dir, &cb);
    assert_non_null(f->s);
    f->ev.s = f->s;
    memset(&f->rec, 0, sizeof f->rec);
    struct store_recovery r = { recover_exchange, recover_queue, recover_binding, &f->rec };
    assert_int_equal(store_recover(f->s, &r, &f->rec.max_message_id, &f->rec.max_queue_id), 0);
}

static void close_store(struct fixture *f)
{
    assert_non_null(f->s);
    store_close(&f->s);
    assert_null(f->s);
}

static void reopen(struct fixture *f)
{
    close_store(f);
    open_store(f);
}

/* store_open on the fixture's directory, which must refuse; returns what it logged. */
static char *open_refused(struct fixture *f)
{
    struct store_callbacks cb = { on_committed, on_failing, on_release, &f->ev };
    capture_stderr(f);
    struct store *s = store_open(f->dir, &cb);
    char *log = end_capture(f);
    if (s) {
        store_close(&s);
        fail_msg("store_open accepted %s", f->dir);
    }
    return log;
}

/* ---- the loop side: submit, wait for the writer, reap -------------------------------- */

static struct timespec deadline_in(int ms)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

static int ms_until(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long ms = (deadline->tv_sec - now.tv_sec) * 1000L + (deadline->tv_nsec - now.tv_nsec) / 1000000L;
    return ms > 0 ? (int)ms : 0;
}

/* Waits (until deadline at most) for the writer to signal, then reaps, as the broker's
 * event loop does. Fails the test if nothing comes. */
static void wait_and_reap(struct fixture *f, const struct timespec *deadline)
{
    struct pollfd p = { .fd = store_notify_fd(f->s), .events = POLLIN };
    int n;
    do
        n = poll(&p, 1, ms_until(deadline));
    while (n < 0 && errno == EINTR);
    if (n != 1)
        fail_msg("the writer did not report within %d ms", WAIT_MS);
    store_reap(f->s);
}

/* Hands everything written so far to the writer and runs the loop side until it is
 * committed. */
static void commit_all(struct fixture *f)
{
    uint64_t target = store_pending_batch(f->s);
    struct timespec deadline = deadline_in(WAIT_MS);
    store_submit(f->s);
    while (store_committed(f->s) < target)
        wait_and_reap(f, &deadline);
}

/* Runs the loop side until the failing callback has said `failing`. */
static void wait_failing(struct fixture *f, bool failing)
{
    struct timespec deadline = deadline_in(WAIT_MS);
    while (f->ev.failing != failing)
        wait_and_reap(f, &deadline);
}

/* ---- writing ------------------------------------------------------------------------ */

static void put_queue(struct fixture *f, uint64_t qid, const char *name)
{
    struct store_queue q = { .id = qid, .vhost = "/", .name = amqp_cstr(name) };
    store_put_queue(f->s, &q);
}

static void put_exchange(struct fixture *f, const char *name)
{
    struct store_exchange x = { .vhost = "/", .name = amqp_cstr(name), .type = amqp_cstr("direct") };
    store_put_exchange(f->s, &x);
}

static struct store_binding binding(const char *source, const char *dest, bool dest_is_exchange, const char *rkey,
                                    amqp_bytes args)
{
    struct store_binding b = {
        .vhost = "/", .source = amqp_cstr(source), .dest = amqp_cstr(dest),
        .dest_is_exchange = dest_is_exchange, .rkey = amqp_cstr(rkey), .args = args,
    };
    return b;
}

/* Puts a message whose body is a copy of body/len held until release. */
static uint32_t put_message_full(struct fixture *f, uint64_t id, const char *exchange, const char *rkey,
                                 amqp_bytes props, const void *body, size_t len, bool transient)
{
    struct held_body *h = malloc(sizeof *h + (len ? len : 1));
    assert_non_null(h);
    h->len = len;
    if (len)
        memcpy(h->bytes, body, len);
    return store_put_message(f->s, id, amqp_cstr(exchange), amqp_cstr(rkey), props, amqp_bytes_of(h->bytes, len),
                             transient, h);
}

/* The body every plain test message gets: "message NNNN" (all the same length). */
static void body_of(uint64_t id, char out[32]) { snprintf(out, 32, "message %04llu", (unsigned long long)id); }
#define BODY_LEN 12

static uint32_t put_message(struct fixture *f, uint64_t id, bool transient)
{
    char body[32];
    body_of(id, body);
    return put_message_full(f, id, "amq.direct", "key", amqp_bytes_of(PROPS, sizeof PROPS), body, strlen(body),
                            transient);
}

/* Puts message id with one unshared entry qid/seq. */
static uint32_t put_one(struct fixture *f, uint64_t qid, uint64_t seq, uint64_t id)
{
    return store_put_entry(f->s, qid, seq, put_message(f, id, false), false, 0);
}

/* Puts messages first_id.. as entries first_seq.. of qid, n of them, unshared. */
static void put_run(struct fixture *f, uint64_t qid, uint64_t first_seq, uint64_t first_id, int n)
{
    for (int i = 0; i < n; i++)
        put_one(f, qid, first_seq + (uint64_t)i, first_id + (uint64_t)i);
}

/* ---- reading back ------------------------------------------------------------------- */

#define MAX_READ 64

struct read_entry {
    uint64_t seq, msg_id;
    int64_t expires;
    bool shared;
    struct blob exchange, rkey, props;
    uint8_t *body;
    size_t body_len;
};

struct read_back {
    struct read_entry e[MAX_READ];
    size_t n;
    size_t stop_after; /* the callback returns false at this entry (0: never) */
};

static bool collect(void *arg, const struct store_entry *e)
{
    struct read_back *r = arg;
    assert_true(r->n < MAX_READ);
    struct read_entry *o = &r->e[r->n++];
    o->seq = e->seq;
    o->msg_id = e->msg_id;
    o->expires = e->expires;
    o->shared = e->shared;
    blob_set(&o->exchange, e->exchange);
    blob_set(&o->rkey, e->rkey);
    blob_set(&o->props, e->props);
    o->body_len = e->body.len;
    o->body = malloc(e->body.len ? e->body.len : 1);
    assert_non_null(o->body);
    if (e->body.len)
        memcpy(o->body, e->body.ptr, e->body.len);
    return r->n != r->stop_after;
}

static void read_back_free(struct read_back *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->e[i].body);
    r->n = 0;
}

/* Checks that qid holds exactly the entries in `expected`, in order, written "seq:id"
 * separated by spaces (for example "1:1 3:7"), each with the body body_of(id). */
static void assert_entries(struct fixture *f, uint64_t qid, const char *expected)
{
    struct read_back r = { .n = 0 };
    long n = store_read_entries(f->s, qid, 0, MAX_READ, collect, &r);
    assert_true(n >= 0);
    char got[MAX_READ * 24] = "";
    size_t len = 0;
    for (size_t i = 0; i < r.n; i++) {
        len += (size_t)snprintf(got + len, sizeof got - len, "%s%llu:%llu", i ? " " : "",
                                (unsigned long long)r.e[i].seq, (unsigned long long)r.e[i].msg_id);
        char body[32];
        body_of(r.e[i].msg_id, body);
        if (r.e[i].body_len != strlen(body) || memcmp(r.e[i].body, body, strlen(body)) != 0)
            fail_msg("queue %llu: message %llu has a wrong body", (unsigned long long)qid,
                     (unsigned long long)r.e[i].msg_id);
    }
    read_back_free(&r);
    if (strcmp(got, expected) != 0)
        fail_msg("queue %llu holds \"%s\", expected \"%s\"", (unsigned long long)qid, got, expected);
}

/* Checks rows of the database, read through a connection of its own. */
static void assert_db_rows(struct fixture *f, const char *sql, const char *expected)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(f->db_path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    assert_rows_on(db, sql, expected);
    sqlite3_close(db);
}

#define MESSAGE_IDS_SQL "SELECT id FROM messages ORDER BY id"

static const struct rec_queue *recovered_queue(const struct fixture *f, uint64_t qid)
{
    for (size_t i = 0; i < f->rec.nq; i++) {
        if (f->rec.q[i].q.id == qid)
            return &f->rec.q[i];
    }
    return NULL;
}

/* The recovered queue qid, which must exist. */
static const struct store_queue *queue_after(const struct fixture *f, uint64_t qid)
{
    const struct rec_queue *q = recovered_queue(f, qid);
    if (!q)
        fail_msg("queue %llu was not recovered", (unsigned long long)qid);
    return &q->q;
}

static const struct rec_exchange *recovered_exchange(const struct fixture *f, const char *vhost, const char *name)
{
    for (size_t i = 0; i < f->rec.nx; i++) {
        if (strcmp(f->rec.x[i].vhost, vhost) == 0 && blob_is_str(&f->rec.x[i].name, name))
            return &f->rec.x[i];
    }
    return NULL;
}

static bool binding_recovered(const struct fixture *f, const struct store_binding *b)
{
    for (size_t i = 0; i < f->rec.nb; i++) {
        const struct rec_binding *r = &f->rec.b[i];
        if (strcmp(r->vhost, b->vhost) == 0 && blob_is(&r->source, b->source.ptr, b->source.len) &&
            blob_is(&r->dest, b->dest.ptr, b->dest.len) && r->dest_is_exchange == b->dest_is_exchange &&
            blob_is(&r->rkey, b->rkey.ptr, b->rkey.len) && blob_is(&r->args, b->args.ptr, b->args.len))
            return true;
    }
    return false;
}

/* ---- a fresh store, batches and callbacks ------------------------------------------- */

static void test_new_store_is_empty_and_counts_batches(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    assert_int_equal(f->rec.nx + f->rec.nq + f->rec.nb, 0);
    assert_int_equal(f->rec.max_message_id, 0);
    assert_int_equal(f->rec.max_queue_id, 0);
    assert_int_equal(store_open_batch(f->s), 1);
    assert_int_equal(store_committed(f->s), 0);
    assert_int_equal(store_pending_batch(f->s), 0);
    assert_int_equal(store_backlog(f->s), 0);
    assert_false(store_failing(f->s));

    /* the lock file names this process */
    char path[64], want[32];
    snprintf(path, sizeof path, "%s/warren.lock", f->dir);
    snprintf(want, sizeof want, "%ld\n", (long)getpid());
    char *lock = read_file(path, NULL);
    assert_string_equal(lock, want);
    free(lock);

    put_queue(f, 1, "q");
    assert_int_equal(store_pending_batch(f->s), 1);
    assert_int_equal(store_backlog(f->s), OP_SIZE);
    store_submit(f->s);
    assert_int_equal(store_open_batch(f->s), 2);
    assert_int_equal(store_pending_batch(f->s), 1); /* with the writer now */
    assert_int_equal(store_backlog(f->s), 0);
    store_submit(f->s); /* nothing open: nothing handed */
    assert_int_equal(store_open_batch(f->s), 2);

    uint64_t batch = 0;
    assert_int_equal(store_sync(f->s, &batch), 0);
    assert_int_equal(batch, 1);
    assert_int_equal(store_committed(f->s), 1);
    assert_int_equal(f->ev.ncommitted, 1);
    assert_int_equal(f->ev.committed[0], 1);
    assert_true(store_pending_batch(f->s) <= store_committed(f->s));

    /* nothing pending: returns at once, naming the last batch */
    assert_int_equal(store_sync(f->s, &batch), 0);
    assert_int_equal(batch, 1);
    assert_int_equal(f->ev.ncommitted, 1);
}

static void test_writes_group_while_writer_is_busy(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    put_queue(f, 1, "q");
    put_one(f, 1, 1, 1);
    store_submit(f->s);
    assert_int_equal(store_open_batch(f->s), 2);
    /* the writer has batch 1 until the loop reaps it: later writes wait in batch 2 */
    put_one(f, 1, 2, 2);
    put_one(f, 1, 3, 3);
    assert_int_equal(store_backlog(f->s), 2 * (sizeof PROPS + BODY_LEN) + 4 * OP_SIZE);
    store_submit(f->s);
    assert_int_equal(store_open_batch(f->s), 2);
    assert_int_equal(store_pending_batch(f->s), 2);
    assert_int_equal(f->ev.released, 0);

    commit_all(f);
    assert_int_equal(f->ev.ncommitted, 2);
    assert_int_equal(f->ev.committed[0], 1);
    assert_int_equal(f->ev.committed[1], 2);
    /* batch 1's message was released before its commit was reported, batch 2's were not
     * yet; batch 2 was handed over before the callback ran */
    assert_int_equal(f->ev.released_at[0], 1);
    assert_int_equal(f->ev.backlog_at[0], 0);
    assert_int_equal(f->ev.released_at[1], 3);
    assert_int_equal(f->ev.released, 3);
    assert_entries(f, 1, "1:1 2:2 3:3");
}

static void test_close_commits_what_is_pending(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    put_queue(f, 1, "q");
    put_one(f, 1, 1, 1);
    close_store(f); /* never submitted */
    assert_int_equal(f->ev.released, 1);
    assert_int_equal(f->ev.ncommitted, 1);
    open_store(f);
    assert_int_equal(queue_after(f, 1)->count, 1);
    assert_entries(f, 1, "1:1");
}

/* ---- entities ----------------------------------------------------------------------- */

static void test_entities_survive_reopen(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    static const uint8_t odd_name[] = { 'x', 0, 0xff, 'y' };
    struct store_exchange x1 = { .vhost = "/", .name = amqp_cstr("orders"), .type = amqp_cstr("topic"),
                                 .args = amqp_bytes_of(ARGS_A, sizeof ARGS_A) };
    struct store_exchange x2 = { .vhost = "/", .name = amqp_bytes_of(odd_name, sizeof odd_name),
                                 .type = amqp_cstr("headers"), .auto_delete = true, .internal = true };
    struct store_exchange x3 = { .vhost = "other", .name = amqp_cstr("orders"), .type = amqp_cstr("fanout"),
                                 .internal = true };
    store_put_exchange(f->s, &x1);
    store_put_exchange(f->s, &x2);
    store_put_exchange(f->s, &x3);
    struct store_queue q3 = { .id = 3, .vhost = "/", .name = amqp_cstr("jobs"),
                              .args = amqp_bytes_of(ARGS_B, sizeof ARGS_B) };
    struct store_queue q9 = { .id = 9, .vhost = "other", .name = amqp_cstr("temp"), .auto_delete = true };
    store_put_queue(f->s, &q3);
    store_put_queue(f->s, &q9);
    struct store_binding b1 = binding("orders", "jobs", false, "a.*", amqp_bytes_of(NULL, 0));
    struct store_binding b2 = binding("orders", "jobs", false, "a.*", amqp_bytes_of(ARGS_B, sizeof ARGS_B));
    struct store_binding b3 = { .vhost = "/", .source = amqp_cstr("orders"),
                                .dest = amqp_bytes_of(odd_name, sizeof odd_name), .dest_is_exchange = true,
                                .rkey = amqp_cstr(""), .args = amqp_bytes_of(ARGS_A, sizeof ARGS_A) };
    store_put_binding(f->s, &b1);
    store_put_binding(f->s, &b2);
    store_put_binding(f->s, &b3);
    uint64_t batch;
    assert_int_equal(store_sync(f->s, &batch), 0);
    reopen(f);

    assert_int_equal(f->rec.nx, 3);
    const struct rec_exchange *x = recovered_exchange(f, "/", "orders");
    assert_non_null(x);
    assert_true(blob_is_str(&x->type, "topic"));
    assert_true(blob_is(&x->args, ARGS_A, sizeof ARGS_A));
    assert_false(x->auto_delete);
    assert_false(x->internal);
    x = NULL;
    for (size_t i = 0; i < f->rec.nx; i++) {
        if (blob_is(&f->rec.x[i].name, odd_name, sizeof odd_name))
            x = &f->rec.x[i];
    }
    assert_non_null(x);
    assert_string_equal(x->vhost, "/");
    assert_true(blob_is_str(&x->type, "headers"));
    assert_int_equal(x->args.len, 0);
    assert_true(x->auto_delete);
    assert_true(x->internal);
    x = recovered_exchange(f, "other", "orders");
    assert_non_null(x);
    assert_true(blob_is_str(&x->type, "fanout"));
    assert_false(x->auto_delete);
    assert_true(x->internal);

    assert_int_equal(f->rec.nq, 2);
    assert_int_equal(f->rec.max_queue_id, 9);
    assert_int_equal(f->rec.max_message_id, 0);
    const struct rec_queue *q = recovered_queue(f, 3);
    assert_non_null(q);
    assert_string_equal(q->vhost, "/");
    assert_true(blob_is_str(&q->name, "jobs"));
    assert_true(blob_is(&q->args, ARGS_B, sizeof ARGS_B));
    assert_false(q->q.auto_delete);
    assert_int_equal(q->q.count, 0);
    assert_int_equal(q->q.bytes, 0);
    assert_int_equal(q->q.first_expiry, 0);
    assert_int_equal(q->q.next_seq, 1);
    assert_int_equal(q->q.delivered_seq, 0);
    q = recovered_queue(f, 9);
    assert_non_null(q);
    assert_string_equal(q->vhost, "other");
    assert_true(blob_is_str(&q->name, "temp"));
    assert_int_equal(q->args.len, 0);
    assert_true(q->q.auto_delete);

    /* b1 and b2 differ only in their arguments: both are kept */
    assert_int_equal(f->rec.nb, 3);
    assert_true(binding_recovered(f, &b1));
    assert_true(binding_recovered(f, &b2));
    assert_true(binding_recovered(f, &b3));
}

static void test_entity_deletes_survive_reopen(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    put_exchange(f, "src");
    put_exchange(f, "twin"); /* an exchange and a queue share this name */
    put_exchange(f, "other");
    put_queue(f, 1, "twin");
    put_queue(f, 2, "keep");
    amqp_bytes none = amqp_bytes_of(NULL, 0);
    amqp_bytes args_a = amqp_bytes_of(ARGS_A, sizeof ARGS_A), args_b = amqp_bytes_of(ARGS_B, sizeof ARGS_B);
    struct store_binding src_to_keep = binding("src", "keep", false, "k", none);
    struct store_binding other_to_src = binding("other", "src", true, "", none);
    struct store_binding to_twin_queue = binding("other", "twin", false, "t", none);
    struct store_binding to_twin_exchange = binding("other", "twin", true, "t", none);
    struct store_binding keep_a = binding("other", "keep", false, "k", args_a);
    struct store_binding keep_b = binding("other", "keep", false, "k", args_b);
    struct store_binding all[] = { src_to_keep, other_to_src, to_twin_queue, to_twin_exchange, keep_a, keep_b };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        store_put_binding(f->s, &all[i]);
    commit_all(f);

    /* an exchange goes with the bindings from it and to it (as an exchange, not to a
     * queue of the same name); a binding delete matches the arguments too */
    store_delete_exchange(f->s, "/", amqp_cstr("src"));
    store_delete_exchange(f->s, "/", amqp_cstr("twin"));
    store_delete_binding(f->s, &keep_a);
    commit_all(f);
    reopen(f);
    assert_int_equal(f->rec.nx, 1);
    assert_non_null(recovered_exchange(f, "/", "other"));
    assert_int_equal(f->rec.nq, 2);
    assert_int_equal(f->rec.nb, 2);
    assert_true(binding_recovered(f, &to_twin_queue));
    assert_true(binding_recovered(f, &keep_b));

    /* a queue goes with the bindings to it, not those to an exchange of the same name */
    put_exchange(f, "twin");
    store_put_binding(f->s, &to_twin_exchange);
    store_delete_queue(f->s, 1);
    commit_all(f);
    reopen(f);
    assert_int_equal(f->rec.nx, 2);
    assert_non_null(recovered_exchange(f, "/", "twin"));
    assert_int_equal(f->rec.nq, 1);
    assert_null(recovered_queue(f, 1));
    assert_non_null(recovered_queue(f, 2));
    assert_int_equal(f->rec.nb, 2);
    assert_true(binding_recovered(f, &to_twin_exchange));
    assert_true(binding_recovered(f, &keep_b));
}

/* ---- messages and entries ------------------------------------------------------------ */

static void fill_pattern(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 31 + i / 251); /* includes NULs */
}

static void test_messages_and_entries_survive_reopen(void **state)
{
    struct fixture *f = *state;
    enum { BIG = 300000 };
    static const uint8_t props2[] = { 0, 0, 0 };
    uint8_t *big = malloc(BIG);
    assert_non_null(big);
    fill_pattern(big, BIG);

    open_store(f);
    put_queue(f, 1, "q");
    /* put out of seq order: read back in seq order */
    uint32_t m10 = put_message_full(f, 10, "amq.direct", "r.1", amqp_bytes_of(PROPS, sizeof PROPS), "hello", 5, false);
    store_put_entry(f->s, 1, 3, m10, false, 0);
    uint32_t m11 = put_message_full(f, 11, "", "q", amqp_bytes_of(NULL, 0), NULL, 0, false);
    store_put_entry(f->s, 1, 1, m11, false, 1700000000500);
    uint32_t m12 = put_message_full(f, 12, "ex", "", amqp_bytes_of(props2, sizeof props2), big, BIG, false);
    store_put_entry(f->s, 1, 2, m12, false, 1700000000100);
    commit_all(f);
    reopen(f);

    assert_int_equal(f->rec.max_message_id, 12);
    const struct store_queue *q = queue_after(f, 1);
    assert_int_equal(q->count, 3);
    assert_int_equal(q->bytes, 5 + 0 + BIG);
    assert_int_equal(q->first_seq, 1);
    assert_int_equal(q->next_seq, 4);
    assert_int_equal(q->first_expiry, 1700000000100); /* the earliest, ignoring "never" */
    assert_int_equal(q->delivered_seq, 0);

    struct read_back r = { .n = 0 };
    assert_int_equal(store_read_entries(f->s, 1, 0, 10, collect, &r), 3);
    const struct read_entry *e = &r.e[0];
    assert_int_equal(e->seq, 1);
    assert_int_equal(e->msg_id, 11);
    assert_int_equal(e->expires, 1700000000500);
    assert_false(e->shared);
    assert_true(blob_is_str(&e->exchange, ""));
    assert_true(blob_is_str(&e->rkey, "q"));
    assert_int_equal(e->props.len, 0);
    assert_int_equal(e->body_len, 0);
    e = &r.e[1];
    assert_int_equal(e->seq, 2);
    assert_int_equal(e->msg_id, 12);
    assert_int_equal(e->expires, 1700000000100);
    assert_true(blob_is_str(&e->exchange, "ex"));
    assert_true(blob_is_str(&e->rkey, ""));
    assert_true(blob_is(&e->props, props2, sizeof props2));
    assert_int_equal(e->body_len, BIG);
    assert_memory_equal(e->body, big, BIG);
    e = &r.e[2];
    assert_int_equal(e->seq, 3);
    assert_int_equal(e->msg_id, 10);
    assert_int_equal(e->expires, 0);
    assert_true(blob_is_str(&e->exchange, "amq.direct"));
    assert_true(blob_is_str(&e->rkey, "r.1"));
    assert_true(blob_is(&e->props, PROPS, sizeof PROPS));
    assert_int_equal(e->body_len, 5);
    assert_memory_equal(e->body, "hello", 5);
    read_back_free(&r);
    free(big);
}

static void test_read_entries_bounds(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    put_queue(f, 1, "q1");
    put_queue(f, 2, "q2");
    put_run(f, 1, 1, 1, 5);
    put_run(f, 2, 1, 6, 2);
    commit_all(f);

    struct read_back r = { .n = 0 };
    assert_int_equal(store_read_entries(f->s, 1, 3, 10, collect, &r), 3);
    assert_int_equal(r.e[0].seq, 3);
    assert_int_equal(r.e[2].seq, 5);
    read_back_free(&r);
    assert_int_equal(store_read_entries(f->s, 1, 1, 2, collect, &r), 2);
    assert_int_equal(r.e[0].seq, 1);
    assert_int_equal(r.e[1].seq, 2);
    read_back_free(&r);
    /* the callback stops it: the entry it refused counts */
    r.stop_after = 2;
    assert_int_equal(store_read_entries(f->s, 1, 1, 10, collect, &r), 2);
    assert_int_equal(r.n, 2);
    read_back_free(&r);
    r.stop_after = 0;
    assert_int_equal(store_read_entries(f->s, 99, 0, 10, collect, &r), 0);
    assert_entries(f, 2, "1:6 2:7");

    /* entries in a batch that has not committed are not there to read yet */
    put_one(f, 1, 6, 8);
    assert_int_equal(store_read_entries(f->s, 1, 6, 10, collect, &r), 0);
    commit_all(f);
    assert_int_equal(store_read_entries(f->s, 1, 6, 10, collect, &r), 1);
    assert_int_equal(r.e[0].msg_id, 8);
    read_back_free(&r);
}

static void test_delivered_mark_survives_reopen(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    put_queue(f, 1, "q1");
    put_queue(f, 2, "q2");
    put_run(f, 1, 1, 1, 4);
    put_run(f, 2, 1, 5, 2);
    commit_all(f);

    uint64_t op_batch = 0;
    uint32_t op_handle = 0;
    store_set_delivered(f->s, 1, 2, &op_batch, &op_handle);
    assert_int_equal(op_batch, store_open_batch(f->s));
    assert_int_equal(store_backlog(f->s), OP_SIZE);
    /* later marks in the same batch update that op; a lower one does not lower it */
    store_set_delivered(f->s, 1, 3, &op_batch, &op_handle);
    store_set_delivered(f->s, 1, 1, &op_batch, &op_handle);
    assert_int_equal(store_backlog(f->s), OP_SIZE);
    commit_all(f);
    /* a lower mark in a later batch does not lower the stored one either */
    store_set_delivered(f->s, 1, 2, &op_batch, &op_handle);
    assert_int_equal(store_backlog(f->s), OP_SIZE);
    /* a mark beyond every stored entry (those were acked) */
    uint64_t op_batch2 = 0;
    uint32_t op_handle2 = 0;
    store_set_delivered(f->s, 2, 9, &op_batch2, &op_handle2);
    commit_all(f);
    reopen(f);

    const struct store_queue *q = queue_after(f, 1);
    assert_int_equal(q->delivered_seq, 3);
    assert_int_equal(q->count, 4);
    assert_int_equal(q->next_seq, 5);
    q = queue_after(f, 2);
    assert_int_equal(q->delivered_seq, 9);
    assert_int_equal(q->count, 2);
    assert_int_equal(q->next_seq, 10);
}

static void test_removed_entries_are_gone_after_reopen(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    put_queue(f, 1, "q");
    put_run(f, 1, 1, 1, 6);
    commit_all(f);

    store_remove_entry(f->s, 1, 2, 2, false);
    store_remove_entry(f->s, 1, 5, 5, false);
    commit_all(f);
    reopen(f);
    const struct store_queue *q = queue_after(f, 1);
    assert_int_equal(q->count, 4);
    assert_int_equal(q->bytes, 4 * BODY_LEN);
    assert_int_equal(q->first_seq, 1);
    assert_entries(f, 1, "1:1 3:3 4:4 6:6");
    assert_db_rows(f, MESSAGE_IDS_SQL, "1\n3\n4\n6\n");

    store_remove_entry(f->s, 1, 1, 1, false);
    commit_all(f);
    reopen(f);
    q = queue_after(f, 1);
    assert_int_equal(q->count, 3);
    assert_int_equal(q->first_seq, 3);
    assert_int_equal(f->rec.max_message_id, 6);
    assert_entries(f, 1, "3:3 4:4 6:6");
}

static void test_remove_from_is_gone_after_reopen(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    put_queue(f, 1, "q1");
    put_queue(f, 2, "q2");
    put_run(f, 1, 1, 1, 6);
    put_run(f, 2, 1, 7, 2);
    uint32_t m = put_message(f, 9, false); /* held by both queues */
    store_put_entry(f->s, 1, 7, m, true, 0);
    store_put_entry(f->s, 2, 3, m, true, 0);
    commit_all(f);

    store_remove_from(f->s, 1, 4);
    commit_all(f);
    reopen(f);
    const struct store_queue *q = queue_after(f, 1);
    assert_int_equal(q->count, 3);
    assert_int_equal(q->bytes, 3 * BODY_LEN);
    assert_true(q->next_seq > 3);
    assert_entries(f, 1, "1:1 2:2 3:3");
    assert_entries(f, 2, "1:7 2:8 3:9");
    assert_int_equal(queue_after(f, 2)->count, 3);
    assert_db_rows(f, MESSAGE_IDS_SQL, "1\n2\n3\n7\n8\n9\n");
}

static void test_transient_messages_are_dropped_at_restart(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    put_queue(f, 1, "q1");
    put_queue(f, 2, "q2");
    put_one(f, 1, 1, 1);
    store_put_entry(f->s, 1, 2, put_message(f, 2, true), false, 0); /* paged out, not persistent */
    put_one(f, 1, 3, 3);
    store_put_entry(f->s, 2, 1, put_message(f, 4, true), false, 0);
    commit_all(f);
    assert_entries(f, 1, "1:1 2:2 3:3"); /* read back while the broker runs */

    reopen(f);
    const struct store_queue *q = queue_after(f, 1);
    assert_int_equal(q->count, 2);
    assert_int_equal(q->bytes, 2 * BODY_LEN);
    assert_entries(f, 1, "1:1 3:3");
    assert_int_equal(queue_after(f, 2)->count, 0);
    assert_entries(f, 2, "");
    assert_int_equal(f->rec.max_message_id, 3);
    assert_db_rows(f, MESSAGE_IDS_SQL, "1\n3\n");
}

/* ---- cancellation ------------------------------------------------------------------- */

static void test_cancelled_entry_is_never_written(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    put_queue(f, 1, "q");
    commit_all(f);

    uint64_t batch = store_open_batch(f->s);
    uint32_t entry = put_one(f, 1, 1, 1);
    assert_int_equal(store_backlog(f->s), sizeof PROPS + BODY_LEN + 2 * OP_SIZE);
    assert_true(store_cancel_entry(f->s, batch, entry));
    assert_int_equal(store_backlog(f->s), 2 * OP_SIZE); /* the message's bytes no longer count */
    assert_false(store_cancel_entry(f->s, batch, entry)); /* only once */
    commit_all(f);
    assert_int_equal(f->ev.released, 1);
    assert_entries(f, 1, "");

    reopen(f);
    assert_int_equal(queue_after(f, 1)->count, 0);
    assert_int_equal(f->rec.max_message_id, 0);
    assert_db_rows(f, "SELECT count(*) FROM messages", "0\n");
    assert_db_rows(f, "SELECT count(*) FROM entries", "0\n");
}

static void test_cancel_keeps_message_another_entry_holds(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    put_queue(f, 1, "q1");
    put_queue(f, 2, "q2");
    commit_all(f);

    uint64_t batch = store_open_batch(f->s);
    uint32_t m = put_message(f, 1, false);
    uint32_t e1 = store_put_entry(f->s, 1, 1, m, true, 0);
    store_put_entry(f->s, 2, 1, m, true, 0);
    assert_true(store_cancel_entry(f->s, batch, e1));
    assert_int_equal(store_backlog(f->s), sizeof PROPS + BODY_LEN + 3 * OP_SIZE);
    commit_all(f);
    reopen(f);
    assert_int_equal(queue_after(f, 1)->count, 0);
    assert_int_equal(queue_after(f, 2)->count, 1);
    assert_entries(f, 1, "");
    assert_entries(f, 2, "1:1");
    assert_db_rows(f, MESSAGE_IDS_SQL, "1\n");
}

/* The broker cancels the entry of a message a no-ack consumer took from the first queue,
 * then puts the same message into the next queue: the message counts and is written. */
static void test_entry_put_again_after_cancel_counts_message(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    put_queue(f, 1, "q1");
    put_queue(f, 2, "q2");
    commit_all(f);

    uint64_t batch = store_open_batch(f->s);
    uint32_t m = put_message(f, 1, false);
    uint32_t e1 = store_put_entry(f->s, 1, 1, m, true, 0);
    assert_true(store_cancel_entry(f->s, batch, e1));
    assert_int_equal(store_backlog(f->s), 2 * OP_SIZE);
    uint32_t e2 = store_put_entry(f->s, 2, 1, m, true, 0);
    assert_int_equal(store_backlog(f->s), sizeof PROPS + BODY_LEN + 3 * OP_SIZE);
    assert_true(store_cancel_entry(f->s, batch, e2));
    assert_int_equal(store_backlog(f->s), 3 * OP_SIZE); /* not wrapped below zero */
    store_put_entry(f->s, 2, 2, m, true, 0);
    assert_int_equal(store_backlog(f->s), sizeof PROPS + BODY_LEN + 4 * OP_SIZE);
    commit_all(f);
    reopen(f);
    assert_entries(f, 1, "");
    assert_entries(f, 2, "2:1");
    assert_db_rows(f, MESSAGE_IDS_SQL, "1\n");
}

static void test_cancel_refused_once_batch_is_handed_over(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    put_queue(f, 1, "q");
    commit_all(f);

    uint64_t batch = store_open_batch(f->s);
    uint32_t entry = put_one(f, 1, 1, 1);
    store_submit(f->s);
    uint64_t open = store_open_batch(f->s);
    assert_int_equal(put_one(f, 1, 2, 2), entry); /* the same handle, in the next batch */
    assert_false(store_cancel_entry(f->s, batch, entry)); /* its batch is no longer open */
    uint32_t m = put_message(f, 3, false);
    assert_false(store_cancel_entry(f->s, open, m));      /* not an entry */
    assert_false(store_cancel_entry(f->s, open, m + 10)); /* no such op */
    /* what the broker does instead */
    store_remove_entry(f->s, 1, 1, 1, false);
    commit_all(f);
    assert_int_equal(f->ev.released, 3);
    reopen(f);
    assert_int_equal(queue_after(f, 1)->count, 1);
    assert_entries(f, 1, "2:2");
    assert_db_rows(f, MESSAGE_IDS_SQL, "2\n"); /* message 3 had no entry */
}

/* ---- removes merged into ranges ------------------------------------------------------ */

static void test_in_order_removes_become_one_range(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    put_queue(f, 1, "q");
    put_run(f, 1, 1, 1, 10);
    commit_all(f);

    for (uint64_t seq = 2; seq <= 6; seq++)
        store_remove_entry(f->s, 1, seq, seq, false);
    assert_int_equal(store_backlog(f->s), OP_SIZE); /* one op for the five */
    for (uint64_t seq = 10; seq >= 8; seq--)      /* a multiple ack settles newest first */
        store_remove_entry(f->s, 1, seq, seq, false);
    assert_int_equal(store_backlog(f->s), 2 * OP_SIZE);
    commit_all(f);
    reopen(f);
    const struct store_queue *q = queue_after(f, 1);
    assert_int_equal(q->count, 2);
    assert_int_equal(q->bytes, 2 * BODY_LEN);
    assert_entries(f, 1, "1:1 7:7");
    assert_db_rows(f, MESSAGE_IDS_SQL, "1\n7\n");
}

static void test_range_removes_match_single_removes(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    put_queue(f, 1, "ranges");
    put_queue(f, 2, "singles");
    put_run(f, 1, 1, 1, 8);
    put_run(f, 2, 1, 11, 8);
    commit_all(f);

    for (uint64_t seq = 2; seq <= 6; seq++)
        store_remove_entry(f->s, 1, seq, seq, false);
    assert_int_equal(store_backlog(f->s), OP_SIZE);
    /* the same entries of queue 2 in an order where no two follow on */
    static const uint64_t order[] = { 2, 4, 6, 3, 5 };
    for (size_t i = 0; i < 5; i++)
        store_remove_entry(f->s, 2, order[i], order[i] + 10, false);
    assert_int_equal(store_backlog(f->s), 6 * OP_SIZE);
    commit_all(f);
    reopen(f);
    const struct store_queue *q1 = queue_after(f, 1), *q2 = queue_after(f, 2);
    assert_int_equal(q1->count, 3);
    assert_int_equal(q2->count, 3);
    assert_int_equal(q1->bytes, q2->bytes);
    assert_int_equal(q1->first_seq, q2->first_seq);
    assert_int_equal(q1->next_seq, q2->next_seq);
    assert_entries(f, 1, "1:1 7:7 8:8");
    assert_entries(f, 2, "1:11 7:17 8:18");
    assert_db_rows(f, MESSAGE_IDS_SQL, "1\n7\n8\n11\n17\n18\n");
}

static void test_merge_never_takes_other_messages(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    for (uint64_t qid = 1; qid <= 4; qid++)
        put_queue(f, qid, qid == 1 ? "q1" : qid == 2 ? "q2" : qid == 3 ? "q3" : "q4");
    /* publishes alternate between queues 1 and 2: consecutive seqs, ids with gaps */
    put_one(f, 1, 1, 1);
    put_one(f, 2, 1, 2);
    put_one(f, 1, 2, 3);
    uint32_t m = put_message(f, 4, false); /* shared by queues 1 and 2 */
    store_put_entry(f->s, 1, 3, m, true, 0);
    store_put_entry(f->s, 2, 2, m, true, 0);
    /* consecutive seqs and ids, but in different queues */
    put_one(f, 3, 1, 5);
    put_one(f, 4, 2, 6);
    commit_all(f);

    store_remove_entry(f->s, 1, 1, 1, false);
    store_remove_entry(f->s, 1, 2, 3, false); /* id 2 is queue 2's */
    assert_int_equal(store_backlog(f->s), 2 * OP_SIZE);
    store_remove_entry(f->s, 1, 3, 4, true); /* shared: never merged */
    assert_int_equal(store_backlog(f->s), 3 * OP_SIZE);
    store_remove_entry(f->s, 3, 1, 5, false);
    store_remove_entry(f->s, 4, 2, 6, false); /* another queue */
    assert_int_equal(store_backlog(f->s), 5 * OP_SIZE);
    commit_all(f);
    reopen(f);
    assert_int_equal(queue_after(f, 1)->count, 0);
    assert_int_equal(queue_after(f, 2)->count, 2);
    assert_int_equal(queue_after(f, 3)->count, 0);
    assert_int_equal(queue_after(f, 4)->count, 0);
    assert_entries(f, 2, "1:2 2:4");
    assert_db_rows(f, MESSAGE_IDS_SQL, "2\n4\n");
}

/* ---- shared messages ------------------------------------------------------------------ */

static void test_shared_message_lives_until_last_holder_goes(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    put_queue(f, 1, "q1");
    put_queue(f, 2, "q2");
    put_queue(f, 3, "q3");
    uint32_t m = put_message(f, 1, false);
    for (uint64_t qid = 1; qid <= 3; qid++)
        store_put_entry(f->s, qid, 1, m, true, 0);
    put_one(f, 2, 2, 2);
    put_one(f, 3, 2, 3);
    commit_all(f);

    /* an ack in queue 1 */
    store_remove_entry(f->s, 1, 1, 1, true);
    commit_all(f);
    reopen(f);
    assert_int_equal(queue_after(f, 1)->count, 0);
    assert_entries(f, 2, "1:1 2:2");
    assert_entries(f, 3, "1:1 2:3");
    assert_db_rows(f, MESSAGE_IDS_SQL, "1\n2\n3\n");

    /* a purge of queue 2 */
    store_remove_from(f->s, 2, 1);
    commit_all(f);
    reopen(f);
    assert_int_equal(queue_after(f, 2)->count, 0);
    assert_entries(f, 3, "1:1 2:3");
    assert_db_rows(f, MESSAGE_IDS_SQL, "1\n3\n");

    /* queue 3, the last holder, is deleted */
    store_delete_queue(f->s, 3);
    commit_all(f);
    reopen(f);
    assert_int_equal(f->rec.nq, 2);
    assert_null(recovered_queue(f, 3));
    assert_db_rows(f, "SELECT count(*) FROM messages", "0\n");
    assert_db_rows(f, "SELECT count(*) FROM entries", "0\n");
    assert_int_equal(f->rec.max_message_id, 0);
}

static void test_delete_queue_keeps_what_others_hold(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    put_queue(f, 1, "doomed");
    put_queue(f, 2, "keep");
    put_run(f, 1, 1, 1, 3);
    uint32_t m = put_message(f, 4, false);
    store_put_entry(f->s, 1, 4, m, true, 0);
    store_put_entry(f->s, 2, 1, m, true, 0);
    put_one(f, 2, 2, 5);
    commit_all(f);

    store_delete_queue(f->s, 1);
    commit_all(f);
    reopen(f);
    assert_null(recovered_queue(f, 1));
    assert_int_equal(f->rec.nq, 1);
    assert_entries(f, 2, "1:4 2:5");
    assert_db_rows(f, MESSAGE_IDS_SQL, "4\n5\n");
    assert_db_rows(f, "SELECT DISTINCT queue_id FROM entries", "2\n");
}

/* ---- refusals ------------------------------------------------------------------------ */

static void assert_mentions(const char *log, const char *what)
{
    if (!strstr(log, what))
        fail_msg("expected \"%s\" in the log, got: %s", what, log);
}

static void test_refuses_directory_locked_by_another_store(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    char *log = open_refused(f);
    char pid[32];
    snprintf(pid, sizeof pid, "(pid %ld)", (long)getpid());
    assert_mentions(log, f->dir);
    assert_mentions(log, "in use by another warren");
    assert_mentions(log, pid);
    free(log);
    /* the refusal left the first store's lock in place; closing that store frees it */
    free(open_refused(f));
    put_queue(f, 1, "q");
    commit_all(f);
    reopen(f);
    assert_int_equal(f->rec.nq, 1);
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

static void test_refuses_file_that_is_not_a_database(void **state)
{
    struct fixture *f = *state;
    char text[4096];
    for (size_t i = 0; i < sizeof text; i++)
        text[i] = "this is not a database\n"[i % 23];
    write_file(f->db_path, text, sizeof text);
    char *log = open_refused(f);
    assert_mentions(log, f->db_path);
    free(log);
    size_t len;
    char *after = read_file(f->db_path, &len);
    assert_int_equal(len, sizeof text);
    assert_memory_equal(after, text, sizeof text); /* left as it was */
    free(after);
}

/* Runs sql on the database file directly (creating it if needed). */
static void exec_on_file(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

static void test_refuses_another_applications_database(void **state)
{
    struct fixture *f = *state;
    exec_on_file(f->db_path, "CREATE TABLE notes (text); INSERT INTO notes VALUES ('keep me');");
    char *log = open_refused(f);
    assert_mentions(log, f->db_path);
    assert_mentions(log, "not a Warren database");
    free(log);
    /* left as it was: no schema added, no id stamped */
    assert_db_rows(f, "SELECT name FROM sqlite_master", "notes\n");
    assert_db_rows(f, "SELECT text FROM notes", "keep me\n");
    assert_db_rows(f, "PRAGMA application_id", "0\n");

    /* no tables but another application's id */
    remove(f->db_path);
    exec_on_file(f->db_path, "PRAGMA application_id = 1179407921;");
    log = open_refused(f);
    assert_mentions(log, f->db_path);
    assert_mentions(log, "not a Warren database");
    free(log);
    assert_db_rows(f, "SELECT count(*) FROM sqlite_master", "0\n");

    /* no tables, no id, but another application's version number */
    remove(f->db_path);
    exec_on_file(f->db_path, "PRAGMA user_version = 7;");
    log = open_refused(f);
    assert_mentions(log, "not a Warren database");
    free(log);
    assert_db_rows(f, "PRAGMA user_version", "7\n");
}

/* Creates a Warren database with one queue, then sets its user_version. */
static void make_database_with_version(struct fixture *f, int version)
{
    open_store(f);
    put_queue(f, 1, "q");
    close_store(f);
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d;", version);
    exec_on_file(f->db_path, sql);
}

static void test_refuses_newer_schema(void **state)
{
    struct fixture *f = *state;
    make_database_with_version(f, 2);
    char *log = open_refused(f);
    assert_mentions(log, f->db_path);
    assert_mentions(log, "schema version 2, newer");
    free(log);
    assert_db_rows(f, "PRAGMA user_version", "2\n");
    assert_db_rows(f, "SELECT name FROM queues", "q\n");
}

static void test_refuses_older_schema(void **state)
{
    struct fixture *f = *state;
    make_database_with_version(f, 0);
    char *log = open_refused(f);
    assert_mentions(log, f->db_path);
    assert_mentions(log, "schema version 0");
    free(log);
    assert_db_rows(f, "PRAGMA user_version", "0\n");
}

static void test_refuses_corrupt_database(void **state)
{
    struct fixture *f = *state;
    open_store(f);
    put_queue(f, 1, "q");
    close_store(f);
    /* keep the 100-byte header (a Warren database's id and version), wreck page 1's
     * b-tree, where the schema is */
    int fd = open(f->db_path, O_WRONLY);
    assert_true(fd >= 0);
    uint8_t junk[1024];
    memset(junk, 0xff, sizeof junk);
    assert_int_equal(pwrite(fd, junk, sizeof junk, 100), (ssize_t)sizeof junk);
    close(fd);
    char *log = open_refused(f);
    assert_mentions(log, f->db_path);
    free(log);
}

/* ---- failing writes (storage/faultvfs.c) ---------------------------------------------- */

/* WARREN_FAULT_FILE is read once per process, when the first store opens after it is set:
 * the fault tests run last and share this file. */
static char fault_dir[32];
static char fault_path[64];

static void set_fault(const char *mode)
{
    write_file(fault_path, mode, strlen(mode));
}

static void clear_fault(void)
{
    if (fault_path[0])
        set_fault("");
}

static void enable_fault_injection(void)
{
    if (!fault_dir[0]) {
        make_temp_dir(fault_dir, sizeof fault_dir);
        snprintf(fault_path, sizeof fault_path, "%s/fault", fault_dir);
        assert_int_equal(setenv("WARREN_FAULT_FILE", fault_path, 1), 0);
    }
    set_fault("");
}

/* Writes that fail with `mode` are retried until they work; then the stuck batch and the
 * one that grew behind it commit, each write once. */
static void check_commit_survives_fault(struct fixture *f, const char *mode, const char *why)
{
    enable_fault_injection();
    capture_stderr(f);
    log_set_level(WLOG_INFO); /* "works again" is logged as info */
    open_store(f);
    put_queue(f, 1, "q");
    commit_all(f);
    assert_int_equal(f->ev.ncommitted, 1);

    set_fault(mode);
    put_run(f, 1, 1, 1, 3);
    uint64_t stuck = store_open_batch(f->s);
    store_submit(f->s);
    wait_failing(f, true);
    assert_int_equal(f->ev.failing_on, 1);
    assert_true(store_failing(f->s));
    uint64_t batch = 0;
    assert_int_equal(store_sync(f->s, &batch), -1); /* returns at once while failing */
    assert_int_equal(batch, stuck);
    assert_mentions(f->ev.why, why);
    assert_int_equal(f->ev.ncommitted, 1);
    assert_int_equal(store_committed(f->s), 1);
    assert_int_equal(f->ev.released, 0); /* the retry still needs the bodies */
    assert_entries(f, 1, "");

    /* writes go on meanwhile, into the next batch */
    put_one(f, 1, 4, 4);
    store_submit(f->s);
    assert_int_equal(store_open_batch(f->s), stuck + 1); /* the writer still has the stuck one */
    assert_int_equal(store_sync(f->s, &batch), -1);
    assert_int_equal(batch, stuck + 1);

    set_fault("");
    wait_failing(f, false);
    commit_all(f);
    log_set_level(WLOG_WARN);
    char *log = end_capture(f);
    assert_mentions(log, f->db_path);
    assert_mentions(log, "works again");
    free(log);
    assert_false(store_failing(f->s));
    assert_int_equal(f->ev.failing_on, 1);
    assert_int_equal(f->ev.failing_off, 1);
    assert_int_equal(f->ev.ncommitted, 3);
    assert_int_equal(f->ev.committed[1], stuck);
    assert_int_equal(f->ev.committed[2], stuck + 1);
    assert_int_equal(f->ev.released, 4);
    assert_entries(f, 1, "1:1 2:2 3:3 4:4");

    reopen(f);
    assert_int_equal(queue_after(f, 1)->count, 4);
    assert_entries(f, 1, "1:1 2:2 3:3 4:4");
    assert_db_rows(f, MESSAGE_IDS_SQL, "1\n2\n3\n4\n");
}

static void test_disk_full_commit_is_retried_until_it_works(void **state)
{
    check_commit_survives_fault(*state, "full", "full");
}

static void test_io_error_commit_is_retried_until_it_works(void **state)
{
    check_commit_survives_fault(*state, "ioerr", "I/O error");
}

static void test_close_while_failing_gives_up_unwritten_batches(void **state)
{
    struct fixture *f = *state;
    enable_fault_injection();
    capture_stderr(f);
    open_store(f);
    put_queue(f, 1, "q");
    put_one(f, 1, 1, 1);
    commit_all(f);

    set_fault("full");
    put_one(f, 1, 2, 2);
    store_submit(f->s);
    wait_failing(f, true);
    put_one(f, 1, 3, 3); /* behind the stuck batch */
    close_store(f);
    free(end_capture(f));
    assert_int_equal(f->ev.released, 3); /* every body handed back, none twice */
    assert_int_equal(f->ev.ncommitted, 1);

    set_fault("");
    open_store(f);
    assert_int_equal(queue_after(f, 1)->count, 1);
    assert_entries(f, 1, "1:1");
    assert_db_rows(f, MESSAGE_IDS_SQL, "1\n");
}

static int remove_fault_dir(void **state)
{
    (void)state;
    remove_tree(fault_dir);
    return 0;
}

static void watchdog_fired(int sig)
{
    (void)sig;
    static const char msg[] = "test_store: a store call hung (watchdog)\n";
    if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
        /* nothing more to do */
    }
    _exit(1);
}

#define TEST(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    log_set_level(WLOG_WARN);
    signal(SIGALRM, watchdog_fired);
    alarm(WATCHDOG_S);
    const struct CMUnitTest tests[] = {
        TEST(test_new_store_is_empty_and_counts_batches),
        TEST(test_writes_group_while_writer_is_busy),
        TEST(test_close_commits_what_is_pending),
        TEST(test_entities_survive_reopen),
        TEST(test_entity_deletes_survive_reopen),
        TEST(test_messages_and_entries_survive_reopen),
        TEST(test_read_entries_bounds),
        TEST(test_delivered_mark_survives_reopen),
        TEST(test_removed_entries_are_gone_after_reopen),
        TEST(test_remove_from_is_gone_after_reopen),
        TEST(test_transient_messages_are_dropped_at_restart),
        TEST(test_cancelled_entry_is_never_written),
        TEST(test_cancel_keeps_message_another_entry_holds),
    TEST(test_entry_put_again_after_cancel_counts_message),
        TEST(test_cancel_refused_once_batch_is_handed_over),
        TEST(test_in_order_removes_become_one_range),
        TEST(test_range_removes_match_single_removes),
        TEST(test_merge_never_takes_other_messages),
        TEST(test_shared_message_lives_until_last_holder_goes),
        TEST(test_delete_queue_keeps_what_others_hold),
        TEST(test_refuses_directory_locked_by_another_store),
        TEST(test_refuses_file_that_is_not_a_database),
        TEST(test_refuses_another_applications_database),
        TEST(test_refuses_newer_schema),
        TEST(test_refuses_older_schema),
        TEST(test_refuses_corrupt_database),
        /* last: once on, fault injection stays installed for the process */
        TEST(test_disk_full_commit_is_retried_until_it_works),
        TEST(test_io_error_commit_is_retried_until_it_works),
        TEST(test_close_while_failing_gives_up_unwritten_batches),
    };
    return cmocka_run_group_tests(tests, NULL, remove_fault_dir);
}
