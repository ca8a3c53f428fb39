/* xpriv.h: helpers shared by the exchange-type indexes (private to exchanges/).
 *
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
#include "common/xmap.h"

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
