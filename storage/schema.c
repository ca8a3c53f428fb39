#include "storage/schema.h"

#include <stdio.h>

#include "server/log.h"

/* Entries are (queue, seq) -> message; a message row is stored once however many queues
 * hold it. `shared` marks entries whose message is held by several queues: only those are
 * indexed by message, for the "is anyone else still holding it" check on delete.
 * `transient` marks non-persistent messages paged out of memory: dropped at startup.
 * `expires` is the entry's expiry (ms since the epoch, 0 = never); `size` its body size,
 * for length limits in bytes. */
static const char SCHEMA_SQL[] =
    "CREATE TABLE exchanges ("
    "  vhost TEXT NOT NULL, name BLOB NOT NULL, type TEXT NOT NULL,"
    "  auto_delete INTEGER NOT NULL, internal INTEGER NOT NULL, args BLOB NOT NULL,"
    "  PRIMARY KEY (vhost, name)) WITHOUT ROWID;"
    "CREATE TABLE queues ("
    "  id INTEGER PRIMARY KEY, vhost TEXT NOT NULL, name BLOB NOT NULL,"
    "  auto_delete INTEGER NOT NULL, args BLOB NOT NULL, delivered_seq INTEGER NOT NULL DEFAULT 0,"
    "  UNIQUE (vhost, name));"
    "CREATE TABLE bindings ("
    "  vhost TEXT NOT NULL, source BLOB NOT NULL, dest BLOB NOT NULL, dest_is_exchange INTEGER NOT NULL,"
    "  rkey BLOB NOT NULL, args BLOB NOT NULL,"
    "  PRIMARY KEY (vhost, source, dest, dest_is_exchange, rkey, args)) WITHOUT ROWID;"
    "CREATE TABLE messages ("
    "  id INTEGER PRIMARY KEY, exchange BLOB NOT NULL, rkey BLOB NOT NULL, props BLOB NOT NULL,"
    "  body BLOB NOT NULL, transient INTEGER NOT NULL);"
    "CREATE INDEX messages_transient ON messages (id) WHERE transient = 1;"
    "CREATE TABLE entries ("
    "  queue_id INTEGER NOT NULL, seq INTEGER NOT NULL, msg_id INTEGER NOT NULL,"
    "  shared INTEGER NOT NULL, transient INTEGER NOT NULL,"
    "  expires INTEGER NOT NULL, size INTEGER NOT NULL,"
    "  PRIMARY KEY (queue_id, seq)) WITHOUT ROWID;"
    "CREATE INDEX entries_shared ON entries (msg_id) WHERE shared = 1;"
    "CREATE INDEX entries_transient ON entries (queue_id, seq) WHERE transient = 1;";

int schema_exec(sqlite3 *db, const char *sql) { return sqlite3_exec(db, sql, NULL, NULL, NULL); }

/* Reads an integer pragma. Returns SQLITE_OK or the error code. */
static int pragma_int(sqlite3 *db, const char *sql, long long *out)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

static int create_schema(sqlite3 *db)
{
    char sql[sizeof SCHEMA_SQL + 200];
    snprintf(sql, sizeof sql, "BEGIN IMMEDIATE;%sPRAGMA application_id = %d;PRAGMA user_version = %d;COMMIT;",
             SCHEMA_SQL, SCHEMA_APPLICATION_ID, SCHEMA_VERSION);
    int rc = schema_exec(db, sql);
    if (rc != SQLITE_OK)
        schema_exec(db, "ROLLBACK");
    return rc;
}

/* Checks what kind of file this is; creates the schema in a new one. */
static int check_or_create(sqlite3 *db, const char *path)
{
    long long app = 0, version = 0, tables = 0;
    int rc = pragma_int(db, "PRAGMA application_id", &app);
    if (rc == SQLITE_OK)
        rc = pragma_int(db, "SELECT count(*) FROM sqlite_master", &tables);
    if (rc == SQLITE_OK)
        rc = pragma_int(db, "PRAGMA user_version", &version);
    if (rc != SQLITE_OK) {
        log_error("store: cannot read database %s: %s", path, sqlite3_errstr(rc));
        return -1;
    }
    if (app == 0 && tables == 0 && version == 0) { /* a new, empty file: ours to set up */
        rc = create_schema(db);
        if (rc != SQLITE_OK) {
            log_error("store: cannot create the schema in %s: %s", path, sqlite3_errmsg(db));
            return -1;
        }
        log_info("store: created database %s (schema version %d)", path, SCHEMA_VERSION);
        return 0;
    }
    if (app != SCHEMA_APPLICATION_ID) {
        log_error("store: %s is not a Warren database (application_id 0x%llx, %lld tables); "
                  "move it away or point --data elsewhere", path, (unsigned long long)app, tables);
        return -1;
    }
    if (version > SCHEMA_VERSION) {
        log_error("store: %s has schema version %lld, newer than this warren supports (%d); "
                  "run a newer warren", path, version, SCHEMA_VERSION);
        return -1;
    }
    if (version < SCHEMA_VERSION) {
        log_error("store: %s has schema version %lld, which this warren cannot upgrade (it writes %d)",
                  path, version, SCHEMA_VERSION);
        return -1;
    }
    return 0;
}

sqlite3 *schema_open_writer(const char *path)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        log_error("store: cannot open %s: %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, 1000);
    if (check_or_create(db, path) != 0)
        goto fail;
    /* WAL: readers page entries in while the writer commits. FULL: a commit is on disk
     * (fsync of the log) before the confirms it covers are sent. A larger checkpoint
     * threshold keeps checkpoints, with their fsyncs of the main file, less frequent. */
    rc = schema_exec(db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;"
                         "PRAGMA wal_autocheckpoint = 4000; PRAGMA foreign_keys = OFF;");
    if (rc != SQLITE_OK) {
        log_error("store: cannot set up %s: %s", path, sqlite3_errmsg(db));
        goto fail;
    }
    return db;
fail:
    sqlite3_close(db);
    return NULL;
}

sqlite3 *schema_open_reader(const char *path)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        log_error("store: cannot open %s for reading: %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, 1000);
    return db;
}
