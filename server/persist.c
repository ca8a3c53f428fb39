#include "server/persist.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"
#include "server/alarm.h"
#include "server/broker.h"
#include "server/channel.h"
#include "server/connection.h"
#include "server/exchange.h"
#include "server/log.h"
#include "server/message.h"
#include "server/qpolicy.h"
#include "server/queue.h"
#include "server/vhost.h"
#include "storage/store.h"

/* Above this much waiting for the writer, publishers are not read and stored queues do
 * not deliver until a commit lands: it bounds memory when clients outrun the disk. */
#define BACKLOG_HOLD_BYTES (16u * 1024 * 1024)

/* ---- store callbacks ------------------------------------------------------------------- */

static void on_committed(void *arg, uint64_t batch)
{
    struct broker *b = arg;
    for (struct channel *ch = b->commit_waiters, *next; ch; ch = next) {
        next = ch->wait_next;
        channel_committed(ch, batch);
    }
    size_t n = b->npage_waiters;
    b->npage_waiters = 0;
    for (size_t i = 0; i < n; i++) {
        struct queue *q = b->page_waiters[i];
        q->awaiting_commit = false;
        queue_wake(q);
        queue_unref(&q);
    }
    conn_release_output(b, batch);
    conn_resume_publishers(b);
    broker_wake(b);
}

static void on_failing(void *arg, bool failing, const char *why)
{
    (void)why;
    alarm_set_disk(arg, failing);
}

static void on_release(void *arg, void *cookie)
{
    (void)arg;
    struct message *m = cookie;
    message_unref(&m);
}

static void on_store_event(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct broker *b = arg;
    if (b->store)
        store_reap(b->store);
}

/* ---- recovery -------------------------------------------------------------------------- */

static void recover_exchange(void *arg, const struct store_exchange *sx)
{
    struct broker *b = arg;
    struct vhost *vh = broker_find_vhost(b, amqp_cstr(sx->vhost));
    const struct xtype *type = xtype_find(sx->type);
    if (!vh || !type) {
        log_warn("store: skipping exchange '%.*s' (vhost '%s', type '%.*s'): %s", (int)sx->name.len,
                 (const char *)sx->name.ptr, sx->vhost, (int)sx->type.len, (const char *)sx->type.ptr,
                 vh ? "unknown type" : "unknown vhost");
        return;
    }
    if (vhost_exchange(vh, sx->name))
        return;
    struct exchange *x = exchange_new(vh, sx->name, type, true, sx->auto_delete, sx->internal, sx->args);
    vhost_add_exchange(vh, x);
}

static void recover_queue(void *arg, const struct store_queue *sq)
{
    struct broker *b = arg;
    struct vhost *vh = broker_find_vhost(b, amqp_cstr(sq->vhost));
    if (!vh || vhost_queue(vh, sq->name)) {
        log_warn("store: skipping queue '%.*s' in vhost '%s'", (int)sq->name.len, (const char *)sq->name.ptr,
                 sq->vhost);
        return;
    }
    struct queue *q = queue_new(vh, sq->name, true, false, sq->auto_delete, NULL, sq->args);
    q->store_id = sq->id;
    q->disk_count = sq->count;
    q->disk_seq = sq->first_seq;
    q->next_seq = sq->next_seq;
    q->delivered_seq = sq->delivered_seq;
    q->disk_bytes = sq->bytes;
    vhost_add_queue(vh, q);
    if (sq->first_expiry)
        qpolicy_arm(q, sq->first_expiry);
    qpolicy_touch(q); /* x-expires counts again from the restart */
    binding_add(vh->default_exchange, q, false, &q->incoming, sq->name, amqp_cstr(""));
    if (sq->count)
        log_info("store: queue '%.*s' recovered with %llu messages", (int)sq->name.len, (const char *)sq->name.ptr,
                 (unsigned long long)sq->count);
}

static void recover_binding(void *arg, const struct store_binding *sb)
{
    struct broker *b = arg;
    struct vhost *vh = broker_find_vhost(b, amqp_cstr(sb->vhost));
    struct exchange *src = vh ? vhost_exchange(vh, sb->source) : NULL;
    void *dest = !vh ? NULL : sb->dest_is_exchange ? (void *)vhost_exchange(vh, sb->dest) : (void *)vhost_queue(vh, sb->dest);
    if (!src || !dest) {
        log_warn("store: skipping binding '%.*s' -> '%.*s': an end is missing", (int)sb->source.len,
                 (const char *)sb->source.ptr, (int)sb->dest.len, (const char *)sb->dest.ptr);
        return;
    }
    if (binding_find(src, dest, sb->rkey, sb->args))
        return;
    struct binding **incoming = sb->dest_is_exchange ? &((struct exchange *)dest)->incoming
                                                     : &((struct queue *)dest)->incoming;
    binding_add(src, dest, sb->dest_is_exchange, incoming, sb->rkey, sb->args);
}

int persist_sync_now(struct broker *b)
{
    uint64_t target;
    return b->store ? store_sync(b->store, &target) : -1;
}

void persist_reply_waits(struct connection *c)
{
    struct broker *b = c->b;
    if (b->store_sync_needed)
        b->sync_conn = c;
}

