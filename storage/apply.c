#include "storage/apply.h"

#include <stdio.h>
#include <stdlib.h>

#include "common/xalloc.h"
#include "server/log.h"
#include "storage/batch.h"

enum stmt_id {
    S_BEGIN, S_COMMIT, S_ROLLBACK,
    S_PUT_MESSAGE, S_PUT_ENTRY, S_DEL_ENTRY, S_DEL_ENTRIES, S_DEL_MESSAGE, S_DEL_MESSAGES, S_DEL_MESSAGE_IF_FREE,
    S_SEL_FROM, S_DEL_FROM, S_DELIVERED,
    S_PUT_EXCHANGE, S_DEL_EXCHANGE, S_DEL_EXCHANGE_BINDINGS,
    S_PUT_QUEUE, S_DEL_QUEUE_BINDINGS, S_DEL_QUEUE,
    S_PUT_BINDING, S_DEL_BINDING,
    S_COUNT
};

static const char *const SQL[S_COUNT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    /* OR REPLACE everywhere: a batch whose commit outcome was unknown may be applied twice. */
    [S_PUT_MESSAGE] = "INSERT OR REPLACE INTO messages (id, exchange, rkey, props, body, transient) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [S_PUT_ENTRY] = "INSERT OR REPLACE INTO entries (queue_id, seq, msg_id, shared, transient, expires, size) "
                   "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [S_DEL_ENTRY] = "DELETE FROM entries WHERE queue_id = ?1 AND seq = ?2",
    [S_DEL_ENTRIES] = "DELETE FROM entries WHERE queue_id = ?1 AND seq BETWEEN ?2 AND ?3",
    [S_DEL_MESSAGE] = "DELETE FROM messages WHERE id = ?1",
    [S_DEL_MESSAGES] = "DELETE FROM messages WHERE id BETWEEN ?1 AND ?2",
    [S_DEL_MESSAGE_IF_FREE] = "DELETE FROM messages WHERE id = ?1 AND NOT EXISTS "
                              "(SELECT 1 FROM entries WHERE msg_id = ?1 AND shared = 1)",
    [S_SEL_FROM] = "SELECT msg_id, shared FROM entries WHERE queue_id = ?1 AND seq >= ?2",
    [S_DEL_FROM] = "DELETE FROM entries WHERE queue_id = ?1 AND seq >= ?2",
    [S_DELIVERED] = "UPDATE queues SET delivered_seq = max(delivered_seq, ?2) WHERE id = ?1",
    [S_PUT_EXCHANGE] = "INSERT OR REPLACE INTO exchanges (vhost, name, type, auto_delete, internal, args) "
                       "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [S_DEL_EXCHANGE] = "DELETE FROM exchanges WHERE vhost = ?1 AND name = ?2",
    [S_DEL_EXCHANGE_BINDINGS] = "DELETE FROM bindings WHERE vhost = ?1 AND (source = ?2 OR (dest = ?2 AND dest_is_exchange = 1))",
    [S_PUT_QUEUE] = "INSERT OR REPLACE INTO queues (id, vhost, name, auto_delete, args, delivered_seq) "
                    "VALUES (?1, ?2, ?3, ?4, ?5, 0)",
    [S_DEL_QUEUE_BINDINGS] = "DELETE FROM bindings WHERE dest_is_exchange = 0 AND (vhost, dest) IN "
                             "(SELECT vhost, name FROM queues WHERE id = ?1)",
    [S_DEL_QUEUE] = "DELETE FROM queues WHERE id = ?1",
    [S_PUT_BINDING] = "INSERT OR REPLACE INTO bindings (vhost, source, dest, dest_is_exchange, rkey, args) "
                      "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [S_DEL_BINDING] = "DELETE FROM bindings WHERE vhost = ?1 AND source = ?2 AND dest = ?3 AND "
                      "dest_is_exchange = ?4 AND rkey = ?5 AND args = ?6",
};

struct applier {
    sqlite3 *db;
    sqlite3_stmt *st[S_COUNT];
    struct { uint64_t id; bool shared; } *held; /* scratch for remove-from */
    size_t nheld, held_cap;
};

