#include "server/strmap.h"

#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"

static const uint8_t tombstone_byte;
#define TOMBSTONE (&tombstone_byte)

uint64_t strmap_hash(const uint8_t *p, size_t len)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

void strmap_init(struct strmap *m) { memset(m, 0, sizeof *m); }

void strmap_free(struct strmap *m)
{
    free(m->slots);
    memset(m, 0, sizeof *m);
}

static struct strmap_slot *find(const struct strmap *m, amqp_bytes key, uint64_t h)
{
    if (m->cap == 0)
        return NULL;
    size_t mask = m->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        struct strmap_slot *s = &m->slots[i];
        if (s->key == NULL)
            return NULL;
        if (s->key != TOMBSTONE && s->hash == h && s->len == key.len &&
            memcmp(s->key, key.ptr, key.len) == 0)
            return s;
    }
}

static void grow(struct strmap *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 16;
    if (m->count * 4 < m->cap)
        ncap = m->cap; /* mostly tombstones: rehash at the same size */
    struct strmap_slot *old = m->slots;
    size_t ocap = m->cap;
    m->slots = xcalloc(ncap, sizeof *m->slots);
    m->cap = ncap;
    m->used = m->count;
    for (size_t i = 0; i < ocap; i++) {
        if (old[i].key == NULL || old[i].key == TOMBSTONE)
            continue;
        for (size_t j = old[i].hash & (ncap - 1);; j = (j + 1) & (ncap - 1)) {
            if (m->slots[j].key == NULL) {
                m->slots[j] = old[i];
                break;
            }
        }
    }
    free(old);
}

void *strmap_get(const struct strmap *m, amqp_bytes key)
{
    struct strmap_slot *s = find(m, key, strmap_hash(key.ptr, key.len));
    return s ? s->val : NULL;
}

void strmap_put(struct strmap *m, amqp_bytes key, void *val)
{
    uint64_t h = strmap_hash(key.ptr, key.len);
    struct strmap_slot *s = find(m, key, h);
    if (s) {
        s->key = key.ptr;
        s->val = val;
        return;
    }
    if ((m->used + 1) * 4 > m->cap * 3)
        grow(m);
    size_t mask = m->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        s = &m->slots[i];
        if (s->key == NULL || s->key == TOMBSTONE) {
            if (s->key == NULL)
                m->used++;
            s->key = key.ptr ? key.ptr : (const uint8_t *)"";
            s->len = key.len;
            s->hash = h;
            s->val = val;
            m->count++;
            return;
        }
    }
}

void *strmap_del(struct strmap *m, amqp_bytes key)
{
    struct strmap_slot *s = find(m, key, strmap_hash(key.ptr, key.len));
    if (!s)
        return NULL;
    void *v = s->val;
    s->key = TOMBSTONE;
    s->val = NULL;
    m->count--;
    return v;
}

int strmap_next(const struct strmap *m, size_t *pos, void **val)
{
    for (size_t i = *pos; i < m->cap; i++) {
        if (m->slots[i].key != NULL && m->slots[i].key != TOMBSTONE) {
            *val = m->slots[i].val;
            *pos = i + 1;
            return 1;
        }
    }
    *pos = m->cap;
    return 0;
}