int persist_open(struct broker *b)
{
    struct store_callbacks cb = { on_committed, on_failing, on_release, b };
    b->store = store_open(b->cfg.data_dir, &cb);
    if (!b->store)
        return -1;
    struct store_recovery r = { recover_exchange, recover_queue, recover_binding, b };
    if (store_recover(b->store, &r, &b->next_message_id, &b->next_queue_id) != 0)
        return -1;
    b->store_ev = event_new(b->base, store_notify_fd(b->store), EV_READ | EV_PERSIST, on_store_event, b);
    event_add(b->store_ev, NULL);
    return 0;
}

void persist_close(struct broker *b)
{
    if (b->store_ev)
        event_free(b->store_ev);
    b->store_ev = NULL;
    store_close(&b->store);
    while (b->npage_waiters)
        queue_unref(&b->page_waiters[--b->npage_waiters]);
    free(b->page_waiters);
    b->page_waiters = NULL;
    b->page_waiters_cap = 0;
}

void persist_end_of_turn(struct broker *b)
{
    if (!b->store)
        return;
    if (b->store_sync_needed) {
        b->store_sync_needed = false;
        struct connection *c = b->sync_conn;
        b->sync_conn = NULL;
        uint64_t target;
        if (store_sync(b->store, &target) != 0 && c) {
            /* The change waits in the failing batch: so does the reply, and all after it. */
            log_warn("store: connection %s: a durable change is not on disk yet; its reply waits", c->peer);
            conn_hold_output(c, target);
        }
        return;
    }
    store_submit(b->store);
}

/* ---- entities -------------------------------------------------------------------------- */

/* The store for an entity change; the change commits at the end of this loop turn. */
static struct store *writable(struct broker *b)
{
    if (b->store) {
        b->store_sync_needed = true;
        broker_wake(b); /* nowait methods and teardown send no reply that would */
    }
    return b->store;
}

void persist_exchange_added(struct exchange *x)
{
    struct store *s;
    if (!x->durable || x->builtin || !(s = writable(x->vh->broker)))
        return;
    struct store_exchange sx = {
        .vhost = x->vh->name, .name = exchange_name(x), .type = amqp_cstr(x->type->name),
        .args = amqp_bytes_of(x->args, x->args_len), .auto_delete = x->auto_delete, .internal = x->internal,
    };
    store_put_exchange(s, &sx);
}

void persist_exchange_deleted(struct exchange *x)
{
    struct store *s;
    if (!x->durable || x->builtin || !(s = writable(x->vh->broker)))
        return;
    store_delete_exchange(s, x->vh->name, exchange_name(x));
}

void persist_queue_added(struct queue *q)
{
    struct broker *b = q->vh->broker;
    struct store *s;
    if (!q->durable || q->exclusive || !(s = writable(b)))
        return;
    q->store_id = ++b->next_queue_id;
    struct store_queue sq = {
        .id = q->store_id, .vhost = q->vh->name, .name = queue_name(q),
        .args = amqp_bytes_of(q->args, q->args_len), .auto_delete = q->auto_delete,
    };
    store_put_queue(s, &sq);
}

void persist_queue_deleted(struct queue *q)
{
    struct store *s;
    if (!q->store_id || !(s = writable(q->vh->broker)))
        return;
    store_delete_queue(s, q->store_id);
}

void persist_queue_purged(struct queue *q)
{
    if (q->store_id)
        writable(q->vh->broker);
}

static bool binding_durable(const struct binding *bd)
{
    if (bd->source->is_default || !bd->source->durable)
        return false;
    if (bd->dest_is_exchange)
        return ((const struct exchange *)bd->xb.dest)->durable;
    return ((const struct queue *)bd->xb.dest)->store_id != 0;
}

void persist_binding(struct binding *bd, bool added)
{
    struct store *s;
    if (!binding_durable(bd) || !(s = writable(bd->source->vh->broker)))
        return;
    struct store_binding sb = {
        .vhost = bd->source->vh->name,
        .source = exchange_name(bd->source),
        .dest = bd->dest_is_exchange ? exchange_name(bd->xb.dest) : queue_name(bd->xb.dest),
        .rkey = bd->xb.key,
        .args = bd->xb.args,
        .dest_is_exchange = bd->dest_is_exchange,
    };
    if (added)
        store_put_binding(s, &sb);
    else
        store_delete_binding(s, &sb);
}

/* ---- paging and publishers ------------------------------------------------------------- */

void persist_wait_commit(struct queue *q)
{
    struct broker *b = q->vh->broker;
    if (q->awaiting_commit)
        return;
    if (b->npage_waiters == b->page_waiters_cap) {
        b->page_waiters_cap = b->page_waiters_cap ? b->page_waiters_cap * 2 : 8;
        b->page_waiters = xrealloc_array(b->page_waiters, b->page_waiters_cap, sizeof *b->page_waiters);
    }
    queue_ref(q);
    q->awaiting_commit = true;
    b->page_waiters[b->npage_waiters++] = q;
}

bool persist_backlog_full(const struct broker *b)
{
    return b->store && store_backlog(b->store) >= BACKLOG_HOLD_BYTES;
}

bool persist_hold_deliveries(struct queue *q)
{
    const struct broker *b = q->vh->broker;
    if (!q->store_id || !b->store || store_backlog(b->store) < BACKLOG_HOLD_BYTES)
        return false;
    persist_wait_commit(q);
    return true;
}