struct applier *applier_new(sqlite3 *db)
{
    struct applier *ap = xcalloc(1, sizeof *ap);
    ap->db = db;
    for (int i = 0; i < S_COUNT; i++) {
        if (sqlite3_prepare_v3(db, SQL[i], -1, SQLITE_PREPARE_PERSISTENT, &ap->st[i], NULL) != SQLITE_OK) {
            log_error("store: cannot prepare statement %d: %s", i, sqlite3_errmsg(db));
            applier_free(&ap);
            return NULL;
        }
    }
    return ap;
}

void applier_free(struct applier **app)
{
    struct applier *ap = *app;
    *app = NULL;
    if (!ap)
        return;
    for (int i = 0; i < S_COUNT; i++)
        sqlite3_finalize(ap->st[i]);
    free(ap->held);
    free(ap);
}

static void bind_bytes(sqlite3_stmt *st, int i, amqp_bytes b)
{
    sqlite3_bind_blob64(st, i, b.len ? (const void *)b.ptr : "", b.len, SQLITE_STATIC);
}

static void bind_text(sqlite3_stmt *st, int i, amqp_bytes b)
{
    sqlite3_bind_text64(st, i, b.len ? (const char *)b.ptr : "", b.len, SQLITE_STATIC, SQLITE_UTF8);
}

/* Steps a statement to completion and resets it. Returns SQLITE_OK or the error. */
static int run(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

static int del_message(struct applier *ap, uint64_t id, bool shared)
{
    sqlite3_stmt *st = ap->st[shared ? S_DEL_MESSAGE_IF_FREE : S_DEL_MESSAGE];
    sqlite3_bind_int64(st, 1, (sqlite3_int64)id);
    return run(st);
}

/* Deletes the entries of qid from seq on, then the messages no other queue holds. */
static int remove_from(struct applier *ap, uint64_t qid, uint64_t seq)
{
    sqlite3_stmt *st = ap->st[S_SEL_FROM];
    sqlite3_bind_int64(st, 1, (sqlite3_int64)qid);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)seq);
    ap->nheld = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (ap->nheld == ap->held_cap) {
            ap->held_cap = ap->held_cap ? ap->held_cap * 2 : 1024;
            ap->held = xrealloc_array(ap->held, ap->held_cap, sizeof *ap->held);
        }
        ap->held[ap->nheld].id = (uint64_t)sqlite3_column_int64(st, 0);
        ap->held[ap->nheld].shared = sqlite3_column_int(st, 1) != 0;
        ap->nheld++;
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_DONE)
        return rc;
    st = ap->st[S_DEL_FROM];
    sqlite3_bind_int64(st, 1, (sqlite3_int64)qid);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)seq);
    if ((rc = run(st)) != SQLITE_OK)
        return rc;
    for (size_t i = 0; i < ap->nheld; i++) {
        if ((rc = del_message(ap, ap->held[i].id, ap->held[i].shared)) != SQLITE_OK)
            return rc;
    }
    return SQLITE_OK;
}

