/* topic.c: the topic exchange, as a trie of words.
 *
 * Keys split on '.' into words (an empty key has no words; "a..b" has an empty middle
 * word). Each trie node has literal children in a hash map plus at most one '*' and
 * one '#' child; the bindings whose key ends at a node are stored there. Consecutive
 * '#' words are collapsed when adding ("#.#" means the same as "#").
 *
 * Routing runs the trie as a nondeterministic automaton: it keeps the set of nodes
 * reachable after each word of the routing key, each node at most once per word, so a
 * publish costs O(words x reachable nodes) whatever the patterns, never a scan of all
 * bindings and never exponential. Each binding is emitted at most once per publish. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "exchanges/xpriv.h"
#include "exchanges/xtype.h"

enum tkind { TN_ROOT, TN_WORD, TN_STAR, TN_HASH };

struct tnode {
    struct tnode *parent;
    struct tnode *star, *hash;   /* the '*' and '#' children */
    struct xmap kids;            /* literal word -> child */
    struct xvec binds;           /* bindings whose key ends here */
    uint64_t mark;               /* route generation that last put this node in a set */
    uint64_t whash;              /* TN_WORD: xhash of word */
    enum tkind kind;
    size_t wlen;
    uint8_t word[];              /* TN_WORD: the word (the key in parent->kids) */
};

struct tscratch {
    struct tnode **a, **b;       /* two node sets of cap entries each */
    size_t cap;
};

struct topic_index {
    struct tnode *root;
    size_t nnodes;               /* including the root: bounds any node set */
    uint64_t gen;
    int busy;                    /* > 0 while emitting (route may be re-entered) */
    uint64_t last_steps;
    struct tscratch scratch;
};

struct word_iter {
    const uint8_t *p;
    size_t left;
    bool done;
};

static void word_iter_init(struct word_iter *it, amqp_bytes key)
{
    it->p = key.ptr;
    it->left = key.len;
    it->done = key.len == 0;
}

/* Next word of the key (possibly empty) into *w; false at the end. */
static bool word_next(struct word_iter *it, amqp_bytes *w)
{
    if (it->done)
        return false;
    const uint8_t *dot = it->left ? memchr(it->p, '.', it->left) : NULL;
    if (!dot) {
        *w = amqp_bytes_of(it->p, it->left);
        it->done = true;
        return true;
    }
    size_t n = (size_t)(dot - it->p);
    *w = amqp_bytes_of(it->p, n);
    it->p = dot + 1;
    it->left -= n + 1;
    return true;
}

static bool is_word(amqp_bytes w, char c)
{
    return w.len == 1 && w.ptr[0] == (uint8_t)c;
}

static struct tnode *node_new(struct topic_index *t, struct tnode *parent, enum tkind kind,
                              amqp_bytes word)
{
    if (word.len > SIZE_MAX - sizeof(struct tnode))
        abort();
    struct tnode *n = xmalloc(sizeof *n + word.len);
    n->parent = parent;
    n->star = n->hash = NULL;
    xmap_init(&n->kids);
    n->binds = (struct xvec){ 0 };
    n->mark = 0;
    n->whash = 0;
    n->kind = kind;
    n->wlen = word.len;
    if (word.len)
        memcpy(n->word, word.ptr, word.len);
    t->nnodes++;
    return n;
}

/* Frees n and its subtree. Recursion depth is the number of words of the longest
   binding key below n (binding keys are shortstrs, so at most 256). */
static void node_free_tree(struct tnode *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->kids.cap; i++)
        node_free_tree(n->kids.slots[i].val);
    node_free_tree(n->star);
    node_free_tree(n->hash);
    xmap_free(&n->kids);
    xvec_free(&n->binds);
    free(n);
}

static void *topic_new(void)
{
    struct topic_index *t = xcalloc(1, sizeof *t);
    t->root = node_new(t, NULL, TN_ROOT, amqp_bytes_of(NULL, 0));
    return t;
}

static void topic_free(void *index)
{
    struct topic_index *t = index;
    if (!t)
        return;
    node_free_tree(t->root);
    free(t->scratch.a);
    free(t->scratch.b);
    free(t);
}

/* The child of n for binding-key word w, created if create is set (else NULL when
   missing). A '#' directly under a '#' node is that node itself (collapsing). */
static struct tnode *child_for(struct topic_index *t, struct tnode *n, amqp_bytes w,
                               bool create)
{
    if (is_word(w, '#')) {
        if (n->kind == TN_HASH)
            return n;
        if (!n->hash && create)
            n->hash = node_new(t, n, TN_HASH, amqp_bytes_of(NULL, 0));
        return n->hash;
    }
    if (is_word(w, '*')) {
        if (!n->star && create)
            n->star = node_new(t, n, TN_STAR, amqp_bytes_of(NULL, 0));
        return n->star;
    }
    uint64_t h = xhash(w);
    struct tnode *c = xmap_get(&n->kids, w, h);
    if (!c && create) {
        c = node_new(t, n, TN_WORD, w);
        c->whash = h;
        xmap_put(&n->kids, amqp_bytes_of(c->word, c->wlen), h, c);
    }
    return c;
}

