/* Authentication of connection.start-ok: the PLAIN and AMQPLAIN mechanisms against the
 * broker's users. For now the only user is guest/guest, allowed from loopback only
 * (as RabbitMQ's default loopback_users). */
#ifndef WARREN_AUTH_H
#define WARREN_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "amqp/bytes.h"

enum { AUTH_OK = 0, AUTH_REFUSED = -1, AUTH_UNKNOWN_MECHANISM = -2 };

/* Checks a start-ok response for mechanism mech. Copies the user name (possibly truncated)
 * to user. On refusal, *why says why, for the log (never sent to the client). */
int auth_check(const char *mech, amqp_bytes response, bool from_loopback, char *user, size_t user_size,
               const char **why);

#endif
