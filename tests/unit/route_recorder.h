/* Shared by the routing-index unit tests: records the destinations (C strings) that a
 * route() call emits. Include after <cmocka.h>. */
#ifndef TESTS_ROUTE_RECORDER_H
#define TESTS_ROUTE_RECORDER_H

#include <string.h>

#include "exchanges/xtype.h"

#define MAX_HITS 256

struct rec {
    const char *dest[MAX_HITS];
    size_t n;
};

static inline void rec_emit(void *ctx, struct xbinding *b)
{
    struct rec *r = ctx;
    assert_true(r->n < MAX_HITS);
    r->dest[r->n++] = b->dest;
}

static inline int str_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

#endif
