/* A hash map from byte strings to pointers (open addressing, linear probing).
 * The map does not copy keys: a key's bytes must stay alive and unchanged while
 * its entry is in the map (usually the key is the value's own name). */
#ifndef WARREN_STRMAP_H
#define WARREN_STRMAP_H

#include <stddef.h>
#include <stdint.h>

#include "amqp/bytes.h"

struct strmap_slot {
    const uint8_t *key; /* NULL: empty; == strmap_tombstone: deleted */
    size_t len;
    uint64_t hash;
    void *val;
};

struct strmap {
    struct strmap_slot *slots;
    size_t cap, count, used; /* used = live + tombstones */
};

void strmap_init(struct strmap *m);
void strmap_free(struct strmap *m);
/* Returns the value for key, or NULL. */
void *strmap_get(const struct strmap *m, amqp_bytes key);
/* Inserts or replaces key's value. */
void strmap_put(struct strmap *m, amqp_bytes key, void *val);
/* Removes key; returns its value, or NULL if it was not there. */
void *strmap_del(struct strmap *m, amqp_bytes key);
/* Iteration: for (size_t i = 0; strmap_next(m, &i, &val);) ... ; safe against strmap_del of the
 * current entry, not against puts. */
int strmap_next(const struct strmap *m, size_t *pos, void **val);
uint64_t strmap_hash(const uint8_t *p, size_t len);

#endif
