/* Shared by the storage unit tests: temporary directories and reading database rows back
 * as text. Include after <cmocka.h>. */
#ifndef TESTS_STORE_HELPERS_H
#define TESTS_STORE_HELPERS_H

#include <ftw.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Creates a fresh directory /tmp/warren-unit-XXXXXX; out must hold 32 bytes. */
static inline void make_temp_dir(char *out, size_t size)
{
    assert_true(size >= 32);
    snprintf(out, size, "/tmp/warren-unit-XXXXXX");
    assert_non_null(mkdtemp(out));
}

static inline int remove_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    return remove(path);
}

/* Removes dir and everything in it (nothing if dir is empty or gone). */
static inline void remove_tree(const char *dir)
{
    if (dir[0])
        nftw(dir, remove_one, 8, FTW_DEPTH | FTW_PHYS);
}

/* Runs sql on db and returns its rows as text, one line per row, columns separated by one
 * space, NULL as "NULL". The caller frees the result. */
static inline char *rows_text(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        fail_msg("cannot prepare \"%s\": %s", sql, sqlite3_errmsg(db));
    size_t cap = 256, len = 0;
    char *out = malloc(cap);
    assert_non_null(out);
    out[0] = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        for (int i = 0; i < sqlite3_column_count(st); i++) {
            const char *v = (const char *)sqlite3_column_text(st, i);
            if (!v)
                v = "NULL";
            size_t need = len + strlen(v) + 2;
            if (need >= cap) {
                cap = need * 2;
                out = realloc(out, cap);
                assert_non_null(out);
            }
            len += (size_t)sprintf(out + len, "%s%s", i ? " " : "", v);
        }
        out[len++] = '\n';
        out[len] = 0;
    }
    assert_int_equal(rc, SQLITE_DONE);
    sqlite3_finalize(st);
    return out;
}

/* Checks that sql returns exactly the rows in expected (as rows_text writes them). */
static inline void assert_rows_on(sqlite3 *db, const char *sql, const char *expected)
{
    char *got = rows_text(db, sql);
    if (strcmp(got, expected) != 0) {
        print_error("query: %s\nexpected:\n%sgot:\n%s", sql, expected, got);
        free(got);
        fail();
    }
    free(got);
}

#endif
