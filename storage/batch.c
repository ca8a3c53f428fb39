#include "storage/batch.h"

#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"

struct op *batch_add(struct batch *b, enum op_kind kind)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 256;
        b->ops = xrealloc_array(b->ops, b->cap, sizeof *b->ops);
    }
    struct op *o = &b->ops[b->n++];
    memset(o, 0, sizeof *o);
    o->kind = (uint8_t)kind;
    o->msg_op = OP_NONE;
    return o;
}

void batch_own_fields(struct op *o)
{
    for (int i = 0; i < OP_FIELDS; i++) {
        uint8_t *copy = xmalloc(o->f[i].len + 1);
        if (o->f[i].len)
            memcpy(copy, o->f[i].ptr, o->f[i].len);
        copy[o->f[i].len] = 0;
        o->f[i].ptr = copy;
    }
    o->owned = true;
}

void batch_clear(struct batch *b)
{
    for (uint32_t i = 0; i < b->n; i++) {
        if (!b->ops[i].owned)
            continue;
        for (int k = 0; k < OP_FIELDS; k++)
            free((void *)b->ops[i].f[k].ptr);
    }
    b->n = 0;
    b->bytes = 0;
}

void batch_free(struct batch *b)
{
    batch_clear(b);
    free(b->ops);
    b->ops = NULL;
    b->cap = 0;
}
