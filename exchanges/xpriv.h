/* xpriv.h: helpers shared by the exchange-type indexes (private to exchanges/).
 *
 * xmap: open-addressing hash map from byte strings to non-NULL pointers, keyed by a
 *       seeded SipHash so that clients cannot choose colliding routing keys.
 * xvec: array of binding pointers where each binding's index_data holds its
 *       position, so that removal is O(1).
 * Allocation failure aborts the process. */
#ifndef EXCHANGES_XPRIV_H
#define EXCHANGES_XPRIV_H

#include <stddef.h>
#include <stdint.h>

#include "amqp/bytes.h"
#include "exchanges/xtype.h"

#include "common/xalloc.h"

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

struct xvec {
    struct xbinding **v;
    size_t n, cap;
};

/* Appends b; sets b->index_data to its position. */
void xvec_push(struct xvec *x, struct xbinding *b);
/* Removes b (which must be in x, at the position in b->index_data) by moving the last
   element into its place (updating that one's index_data). May shrink the array. */
void xvec_remove(struct xvec *x, struct xbinding *b);
void xvec_free(struct xvec *x);

/* Work done by the last route() on a topic index: nodes entered, counted once per
   (node, word position). For tests that check routing stays polynomial. */
uint64_t topic_last_route_steps(const void *index);
/* Trie nodes of a topic index, the root included (1 when empty). For tests. */
size_t topic_node_count(const void *index);

#endif
