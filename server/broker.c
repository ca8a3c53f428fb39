#include "server/broker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/xalloc.h"
#include "server/alarm.h"
#include "server/connection.h"
#include "server/log.h"
#include "server/persist.h"
#include "server/channel.h"
#include "server/qpolicy.h"
#include "server/queue.h"
#include "server/vhost.h"

/* How long a stopping broker waits for clients to answer connection.close. */
#define SHUTDOWN_GRACE_MS 1000

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *addr, int len, void *arg)
{
    (void)l;
    conn_accept(arg, fd, addr, len);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
    (void)l;
    (void)arg;
    log_error("accept failed: %s", strerror(errno));
}

/* Runs once per loop turn after the I/O callbacks: dispatches the queues that gained
 * messages or consumer credit, hands the turn's writes to the store, looks at message
 * memory, then writes every connection's output in one go. */
static void on_dispatch(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct broker *b = arg;
    while (b->dirty) {
        struct queue *q = b->dirty;
        b->dirty = q->dirty_next;
        q->dirty = false;
        q->dirty_next = NULL;
        if (!q->deleted)
            queue_dispatch(q);
        queue_unref(&q);
    }
    persist_end_of_turn(b);
    alarm_check_memory(b);
    conn_flush_all(b);
}

void broker_wake(struct broker *b) { event_active(b->dispatch_ev, EV_TIMEOUT, 0); }

void broker_mark_dirty(struct broker *b, struct queue *q)
{
    if (q->dirty)
        return;
    q->dirty = true;
    queue_ref(q);
    q->dirty_next = b->dirty;
    b->dirty = q;
    broker_wake(b);
}

/* Consumer timeout: looks at every channel's oldest unacked delivery. */
static void on_timeout_check(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct broker *b = arg;
    int64_t now = qpolicy_now();
    for (struct connection *c = b->conns; c; c = c->next) {
        if (c->state != CONN_OPEN)
            continue;
        for (uint32_t i = 0; i < c->channels_cap; i++) {
            if (c->channels[i])
                consumer_check_timeout(c->channels[i], now, b->cfg.consumer_timeout_ms);
        }
    }
}

static void on_stop_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct broker *b = arg;
    event_base_loopexit(b->base, NULL);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct broker *b = arg;
    if (b->stopping) {
        log_warn("second signal %d: exiting now", (int)sig);
        event_base_loopexit(b->base, NULL);
        return;
    }
    b->stopping = true;
    log_info("signal %d: shutting down, closing %u connection(s)", (int)sig, b->nconns);
    evconnlistener_disable(b->listener);
    for (struct connection *c = b->conns, *next; c; c = next) {
        next = c->next;
        conn_force_close(c, "shutdown");
    }
    if (b->nconns == 0) {
        event_base_loopexit(b->base, NULL);
        return;
    }
    struct timeval tv = { SHUTDOWN_GRACE_MS / 1000, (SHUTDOWN_GRACE_MS % 1000) * 1000 };
    evtimer_add(b->stop_ev, &tv);
}

void broker_connection_gone(struct broker *b, struct connection *c)
{
    (void)c;
    if (b->stopping && b->nconns == 0)
        event_base_loopexit(b->base, NULL);
}

struct vhost *broker_find_vhost(struct broker *b, amqp_bytes name)
{
    return amqp_bytes_eq_cstr(name, b->vhost->name) ? b->vhost : NULL;
}

int broker_init(struct broker *b, const struct config *cfg)
{
    memset(b, 0, sizeof *b);
    b->cfg = *cfg;
    signal(SIGPIPE, SIG_IGN);
    b->base = event_base_new();
    if (!b->base) {
        log_error("cannot create the event loop");
        return -1;
    }
    xmap_init(&b->reply_channels);
    abuf_init(&b->scratch);
    b->vhost = vhost_new(b, "/");
    alarm_init(b);
    if (persist_open(b) != 0)
        return -1;
    b->readbuf = xmalloc(READBUF_SIZE(b));
    b->dispatch_ev = event_new(b->base, -1, 0, on_dispatch, b);
    b->stop_ev = evtimer_new(b->base, on_stop_timeout, b);
    b->sigint_ev = evsignal_new(b->base, SIGINT, on_signal, b);
    b->sigterm_ev = evsignal_new(b->base, SIGTERM, on_signal, b);
    if (cfg->consumer_timeout_ms) {
        /* Checked a few times per timeout, at most every second, at least every 100 ms. */
        long ms = cfg->consumer_timeout_ms / 4;
        ms = ms > 1000 ? 1000 : ms < 100 ? 100 : ms;
        struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
        b->timeout_ev = event_new(b->base, -1, EV_PERSIST, on_timeout_check, b);
        event_add(b->timeout_ev, &tv);
    }
    event_add(b->sigint_ev, NULL);
    event_add(b->sigterm_ev, NULL);

    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    int sslen;
    struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, cfg->bind, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)cfg->port);
        sslen = sizeof *in4;
    } else if (inet_pton(AF_INET6, cfg->bind, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)cfg->port);
        sslen = sizeof *in6;
    } else {
        log_error("--bind: '%s' is not an IPv4 or IPv6 address", cfg->bind);
        return -1;
    }
    b->listener = evconnlistener_new_bind(b->base, on_accept, b,
                                          LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
                                          1024, (struct sockaddr *)&ss, sslen);
    if (!b->listener) {
        log_error("cannot listen on %s:%d: %s", cfg->bind, cfg->port, strerror(errno));
        return -1;
    }
    evconnlistener_set_error_cb(b->listener, on_accept_error);
    log_info("warren %s listening on %s:%d (data directory %s)", WARREN_VERSION, cfg->bind, cfg->port,
             cfg->data_dir);
    return 0;
}

int broker_run(struct broker *b)
{
    event_base_dispatch(b->base);
    log_info("stopped");
    return 0;
}

void broker_free(struct broker *b)
{
    /* Freeing the signal events restores the default actions; a repeated signal must not
     * kill the clean-up half way, so ignore them from here on. */
    if (b->sigint_ev)
        event_free(b->sigint_ev);
    if (b->sigterm_ev)
        event_free(b->sigterm_ev);
    b->sigint_ev = b->sigterm_ev = NULL;
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    while (b->conns) {
        struct connection *c = b->conns;
        conn_free(&c);
    }
    on_dispatch(-1, 0, b);
    persist_close(b); /* before the vhost goes: tearing it down is not a deletion */
    on_dispatch(-1, 0, b); /* queues the last commits woke up */
    vhost_free(&b->vhost);
    route_result_free(&b->route);
    route_result_free(&b->route_extra);
    xmap_free(&b->reply_channels);
    abuf_free(&b->scratch);
    free(b->readbuf);
    if (b->listener)
        evconnlistener_free(b->listener);
    if (b->dispatch_ev)
        event_free(b->dispatch_ev);
    if (b->stop_ev)
        event_free(b->stop_ev);
    if (b->timeout_ev)
        event_free(b->timeout_ev);
    alarm_free(b);
    if (b->base)
        event_base_free(b->base);
    memset(b, 0, sizeof *b);
}
