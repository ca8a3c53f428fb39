/* A batch: the logical writes of one or more loop turns, applied in one transaction.
 * Built by the loop thread, then handed whole to the writer thread. */
#ifndef WARREN_STORAGE_BATCH_H
#define WARREN_STORAGE_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "amqp/bytes.h"

enum op_kind {
    OP_MESSAGE,        /* insert message id: f[0..3] = exchange, rkey, props, body */
    OP_ENTRY,          /* insert entry (qid, seq) of message `msg_id` */
    OP_REMOVE,         /* delete entries (qid, seq..last_seq) and their messages id..last_id
                        * (one entry unless consecutive unshared removes were merged); a
                        * shared message only when no other queue holds it */
    OP_REMOVE_FROM,    /* delete entries of qid with seq >= seq */
    OP_DELIVERED,      /* queue qid: entries up to seq may have been delivered */
    OP_EXCHANGE,       /* upsert: f = vhost, name, type, args */
    OP_EXCHANGE_DEL,   /* f = vhost, name */
    OP_QUEUE,          /* upsert queue id: f = vhost, name, args */
    OP_QUEUE_DEL,      /* delete queue qid and its entries */
    OP_BINDING,        /* f = vhost, source, dest, rkey, args */
    OP_BINDING_DEL,
};

#define OP_FIELDS 5
#define OP_NONE UINT32_MAX

struct op {
    uint8_t kind;
    bool cancelled;    /* not written: an ENTRY cancelled, or a MESSAGE whose entries all were */
    bool flag_a;       /* MESSAGE: transient; ENTRY/REMOVE: shared; EXCHANGE/QUEUE: auto_delete; BINDING: dest is exchange */
    bool flag_b;       /* EXCHANGE: internal */
    bool owned;        /* f[] were copied and are freed with the batch */
    uint32_t live;     /* MESSAGE: entries of it not cancelled */
    uint32_t msg_op;   /* ENTRY: its MESSAGE op in this batch */
    uint64_t id;       /* message id (MESSAGE, ENTRY, REMOVE) */
    uint64_t qid, seq;
    uint64_t last_seq, last_id; /* REMOVE: the range's end */
    int64_t expires;            /* ENTRY: ms since the epoch, 0 = never */
    amqp_bytes f[OP_FIELDS];
    void *cookie;      /* MESSAGE: handed back through the release callback */
};

struct batch {
    uint64_t id;
    struct op *ops;
    uint32_t n, cap;
    size_t bytes;      /* message bytes referenced */
};

/* Appends a zeroed op and returns it (valid until the next batch_add). */
struct op *batch_add(struct batch *b, enum op_kind kind);
/* Copies the fields into memory the batch owns. */
void batch_own_fields(struct op *o);
/* Frees owned fields and empties the batch (keeping its array). */
void batch_clear(struct batch *b);
void batch_free(struct batch *b);

#endif
