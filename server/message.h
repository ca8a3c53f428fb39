/* A published message: exchange, routing key, content properties and body, stored once
 * and shared by reference count between every queue and delivery that holds it. */
#ifndef WARREN_MESSAGE_H
#define WARREN_MESSAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "amqp/bytes.h"

/* RabbitMQ's default max_message_size (128 MiB); bodies above it are refused with 406. */
#define MESSAGE_MAX_BODY (128u * 1024 * 1024)
/* Bodies up to this size share the message's allocation; larger ones get their own. */
#define MESSAGE_INLINE_BODY (64u * 1024)

struct message {
    uint32_t refs;
    uint8_t exchange_len, rkey_len;
    uint8_t delivery_mode; /* 2 = persistent */
    uint8_t priority;
    int64_t ttl;           /* from the expiration property, ms; -1 = none */
    uint32_t props_len;    /* raw property flags + list, as the publisher sent them */
    uint32_t headers_off, headers_len; /* headers table inside the raw properties */
    bool has_headers;
    bool store_shared;     /* stored with entries in more than one queue */
    uint32_t store_op;     /* its insert in batch store_batch (see storage/store.h) */
    uint64_t store_batch;  /* 0 = not written by this process */
    uint64_t id;
    uint64_t body_len;
    uint64_t body_received; /* while the body frames arrive */
    uint8_t *body;
    uint8_t data[];         /* exchange name, routing key, raw properties, small bodies */
};

struct amqp_basic_properties;

/* Creates a message with refs = 1 and an uninitialised body of body_len bytes.
 * props/props_len are the raw property bytes that pr was decoded from. Never NULL. */
struct message *message_new(uint64_t id, amqp_bytes exchange, amqp_bytes rkey,
                            const uint8_t *props, size_t props_len,
                            const struct amqp_basic_properties *pr, uint64_t body_len);
/* The longest TTL RabbitMQ accepts (ten years), for expiration as for x-message-ttl. */
#define MESSAGE_MAX_TTL_MS 315360000000LL
/* Reads the expiration property: an integer of ms, optionally signed, nothing else.
 * Returns 0 and sets *ms, or -1 with RabbitMQ's reason (if reason is not NULL) ("no_integer",
 * "{leftover_string,\".5\"}", "{value_negative,-1}", "{value_too_large,N}"). */
int message_parse_expiration(amqp_bytes s, int64_t *ms, char *reason, size_t size);
static inline struct message *message_ref(struct message *m) { m->refs++; return m; }
/* Drops one reference; frees the message at zero. Sets *mp to NULL. */
void message_unref(struct message **mp);
/* Bytes held by all live messages (header, names, properties, body), for the memory
 * alarm. Messages live on the event loop's thread only. */
uint64_t message_memory(void);

static inline amqp_bytes message_exchange(const struct message *m)
{ return amqp_bytes_of(m->data, m->exchange_len); }
static inline amqp_bytes message_rkey(const struct message *m)
{ return amqp_bytes_of(m->data + m->exchange_len, m->rkey_len); }
static inline amqp_bytes message_props(const struct message *m)
{ return amqp_bytes_of(m->data + m->exchange_len + m->rkey_len, m->props_len); }
static inline amqp_bytes message_headers(const struct message *m)
{ return amqp_bytes_of(m->data + m->exchange_len + m->rkey_len + m->headers_off, m->headers_len); }

#endif
