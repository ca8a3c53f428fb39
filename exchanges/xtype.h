/* xtype.h: exchange types as routing indexes behind one small interface.
 *
 * Each exchange type (direct, fanout, topic, headers) provides an index that holds
 * pointers to bindings and, given a message's routing key and headers, calls back
 * once per matching binding. The index never owns or frees a binding. */
#ifndef EXCHANGES_XTYPE_H
#define EXCHANGES_XTYPE_H

#include <stddef.h>

#include "amqp/bytes.h"

/* One binding as a routing index sees it. The broker owns the struct and its memory and keeps
   it alive from add() until after remove(); the index only keeps pointers to it. */
struct xbinding {
    void *dest;               /* opaque destination (a queue or an exchange), compared by pointer */
    amqp_bytes key;           /* routing key / binding key (memory owned by the broker) */
    amqp_bytes args;          /* binding arguments table, raw (owned by the broker) */
    void *index_data;         /* for the index's own use (e.g. parsed x-match) */
};

/* Called once per matching binding; duplicates allowed (the broker dedups destinations). */
typedef void (*xroute_emit)(void *ctx, struct xbinding *b);

struct xtype {
    const char *name;                                    /* "direct", "fanout", "topic", "headers" */
    void *(*index_new)(void);
    void  (*index_free)(void *index);                    /* frees the index only, never the bindings */
    /* 0 ok; -1 with a reply text fragment in err (NUL-terminated, truncated to errlen),
       e.g. headers: "Invalid x-match field value \"foo\"; expected all, any, all-with-x,
       or any-with-x". May be NULL = always ok. */
    int   (*validate)(amqp_bytes key, amqp_bytes args, char *err, size_t errlen);
    void  (*add)(void *index, struct xbinding *b);       /* b was validated */
    void  (*remove)(void *index, struct xbinding *b);    /* b is a pointer previously added */
    /* headers = the message's headers table contents (may be len 0). */
    void  (*route)(void *index, amqp_bytes routing_key, amqp_bytes headers,
                   xroute_emit emit, void *ctx);
};

/* The type with that name, or NULL for an unknown type. */
const struct xtype *xtype_find(amqp_bytes name);

extern const struct xtype xtype_direct, xtype_fanout, xtype_topic, xtype_headers;

#endif
