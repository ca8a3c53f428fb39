/* Unit tests for the generated method codec and the basic content properties. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "amqp/abuf.h"
#include "amqp/table.h"
#include "amqp_methods.h"

/* ---- helpers ---- */

static const uint8_t sample_table[] = {
    8, 'x', '-', 'e', 'x', 'p', 'i', 'r', 'y', 'I', 0, 0, 0x75, 0x30,
    4, 'n', 'e', 's', 't', 'F', 0, 0, 0, 4, 1, 'k', 't', 1,
};

/* Copies n bytes into a buffer of exactly n bytes (ASan catches over-reads). */
static uint8_t *exact(const uint8_t *p, size_t n)
{
    uint8_t *q = malloc(n ? n : 1);
    assert_non_null(q);
    if (n)
        memcpy(q, p, n);
    return q;
}

static void *field_ptr(struct amqp_method *m, const struct amqp_field_info *f)
{
    return (char *)&m->a + f->offset;
}

/* Fills every argument of method id with a value that depends on the field
 * index (so that swapped fields are noticed); bit k takes bit k of `bits`. */
static void fill(struct amqp_method *m, uint32_t id, unsigned bits)
{
    static const char *strs[] = { "alpha", "b", "", "routing.key.#", "amq.gen-xyz" };
    static const uint8_t longstr[] = { 0, 1, 2, 0xff, 'l', 'o', 'n', 'g', 0 };
    size_t n, nbit = 0;
    const struct amqp_field_info *fs = amqp_method_fields(id, &n);

    memset(m, 0, sizeof *m);
    m->id = id;
    assert_non_null(fs);
    for (size_t i = 0; i < n; i++) {
        void *p = field_ptr(m, &fs[i]);
        switch (fs[i].type) {
        case AMQP_FT_BIT: *(bool *)p = (bits >> nbit++) & 1u; break;
        case AMQP_FT_OCTET: *(uint8_t *)p = (uint8_t)(0xa0 + i); break;
        case AMQP_FT_SHORT: *(uint16_t *)p = (uint16_t)(0xa1b2 + i); break;
        case AMQP_FT_LONG: *(uint32_t *)p = 0xa1b2c3d4u + (uint32_t)i; break;
        case AMQP_FT_LONGLONG:
        case AMQP_FT_TIMESTAMP: *(uint64_t *)p = 0xa1b2c3d4e5f60718ull + i; break;
        case AMQP_FT_SHORTSTR: *(amqp_bytes *)p = amqp_cstr(strs[i % 5]); break;
        case AMQP_FT_LONGSTR: *(amqp_bytes *)p = amqp_bytes_of(longstr, sizeof longstr - i % 3); break;
        case AMQP_FT_TABLE: *(amqp_bytes *)p = amqp_bytes_of(sample_table, sizeof sample_table); break;
        default: fail();
        }
    }
}

/* Encodes m by hand from its field descriptors, independently of the codec:
 * big-endian integers, consecutive bits packed LSB first into octets. */
static void encode_by_hand(struct amqp_method *m, struct abuf *b)
{
    size_t n, nbit = 0;
    const struct amqp_field_info *fs = amqp_method_fields(m->id, &n);
    uint8_t acc = 0;
    uint64_t x;

    abuf_u16(b, (uint16_t)(m->id >> 16));
    abuf_u16(b, (uint16_t)m->id);
    for (size_t i = 0; i < n; i++) {
        void *p = field_ptr(m, &fs[i]);
        if (fs[i].type == AMQP_FT_BIT) {
            if (nbit == 8) {
                abuf_u8(b, acc);
                acc = 0;
                nbit = 0;
            }
            acc |= (uint8_t)((*(bool *)p ? 1u : 0u) << nbit++);
            continue;
        }
        if (nbit > 0) {
            abuf_u8(b, acc);
            acc = 0;
            nbit = 0;
        }
        switch (fs[i].type) {
        case AMQP_FT_OCTET: abuf_u8(b, *(uint8_t *)p); break;
        case AMQP_FT_SHORT:
            x = *(uint16_t *)p;
            for (int k = 1; k >= 0; k--)
                abuf_u8(b, (uint8_t)(x >> (8 * k)));
            break;
        case AMQP_FT_LONG:
            x = *(uint32_t *)p;
            for (int k = 3; k >= 0; k--)
                abuf_u8(b, (uint8_t)(x >> (8 * k)));
            break;
        case AMQP_FT_LONGLONG:
        case AMQP_FT_TIMESTAMP:
            x = *(uint64_t *)p;
            for (int k = 7; k >= 0; k--)
                abuf_u8(b, (uint8_t)(x >> (8 * k)));
            break;
        case AMQP_FT_SHORTSTR:
            abuf_u8(b, (uint8_t)((amqp_bytes *)p)->len);
            abuf_bytes(b, ((amqp_bytes *)p)->ptr, ((amqp_bytes *)p)->len);
            break;
        default: {
            amqp_bytes s = *(amqp_bytes *)p;
            for (int k = 3; k >= 0; k--)
                abuf_u8(b, (uint8_t)(s.len >> (8 * k)));
            abuf_bytes(b, s.ptr, s.len);
        }
        }
    }
    if (nbit > 0)
        abuf_u8(b, acc);
}

