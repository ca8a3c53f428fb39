/* abuf.h: growable output byte buffer with big-endian writers.
 * Writers never fail: running out of memory calls abort() (amqp_oom). */
#ifndef AMQP_ABUF_H
#define AMQP_ABUF_H

#include <stddef.h>
#include <stdint.h>

#include "amqp/bytes.h"

struct abuf {
    uint8_t *data;
    size_t len, cap;
};

/* Called when an allocation fails or a size would overflow: aborts. */
_Noreturn void amqp_oom(void);

void abuf_init(struct abuf *b);
void abuf_free(struct abuf *b);            /* frees the memory and re-inits */
void abuf_reset(struct abuf *b);           /* len = 0, keeps the memory */
void abuf_reserve(struct abuf *b, size_t extra); /* room for extra more bytes */

void abuf_u8(struct abuf *b, uint8_t v);
void abuf_u16(struct abuf *b, uint16_t v);
void abuf_u32(struct abuf *b, uint32_t v);
void abuf_u64(struct abuf *b, uint64_t v);
void abuf_bytes(struct abuf *b, const void *p, size_t n);

/* u8 length + bytes; the caller guarantees s.len <= 255 (asserted). */
void abuf_shortstr(struct abuf *b, amqp_bytes s);
/* u32 length + bytes; the caller guarantees s.len <= UINT32_MAX (asserted). */
void abuf_longstr(struct abuf *b, amqp_bytes s);
/* Overwrites 4 bytes at offset (which must be inside len) with v, big-endian. */
void abuf_put_u32_at(struct abuf *b, size_t offset, uint32_t v);

#endif
