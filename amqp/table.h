/* table.h: AMQP field tables and field arrays, RabbitMQ's type tags (errata).
 *
 * A table (or array) is kept as its raw encoded contents, WITHOUT the 4-byte
 * length prefix, and read by iteration: nothing here allocates while reading,
 * and every value returned is a view into the input.
 *
 * Tags: t bool, b int8, B uint8, s int16, u uint16, I int32, i uint32, l int64,
 * f float, d double, D decimal (scale octet + int32), S long string, A array,
 * T timestamp (uint64), F table, V void, x byte array (u32 length + bytes). */
#ifndef AMQP_TABLE_H
#define AMQP_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "amqp/abuf.h"
#include "amqp/bytes.h"
#include "amqp/wire.h"

#define TABLE_MAX_DEPTH 32

struct field_value {
    uint8_t type;                /* the tag character */
    union {
        int64_t i;               /* t (0/1), b, s, I, l */
        uint64_t u;              /* B, u, i, T */
        float f;
        double d;
        struct { uint8_t scale; uint32_t value; } dec;
        amqp_bytes bytes;        /* S and x: the data; F and A: nested contents without length prefix */
    } v;
};

/* 0 if t is a well-formed table: nesting depth <= TABLE_MAX_DEPTH (the table itself
 * is depth 1), every length inside bounds, known tags only, keys are shortstr,
 * nothing left over. -1 otherwise. array_validate is the same for array contents. */
int table_validate(amqp_bytes t);
int array_validate(amqp_bytes a);

struct table_iter { struct wire_reader r; };

void table_iter_init(struct table_iter *it, amqp_bytes t);
/* Next entry of a table: 1 got one, 0 end, -1 malformed (the iterator then stays
 * at the bad entry). Nested F/A contents are returned unchecked: validate the
 * whole table first (table_validate) if it came from the network. */
int table_next(struct table_iter *it, amqp_bytes *key, struct field_value *v);
/* Same for the contents of an array (init with table_iter_init). */
int array_next(struct table_iter *it, struct field_value *v);
/* 1 found (first entry with that key), 0 not found or malformed. */
int table_get(amqp_bytes t, const char *key, struct field_value *v);
/* Same, with the key as a byte view. */
int table_get_bytes(amqp_bytes t, amqp_bytes key, struct field_value *v);

/* Same tag and same value (floats compared bit for bit); F compared with
 * table_equal, A with byte equality. */
bool field_value_equal(const struct field_value *a, const struct field_value *b);
/* Same set of keys with equal values, whatever the order. A key repeated in one
 * table counts with its first value (as table_get sees it). Malformed tables are
 * equal only if byte-identical. Cost O(n log n); may allocate temporary memory
 * proportional to the number of entries. */
bool table_equal(amqp_bytes a, amqp_bytes b);

/* Integer tags (b B s u I i l T) -> *out and 0; anything else (or a T above
 * INT64_MAX) -> -1. */
int field_as_int64(const struct field_value *v, int64_t *out);
/* True for S (long string). */
bool field_is_string(const struct field_value *v);

/* Writers: a table or array is written as u32 length + contents. */
size_t table_begin(struct abuf *b);            /* reserves the 4-byte length, returns its offset */
void   table_end(struct abuf *b, size_t off);  /* patches the length (bytes written after off+4) */
void table_key(struct abuf *b, const char *key);           /* shortstr key (<= 255 bytes, asserted) */
void table_key_bytes(struct abuf *b, amqp_bytes key);
void field_put_bool(struct abuf *b, bool v);               /* 't' */
void field_put_longstr(struct abuf *b, amqp_bytes s);      /* 'S' */
void field_put_i32(struct abuf *b, int32_t v);             /* 'I' */
void field_put_i64(struct abuf *b, int64_t v);             /* 'l' */
void field_put_timestamp(struct abuf *b, uint64_t v);      /* 'T' */
void field_put_table(struct abuf *b, amqp_bytes contents); /* 'F' + length + contents */
void field_put_void(struct abuf *b);                       /* 'V' */
/* Re-encodes any decoded value with its tag (F, A, S, x: fresh length prefix).
 * An unknown tag is a programming error (asserted). */
void field_put_value(struct abuf *b, const struct field_value *v);

/* Readable one-line form of a table for logs, e.g.
 * {x-match="all", n=5, nested={a=true}, list=[1, "two"]}.
 * Always NUL-terminates out (if outlen > 0); a text that does not fit ends in
 * "...". Non-printable bytes in strings are written as \xNN. Returns the length
 * written (without the NUL), or -1 if the table is malformed (out then holds
 * what was read, followed by "<malformed>" if it fits). */
int table_to_text(amqp_bytes t, char *out, size_t outlen);

#endif