static void assert_same_fields(struct amqp_method *a, struct amqp_method *b)
{
    size_t n;
    const struct amqp_field_info *fs = amqp_method_fields(a->id, &n);
    assert_int_equal(a->id, b->id);
    for (size_t i = 0; i < n; i++) {
        void *pa = field_ptr(a, &fs[i]), *pb = field_ptr(b, &fs[i]);
        switch (fs[i].type) {
        case AMQP_FT_BIT: assert_int_equal(*(bool *)pa, *(bool *)pb); break;
        case AMQP_FT_OCTET: assert_int_equal(*(uint8_t *)pa, *(uint8_t *)pb); break;
        case AMQP_FT_SHORT: assert_int_equal(*(uint16_t *)pa, *(uint16_t *)pb); break;
        case AMQP_FT_LONG: assert_int_equal(*(uint32_t *)pa, *(uint32_t *)pb); break;
        case AMQP_FT_LONGLONG:
        case AMQP_FT_TIMESTAMP: assert_true(*(uint64_t *)pa == *(uint64_t *)pb); break;
        default:
            assert_true(amqp_bytes_eq(*(amqp_bytes *)pa, *(amqp_bytes *)pb));
            break;
        }
    }
}

static size_t count_bits(uint32_t id)
{
    size_t n, bits = 0;
    const struct amqp_field_info *fs = amqp_method_fields(id, &n);
    for (size_t i = 0; i < n; i++)
        bits += fs[i].type == AMQP_FT_BIT;
    return bits;
}

/* ---- every method ---- */

static void test_roundtrip_all(void **state)
{
    (void)state;
    static const unsigned patterns[] = { 0, 0xff, 0x55, 0xaa, 0x01, 0x10 };
    struct abuf enc, hand;
    abuf_init(&enc);
    abuf_init(&hand);
    assert_int_equal(AMQP_METHOD_COUNT, 66);
    for (size_t k = 0; k < AMQP_METHOD_COUNT; k++) {
        uint32_t id = amqp_method_ids[k];
        size_t nbits = count_bits(id);
        assert_non_null(amqp_method_name(id));
        for (size_t p = 0; p < sizeof patterns / sizeof patterns[0]; p++) {
            struct amqp_method m, d;
            fill(&m, id, patterns[p]);
            abuf_reset(&enc);
            abuf_reset(&hand);
            amqp_method_encode(&m, &enc);
            encode_by_hand(&m, &hand);
            assert_int_equal(enc.len, hand.len);
            assert_memory_equal(enc.data, hand.data, enc.len);

            uint8_t *copy = exact(enc.data, enc.len);
            assert_int_equal(amqp_method_decode(copy, enc.len, &d), AMQP_DECODE_OK);
            assert_same_fields(&m, &d);
            free(copy);
            if (nbits == 0)
                break;
        }
    }
    abuf_free(&enc);
    abuf_free(&hand);
}

/* Every proper prefix of a valid payload is SYNTAX, read from an exact-size copy;
 * so are extra bytes after a valid payload (RabbitMQ refuses them too). */
