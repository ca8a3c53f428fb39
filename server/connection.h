/* One client connection: reads frames from its socket, runs the handshake, owns its
 * channels, sends frames, heartbeats and closes. */
#ifndef WARREN_CONNECTION_H
#define WARREN_CONNECTION_H

#include <stdbool.h>
#include <stdint.h>

#include "amqp/abuf.h"
#include "amqp/bytes.h"

struct broker;
struct sockaddr;
struct evbuffer;
struct event;
struct channel;
struct vhost;
struct queue;
struct message;
struct amqp_method;

/* How much one read call may take from a socket: about one frame ahead of the parser. */
#define READ_CHUNK (128u * 1024 + 8)
/* The broker's shared input buffer: what a connection left unparsed (an incomplete frame,
 * or the frames after a publish that blocked it) plus one read. */
#define READBUF_SIZE(b) ((size_t)(b)->cfg.frame_max + 8 + READ_CHUNK)

enum conn_state {
    CONN_AWAIT_HEADER,   /* accepted; waiting for the 8-byte protocol header */
    CONN_AWAIT_START_OK, /* connection.start sent; waiting for start-ok (authentication) */
    CONN_AWAIT_TUNE_OK,  /* connection.tune sent; waiting for tune-ok */
    CONN_AWAIT_OPEN,     /* tuned; waiting for connection.open */
    CONN_OPEN,           /* open: channels may be used */
    CONN_CLOSING,        /* we sent connection.close; only close/close-ok are read now */
    CONN_CLOSED,         /* done; the socket closes once the output is flushed */
};

struct connection {
    struct broker *b;
    int fd;
    struct evbuffer *outbuf;
    uint8_t *pending;            /* an incomplete frame left from the last read */
    uint32_t pending_len, pending_cap;
    struct event *read_ev, *write_ev;
    bool flush_pending;          /* in the broker's flush list */
    struct connection *flush_next;
    struct connection *next, *prev;
    char peer[64];
    bool peer_is_loopback;
    enum conn_state state;
    uint16_t channel_max;
    uint32_t frame_max;
    uint16_t heartbeat;
    struct channel **channels;   /* indexed by channel id, grown on demand */
    uint32_t channels_cap;
    struct vhost *vh;
    char user[64];
    bool cap_cancel_notify;      /* client wants basic.cancel when its queue goes */
    bool qos_spec_semantics;     /* client reads basic.qos global=false as channel-wide */
    bool recv_since_tick, sent_since_tick;
    uint8_t missed_ticks;
    struct event *timer;         /* heartbeats; close timeout */
    struct queue **exclusive;    /* exclusive queues owned by this connection */
    uint32_t nexclusive, exclusive_cap;
    struct abuf out;             /* scratch for building frames */
    bool write_blocked;          /* output above the high watermark: deliveries pause */
    bool publisher;              /* has published: held back while the store cannot keep up */
    bool read_paused;            /* not read until the store catches up or the alarm ends */
    bool alarm_blocked;          /* published while an alarm was on: held until none is */
    bool cap_blocked;            /* client understands connection.blocked */
    bool blocked_sent;           /* we sent connection.blocked and owe connection.unblocked */
    uint64_t held_until;         /* output waits for this store batch to commit; 0 = not held */
    bool in_read;                /* inside the read callback: do not free now */
    bool free_pending;
};

/* Accepts a new client socket. */
void conn_accept(struct broker *b, int fd, const struct sockaddr *addr, int addrlen);

/* Sends a method frame. */
void conn_send_method(struct connection *c, uint16_t channel, const struct amqp_method *m);
/* Sends a method frame followed by the message's content header and body frames. */
void conn_send_content(struct connection *c, uint16_t channel, const struct amqp_method *m,
                       struct message *msg);
/* The same with other properties than the message's own (raw flags + list). */
void conn_send_content_props(struct connection *c, uint16_t channel, const struct amqp_method *m,
                             struct message *msg, amqp_bytes props);
/* Hard error: sends connection.close with the reply code and "NAME - text", tears down
 * every channel and ignores further input but close-ok. method_id is the offending method. */
void conn_error(struct connection *c, int code, uint32_t method_id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Server-initiated close for shutdown (320 CONNECTION_FORCED). */
void conn_force_close(struct connection *c, const char *reason);
/* True while the output buffer is below the high watermark. */
bool conn_writable(const struct connection *c);
void conn_add_exclusive(struct connection *c, struct queue *q);
void conn_remove_exclusive(struct connection *c, struct queue *q);
void conn_free(struct connection **cp);
/* An alarm started (server/alarm.h): sends connection.blocked with this reason to the open
 * connections that have published and understand it. They are still read; each is held
 * once it publishes again (channel.c marks it alarm_blocked). */
void conn_notify_blocked(struct broker *b, const char *reason);
/* Reads again from held connections that alarm_holds_publisher no longer holds, including
 * frames left unparsed when they were held; when no alarm is on, sends
 * connection.unblocked where connection.blocked was sent. */
void conn_resume_publishers(struct broker *b);
/* Keeps c's output (a reply to a durable change, and all after it) unsent until store
 * batch `batch` commits. */
void conn_hold_output(struct connection *c, uint64_t batch);
/* Sends the output held for batches up to `committed`. */
void conn_release_output(struct broker *b, uint64_t committed);
/* Writes out every connection's pending frames; the broker calls it once per loop turn. */
void conn_flush_all(struct broker *b);

#endif
