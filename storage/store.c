/* The store: the data-directory lock, the batches the loop fills, the writer thread that
 * commits them, recovery at startup and paging entries back in. */
#include "storage/store.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "common/xalloc.h"
#include "server/log.h"
#include "storage/apply.h"
#include "storage/batch.h"
#include "storage/faultvfs.h"
#include "storage/schema.h"

/* How long the writer waits before retrying a batch that failed (disk full, I/O error). */
#define RETRY_MS 250

struct store {
    char *path;
    int lock_fd;
    sqlite3 *wdb, *rdb;
    struct applier *ap;
    sqlite3_stmt *read_st;
    struct store_callbacks cb;
    int notify_r, notify_w;
    pthread_t thread;
    bool thread_started;

    /* Loop thread only. */
    struct batch bufs[2];
    struct batch *open;
    bool busy;                 /* a batch is with the writer */
    uint64_t committed;
    bool failing;

    /* Shared with the writer, under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct batch *handed;      /* batch for the writer to apply; NULL when none */
    bool done;                 /* the writer finished the handed batch */
    bool w_failing;            /* the writer's view: the last attempt failed */
    char why[256];
    bool stop;
};

/* ---- the data directory lock ------------------------------------------------------- */

static int take_lock(const char *dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/warren.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        log_error("store: cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        char pid[32] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        if (err == EWOULDBLOCK)
            log_error("store: data directory %s is in use by another warren (pid %s); "
                      "stop it or use another --data", dir, pid[0] ? pid : "unknown");
        else
            log_error("store: cannot lock %s: %s", path, strerror(err));
        close(fd);
        return -1;
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n)
        log_warn("store: cannot write the pid into %s: %s", path, strerror(errno));
    return fd;
}

/* ---- the writer thread ------------------------------------------------------------- */

static void notify_loop(struct store *s)
{
    char c = 1;
    while (write(s->notify_w, &c, 1) < 0 && errno == EINTR)
        ;
}

/* Applies each handed batch; retries a failed one every RETRY_MS until it commits or the
 * store closes, telling the loop when writing starts and stops failing. */
static void *writer_main(void *arg)
{
    struct store *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->handed && !s->stop)
            pthread_cond_wait(&s->cv, &s->mu);
        if (!s->handed)
            break;
        struct batch *b = s->handed;
        pthread_mutex_unlock(&s->mu);
        char why[256];
        int rc = applier_run(s->ap, b, why, sizeof why);
        pthread_mutex_lock(&s->mu);
        if (rc == SQLITE_OK) {
            s->handed = NULL;
            s->done = true;
            s->w_failing = false;
            notify_loop(s);
            continue;
        }
        if (!s->w_failing) {
            s->w_failing = true;
            snprintf(s->why, sizeof s->why, "%s", why);
            notify_loop(s);
        }
        if (s->stop)
            break; /* closing: the batch is given up (its publishes were never confirmed) */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += RETRY_MS * 1000000L;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&s->cv, &s->mu, &until);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- open and close ---------------------------------------------------------------- */

static int open_notify_pipe(struct store *s)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
        log_error("store: pipe: %s", strerror(errno));
        return -1;
    }
    s->notify_r = fds[0];
    s->notify_w = fds[1];
    return 0;
}

struct store *store_open(const char *dir, const struct store_callbacks *cb)
{
    struct store *s = xcalloc(1, sizeof *s);
    s->lock_fd = s->notify_r = s->notify_w = -1;
    s->cb = *cb;
    s->open = &s->bufs[0];
    s->open->id = 1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    size_t n = strlen(dir) + sizeof "/warren.db";
    s->path = xmalloc(n);
    snprintf(s->path, n, "%s/warren.db", dir);
    if (faultvfs_install_from_env() != 0)
        goto fail;
    if ((s->lock_fd = take_lock(dir)) < 0)
        goto fail;
    if (!(s->wdb = schema_open_writer(s->path)) || !(s->ap = applier_new(s->wdb)))
        goto fail;
    if (!(s->rdb = schema_open_reader(s->path)))
        goto fail;
    if (sqlite3_prepare_v3(s->rdb,
                           "SELECT e.seq, e.msg_id, e.shared, m.exchange, m.rkey, m.props, m.body, e.expires "
                           "FROM entries e JOIN messages m ON m.id = e.msg_id "
                           "WHERE e.queue_id = ?1 AND e.seq >= ?2 ORDER BY e.seq LIMIT ?3",
                           -1, SQLITE_PREPARE_PERSISTENT, &s->read_st, NULL) != SQLITE_OK) {
        log_error("store: %s: %s", s->path, sqlite3_errmsg(s->rdb));
        goto fail;
    }
    if (open_notify_pipe(s) != 0)
        goto fail;
    return s;
fail:
    store_close(&s);
    return NULL;
}

