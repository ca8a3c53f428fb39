/* The queue arguments Warren acts on, parsed and checked once at queue.declare (and at
 * recovery): TTLs, expiry, length limits and overflow, dead-lettering, priorities,
 * delivery limit, single active consumer. */
#ifndef WARREN_QARGS_H
#define WARREN_QARGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "amqp/bytes.h"

enum overflow { OVERFLOW_DROP_HEAD, OVERFLOW_REJECT_PUBLISH, OVERFLOW_REJECT_PUBLISH_DLX };

struct qargs {
    int64_t message_ttl;       /* ms, -1 = none */
    int64_t expires;           /* ms, -1 = none */
    int64_t max_length;        /* messages, -1 = none */
    int64_t max_length_bytes;  /* body bytes, -1 = none */
    enum overflow overflow;
    bool has_dlx, has_dlrk;
    amqp_bytes dlx, dlrk;      /* views into the queue's arguments table */
    uint8_t max_priority;      /* 0 = not a priority queue */
    int64_t delivery_limit;    /* -1 = none */
    bool delivery_count_header; /* deliveries carry x-delivery-count (quorum type or a delivery limit) */
    bool quorum;               /* x-queue-type quorum: must be durable */
    bool single_active_consumer;
};

/* Parses args (a validated table; the views in out point into it). Returns 0, or -1 with
 * err holding RabbitMQ's text (after "PRECONDITION_FAILED - "), e.g. "invalid arg
 * 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}"; who names the queue
 * as in "queue 'q' in vhost '/'". Checks run in RabbitMQ's order. */
int qargs_parse(amqp_bytes args, struct qargs *out, const char *who, char *err, size_t err_size);

/* RabbitMQ's name for a field type tag ("longstr", "signedint", ...), as its error
 * texts print them. */
const char *qargs_type_name(uint8_t tag);

#endif