static void test_truncation_all(void **state)
{
    (void)state;
    struct abuf enc;
    abuf_init(&enc);
    for (size_t k = 0; k < AMQP_METHOD_COUNT; k++) {
        struct amqp_method m, d;
        fill(&m, amqp_method_ids[k], 0xff);
        abuf_reset(&enc);
        amqp_method_encode(&m, &enc);
        for (size_t n = 0; n < enc.len; n++) {
            uint8_t *copy = exact(enc.data, n);
            assert_int_equal(amqp_method_decode(copy, n, &d), AMQP_DECODE_SYNTAX);
            free(copy);
        }
        uint8_t *copy = exact(enc.data, enc.len);
        assert_int_equal(amqp_method_decode(copy, enc.len, &d), AMQP_DECODE_OK);
        assert_same_fields(&m, &d);
        free(copy);
        abuf_bytes(&enc, "\x01\x02\x03", 3);
        copy = exact(enc.data, enc.len);
        assert_int_equal(amqp_method_decode(copy, enc.len, &d), AMQP_DECODE_SYNTAX);
        free(copy);
    }
    assert_int_equal(amqp_method_decode(NULL, 0, &(struct amqp_method){ 0 }), AMQP_DECODE_SYNTAX);
    abuf_free(&enc);
}

static void test_unknown(void **state)
{
    (void)state;
    struct amqp_method d;
    static const uint8_t cases[][4] = {
        { 0, 0, 0, 0 },        /* class 0 */
        { 0, 99, 0, 10 },      /* class 99 */
        { 0, 10, 0, 12 },      /* connection.12 */
        { 0, 60, 0, 41 },      /* basic.41 */
        { 0, 60, 0x01, 0x28 }, /* basic.296 */
        { 0x01, 0x3c, 0, 40 }, /* class 316 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t *copy = exact(cases[i], 4);
        assert_int_equal(amqp_method_decode(copy, 4, &d), AMQP_DECODE_UNKNOWN);
        free(copy);
    }
    assert_null(amqp_method_name(AMQP_METHOD_ID(60, 41)));
    assert_null(amqp_method_name(AMQP_METHOD_ID(99, 10)));
    assert_false(amqp_method_has_content(AMQP_METHOD_ID(99, 10)));
    assert_false(amqp_method_is_synchronous(AMQP_METHOD_ID(99, 10)));
    size_t n = 7;
    assert_null(amqp_method_fields(AMQP_METHOD_ID(99, 10), &n));
    assert_int_equal(n, 0);
}

/* ---- bytes written out by hand from the spec ---- */

static void check_bytes(const struct amqp_method *m, const uint8_t *want, size_t len)
{
    struct abuf b;
    struct amqp_method d;
    abuf_init(&b);
    amqp_method_encode(m, &b);
    assert_int_equal(b.len, len);
    assert_memory_equal(b.data, want, len);
    abuf_free(&b);
    uint8_t *copy = exact(want, len);
    assert_int_equal(amqp_method_decode(copy, len, &d), AMQP_DECODE_OK);
    assert_same_fields((struct amqp_method *)m, &d);
    free(copy);
}

static void test_known_bytes(void **state)
{
    (void)state;
    struct amqp_method m;

    memset(&m, 0, sizeof m);
    m.id = AMQP_CONNECTION_TUNE;
    m.a.connection_tune.channel_max = 2047;
    m.a.connection_tune.frame_max = 131072;
    m.a.connection_tune.heartbeat = 60;
    static const uint8_t tune[] = { 0, 10, 0, 30, 0x07, 0xff, 0, 2, 0, 0, 0, 60 };
    check_bytes(&m, tune, sizeof tune);

    memset(&m, 0, sizeof m);
    m.id = AMQP_BASIC_PUBLISH;
    m.a.basic_publish.ticket = 0;
    m.a.basic_publish.exchange = amqp_cstr("ex");
    m.a.basic_publish.routing_key = amqp_cstr("rk");
    m.a.basic_publish.mandatory = true;
    m.a.basic_publish.immediate = false;
    static const uint8_t publish[] = { 0, 60, 0, 40, 0, 0, 2, 'e', 'x', 2, 'r', 'k', 0x01 };
    check_bytes(&m, publish, sizeof publish);
    m.a.basic_publish.mandatory = false;
    m.a.basic_publish.immediate = true;
    static const uint8_t publish2[] = { 0, 60, 0, 40, 0, 0, 2, 'e', 'x', 2, 'r', 'k', 0x02 };
    check_bytes(&m, publish2, sizeof publish2);

    /* queue.declare: passive durable exclusive auto-delete nowait = 0 1 0 1 0 */
    memset(&m, 0, sizeof m);
    m.id = AMQP_QUEUE_DECLARE;
    m.a.queue_declare.queue = amqp_cstr("q");
    m.a.queue_declare.durable = true;
    m.a.queue_declare.auto_delete = true;
    static const uint8_t qd[] = { 0, 50, 0, 10, 0, 0, 1, 'q', 0x0a, 0, 0, 0, 0 };
    check_bytes(&m, qd, sizeof qd);
    m.a.queue_declare.durable = false;
    m.a.queue_declare.auto_delete = false;
    m.a.queue_declare.passive = true;
    m.a.queue_declare.exclusive = true;
    m.a.queue_declare.nowait = true;
    static const uint8_t qd2[] = { 0, 50, 0, 10, 0, 0, 1, 'q', 0x15, 0, 0, 0, 0 };
    check_bytes(&m, qd2, sizeof qd2);

    /* basic.nack: multiple=bit 0, requeue=bit 1 */
    memset(&m, 0, sizeof m);
    m.id = AMQP_BASIC_NACK;
    m.a.basic_nack.delivery_tag = 5;
    m.a.basic_nack.multiple = false;
    m.a.basic_nack.requeue = true;
    static const uint8_t nack[] = { 0, 60, 0, 120, 0, 0, 0, 0, 0, 0, 0, 5, 0x02 };
    check_bytes(&m, nack, sizeof nack);
    m.a.basic_nack.multiple = true;
    static const uint8_t nack2[] = { 0, 60, 0, 120, 0, 0, 0, 0, 0, 0, 0, 5, 0x03 };
    check_bytes(&m, nack2, sizeof nack2);

    /* basic.deliver: a bit between two strings takes a whole octet */
    memset(&m, 0, sizeof m);
    m.id = AMQP_BASIC_DELIVER;
    m.a.basic_deliver.consumer_tag = amqp_cstr("c");
    m.a.basic_deliver.delivery_tag = 0x0102030405060708ull;
    m.a.basic_deliver.redelivered = true;
    m.a.basic_deliver.exchange = amqp_cstr("");
    m.a.basic_deliver.routing_key = amqp_cstr("k");
    static const uint8_t deliver[] = { 0, 60, 0, 60, 1, 'c', 1, 2, 3, 4, 5, 6, 7, 8, 1, 0, 1, 'k' };
    check_bytes(&m, deliver, sizeof deliver);

    /* connection.start with a server-properties table */
    memset(&m, 0, sizeof m);
    m.id = AMQP_CONNECTION_START;
    m.a.connection_start.version_major = 0;
    m.a.connection_start.version_minor = 9;
    static const uint8_t props[] = { 7, 'p', 'r', 'o', 'd', 'u', 'c', 't', 'S', 0, 0, 0, 1, 'W' };
    m.a.connection_start.server_properties = amqp_bytes_of(props, sizeof props);
    m.a.connection_start.mechanisms = amqp_cstr("PLAIN");
    m.a.connection_start.locales = amqp_cstr("en_US");
    static const uint8_t start[] = {
        0, 10, 0, 10, 0, 9,
        0, 0, 0, 14, 7, 'p', 'r', 'o', 'd', 'u', 'c', 't', 'S', 0, 0, 0, 1, 'W',
        0, 0, 0, 5, 'P', 'L', 'A', 'I', 'N',
        0, 0, 0, 5, 'e', 'n', '_', 'U', 'S',
    };
    check_bytes(&m, start, sizeof start);

    /* argument-less method */
    memset(&m, 0, sizeof m);
    m.id = AMQP_CONFIRM_SELECT_OK;
    static const uint8_t cso[] = { 0, 85, 0, 11 };
    check_bytes(&m, cso, sizeof cso);

    /* exchange.declare with every bit set; unused high bits on input are ignored */
    memset(&m, 0, sizeof m);
    m.id = AMQP_EXCHANGE_DECLARE;
    m.a.exchange_declare.exchange = amqp_cstr("e");
    m.a.exchange_declare.type = amqp_cstr("topic");
    m.a.exchange_declare.passive = m.a.exchange_declare.durable = true;
    m.a.exchange_declare.auto_delete = m.a.exchange_declare.internal = true;
    m.a.exchange_declare.nowait = true;
    static const uint8_t ed[] = { 0, 40, 0, 10, 0, 0, 1, 'e', 5, 't', 'o', 'p', 'i', 'c', 0x1f, 0, 0, 0, 0 };
    check_bytes(&m, ed, sizeof ed);
    uint8_t ed_high[sizeof ed];
    memcpy(ed_high, ed, sizeof ed);
    ed_high[14] = 0xff;
    struct amqp_method d;
    assert_int_equal(amqp_method_decode(ed_high, sizeof ed_high, &d), AMQP_DECODE_OK);
    assert_same_fields(&m, &d);
}

static void test_bad_table_is_syntax(void **state)
{
    (void)state;
    /* queue.declare whose arguments table has an unknown tag */
    static const uint8_t qd[] = { 0, 50, 0, 10, 0, 0, 1, 'q', 0, 0, 0, 0, 3, 1, 'a', 'Z' };
    struct amqp_method d;
    assert_int_equal(amqp_method_decode(qd, sizeof qd, &d), AMQP_DECODE_SYNTAX);
    /* a table length pointing past the end */
    static const uint8_t qd2[] = { 0, 50, 0, 10, 0, 0, 1, 'q', 0, 0, 0, 0, 9, 1, 'a', 'V' };
    assert_int_equal(amqp_method_decode(qd2, sizeof qd2, &d), AMQP_DECODE_SYNTAX);
    /* a shortstr length pointing past the end */
    static const uint8_t qd3[] = { 0, 50, 0, 10, 0, 0, 200, 'q' };
    assert_int_equal(amqp_method_decode(qd3, sizeof qd3, &d), AMQP_DECODE_SYNTAX);
}

static void test_method_info(void **state)
{
    (void)state;
    assert_string_equal(amqp_method_name(AMQP_BASIC_PUBLISH), "basic.publish");
    assert_string_equal(amqp_method_name(AMQP_BASIC_GET_OK), "basic.get-ok");
    assert_string_equal(amqp_method_name(AMQP_CONNECTION_UPDATE_SECRET_OK), "connection.update-secret-ok");
    assert_string_equal(amqp_method_name(AMQP_EXCHANGE_UNBIND_OK), "exchange.unbind-ok");

    int content = 0;
    for (size_t k = 0; k < AMQP_METHOD_COUNT; k++)
        content += amqp_method_has_content(amqp_method_ids[k]);
    assert_int_equal(content, 4);
    assert_true(amqp_method_has_content(AMQP_BASIC_PUBLISH));
    assert_true(amqp_method_has_content(AMQP_BASIC_RETURN));
    assert_true(amqp_method_has_content(AMQP_BASIC_DELIVER));
    assert_true(amqp_method_has_content(AMQP_BASIC_GET_OK));

    static const uint32_t sync[] = {
        AMQP_CONNECTION_START, AMQP_CONNECTION_CLOSE, AMQP_CHANNEL_OPEN, AMQP_CHANNEL_FLOW,
        AMQP_QUEUE_DECLARE, AMQP_EXCHANGE_BIND, AMQP_BASIC_QOS, AMQP_BASIC_CONSUME,
        AMQP_BASIC_CANCEL, AMQP_BASIC_GET, AMQP_BASIC_RECOVER, AMQP_TX_SELECT,
        AMQP_TX_COMMIT, AMQP_CONFIRM_SELECT, AMQP_CONNECTION_UPDATE_SECRET,
    };
    for (size_t i = 0; i < sizeof sync / sizeof sync[0]; i++)
        assert_true(amqp_method_is_synchronous(sync[i]));
    static const uint32_t async[] = {
        AMQP_BASIC_PUBLISH, AMQP_BASIC_ACK, AMQP_BASIC_NACK, AMQP_BASIC_REJECT,
        AMQP_BASIC_DELIVER, AMQP_QUEUE_DECLARE_OK, AMQP_CONNECTION_CLOSE_OK,
        AMQP_BASIC_RECOVER_ASYNC, AMQP_CONNECTION_BLOCKED, AMQP_CONNECTION_UNBLOCKED,
    };
    for (size_t i = 0; i < sizeof async / sizeof async[0]; i++)
        assert_false(amqp_method_is_synchronous(async[i]));

    assert_int_equal(AMQP_CONNECTION_START, 0x000a000a);
    assert_int_equal(AMQP_BASIC_NACK, AMQP_METHOD_ID(60, 120));
    assert_int_equal(AMQP_CLASS_CONFIRM, 85);
    assert_int_equal(AMQP_CLASS_BASIC, 60);
    assert_int_equal(AMQP_FRAME_METHOD, 1);
    assert_int_equal(AMQP_FRAME_HEADER, 2);
    assert_int_equal(AMQP_FRAME_BODY, 3);
    assert_int_equal(AMQP_FRAME_HEARTBEAT, 8);
    assert_int_equal(AMQP_FRAME_MIN_SIZE, 4096);
    assert_int_equal(AMQP_FRAME_END, 206);
    assert_int_equal(AMQP_REPLY_SUCCESS, 200);
    assert_int_equal(AMQP_NOT_FOUND, 404);
    assert_int_equal(AMQP_PRECONDITION_FAILED, 406);
    assert_int_equal(AMQP_CONNECTION_FORCED, 320);

    assert_string_equal(amqp_reply_name(404), "NOT_FOUND");
    assert_string_equal(amqp_reply_name(406), "PRECONDITION_FAILED");
    assert_string_equal(amqp_reply_name(200), "REPLY_SUCCESS");
    assert_string_equal(amqp_reply_name(505), "UNEXPECTED_FRAME");
    assert_null(amqp_reply_name(999));
    assert_null(amqp_reply_name(206));
    assert_true(amqp_reply_is_hard_error(320));
    assert_true(amqp_reply_is_hard_error(501));
    assert_true(amqp_reply_is_hard_error(541));
    assert_false(amqp_reply_is_hard_error(404));
    assert_false(amqp_reply_is_hard_error(406));
    assert_false(amqp_reply_is_hard_error(200));
    assert_false(amqp_reply_is_hard_error(0));

    size_t n;
    const struct amqp_field_info *f = amqp_method_fields(AMQP_BASIC_PUBLISH, &n);
    assert_int_equal(n, 5);
    assert_string_equal(f[2].name, "routing-key");
    assert_int_equal(f[2].offset, offsetof(struct amqp_basic_publish, routing_key));
    assert_non_null(amqp_method_fields(AMQP_TX_SELECT, &n));
    assert_int_equal(n, 0);
}

/* ---- content properties ---- */

static void fill_props(struct amqp_basic_properties *p, uint16_t flags)
{
    static const uint8_t headers[] = { 1, 'h', 'S', 0, 0, 0, 2, 'h', 'i' };
    memset(p, 0, sizeof *p);
    p->flags = flags;
    if (flags & AMQP_PROP_CONTENT_TYPE) p->content_type = amqp_cstr("application/json");
    if (flags & AMQP_PROP_CONTENT_ENCODING) p->content_encoding = amqp_cstr("gzip");
    if (flags & AMQP_PROP_HEADERS) p->headers = amqp_bytes_of(headers, sizeof headers);
    if (flags & AMQP_PROP_DELIVERY_MODE) p->delivery_mode = 2;
    if (flags & AMQP_PROP_PRIORITY) p->priority = 7;
    if (flags & AMQP_PROP_CORRELATION_ID) p->correlation_id = amqp_cstr("corr");
    if (flags & AMQP_PROP_REPLY_TO) p->reply_to = amqp_cstr("amq.rabbitmq.reply-to");
    if (flags & AMQP_PROP_EXPIRATION) p->expiration = amqp_cstr("60000");
    if (flags & AMQP_PROP_MESSAGE_ID) p->message_id = amqp_cstr("m-1");
    if (flags & AMQP_PROP_TIMESTAMP) p->timestamp = 0x0102030405060708ull;
    if (flags & AMQP_PROP_TYPE) p->type = amqp_cstr("t");
    if (flags & AMQP_PROP_USER_ID) p->user_id = amqp_cstr("guest");
    if (flags & AMQP_PROP_APP_ID) p->app_id = amqp_cstr("app");
    if (flags & AMQP_PROP_CLUSTER_ID) p->cluster_id = amqp_cstr("");
}

static void assert_props_equal(const struct amqp_basic_properties *a,
                               const struct amqp_basic_properties *b)
{
    assert_int_equal(a->flags, b->flags);
    assert_true(amqp_bytes_eq(a->content_type, b->content_type));
    assert_true(amqp_bytes_eq(a->content_encoding, b->content_encoding));
    assert_true(amqp_bytes_eq(a->headers, b->headers));
    assert_int_equal(a->delivery_mode, b->delivery_mode);
    assert_int_equal(a->priority, b->priority);
    assert_true(amqp_bytes_eq(a->correlation_id, b->correlation_id));
    assert_true(amqp_bytes_eq(a->reply_to, b->reply_to));
    assert_true(amqp_bytes_eq(a->expiration, b->expiration));
    assert_true(amqp_bytes_eq(a->message_id, b->message_id));
    assert_true(a->timestamp == b->timestamp);
    assert_true(amqp_bytes_eq(a->type, b->type));
    assert_true(amqp_bytes_eq(a->user_id, b->user_id));
    assert_true(amqp_bytes_eq(a->app_id, b->app_id));
    assert_true(amqp_bytes_eq(a->cluster_id, b->cluster_id));
}

static void test_props_roundtrip(void **state)
{
    (void)state;
    struct abuf b;
    abuf_init(&b);
    /* every subset of the 14 flags */
    for (uint32_t s = 0; s < (1u << 14); s++) {
        struct amqp_basic_properties p, d;
        uint16_t flags = (uint16_t)(s << 2);
        fill_props(&p, flags);
        abuf_reset(&b);
        amqp_props_encode(&p, &b);
        assert_int_equal(amqp_props_decode(b.data, b.len, &d), 0);
        assert_props_equal(&p, &d);
    }
    assert_int_equal(AMQP_PROP_ALL, 0xfffc);

    /* all 14: every proper prefix is rejected, from an exact-size copy */
    struct amqp_basic_properties p, d;
    fill_props(&p, AMQP_PROP_ALL);
    abuf_reset(&b);
    amqp_props_encode(&p, &b);
    for (size_t n = 0; n < b.len; n++) {
        uint8_t *copy = exact(b.data, n);
        assert_int_equal(amqp_props_decode(copy, n, &d), -1);
        free(copy);
    }
    abuf_free(&b);
}

static void test_props_bytes(void **state)
{
    (void)state;
    struct amqp_basic_properties p, d;
    struct abuf b;
    abuf_init(&b);

    /* content-type "text/plain" + delivery-mode 2: flags 0x9000 */
    fill_props(&p, 0);
    p.flags = AMQP_PROP_CONTENT_TYPE | AMQP_PROP_DELIVERY_MODE;
    p.content_type = amqp_cstr("text/plain");
    p.delivery_mode = 2;
    static const uint8_t want[] = { 0x90, 0x00, 10, 't', 'e', 'x', 't', '/', 'p', 'l', 'a', 'i', 'n', 2 };
    amqp_props_encode(&p, &b);
    assert_int_equal(b.len, sizeof want);
    assert_memory_equal(b.data, want, sizeof want);
    assert_int_equal(amqp_props_decode(want, sizeof want, &d), 0);
    assert_props_equal(&p, &d);

    /* headers + timestamp: flags 0x2040 */
    static const uint8_t ht[] = { 0x20, 0x40, 0, 0, 0, 3, 1, 'a', 'V', 0, 0, 0, 0, 0x60, 0, 0, 0 };
    assert_int_equal(amqp_props_decode(ht, sizeof ht, &d), 0);
    assert_int_equal(d.flags, AMQP_PROP_HEADERS | AMQP_PROP_TIMESTAMP);
    assert_int_equal(d.headers.len, 3);
    assert_true(d.timestamp == 0x60000000u);

    /* no properties */
    static const uint8_t none[] = { 0, 0 };
    assert_int_equal(amqp_props_decode(none, sizeof none, &d), 0);
    assert_int_equal(d.flags, 0);

    /* continuation flag word: rejected */
    static const uint8_t cont[] = { 0x00, 0x01, 0x00, 0x00 };
    assert_int_equal(amqp_props_decode(cont, sizeof cont, &d), -1);
    /* bad headers table: rejected */
    static const uint8_t badh[] = { 0x20, 0x00, 0, 0, 0, 3, 1, 'a', 'Z' };
    assert_int_equal(amqp_props_decode(badh, sizeof badh, &d), -1);
    /* headers length past the end */
    static const uint8_t longh[] = { 0x20, 0x00, 0, 0, 1, 0, 1, 'a', 'V' };
    assert_int_equal(amqp_props_decode(longh, sizeof longh, &d), -1);
    /* unused flag bit 1 is dropped and not written back */
    static const uint8_t bit1[] = { 0x00, 0x02 };
    assert_int_equal(amqp_props_decode(bit1, sizeof bit1, &d), 0);
    assert_int_equal(d.flags, 0);
    abuf_free(&b);
}

/* ---- abuf and wire ---- */

static void test_abuf_wire(void **state)
{
    (void)state;
    struct abuf b;
    abuf_init(&b);
    abuf_u8(&b, 0x01);
    abuf_u16(&b, 0x0203);
    abuf_u32(&b, 0x04050607);
    abuf_u64(&b, 0x08090a0b0c0d0e0full);
    abuf_shortstr(&b, amqp_cstr("ab"));
    abuf_longstr(&b, amqp_cstr("cd"));
    static const uint8_t want[] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                                    2, 'a', 'b', 0, 0, 0, 2, 'c', 'd' };
    assert_int_equal(b.len, sizeof want);
    assert_memory_equal(b.data, want, sizeof want);
    abuf_put_u32_at(&b, 1, 0xdeadbeef);
    assert_int_equal(b.data[1], 0xde);
    assert_int_equal(b.data[4], 0xef);

    struct wire_reader r;
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    amqp_bytes s;
    wire_init(&r, want, sizeof want);
    assert_int_equal(wire_u8(&r, &u8), 0);
    assert_int_equal(u8, 1);
    assert_int_equal(wire_u16(&r, &u16), 0);
    assert_int_equal(u16, 0x0203);
    assert_int_equal(wire_u32(&r, &u32), 0);
    assert_int_equal(u32, 0x04050607);
    assert_int_equal(wire_u64(&r, &u64), 0);
    assert_true(u64 == 0x08090a0b0c0d0e0full);
    assert_int_equal(wire_shortstr(&r, &s), 0);
    assert_true(amqp_bytes_eq_cstr(s, "ab"));
    assert_int_equal(wire_left(&r), 6);
    assert_int_equal(wire_u64(&r, &u64), -1);
    assert_int_equal(wire_left(&r), 6);
    assert_int_equal(wire_longstr(&r, &s), 0);
    assert_true(amqp_bytes_eq_cstr(s, "cd"));
    assert_int_equal(wire_left(&r), 0);
    assert_int_equal(wire_u8(&r, &u8), -1);
    assert_int_equal(wire_bytes(&r, 0, &s), 0);
    assert_int_equal(wire_bytes(&r, 1, &s), -1);

    /* a failed string read leaves the position unchanged */
    static const uint8_t bad[] = { 0, 0, 0, 9, 'x' };
    wire_init(&r, bad, sizeof bad);
    assert_int_equal(wire_longstr(&r, &s), -1);
    assert_int_equal(r.pos, 0);
    assert_int_equal(wire_shortstr(&r, &s), 0);   /* reads the 0-length shortstr */
    assert_int_equal(r.pos, 1);

    /* the longest short string */
    char big[256];
    memset(big, 'z', 255);
    big[255] = '\0';
    abuf_reset(&b);
    abuf_shortstr(&b, amqp_cstr(big));
    assert_int_equal(b.len, 256);
    assert_int_equal(b.data[0], 255);
    abuf_reset(&b);
    assert_int_equal(b.len, 0);
    for (int i = 0; i < 100000; i++)
        abuf_u8(&b, (uint8_t)i);
    assert_int_equal(b.len, 100000);
    assert_int_equal(b.data[99999], (uint8_t)99999);
    abuf_free(&b);
    assert_null(b.data);

    assert_true(amqp_bytes_eq(amqp_cstr(""), amqp_bytes_of(NULL, 0)));
    assert_false(amqp_bytes_eq_cstr(amqp_cstr("ab"), "abc"));
    assert_true(amqp_bytes_eq_cstr(amqp_bytes_of("abc", 2), "ab"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_all),
        cmocka_unit_test(test_truncation_all),
        cmocka_unit_test(test_unknown),
        cmocka_unit_test(test_known_bytes),
        cmocka_unit_test(test_bad_table_is_syntax),
        cmocka_unit_test(test_method_info),
        cmocka_unit_test(test_props_roundtrip),
        cmocka_unit_test(test_props_bytes),
        cmocka_unit_test(test_abuf_wire),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