static void topic_add(void *index, struct xbinding *b)
{
    struct topic_index *t = index;
    struct tnode *n = t->root;
    struct word_iter it;
    amqp_bytes w;
    word_iter_init(&it, b->key);
    while (word_next(&it, &w))
        n = child_for(t, n, w, true);
    xvec_push(&n->binds, b);
}

/* Removes nodes from n upwards while they hold no bindings and no children. */
static void prune(struct topic_index *t, struct tnode *n)
{
    while (n->kind != TN_ROOT && n->binds.n == 0 && n->kids.count == 0 && !n->star &&
           !n->hash) {
        struct tnode *p = n->parent;
        switch (n->kind) {
        case TN_STAR:
            p->star = NULL;
            break;
        case TN_HASH:
            p->hash = NULL;
            break;
        case TN_WORD:
            xmap_del(&p->kids, amqp_bytes_of(n->word, n->wlen), n->whash);
            break;
        case TN_ROOT:
            break;
        }
        xmap_free(&n->kids);
        xvec_free(&n->binds);
        free(n);
        t->nnodes--;
        n = p;
    }
}

static void topic_remove(void *index, struct xbinding *b)
{
    struct topic_index *t = index;
    struct tnode *n = t->root;
    struct word_iter it;
    amqp_bytes w;
    word_iter_init(&it, b->key);
    while (n && word_next(&it, &w))
        n = child_for(t, n, w, false);
    if (!n)
        abort();  /* never added: the caller broke the contract */
    xvec_remove(&n->binds, b);
    prune(t, n);
}

/* Room for two sets of need nodes each. */
static void scratch_reserve(struct tscratch *s, size_t need)
{
    if (s->cap >= need)
        return;
    size_t cap = s->cap ? s->cap : 16;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    s->a = xrealloc_array(s->a, cap, sizeof *s->a);
    s->b = xrealloc_array(s->b, cap, sizeof *s->b);
    s->cap = cap;
}

/* Adds n to the set (unless already in it for this generation), then its '#' child:
   a '#' may match zero words. */
static void set_add(struct tnode **set, size_t *count, struct tnode *n, uint64_t gen)
{
    while (n && n->mark != gen) {
        n->mark = gen;
        set[(*count)++] = n;
        n = n->hash;
    }
}

static bool node_empty(const struct tnode *n)
{
    return n->binds.n == 0 && n->kids.count == 0 && !n->star && !n->hash;
}

/* Emits each binding whose pattern matches routing_key, once. emit must not add or
   remove bindings of this index; it may route through this index again. */
static void topic_route(void *index, amqp_bytes routing_key, amqp_bytes headers,
                        xroute_emit emit, void *ctx)
{
    struct topic_index *t = index;
    (void)headers;
    t->last_steps = 0;
    if (node_empty(t->root))
        return;

    struct tscratch local = { 0 };
    struct tscratch *s = t->busy ? &local : &t->scratch;
    scratch_reserve(s, t->nnodes);
    struct tnode **cur = s->a, **next = s->b;
    size_t ncur = 0;
    uint64_t steps = 0;

    set_add(cur, &ncur, t->root, ++t->gen);
    struct word_iter it;
    amqp_bytes w;
    word_iter_init(&it, routing_key);
    while (ncur > 0 && word_next(&it, &w)) {
        uint64_t gen = ++t->gen;
        uint64_t wh = 0;
        bool hashed = false;
        size_t nnext = 0;
        for (size_t i = 0; i < ncur; i++) {
            struct tnode *n = cur[i];
            steps++;
            if (n->kind == TN_HASH)     /* '#' swallows this word too */
                set_add(next, &nnext, n, gen);
            if (n->kids.count) {
                if (!hashed) {
                    wh = xhash(w);
                    hashed = true;
                }
                set_add(next, &nnext, xmap_get(&n->kids, w, wh), gen);
            }
            set_add(next, &nnext, n->star, gen);
        }
        struct tnode **tmp = cur;
        cur = next;
        next = tmp;
        ncur = nnext;
    }
    t->last_steps = steps + ncur;

    t->busy++;
    for (size_t i = 0; i < ncur; i++) {
        struct tnode *n = cur[i];
        for (size_t j = 0; j < n->binds.n; j++)
            emit(ctx, n->binds.v[j]);
    }
    t->busy--;
    free(local.a);
    free(local.b);
}

uint64_t topic_last_route_steps(const void *index)
{
    return ((const struct topic_index *)index)->last_steps;
}

size_t topic_node_count(const void *index)
{
    return ((const struct topic_index *)index)->nnodes;
}

const struct xtype xtype_topic = {
    .name = "topic",
    .index_new = topic_new,
    .index_free = topic_free,
    .validate = NULL,
    .add = topic_add,
    .remove = topic_remove,
    .route = topic_route,
};
