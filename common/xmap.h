/* xmap: an open-addressing hash map from byte strings to non-NULL pointers, keyed by a
 * seeded SipHash so that clients cannot choose colliding keys (routing keys, queue and
 * exchange names). The map never copies keys: a key's bytes must stay alive and unchanged
 * while it is mapped (usually the key is the value's own name). */
#ifndef COMMON_XMAP_H
#define COMMON_XMAP_H

#include <stddef.h>
#include <stdint.h>

#include "amqp/bytes.h"

/* Keyed hash of b (the key is random per process, chosen at first use). */
uint64_t xhash(amqp_bytes b);

struct xmap_slot {
    uint64_t hash;
    amqp_bytes key;   /* view into memory that the caller keeps alive while mapped */
    void *val;        /* NULL = empty slot */
};

struct xmap {
    struct xmap_slot *slots;  /* NULL while cap == 0 */
    size_t cap, count;        /* cap is 0 or a power of two */
};

void xmap_init(struct xmap *m);
/* Frees the slot array (not the keys or values) and re-inits. */
void xmap_free(struct xmap *m);
/* The value for key (whose xhash is hash), or NULL. */
void *xmap_get(const struct xmap *m, amqp_bytes key, uint64_t hash);
/* Maps key -> val (val != NULL). The key must not be present. */
void xmap_put(struct xmap *m, amqp_bytes key, uint64_t hash, void *val);
/* Unmaps key and returns its value, or NULL if it was absent. May shrink the table. */
void *xmap_del(struct xmap *m, amqp_bytes key, uint64_t hash);

/* Convenience forms that hash the key themselves. */
static inline void *xmap_find(const struct xmap *m, amqp_bytes key) { return xmap_get(m, key, xhash(key)); }

/* Removes every entry: calls drop(ctx, val) for each, which may itself xmap_del entries
 * of this map (backward-shift deletion keeps the walk correct). */
void xmap_drain(struct xmap *m, void (*drop)(void *ctx, void *val), void *ctx);

#endif
