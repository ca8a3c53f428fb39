/* abuf.c: growable output byte buffer. */
#include "amqp/abuf.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Noreturn void amqp_oom(void)
{
    fputs("warren: out of memory\n", stderr);
    abort();
}

void abuf_init(struct abuf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void abuf_free(struct abuf *b)
{
    free(b->data);
    abuf_init(b);
}

void abuf_reset(struct abuf *b)
{
    b->len = 0;
}

/* Makes room for extra more bytes, growing the capacity geometrically.
 * A size that would overflow is treated like an allocation failure. */
void abuf_reserve(struct abuf *b, size_t extra)
{
    if (b->cap - b->len >= extra)
        return;
    if (extra > SIZE_MAX / 2 - b->len)
        amqp_oom();
    size_t need = b->len + extra;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    uint8_t *p = realloc(b->data, cap);
    if (!p)
        amqp_oom();
    b->data = p;
    b->cap = cap;
}

void abuf_u8(struct abuf *b, uint8_t v)
{
    abuf_reserve(b, 1);
    b->data[b->len++] = v;
}

void abuf_u16(struct abuf *b, uint16_t v)
{
    abuf_reserve(b, 2);
    b->data[b->len++] = (uint8_t)(v >> 8);
    b->data[b->len++] = (uint8_t)v;
}

void abuf_u32(struct abuf *b, uint32_t v)
{
    abuf_reserve(b, 4);
    abuf_put_u32_at(b, b->len, v);
    b->len += 4;
}

void abuf_u64(struct abuf *b, uint64_t v)
{
    abuf_reserve(b, 8);
    for (int i = 7; i >= 0; i--)
        b->data[b->len++] = (uint8_t)(v >> (8 * i));
}

void abuf_bytes(struct abuf *b, const void *p, size_t n)
{
    if (n == 0)
        return;
    abuf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

/* A longer string is a caller bug (asserted); without assertions it is cut to
 * 255 bytes so that the output stays well-formed. */
void abuf_shortstr(struct abuf *b, amqp_bytes s)
{
    assert(s.len <= 255);
    size_t n = s.len <= 255 ? s.len : 255;
    abuf_u8(b, (uint8_t)n);
    abuf_bytes(b, s.ptr, n);
}

void abuf_longstr(struct abuf *b, amqp_bytes s)
{
    assert(s.len <= UINT32_MAX);
    abuf_u32(b, (uint32_t)s.len);
    abuf_bytes(b, s.ptr, s.len);
}

/* Writes into already reserved memory: offset + 4 must be <= cap (callers write
 * either inside len, or at len right after abuf_reserve). */
void abuf_put_u32_at(struct abuf *b, size_t offset, uint32_t v)
{
    assert(offset <= b->cap && b->cap - offset >= 4);
    b->data[offset] = (uint8_t)(v >> 24);
    b->data[offset + 1] = (uint8_t)(v >> 16);
    b->data[offset + 2] = (uint8_t)(v >> 8);
    b->data[offset + 3] = (uint8_t)v;
}
