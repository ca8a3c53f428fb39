/* Allocation that never returns NULL: out of memory aborts the broker with a message,
 * since no code path can carry on safely without the memory it asked for. */
#ifndef WARREN_XALLOC_H
#define WARREN_XALLOC_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
/* realloc of an array of n elements of size bytes; aborts on overflow too. */
void *xrealloc_array(void *p, size_t n, size_t size);
char *xstrndup(const void *s, size_t n); /* NUL-terminated copy */

#endif
