/* The broker: the event loop, the listener, the connections and the vhosts, and the
 * once-per-loop-turn dispatch of queues that have work. */
#ifndef WARREN_BROKER_H
#define WARREN_BROKER_H

#include <stdbool.h>
#include <stdint.h>

#include "amqp/bytes.h"
#include "server/config.h"
#include "server/exchange.h"
#include "common/xmap.h"
#include "amqp/abuf.h"

struct event_base;
struct event;
struct evconnlistener;
struct connection;
struct queue;
struct vhost;
struct store;
struct channel;

struct broker {
    struct config cfg;
    struct event_base *base;
    struct evconnlistener *listener;
    struct vhost *vhost;          /* "/" : the only vhost for now */
    struct connection *conns;     /* all live connections */
    unsigned nconns;
    struct store *store;          /* durable state; NULL once closed */
    struct event *store_ev;       /* the store's notifications */
    struct channel *commit_waiters; /* channels with replies waiting for a commit */
    struct queue **page_waiters;  /* queues whose paged-out entries wait for a commit */
    size_t npage_waiters, page_waiters_cap;
    bool store_sync_needed;       /* a durable entity changed: commit before replying */
    struct connection *sync_conn; /* the connection whose reply waits for that commit */
    unsigned nheld;               /* connections whose output is held for a commit */
    bool disk_alarm;              /* writes fail: publishers are blocked (server/alarm.h) */
    bool memory_alarm;            /* messages hold more than memory_limit bytes: the same */
    uint64_t memory_limit;
    struct event *memory_ev;      /* rechecks memory while the memory alarm is on */
    uint64_t next_message_id;
    uint64_t next_queue_id;
    uint64_t route_gen;           /* routing dedup marks */
    struct route_result route;    /* reused by every publish */
    struct route_result route_extra; /* scratch for CC/BCC keys */
    struct xmap reply_channels;   /* direct reply-to: reply name -> channel */
    struct abuf scratch;          /* per-delivery properties (x-delivery-count) */
    struct queue *dirty;          /* queues waiting for a dispatch pass */
    struct connection *flush_list; /* connections with frames to write this turn */
    uint8_t *readbuf;             /* shared input buffer of READBUF_SIZE (connection.h) */
    struct event *dispatch_ev;
    struct event *sigint_ev, *sigterm_ev, *stop_ev;
    struct event *timeout_ev;     /* consumer timeout checks, when configured */
    bool stopping;
};

/* Sets up the event loop and the listener. Returns 0, or -1 after logging why. */
int broker_init(struct broker *b, const struct config *cfg);
/* Runs until SIGINT/SIGTERM, then closes every connection with 320 CONNECTION_FORCED. */
int broker_run(struct broker *b);
void broker_free(struct broker *b);

struct vhost *broker_find_vhost(struct broker *b, amqp_bytes name);
/* Makes the end-of-turn callback (dispatch, then flush) run in this loop turn. */
void broker_wake(struct broker *b);
/* Adds q to the list dispatched later in this loop turn. */
void broker_mark_dirty(struct broker *b, struct queue *q);
/* Called by a connection when it is freed, so a stopping broker can exit early. */
void broker_connection_gone(struct broker *b, struct connection *c);

#endif