static void release_cookies(struct store *s, struct batch *b)
{
    for (uint32_t i = 0; i < b->n; i++) {
        if (b->ops[i].kind == OP_MESSAGE && b->ops[i].cookie)
            s->cb.release(s->cb.arg, b->ops[i].cookie);
    }
    batch_clear(b);
}

void store_close(struct store **sp)
{
    struct store *s = *sp;
    *sp = NULL;
    if (!s)
        return;
    if (s->thread_started) {
        uint64_t target;
        if (!s->failing && store_sync(s, &target) != 0)
            log_warn("store: closing while writes fail; unconfirmed writes are given up");
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    for (int i = 0; i < 2; i++) {
        release_cookies(s, &s->bufs[i]);
        batch_free(&s->bufs[i]);
    }
    sqlite3_finalize(s->read_st);
    applier_free(&s->ap);
    sqlite3_close(s->rdb);
    sqlite3_close(s->wdb);
    if (s->notify_r >= 0)
        close(s->notify_r);
    if (s->notify_w >= 0)
        close(s->notify_w);
    if (s->lock_fd >= 0)
        close(s->lock_fd); /* releases the flock */
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s->path);
    free(s);
}

int store_notify_fd(const struct store *s) { return s->notify_r; }

/* ---- recovery ---------------------------------------------------------------------- */

static amqp_bytes col_bytes(sqlite3_stmt *st, int i)
{
    const void *p = sqlite3_column_blob(st, i);
    return amqp_bytes_of(p ? p : "", (size_t)sqlite3_column_bytes(st, i));
}

