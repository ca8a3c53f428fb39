/* Internal interface between the channel's files: channel.c (lifecycle, publish, confirms,
 * tx), entities.c (exchange.* and queue.*) and consumer.c (basic.* deliveries and acks). */
#ifndef WARREN_CHANNEL_PRIV_H
#define WARREN_CHANNEL_PRIV_H

#include "server/channel.h"

struct amqp_method;

/* entities.c: exchange.* and queue.* methods. */
void entities_handle(struct channel *ch, const struct amqp_method *m);
/* Finds the queue a method names ("" = the channel's last declared queue) and checks that
 * this connection may use it. Returns NULL after raising 404 or 405. */
struct queue *channel_use_queue(struct channel *ch, amqp_bytes name, uint32_t method_id);

/* consumer.c: basic.qos/consume/cancel/get/ack/nack/reject/recover. */
void consumer_handle(struct channel *ch, const struct amqp_method *m);
/* Requeues every unacked delivery and cancels every consumer of the channel. */
void consumer_release_all(struct channel *ch);
/* tx.commit / tx.rollback of the acks recorded in a transaction. */
void consumer_tx_commit(struct channel *ch);
void consumer_tx_rollback(struct channel *ch);

#endif
