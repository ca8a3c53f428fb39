/* Server-generated names: "amq.gen-…" queues and "amq.ctag-…" consumer tags, each with
 * 22 characters of URL-safe base64 from 16 random bytes, as RabbitMQ makes them. */
#ifndef WARREN_NAMES_H
#define WARREN_NAMES_H

#include <stddef.h>

#define NAMES_RANDOM_LEN 22

/* Writes prefix followed by the random part and a NUL into out (size >= strlen(prefix) + 23).
 * Returns the length written. */
size_t names_generate(char *out, size_t size, const char *prefix);

#endif
