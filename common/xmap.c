/* xmap.c: the byte-string hash map shared by the broker and the routing indexes. */
#include "common/xmap.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "common/xalloc.h"

/* ---- SipHash-2-4 with a per-process random key ---- */

static uint64_t hash_k0, hash_k1;
static int hash_seeded;

/* Picks the hash key once. Broker state lives on one thread, so no locking. If the
   kernel gives no randomness, falls back to weaker sources rather than failing. */
static void hash_seed(void)
{
    uint64_t k[2];
    if (getrandom(k, sizeof k, GRND_NONBLOCK) != (ssize_t)sizeof k) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        k[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec;
        k[1] = (uint64_t)(uintptr_t)&hash_k0 ^ ((uint64_t)ts.tv_nsec << 32);
    }
    hash_k0 = k[0];
    hash_k1 = k[1];
    hash_seeded = 1;
}

#define ROTL64(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                             \
    do {                                                                     \
        v0 += v1; v1 = ROTL64(v1, 13); v1 ^= v0; v0 = ROTL64(v0, 32);       \
        v2 += v3; v3 = ROTL64(v3, 16); v3 ^= v2;                            \
        v0 += v3; v3 = ROTL64(v3, 21); v3 ^= v0;                            \
        v2 += v1; v1 = ROTL64(v1, 17); v1 ^= v2; v2 = ROTL64(v2, 32);       \
    } while (0)

uint64_t xhash(amqp_bytes b)
{
    if (!hash_seeded)
        hash_seed();
    uint64_t v0 = hash_k0 ^ 0x736f6d6570736575ull;
    uint64_t v1 = hash_k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = hash_k0 ^ 0x6c7967656e657261ull;
    uint64_t v3 = hash_k1 ^ 0x7465646279746573ull;
    const uint8_t *p = b.ptr;
    size_t left = b.len;
    while (left >= 8) {
        uint64_t m = 0;
        for (int i = 7; i >= 0; i--)
            m = m << 8 | p[i];
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
        p += 8;
        left -= 8;
    }
    uint64_t last = (uint64_t)b.len << 56;
    for (size_t i = 0; i < left; i++)
        last |= (uint64_t)p[i] << (8 * i);
    v3 ^= last;
    SIPROUND;
    SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- xmap: linear probing, backward-shift deletion ---- */

#define XMAP_MIN_CAP 8

void xmap_init(struct xmap *m)
{
    m->slots = NULL;
    m->cap = m->count = 0;
}

void xmap_free(struct xmap *m)
{
    free(m->slots);
    xmap_init(m);
}

/* Rebuilds the table with newcap slots (a power of two that holds every entry). */
static void xmap_resize(struct xmap *m, size_t newcap)
{
    struct xmap_slot *old = m->slots;
    size_t oldcap = m->cap;
    m->slots = xcalloc(newcap, sizeof *m->slots);
    m->cap = newcap;
    size_t mask = newcap - 1;
    for (size_t i = 0; i < oldcap; i++) {
        if (!old[i].val)
            continue;
        size_t j = old[i].hash & mask;
        while (m->slots[j].val)
            j = (j + 1) & mask;
        m->slots[j] = old[i];
    }
    free(old);
}

/* Smallest power-of-two capacity >= XMAP_MIN_CAP keeping the load at or below 1/2. */
static size_t xmap_cap_for(size_t count)
{
    size_t cap = XMAP_MIN_CAP;
    while (cap / 2 < count) {
        if (cap > SIZE_MAX / 2)
            abort();
        cap *= 2;
    }
    return cap;
}

/* Slot index holding key, or SIZE_MAX. */
static size_t xmap_slot_of(const struct xmap *m, amqp_bytes key, uint64_t hash)
{
    if (m->count == 0)
        return SIZE_MAX;
    size_t mask = m->cap - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        const struct xmap_slot *s = &m->slots[i];
        if (!s->val)
            return SIZE_MAX;
        if (s->hash == hash && amqp_bytes_eq(s->key, key))
            return i;
    }
}

void *xmap_get(const struct xmap *m, amqp_bytes key, uint64_t hash)
{
    size_t i = xmap_slot_of(m, key, hash);
    return i == SIZE_MAX ? NULL : m->slots[i].val;
}

void xmap_put(struct xmap *m, amqp_bytes key, uint64_t hash, void *val)
{
    assert(val);
    assert(xmap_slot_of(m, key, hash) == SIZE_MAX);
    /* Grow above 70% load. */
    if ((m->count + 1) * 10 > m->cap * 7)
        xmap_resize(m, xmap_cap_for(m->count + 1));
    size_t mask = m->cap - 1;
    size_t i = hash & mask;
    while (m->slots[i].val)
        i = (i + 1) & mask;
    m->slots[i].hash = hash;
    m->slots[i].key = key;
    m->slots[i].val = val;
    m->count++;
}

void *xmap_del(struct xmap *m, amqp_bytes key, uint64_t hash)
{
    size_t i = xmap_slot_of(m, key, hash);
    if (i == SIZE_MAX)
        return NULL;
    void *val = m->slots[i].val;
    size_t mask = m->cap - 1;
    /* Shift back later entries of the cluster whose home is not in (i, j]. */
    for (size_t j = (i + 1) & mask; m->slots[j].val; j = (j + 1) & mask) {
        size_t home = m->slots[j].hash & mask;
        if (((j - home) & mask) >= ((j - i) & mask)) {
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    m->slots[i].val = NULL;
    m->count--;
    if (m->count == 0)
        xmap_free(m);
    else if (m->cap > XMAP_MIN_CAP && m->count * 20 < m->cap * 3)
        xmap_resize(m, xmap_cap_for(m->count));
    return val;
}


void xmap_drain(struct xmap *m, void (*drop)(void *ctx, void *val), void *ctx)
{
    size_t i = 0;
    while (m->count > 0) {
        if (i >= m->cap)
            i = 0; /* a deletion may have shrunk the table */
        if (!m->slots[i].val) {
            i++;
            continue;
        }
        size_t before = m->count;
        drop(ctx, m->slots[i].val);
        assert(m->count < before); /* drop must remove the entry it was given */
        (void)before;
    }
}