static int apply_op(struct applier *ap, const struct batch *b, const struct op *o)
{
    sqlite3_stmt *st;
    int rc;
    switch ((enum op_kind)o->kind) {
    case OP_MESSAGE:
        if (o->live == 0)
            return SQLITE_OK; /* every entry was acked before the write: nothing to store */
        st = ap->st[S_PUT_MESSAGE];
        sqlite3_bind_int64(st, 1, (sqlite3_int64)o->id);
        for (int i = 0; i < 4; i++)
            bind_bytes(st, i + 2, o->f[i]);
        sqlite3_bind_int(st, 6, o->flag_a);
        return run(st);
    case OP_ENTRY:
        st = ap->st[S_PUT_ENTRY];
        sqlite3_bind_int64(st, 1, (sqlite3_int64)o->qid);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)o->seq);
        sqlite3_bind_int64(st, 3, (sqlite3_int64)o->id);
        sqlite3_bind_int(st, 4, o->flag_a);
        sqlite3_bind_int(st, 5, b->ops[o->msg_op].flag_a);
        sqlite3_bind_int64(st, 6, o->expires);
        sqlite3_bind_int64(st, 7, (sqlite3_int64)b->ops[o->msg_op].f[3].len);
        return run(st);
    case OP_REMOVE:
        if (o->last_seq > o->seq) { /* merged unshared removes: entries and messages both consecutive */
            st = ap->st[S_DEL_ENTRIES];
            sqlite3_bind_int64(st, 1, (sqlite3_int64)o->qid);
            sqlite3_bind_int64(st, 2, (sqlite3_int64)o->seq);
            sqlite3_bind_int64(st, 3, (sqlite3_int64)o->last_seq);
            if ((rc = run(st)) != SQLITE_OK)
                return rc;
            st = ap->st[S_DEL_MESSAGES];
            sqlite3_bind_int64(st, 1, (sqlite3_int64)o->id);
            sqlite3_bind_int64(st, 2, (sqlite3_int64)o->last_id);
            return run(st);
        }
        st = ap->st[S_DEL_ENTRY];
        sqlite3_bind_int64(st, 1, (sqlite3_int64)o->qid);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)o->seq);
        if ((rc = run(st)) != SQLITE_OK)
            return rc;
        return del_message(ap, o->id, o->flag_a);
    case OP_REMOVE_FROM:
        return remove_from(ap, o->qid, o->seq);
    case OP_DELIVERED:
        st = ap->st[S_DELIVERED];
        sqlite3_bind_int64(st, 1, (sqlite3_int64)o->qid);
        sqlite3_bind_int64(st, 2, (sqlite3_int64)o->seq);
        return run(st);
    case OP_EXCHANGE:
        st = ap->st[S_PUT_EXCHANGE];
        bind_text(st, 1, o->f[0]);
        bind_bytes(st, 2, o->f[1]);
        bind_text(st, 3, o->f[2]);
        sqlite3_bind_int(st, 4, o->flag_a);
        sqlite3_bind_int(st, 5, o->flag_b);
        bind_bytes(st, 6, o->f[3]);
        return run(st);
    case OP_EXCHANGE_DEL:
        for (int k = S_DEL_EXCHANGE_BINDINGS; k >= S_DEL_EXCHANGE; k--) {
            st = ap->st[k];
            bind_text(st, 1, o->f[0]);
            bind_bytes(st, 2, o->f[1]);
            if ((rc = run(st)) != SQLITE_OK)
                return rc;
        }
        return SQLITE_OK;
    case OP_QUEUE:
        st = ap->st[S_PUT_QUEUE];
        sqlite3_bind_int64(st, 1, (sqlite3_int64)o->qid);
        bind_text(st, 2, o->f[0]);
        bind_bytes(st, 3, o->f[1]);
        sqlite3_bind_int(st, 4, o->flag_a);
        bind_bytes(st, 5, o->f[2]);
        return run(st);
    case OP_QUEUE_DEL:
        if ((rc = remove_from(ap, o->qid, 0)) != SQLITE_OK)
            return rc;
        for (int k = S_DEL_QUEUE_BINDINGS; k <= S_DEL_QUEUE; k++) {
            st = ap->st[k];
            sqlite3_bind_int64(st, 1, (sqlite3_int64)o->qid);
            if ((rc = run(st)) != SQLITE_OK)
                return rc;
        }
        return SQLITE_OK;
    case OP_BINDING:
    case OP_BINDING_DEL:
        st = ap->st[o->kind == OP_BINDING ? S_PUT_BINDING : S_DEL_BINDING];
        bind_text(st, 1, o->f[0]);
        bind_bytes(st, 2, o->f[1]);
        bind_bytes(st, 3, o->f[2]);
        sqlite3_bind_int(st, 4, o->flag_a);
        bind_bytes(st, 5, o->f[3]);
        bind_bytes(st, 6, o->f[4]);
        return run(st);
    }
    return SQLITE_MISUSE;
}

int applier_run(struct applier *ap, const struct batch *b, char *why, size_t why_size)
{
    int rc = run(ap->st[S_BEGIN]);
    const char *stage = "begin";
    for (uint32_t i = 0; rc == SQLITE_OK && i < b->n; i++) {
        if (!b->ops[i].cancelled)
            rc = apply_op(ap, b, &b->ops[i]);
        stage = "write";
    }
    if (rc == SQLITE_OK) {
        rc = run(ap->st[S_COMMIT]);
        stage = "commit";
    }
    if (rc == SQLITE_OK)
        return SQLITE_OK;
    snprintf(why, why_size, "%s failed: %s (%s)", stage, sqlite3_errmsg(ap->db), sqlite3_errstr(rc));
    if (!sqlite3_get_autocommit(ap->db))
        run(ap->st[S_ROLLBACK]);
    return rc;
}
