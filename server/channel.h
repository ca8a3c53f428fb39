/* A channel: the AMQP methods of the exchange, queue, basic, confirm and tx classes,
 * publish assembly, consumers, unacked deliveries, prefetch, confirms and transactions. */
#ifndef WARREN_CHANNEL_H
#define WARREN_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "amqp/bytes.h"
#include "server/queue.h"

struct connection;
struct channel;
struct message;
struct amqp_method;

struct consumer {
    struct channel *ch;
    struct queue *q;
    char tag[256];
    uint8_t tag_len;
    bool no_ack, exclusive;
    int32_t priority;      /* x-priority argument of basic.consume; default 0 */
    uint16_t prefetch;     /* per-consumer limit; 0 = none */
    uint32_t unacked;      /* deliveries not yet acked */
};

/* A delivery waiting for ack. Removed records stay as holes (q == NULL) until compacted. */
enum { UA_LIVE = 0, UA_TX_ACK, UA_TX_REQUEUE, UA_TX_DROP };
struct unacked {
    uint64_t tag;
    struct queue *q;       /* holds a queue reference; NULL = removed */
    struct consumer *c;    /* NULL for basic.get or after the consumer was cancelled */
    struct qentry e;
    uint8_t tx_action;     /* inside a transaction: what commit will do */
    int64_t delivered_at;  /* ms, when the consumer timeout is on */
    bool counted;          /* counts against the channel-wide prefetch */
};

enum channel_state {
    CH_OPEN,    /* normal operation */
    CH_CLOSING, /* we sent channel.close; everything but close/close-ok is ignored */
};

enum pub_state { PUB_IDLE, PUB_AWAIT_HEADER, PUB_AWAIT_BODY };

/* A reply that waits for the store to commit batch `batch`: the publisher confirm for
 * publishes up to seq, the nack of publish seq, or tx.commit-ok. */
enum wait_kind { WAIT_ACK, WAIT_NACK, WAIT_TX_OK };
struct commit_wait {
    uint64_t batch, seq;
    enum wait_kind kind;
};

struct tx_publish {
    struct message *msg;
    bool mandatory;
};

struct channel {
    struct connection *conn;
    uint16_t id;
    enum channel_state state;

    enum pub_state pub;       /* content of a basic.publish in progress */
    bool pub_mandatory;
    char pub_exchange[256], pub_rkey[256];
    uint8_t pub_exchange_len, pub_rkey_len;
    struct message *pub_msg;

    uint64_t next_tag;        /* last delivery tag used */
    struct unacked *ua;       /* ua[ua_head .. ua_len): ordered by tag */
    size_t ua_head, ua_len, ua_cap, ua_live;
    uint32_t unacked_counted; /* deliveries that count against the channel prefetch */
    uint16_t prefetch_consumer, prefetch_global;

    struct consumer **consumers;
    size_t nconsumers, consumers_cap;

    bool confirm;
    uint64_t publish_seq;     /* last publish sequence number (confirm mode) */
    uint64_t ready_seq;       /* last one routed and ready to be confirmed */
    uint64_t confirmed_seq;   /* last one acked to the client */
    struct commit_wait *waits;  /* oldest first: waits[waits_head .. waits_len) */
    size_t waits_head, waits_len, waits_cap;
    struct channel *wait_next, *wait_prev; /* in the broker's commit_waiters while waits are pending */
    bool tx;
    struct tx_publish *tx_pubs;
    size_t ntx_pubs, tx_pubs_cap;
    bool flow_active;
    char reply_tag[256];      /* direct reply-to: the reply consumer's tag */
    uint8_t reply_tag_len;
    char reply_name[64];      /* "amq.rabbitmq.reply-to.<random>"; length 0 = no reply consumer */
    uint8_t reply_name_len;
    char last_queue[256];     /* for queue methods with an empty name */
    uint8_t last_queue_len;
};

/* Opens channel id on c. Never NULL. */
struct channel *channel_new(struct connection *c, uint16_t id);
/* Requeues unacked deliveries, cancels consumers, drops a publish in progress, frees. */
void channel_free(struct channel **chp);

/* Handles one method frame addressed to this channel. */
void channel_handle_method(struct channel *ch, const struct amqp_method *m);
/* Handles a content header frame (payload after the frame header). */
void channel_handle_header(struct channel *ch, const uint8_t *p, size_t len);
/* For a body frame of size bytes: where to copy it, or NULL after raising the error. */
uint8_t *channel_body_dest(struct channel *ch, size_t size);
/* Called after a body frame's bytes were copied to channel_body_dest(). */
void channel_body_done(struct channel *ch, size_t size);
/* Sends publisher confirms that became ready during this read (one ack with multiple=true). */
void channel_flush_confirms(struct channel *ch);
/* The store committed every batch up to `batch`: sends the confirms and tx.commit-oks
 * that waited for it. */
void channel_committed(struct channel *ch, uint64_t batch);

/* Soft or hard error, chosen by the reply code's class: channel.close or connection.close
 * with "NAME - text" and the offending method's class and method ids. */
void channel_error(struct channel *ch, int code, uint32_t method_id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* True if c may receive one more delivery now (prefetch, flow, output buffer). */
bool consumer_has_credit(const struct consumer *c);
/* Sends one message to consumer c and records it as unacked unless no-ack. Takes e's reference. */
void consumer_deliver(struct consumer *c, struct qentry e);
/* The consumer's queue is being deleted: forget it and send basic.cancel if the client asked. */
void consumer_queue_deleted(struct consumer *c);
/* Consumer timeout: closes the channel with 406 if its oldest unacked delivery is older
 * than timeout_ms at now (ms); its deliveries go back to their queues. */
void consumer_check_timeout(struct channel *ch, int64_t now, uint32_t timeout_ms);
/* Output space is back: wake the queues this channel consumes from. */
void channel_wake_consumers(struct channel *ch);

#endif
