/* bytes.h: a borrowed, length-delimited view of bytes (not NUL-terminated). */
#ifndef AMQP_BYTES_H
#define AMQP_BYTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    const uint8_t *ptr;
    size_t len;
} amqp_bytes;

/* View of a NUL-terminated C string (without the NUL). NULL gives an empty view. */
static inline amqp_bytes amqp_cstr(const char *s)
{
    amqp_bytes b = { (const uint8_t *)s, s ? strlen(s) : 0 };
    return b;
}

/* View of n bytes at p. */
static inline amqp_bytes amqp_bytes_of(const void *p, size_t n)
{
    amqp_bytes b = { (const uint8_t *)p, n };
    return b;
}

static inline bool amqp_bytes_eq(amqp_bytes a, amqp_bytes b)
{
    if (a.len != b.len)
        return false;
    return a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0;
}

static inline bool amqp_bytes_eq_cstr(amqp_bytes a, const char *s)
{
    return amqp_bytes_eq(a, amqp_cstr(s));
}

#endif
