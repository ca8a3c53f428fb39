/* wire.h: bounds-checked big-endian reader over a byte range.
 * Every reader returns 0 on success, -1 if not enough bytes are left; on failure
 * the position is unchanged. Strings are views into the input. */
#ifndef AMQP_WIRE_H
#define AMQP_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "amqp/bytes.h"

struct wire_reader {
    const uint8_t *p;
    size_t len, pos;
};

static inline void wire_init(struct wire_reader *r, const uint8_t *p, size_t len)
{
    r->p = p;
    r->len = p ? len : 0;
    r->pos = 0;
}

static inline size_t wire_left(const struct wire_reader *r)
{
    return r->len - r->pos;
}

static inline int wire_u8(struct wire_reader *r, uint8_t *out)
{
    if (wire_left(r) < 1)
        return -1;
    *out = r->p[r->pos++];
    return 0;
}

static inline int wire_u16(struct wire_reader *r, uint16_t *out)
{
    if (wire_left(r) < 2)
        return -1;
    const uint8_t *q = r->p + r->pos;
    *out = (uint16_t)((uint16_t)q[0] << 8 | q[1]);
    r->pos += 2;
    return 0;
}

static inline int wire_u32(struct wire_reader *r, uint32_t *out)
{
    if (wire_left(r) < 4)
        return -1;
    const uint8_t *q = r->p + r->pos;
    *out = (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3];
    r->pos += 4;
    return 0;
}

static inline int wire_u64(struct wire_reader *r, uint64_t *out)
{
    if (wire_left(r) < 8)
        return -1;
    const uint8_t *q = r->p + r->pos;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | q[i];
    *out = v;
    r->pos += 8;
    return 0;
}

static inline int wire_bytes(struct wire_reader *r, size_t n, amqp_bytes *out)
{
    if (wire_left(r) < n)
        return -1;
    out->ptr = r->p + r->pos;
    out->len = n;
    r->pos += n;
    return 0;
}

static inline int wire_shortstr(struct wire_reader *r, amqp_bytes *out)
{
    size_t save = r->pos;
    uint8_t n;
    if (wire_u8(r, &n) < 0)
        return -1;
    if (wire_bytes(r, n, out) < 0) {
        r->pos = save;
        return -1;
    }
    return 0;
}

static inline int wire_longstr(struct wire_reader *r, amqp_bytes *out)
{
    size_t save = r->pos;
    uint32_t n;
    if (wire_u32(r, &n) < 0)
        return -1;
    if (wire_bytes(r, n, out) < 0) {
        r->pos = save;
        return -1;
    }
    return 0;
}

#endif
