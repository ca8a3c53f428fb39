/* Sender-selected distribution: the CC and BCC headers (arrays of routing keys) route a
 * message with those keys as well as its routing key; BCC is removed before delivery. */
#ifndef WARREN_SENDER_KEYS_H
#define WARREN_SENDER_KEYS_H

#include <stdbool.h>
#include <stddef.h>

#include "amqp/bytes.h"

struct exchange;
struct message;
struct route_result;

/* Checks that CC and BCC, where present, are arrays. Returns 0, or -1 with RabbitMQ's
 * text in err ("invalid message: {unacceptable_type_in_header,\"CC\",longstr}"). */
int sender_keys_check(amqp_bytes headers, char *err, size_t err_size);
/* True if the headers have a CC or BCC entry. */
bool sender_keys_present(amqp_bytes headers);
/* Adds to out (already holding the routing key's queues) the queues that x routes the CC
 * and BCC keys to, each queue once. tmp is scratch. */
void sender_keys_route(struct exchange *x, amqp_bytes headers, struct route_result *out, struct route_result *tmp);
/* The message as it is delivered: a copy without its BCC header (an empty header table
 * stays), or m itself (with a new reference) when it has none. */
struct message *sender_keys_strip_bcc(struct message *m);

#endif
