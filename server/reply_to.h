/* Direct reply-to: a channel consumes the pseudo-queue "amq.rabbitmq.reply-to"; requests
 * it publishes with that reply_to get a per-channel name instead, and replies sent to that
 * name through the default exchange go straight to the channel, with no queue between. */
#ifndef WARREN_REPLY_TO_H
#define WARREN_REPLY_TO_H

#include <stdbool.h>

#include "amqp/bytes.h"

struct broker;
struct channel;
struct message;
struct amqp_basic_consume;
struct amqp_basic_properties;

#define REPLY_TO_QUEUE "amq.rabbitmq.reply-to"

static inline bool reply_to_is_pseudo_queue(amqp_bytes name) { return amqp_bytes_eq_cstr(name, REPLY_TO_QUEUE); }

/* True if name is the reply name of a channel that still has its reply consumer. */
bool reply_to_is_live_name(struct broker *b, amqp_bytes name);
/* basic.consume on the pseudo-queue: no-ack only, one per channel (406 otherwise). */
void reply_to_consume(struct channel *ch, const struct amqp_basic_consume *bc);
/* basic.cancel: true if tag was the channel's reply consumer (now gone). */
bool reply_to_cancel(struct channel *ch, amqp_bytes tag);
/* The channel closes: its reply name stops working. */
void reply_to_channel_gone(struct channel *ch);
/* A publish whose reply_to is the pseudo-queue: points pr->reply_to at the channel's
 * reply name. Returns false after closing the channel (406) if it has no reply consumer. */
bool reply_to_rewrite(struct channel *ch, struct amqp_basic_properties *pr);
/* A publish to the default exchange: if rkey is a reply name, delivers m to its channel
 * (or drops it when that channel is gone) and returns true; false for any other key. */
bool reply_to_route(struct broker *b, amqp_bytes rkey, struct message *m, bool *delivered);

#endif
