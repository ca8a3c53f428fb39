/* The database file: opening it, recognising it as Warren's, creating or checking its
 * schema. Private to storage/. */
#ifndef WARREN_STORAGE_SCHEMA_H
#define WARREN_STORAGE_SCHEMA_H

#include <sqlite3.h>

/* 'WRRN': PRAGMA application_id of every Warren database. */
#define SCHEMA_APPLICATION_ID 0x5752524E
/* PRAGMA user_version this build writes and reads. */
#define SCHEMA_VERSION 1

/* Opens path for writing, creating the schema in an empty file, and sets WAL mode and
 * synchronous=FULL. Returns NULL after logging why (naming the file): not a database,
 * corrupt, another application's database, or a newer schema version. */
sqlite3 *schema_open_writer(const char *path);
/* Opens a second, read-only connection for paging entries in. NULL after logging. */
sqlite3 *schema_open_reader(const char *path);
/* Runs SQL that returns no rows. Returns SQLITE_OK or the error code. */
int schema_exec(sqlite3 *db, const char *sql);

#endif