static long long query_int(sqlite3 *db, const char *sql, int *rc)
{
    sqlite3_stmt *st;
    long long v = 0;
    *rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (*rc != SQLITE_OK)
        return 0;
    *rc = sqlite3_step(st);
    if (*rc == SQLITE_ROW) {
        v = sqlite3_column_int64(st, 0);
        *rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return v;
}

static int recover_queues(struct store *s, const struct store_recovery *r)
{
    sqlite3_stmt *st = NULL, *cnt = NULL;
    int rc = sqlite3_prepare_v2(s->wdb, "SELECT id, vhost, name, auto_delete, args, delivered_seq FROM queues ORDER BY id",
                                -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(s->wdb, "SELECT count(*), min(seq), max(seq), total(size), "
                                "min(CASE WHEN expires > 0 THEN expires END) FROM entries WHERE queue_id = ?1", -1,
                                &cnt, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_queue q = {
            .id = (uint64_t)sqlite3_column_int64(st, 0),
            .vhost = (const char *)sqlite3_column_text(st, 1),
            .name = col_bytes(st, 2),
            .auto_delete = sqlite3_column_int(st, 3) != 0,
            .args = col_bytes(st, 4),
            .delivered_seq = (uint64_t)sqlite3_column_int64(st, 5),
        };
        sqlite3_bind_int64(cnt, 1, (sqlite3_int64)q.id);
        if ((rc = sqlite3_step(cnt)) != SQLITE_ROW)
            break;
        q.count = (uint64_t)sqlite3_column_int64(cnt, 0);
        q.first_seq = (uint64_t)sqlite3_column_int64(cnt, 1);
        uint64_t max_seq = (uint64_t)sqlite3_column_int64(cnt, 2);
        q.bytes = (uint64_t)sqlite3_column_int64(cnt, 3);
        q.first_expiry = sqlite3_column_int64(cnt, 4);
        q.next_seq = (max_seq > q.delivered_seq ? max_seq : q.delivered_seq) + 1;
        sqlite3_reset(cnt);
        r->queue(r->arg, &q);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    sqlite3_finalize(cnt);
    return rc == SQLITE_DONE || rc == SQLITE_OK ? SQLITE_OK : rc;
}

static int recover_exchanges(struct store *s, const struct store_recovery *r)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->wdb, "SELECT vhost, name, type, auto_delete, internal, args FROM exchanges", -1, &st,
                                NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_exchange x = {
            .vhost = (const char *)sqlite3_column_text(st, 0),
            .name = col_bytes(st, 1),
            .type = col_bytes(st, 2),
            .auto_delete = sqlite3_column_int(st, 3) != 0,
            .internal = sqlite3_column_int(st, 4) != 0,
            .args = col_bytes(st, 5),
        };
        r->exchange(r->arg, &x);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int recover_bindings(struct store *s, const struct store_recovery *r)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->wdb, "SELECT vhost, source, dest, dest_is_exchange, rkey, args FROM bindings", -1,
                                &st, NULL);
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_binding b = {
            .vhost = (const char *)sqlite3_column_text(st, 0),
            .source = col_bytes(st, 1),
            .dest = col_bytes(st, 2),
            .dest_is_exchange = sqlite3_column_int(st, 3) != 0,
            .rkey = col_bytes(st, 4),
            .args = col_bytes(st, 5),
        };
        r->binding(r->arg, &b);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

int store_recover(struct store *s, const struct store_recovery *r, uint64_t *max_message_id, uint64_t *max_queue_id)
{
    /* Transient messages were only paged out to save memory: they do not outlive a restart. */
    int rc = schema_exec(s->wdb, "BEGIN IMMEDIATE;"
                                 "DELETE FROM entries WHERE transient = 1;"
                                 "DELETE FROM messages WHERE transient = 1;"
                                 "COMMIT;");
    if (rc != SQLITE_OK) {
        schema_exec(s->wdb, "ROLLBACK");
        goto fail;
    }
    if ((rc = recover_exchanges(s, r)) != SQLITE_OK || (rc = recover_queues(s, r)) != SQLITE_OK ||
        (rc = recover_bindings(s, r)) != SQLITE_OK)
        goto fail;
    *max_message_id = (uint64_t)query_int(s->wdb, "SELECT max(id) FROM messages", &rc);
    if (rc == SQLITE_OK)
        *max_queue_id = (uint64_t)query_int(s->wdb, "SELECT max(id) FROM queues", &rc);
    if (rc != SQLITE_OK)
        goto fail;
    if (pthread_create(&s->thread, NULL, writer_main, s) != 0) {
        log_error("store: cannot start the writer thread");
        return -1;
    }
    s->thread_started = true;
    return 0;
fail:
    log_error("store: recovery from %s failed: %s (%s)", s->path, sqlite3_errmsg(s->wdb), sqlite3_errstr(rc));
    return -1;
}

/* ---- writes -------------------------------------------------------------------------- */

uint64_t store_open_batch(const struct store *s) { return s->open->id; }
uint64_t store_committed(const struct store *s) { return s->committed; }
uint64_t store_pending_batch(const struct store *s) { return s->open->n ? s->open->id : s->open->id - 1; }
size_t store_backlog(const struct store *s) { return s->open->bytes + (size_t)s->open->n * sizeof(struct op); }
bool store_failing(const struct store *s) { return s->failing; }

uint32_t store_put_message(struct store *s, uint64_t id, amqp_bytes exchange, amqp_bytes rkey, amqp_bytes props,
                           amqp_bytes body, bool transient, void *cookie)
{
    struct op *o = batch_add(s->open, OP_MESSAGE);
    o->id = id;
    o->f[0] = exchange;
    o->f[1] = rkey;
    o->f[2] = props;
    o->f[3] = body;
    o->flag_a = transient;
    o->cookie = cookie;
    s->open->bytes += body.len + props.len;
    return s->open->n - 1;
}

uint32_t store_put_entry(struct store *s, uint64_t qid, uint64_t seq, uint32_t msg_handle, bool shared,
                         int64_t expires)
{
    struct op *m = &s->open->ops[msg_handle];
    if (m->live++ == 0 && m->cancelled) { /* every earlier entry was cancelled: back in */
        m->cancelled = false;
        s->open->bytes += m->f[2].len + m->f[3].len;
    }
    uint64_t msg_id = m->id;
    struct op *o = batch_add(s->open, OP_ENTRY);
    o->qid = qid;
    o->seq = seq;
    o->id = msg_id;
    o->msg_op = msg_handle;
    o->flag_a = shared;
    o->expires = expires;
    return s->open->n - 1;
}

bool store_cancel_entry(struct store *s, uint64_t batch, uint32_t handle)
{
    if (batch != s->open->id || handle >= s->open->n)
        return false;
    struct op *o = &s->open->ops[handle];
    if (o->kind != OP_ENTRY || o->cancelled)
        return false;
    o->cancelled = true;
    struct op *m = &s->open->ops[o->msg_op];
    if (--m->live == 0) { /* nothing holds the message: it is not written either */
        m->cancelled = true;
        s->open->bytes -= m->f[2].len + m->f[3].len;
    }
    return true;
}

void store_remove_entry(struct store *s, uint64_t qid, uint64_t seq, uint64_t msg_id, bool shared)
{
    /* Acks usually come in order: extend the previous remove to a range when both the entry
     * and the message follow on from it. */
    struct batch *b = s->open;
    struct op *last = b->n ? &b->ops[b->n - 1] : NULL;
    if (last && last->kind == OP_REMOVE && !shared && !last->flag_a && last->qid == qid) {
        if (last->last_seq + 1 == seq && last->last_id + 1 == msg_id) {
            last->last_seq = seq;
            last->last_id = msg_id;
            return;
        }
        if (seq + 1 == last->seq && msg_id + 1 == last->id) { /* multiple acks settle newest first */
            last->seq = seq;
            last->id = msg_id;
            return;
        }
    }
    struct op *o = batch_add(b, OP_REMOVE);
    o->last_seq = seq;
    o->last_id = msg_id;
    o->qid = qid;
    o->seq = seq;
    o->id = msg_id;
    o->flag_a = shared;
}

void store_remove_from(struct store *s, uint64_t qid, uint64_t from_seq)
{
    struct op *o = batch_add(s->open, OP_REMOVE_FROM);
    o->qid = qid;
    o->seq = from_seq;
}

void store_set_delivered(struct store *s, uint64_t qid, uint64_t seq, uint64_t *op_batch, uint32_t *op_handle)
{
    if (*op_batch == s->open->id && *op_handle < s->open->n) {
        struct op *o = &s->open->ops[*op_handle];
        if (o->kind == OP_DELIVERED && o->qid == qid) {
            if (seq > o->seq)
                o->seq = seq;
            return;
        }
    }
    struct op *o = batch_add(s->open, OP_DELIVERED);
    o->qid = qid;
    o->seq = seq;
    *op_batch = s->open->id;
    *op_handle = s->open->n - 1;
}

void store_put_exchange(struct store *s, const struct store_exchange *x)
{
    struct op *o = batch_add(s->open, OP_EXCHANGE);
    o->f[0] = amqp_cstr(x->vhost);
    o->f[1] = x->name;
    o->f[2] = x->type;
    o->f[3] = x->args;
    o->flag_a = x->auto_delete;
    o->flag_b = x->internal;
    batch_own_fields(o);
}

void store_delete_exchange(struct store *s, const char *vhost, amqp_bytes name)
{
    struct op *o = batch_add(s->open, OP_EXCHANGE_DEL);
    o->f[0] = amqp_cstr(vhost);
    o->f[1] = name;
    batch_own_fields(o);
}

void store_put_queue(struct store *s, const struct store_queue *q)
{
    struct op *o = batch_add(s->open, OP_QUEUE);
    o->qid = q->id;
    o->f[0] = amqp_cstr(q->vhost);
    o->f[1] = q->name;
    o->f[2] = q->args;
    o->flag_a = q->auto_delete;
    batch_own_fields(o);
}

void store_delete_queue(struct store *s, uint64_t qid)
{
    struct op *o = batch_add(s->open, OP_QUEUE_DEL);
    o->qid = qid;
}

static void binding_op(struct store *s, enum op_kind kind, const struct store_binding *b)
{
    struct op *o = batch_add(s->open, kind);
    o->f[0] = amqp_cstr(b->vhost);
    o->f[1] = b->source;
    o->f[2] = b->dest;
    o->f[3] = b->rkey;
    o->f[4] = b->args;
    o->flag_a = b->dest_is_exchange;
    batch_own_fields(o);
}

void store_put_binding(struct store *s, const struct store_binding *b) { binding_op(s, OP_BINDING, b); }
void store_delete_binding(struct store *s, const struct store_binding *b) { binding_op(s, OP_BINDING_DEL, b); }

/* ---- handing batches over and hearing back ----------------------------------------- */

void store_submit(struct store *s)
{
    if (s->busy || s->open->n == 0 || !s->thread_started)
        return;
    struct batch *next = s->open == &s->bufs[0] ? &s->bufs[1] : &s->bufs[0];
    next->id = s->open->id + 1;
    pthread_mutex_lock(&s->mu);
    s->handed = s->open;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    s->open = next;
    s->busy = true;
}

void store_reap(struct store *s)
{
    char buf[64];
    while (read(s->notify_r, buf, sizeof buf) > 0)
        ;
    pthread_mutex_lock(&s->mu);
    bool done = s->done;
    bool failing = s->w_failing;
    char why[sizeof s->why];
    memcpy(why, s->why, sizeof why);
    s->done = false;
    pthread_mutex_unlock(&s->mu);
    if (failing != s->failing) {
        s->failing = failing;
        if (failing)
            log_error("store: writing %s failed: %s; retrying every %d ms", s->path, why, RETRY_MS);
        else
            log_info("store: writing %s works again", s->path);
        s->cb.failing(s->cb.arg, failing, why);
    }
    if (done) {
        struct batch *b = s->open == &s->bufs[0] ? &s->bufs[1] : &s->bufs[0];
        s->busy = false;
        s->committed = b->id;
        release_cookies(s, b);
        store_submit(s); /* the next batch first: the callback sees an empty open batch */
        s->cb.committed(s->cb.arg, s->committed);
    }
    store_submit(s);
}

int store_sync(struct store *s, uint64_t *batch)
{
    uint64_t target = store_pending_batch(s);
    *batch = target;
    if (!s->thread_started)
        return -1;
    while (s->committed < target) {
        store_submit(s);
        if (s->failing)
            return -1;
        struct pollfd p = { .fd = s->notify_r, .events = POLLIN };
        if (poll(&p, 1, -1) < 0 && errno != EINTR)
            return -1;
        store_reap(s);
    }
    return 0;
}

/* ---- reads --------------------------------------------------------------------------- */

long store_read_entries(struct store *s, uint64_t qid, uint64_t from_seq, size_t limit,
                        bool (*fn)(void *arg, const struct store_entry *e), void *arg)
{
    sqlite3_stmt *st = s->read_st;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)qid);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)from_seq);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)limit);
    long n = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_entry e = {
            .seq = (uint64_t)sqlite3_column_int64(st, 0),
            .msg_id = (uint64_t)sqlite3_column_int64(st, 1),
            .shared = sqlite3_column_int(st, 2) != 0,
            .exchange = col_bytes(st, 3),
            .rkey = col_bytes(st, 4),
            .props = col_bytes(st, 5),
            .body = col_bytes(st, 6),
            .expires = sqlite3_column_int64(st, 7),
        };
        n++;
        if (!fn(arg, &e)) {
            rc = SQLITE_DONE;
            break;
        }
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        log_error("store: reading queue %llu from %s: %s", (unsigned long long)qid, s->path, sqlite3_errmsg(s->rdb));
        return -1;
    }
    return n;
}
