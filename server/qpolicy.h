/* What a queue's arguments do to the messages in it: message TTL (per queue, per
 * message, TTL 0), the expiry timer that removes expired messages without waiting for a
 * consumer, and length limits with their overflow behaviour. */
#ifndef WARREN_QPOLICY_H
#define WARREN_QPOLICY_H

#include <stdbool.h>
#include <stdint.h>

#include "server/queue.h"

struct message;

/* Wall-clock milliseconds since the epoch (expiry times survive restarts). */
int64_t qpolicy_now(void);
/* True if e has expired: its expiry time is in the past. */
static inline bool qpolicy_expired(const struct qentry *e, int64_t now) { return e->expires_at && e->expires_at < now; }

/* Before m enters q: false if x-overflow refuses it (reject-publish; reject-publish-dlx
 * also dead-letters it). drop-head admits it and trims afterwards. */
bool qpolicy_admit(struct queue *q, struct message *m);
/* Sets e->expires_at for a new entry. Returns false if it expires at once (TTL 0 and no
 * consumer can take it now). Sets *deliver_now for a TTL-0 message that a consumer can
 * take: it must be dispatched before this turn ends. */
bool qpolicy_stamp(struct queue *q, struct qentry *e, bool *deliver_now);
/* After an entry entered q: drops (dead-letters, reason maxlen) heads beyond the limits. */
void qpolicy_trim(struct queue *q);
/* Makes sure the expiry timer fires by expires_at (ms since the epoch). */
void qpolicy_arm(struct queue *q, int64_t expires_at);
/* x-expires: q was used (declared, basic.get, lost its last consumer): restarts the
 * countdown after which an unused queue is deleted. */
void qpolicy_touch(struct queue *q);
/* Frees the timers (queue teardown). */
void qpolicy_free(struct queue *q);

#endif
