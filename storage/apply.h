/* The writer's side: applies a batch of logical writes to the database in one
 * transaction. Private to storage/; used by the writer thread only. */
#ifndef WARREN_STORAGE_APPLY_H
#define WARREN_STORAGE_APPLY_H

#include <sqlite3.h>
#include <stddef.h>

struct batch;
struct applier;

/* Prepares the statements on db. NULL after logging why. */
struct applier *applier_new(sqlite3 *db);
void applier_free(struct applier **ap);
/* Applies b in one transaction and commits it (durably, per the connection's settings).
 * Returns SQLITE_OK, or the error code with the transaction rolled back and a
 * description in why. */
int applier_run(struct applier *ap, const struct batch *b, char *why, size_t why_size);

#endif
