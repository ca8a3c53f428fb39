"""Malformed and out-of-order input, sent as raw bytes (rawamqp.py).

Each case asserts the exact reply code (and class/method ids where RabbitMQ
sends meaningful ones), then checks that the broker still serves a fresh
connection. Expected values were checked against RabbitMQ 3.10.8 (Debian 12).
Where Warren deliberately differs from RabbitMQ, the test says so and picks
the expectation from the server's `product` property.

Only the `broker` fixture's host and port are used.
"""

import time
import uuid

import pytest

from rawamqp import (
    BASIC_PUBLISH, CHANNEL_CLOSE, CHANNEL_CLOSE_OK, CHANNEL_OPEN, CONNECTION_CLOSE,
    CONNECTION_OPEN, CONNECTION_START_OK, CONNECTION_TUNE_OK, FRAME_HEARTBEAT,
    FRAME_METHOD, HEARTBEAT_FRAME, PROTOCOL_HEADER, QUEUE_DECLARE,
    Closed, RawConn, Timeout, args_basic_publish, args_channel_open,
    args_queue_declare, bits, body_frame, header_frame,
    long_, longstr, method_frame, method_payload, short, shortstr,
)

FRAME_ERROR, COMMAND_INVALID, CHANNEL_ERROR = 501, 503, 504
UNEXPECTED_FRAME, NOT_ALLOWED, NOT_IMPLEMENTED = 505, 530, 540
ACCESS_REFUSED, NOT_FOUND = 403, 404


def qname(prefix="raw"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


def connect(broker, **kw):
    return RawConn(broker.host, broker.port, **kw)


def opened(broker, channel=None, **tune):
    """A connection past open-ok (and with `channel` open, if given)."""
    c = connect(broker).handshake(**tune)
    if channel is not None:
        c.open_channel(channel)
    return c


def assert_broker_serves(broker):
    """A fresh connection completes the handshake and declares a queue."""
    c = opened(broker, channel=1)
    try:
        name, messages, consumers = c.queue_declare(1, "", exclusive=True)
        assert name.startswith("amq.gen-") and (messages, consumers) == (0, 0)
        c.send_method(0, CONNECTION_CLOSE, short(200) + shortstr("bye") + short(0) + short(0))
        c.expect_method(0, (10, 51))
    finally:
        c.close()


def assert_dropped(c, timeout=5.0):
    """The broker closes the socket, sending no connection.close first."""
    try:
        ftype, ch, payload, _ = c.read_frame(timeout)
    except Closed:
        return
    raise AssertionError("expected the socket to close, got frame type %d: %r"
                         % (ftype, payload[:80]))


def close_or_drop(c, timeout=5.0):
    """-> (code, text, class, method) of a connection.close, or None if the
    broker dropped the socket without one."""
    try:
        return c.expect_connection_close(timeout)
    except Closed:
        return None


# ------------------------------------------------------------ protocol header

@pytest.mark.parametrize("header", [
    b"AMQP\x00\x00\x09\x02",       # a newer revision
    b"AMQP\x00\x01\x00\x00",       # AMQP 1.0
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
])
def test_bad_protocol_header_gets_ours_and_close(broker, header):
    c = connect(broker)
    try:
        c.send(header)
        assert c.recv_until_eof() == PROTOCOL_HEADER
    finally:
        c.close()
    assert_broker_serves(broker)


# ------------------------------------------------------------ authentication

def test_start_offers_plain_and_amqplain(broker):
    c = connect(broker)
    try:
        mechanisms = c.start()
        assert c.version == (0, 9)
        assert "PLAIN" in mechanisms and "AMQPLAIN" in mechanisms
        assert "en_US" in c.locales
        assert isinstance(c.server_properties.get("capabilities"), dict)
    finally:
        c.close()
    assert_broker_serves(broker)


def test_amqplain_login_works(broker):
    c = opened(broker, channel=1, mechanism="AMQPLAIN")
    try:
        q = qname()
        assert c.queue_declare(1, q, auto_delete=True) == (q, 0, 0)
    finally:
        c.close()
    assert_broker_serves(broker)


@pytest.mark.parametrize("mechanism", ["PLAIN", "AMQPLAIN"])
def test_wrong_password_is_403_after_start_ok(broker, mechanism):
    c = connect(broker)
    try:
        c.start()
        c.start_ok("guest", "not-the-password", mechanism)
        code, text, cls, mth = c.expect_connection_close()
        assert code == ACCESS_REFUSED
        assert text.startswith("ACCESS_REFUSED")
        # RabbitMQ sends class/method 0/0 here; naming start-ok is fine too.
        assert (cls, mth) in ((0, 0), CONNECTION_START_OK)
    finally:
        c.close()
    assert_broker_serves(broker)


def test_unknown_user_is_403(broker):
    c = connect(broker)
    try:
        c.start()
        c.start_ok("no-such-user-" + uuid.uuid4().hex[:6], "guest")
        code, text, _, _ = c.expect_connection_close()
        assert code == ACCESS_REFUSED and text.startswith("ACCESS_REFUSED")
    finally:
        c.close()
    assert_broker_serves(broker)


def test_wrong_password_without_capability_ends_connection(broker):
    # RabbitMQ closes the socket silently when the client did not advertise
    # authentication_failure_close; a 403 connection.close is fine as well.
    c = connect(broker)
    try:
        c.start()
        c.start_ok("guest", "wrong", client_properties={"product": "old-client"})
        result = close_or_drop(c)
        if result is not None:
            assert result[0] == ACCESS_REFUSED
    finally:
        c.close()
    assert_broker_serves(broker)


def test_guest_from_loopback_is_allowed(broker):
    c = connect(broker)
    try:
        c.start()
        c.start_ok("guest", "guest")
        channel_max, frame_max, heartbeat = c.read_tune()
        # RabbitMQ's defaults, which CONFORMANCE.md asks for.
        assert (channel_max, frame_max, heartbeat) == (2047, 131072, 60)
        c.tune_ok()
        c.open()
    finally:
        c.close()
    assert_broker_serves(broker)


# ------------------------------------------------------------ tune-ok limits

@pytest.mark.parametrize("tune", [
    {"frame_max": 131073},   # above the server's frame-max
    {"frame_max": 4095},     # below the 4096 minimum
])
def test_tune_ok_out_of_range_is_refused(broker, tune):
    c = connect(broker, timeout=6)
    try:
        c.start()
        c.start_ok()
        c.read_tune()
        c.tune_ok(**tune)
        if c.is_rabbitmq():
            # RabbitMQ raises 530 NOT_ALLOWED ("negotiated frame_max = 131073
            # is higher than the maximum allowed value") but, being still in
            # the handshake, only logs it and drops the socket after 3 s.
            assert_dropped(c, timeout=6)
        else:
            # Deliberate difference: Warren tells the client why.
            code, text, cls, mth = c.expect_connection_close()
            assert code == NOT_ALLOWED and text.startswith("NOT_ALLOWED")
            assert (cls, mth) == CONNECTION_TUNE_OK
    finally:
        c.close()
    assert_broker_serves(broker)


# ------------------------------------------------------------ frame errors

def test_bad_frame_end_is_501(broker):
    c = opened(broker, channel=1)
    try:
        c.send_frame(FRAME_METHOD, 1, method_payload(QUEUE_DECLARE, args_queue_declare(qname())),
                     end=0xCD)
        # The frame sync is lost, so the broker cannot read close-ok; it must
        # still close the socket by itself (RabbitMQ and Warren: after 3 s).
        code, text, cls, mth = c.expect_connection_close()
        assert code == FRAME_ERROR and text.startswith("FRAME_ERROR")
        assert (cls, mth) == (0, 0)
    finally:
        c.close()
    assert_broker_serves(broker)


def test_bad_frame_end_on_channel_zero_is_501(broker):
    c = opened(broker)
    try:
        c.send_frame(FRAME_HEARTBEAT, 0, b"", end=0x00)
        code, _, _, _ = c.expect_connection_close(wait_eof=False)
        assert code == FRAME_ERROR
    finally:
        c.close()
    assert_broker_serves(broker)


def test_body_frame_over_frame_max_is_501(broker):
    c = opened(broker, channel=1, frame_max=4096)
    try:
        c.send(method_frame(1, BASIC_PUBLISH, args_basic_publish("", qname()))
               + header_frame(1, 100000))
        # Payload frame_max + 1. (RabbitMQ tolerates payloads up to frame_max,
        # 8 octets more than the frame-max bound allows; see the test below.)
        c.send(body_frame(1, b"x" * 4097))
        code, text, cls, mth = c.expect_connection_close(wait_eof=False)
        assert code == FRAME_ERROR and text.startswith("FRAME_ERROR")
        assert (cls, mth) == (0, 0)
    finally:
        c.close()
    assert_broker_serves(broker)


def test_frame_one_octet_over_frame_max_is_501(broker):
    c = opened(broker, channel=1, frame_max=4096)
    try:
        if c.is_rabbitmq():
            pytest.skip("RabbitMQ compares the payload size, not the frame size, "
                        "with frame_max; Warren is strict")
        c.send(method_frame(1, BASIC_PUBLISH, args_basic_publish("", qname()))
               + header_frame(1, 100000))
        c.send(body_frame(1, b"x" * (4096 - 7)))   # a 4097-octet frame
        code, _, _, _ = c.expect_connection_close(wait_eof=False)
        assert code == FRAME_ERROR
    finally:
        c.close()
    assert_broker_serves(broker)


def test_method_frame_over_frame_max_is_501(broker):
    c = opened(broker, channel=1, frame_max=4096)
    try:
        c.send_method(1, QUEUE_DECLARE, args_queue_declare(
            qname(), auto_delete=True, arguments={"x-pad": "p" * 5000}))
        code, _, cls, mth = c.expect_connection_close(wait_eof=False)
        assert code == FRAME_ERROR and (cls, mth) == (0, 0)
    finally:
        c.close()
    assert_broker_serves(broker)


def test_frame_exactly_frame_max_is_accepted(broker):
    c = opened(broker, channel=1, frame_max=4096)
    try:
        q, _, _ = c.queue_declare(1, qname(), auto_delete=True)
        body = bytes(range(256)) * 15 + b"z" * (4088 - 3840)   # 4088 = 4096 - 8
        c.publish(1, body, routing_key=q)
        assert c.basic_get(1, q) == body
    finally:
        c.close()
    assert_broker_serves(broker)


@pytest.mark.parametrize("channel", [0, 1])
def test_unknown_frame_type_is_501(broker, channel):
    c = opened(broker, channel=1)
    try:
        c.send_frame(7, channel, b"abc")
        code, text, cls, mth = c.expect_connection_close(wait_eof=False)
        assert code == FRAME_ERROR and text.startswith("FRAME_ERROR")
        assert (cls, mth) == (0, 0)
    finally:
        c.close()
    assert_broker_serves(broker)


def test_heartbeat_with_payload_is_501(broker):
    c = opened(broker)
    try:
        c.send_frame(FRAME_HEARTBEAT, 0, b"ab")
        assert c.expect_connection_close()[0] == FRAME_ERROR
    finally:
        c.close()
    assert_broker_serves(broker)


def test_heartbeat_on_nonzero_channel_is_505(broker):
    c = opened(broker, channel=1)
    try:
        c.send_frame(FRAME_HEARTBEAT, 1, b"")
        assert c.expect_connection_close()[0] == UNEXPECTED_FRAME
    finally:
        c.close()
    assert_broker_serves(broker)


def test_method_payload_shorter_than_ids_is_501(broker):
    c = opened(broker, channel=1)
    try:
        c.send_frame(FRAME_METHOD, 1, b"\x00\x32")
        assert c.expect_connection_close()[0] == FRAME_ERROR
    finally:
        c.close()
    assert_broker_serves(broker)


# ------------------------------------------------------------ channels

def test_method_on_unopened_channel_is_504(broker):
    c = opened(broker)
    try:
        c.send_method(3, QUEUE_DECLARE, args_queue_declare(qname()))
        code, text, cls, mth = c.expect_connection_close()
        assert code == CHANNEL_ERROR and text.startswith("CHANNEL_ERROR")
        assert (cls, mth) == QUEUE_DECLARE
    finally:
        c.close()
    assert_broker_serves(broker)


def test_channel_open_twice_is_504(broker):
    c = opened(broker, channel=1)
    try:
        c.send_method(1, CHANNEL_OPEN, args_channel_open())
        code, text, cls, mth = c.expect_connection_close()
        assert code == CHANNEL_ERROR and text.startswith("CHANNEL_ERROR")
        assert (cls, mth) == CHANNEL_OPEN
    finally:
        c.close()
    assert_broker_serves(broker)


def test_channel_beyond_channel_max_count_is_530(broker):
    # Both RabbitMQ (which counts open channels) and Warren (which bounds the
    # channel number) refuse a third channel when channel-max is 2.
    c = opened(broker, channel_max=2)
    try:
        c.open_channel(1)
        c.open_channel(2)
        c.send_method(3, CHANNEL_OPEN, args_channel_open())
        code, text, cls, mth = c.expect_connection_close()
        assert code == NOT_ALLOWED and text.startswith("NOT_ALLOWED")
        assert (cls, mth) in ((0, 0), CHANNEL_OPEN)   # RabbitMQ: 0/0
    finally:
        c.close()
    assert_broker_serves(broker)


def test_channel_number_above_channel_max_is_530(broker):
    c = opened(broker, channel_max=10)
    try:
        c.send_method(11, CHANNEL_OPEN, args_channel_open())
        if c.is_rabbitmq():
            # RabbitMQ only limits how many channels are open, so it accepts
            # channel 11 here. Deliberate difference: channel-max is "the
            # highest channel number the server permits" (0-9-1 spec) and
            # Warren refuses higher numbers with RabbitMQ's channel-max code.
            c.expect_method(11, (20, 11))
        else:
            code, text, cls, mth = c.expect_connection_close()
            assert code == NOT_ALLOWED and text.startswith("NOT_ALLOWED")
            assert (cls, mth) in ((0, 0), CHANNEL_OPEN)
    finally:
        c.close()
    assert_broker_serves(broker)


# ------------------------------------------------------------ content order

def publish_method(channel=1, routing_key="nowhere", **kw):
    return method_frame(channel, BASIC_PUBLISH, args_basic_publish("", routing_key, **kw))


@pytest.mark.parametrize("frames", [
    pytest.param(body_frame(1, b"abc"), id="body-without-publish"),
    pytest.param(header_frame(1, 3), id="header-where-method-expected"),
])
def test_content_frame_without_publish_is_505(broker, frames):
    c = opened(broker, channel=1)
    try:
        c.send(frames)
        code, text, cls, mth = c.expect_connection_close()
        assert code == UNEXPECTED_FRAME and text.startswith("UNEXPECTED_FRAME")
        assert (cls, mth) == (0, 0)
    finally:
        c.close()
    assert_broker_serves(broker)


def test_body_frame_on_unopened_channel_is_505(broker):
    c = opened(broker)
    try:
        c.send(body_frame(2, b"abc"))
        assert c.expect_connection_close()[0] == UNEXPECTED_FRAME
    finally:
        c.close()
    assert_broker_serves(broker)


@pytest.mark.parametrize("frames", [
    pytest.param(publish_method() + method_frame(1, QUEUE_DECLARE, args_queue_declare("x")),
                 id="method-instead-of-header"),
    pytest.param(publish_method() + body_frame(1, b"abc"), id="body-instead-of-header"),
    pytest.param(publish_method() + header_frame(1, 10) + body_frame(1, b"abc")
                 + method_frame(1, QUEUE_DECLARE, args_queue_declare("x")),
                 id="method-mid-body"),
    pytest.param(publish_method() + header_frame(1, 10) + body_frame(1, b"abc")
                 + header_frame(1, 3), id="header-mid-body"),
    pytest.param(publish_method() + header_frame(1, 10) + body_frame(1, b"abc")
                 + publish_method(), id="publish-mid-body"),
])
def test_frame_in_middle_of_content_is_505(broker, frames):
    c = opened(broker, channel=1)
    try:
        c.send(frames)
        code, text, cls, mth = c.expect_connection_close()
        assert code == UNEXPECTED_FRAME and text.startswith("UNEXPECTED_FRAME")
        assert (cls, mth) == BASIC_PUBLISH
    finally:
        c.close()
    assert_broker_serves(broker)


def test_content_header_with_wrong_class_is_505(broker):
    c = opened(broker, channel=1)
    try:
        c.send(publish_method() + header_frame(1, 3, class_id=50) + body_frame(1, b"abc"))
        code, text, cls, mth = c.expect_connection_close()
        assert code == UNEXPECTED_FRAME and text.startswith("UNEXPECTED_FRAME")
        assert (cls, mth) == BASIC_PUBLISH
    finally:
        c.close()
    assert_broker_serves(broker)


def test_content_shorter_than_header_body_size_waits_then_505(broker):
    # The header announces 10 octets, only 3 follow: the broker must not
    # route anything and must keep waiting for the rest...
    c = opened(broker, channel=1)
    try:
        q, _, _ = c.queue_declare(1, qname(), auto_delete=True)
        c.send(publish_method(routing_key=q) + header_frame(1, 10) + body_frame(1, b"abc"))
        with pytest.raises(Timeout):
            c.read_frame(timeout=0.5)
        # ...so the next method on the channel is out of order.
        c.send_method(1, (60, 70), short(0) + shortstr(q) + bits(True))
        code, _, cls, mth = c.expect_connection_close()
        assert (code, cls, mth) == (UNEXPECTED_FRAME, 60, 40)
    finally:
        c.close()
    assert_broker_serves(broker)


def test_body_frames_longer_than_header_body_size(broker):
    c = opened(broker, channel=1)
    try:
        if c.is_rabbitmq():
            pytest.skip("RabbitMQ silently waits forever on that channel")
        # Deliberate difference: Warren closes the connection. The overrunning
        # body frame arrives where a method frame is due, hence 505.
        c.send(publish_method() + header_frame(1, 3) + body_frame(1, b"abcdef"))
        code, _, cls, mth = c.expect_connection_close()
        assert (code, cls, mth) == (UNEXPECTED_FRAME, 60, 40)
    finally:
        c.close()
    assert_broker_serves(broker)


def test_other_channels_may_interleave_with_content(broker):
    # Not an error: content frames are ordered per channel only.
    c = opened(broker, channel=1)
    try:
        c.open_channel(2)
        q, _, _ = c.queue_declare(2, qname(), auto_delete=True)
        c.send(publish_method(1, routing_key=q) + header_frame(1, 6) + body_frame(1, b"abc"))
        assert c.queue_declare(2, q, auto_delete=True) == (q, 0, 0)
        c.send(body_frame(1, b"def"))
        # Channels route independently (RabbitMQ runs one process per
        # channel), so poll briefly for the message.
        deadline = time.monotonic() + 3
        got = c.basic_get(2, q)
        while got is None and time.monotonic() < deadline:
            time.sleep(0.05)
            got = c.basic_get(2, q)
        assert got == b"abcdef"
    finally:
        c.close()
    assert_broker_serves(broker)


def test_publish_immediate_is_540(broker):
    c = opened(broker, channel=1)
    try:
        c.publish(1, b"abc", routing_key=qname(), immediate=True)
        code, text, cls, mth = c.expect_connection_close()
        assert code == NOT_IMPLEMENTED and text.startswith("NOT_IMPLEMENTED")
        assert (cls, mth) == BASIC_PUBLISH
    finally:
        c.close()
    assert_broker_serves(broker)


# ------------------------------------------------------------ malformed payloads
# RabbitMQ answers every method it cannot decode with 501 FRAME_ERROR ("cannot
# decode ..."), naming the method; the spec's 501 is "a malformed frame that
# the recipient could not decode", so Warren does the same (not 502, which is
# for decodable fields holding illegal values).

@pytest.mark.parametrize("args", [
    pytest.param(b"", id="no-arguments"),
    pytest.param(short(0) + b"\x05ab", id="shortstr-past-end"),
    pytest.param(short(0) + shortstr("q") + bits() + long_(100) + b"\x01a",
                 id="table-length-past-end"),
    pytest.param(args_queue_declare("q", auto_delete=True) + b"junk", id="trailing-octets"),
])
def test_undecodable_method_arguments_are_501(broker, args):
    c = opened(broker, channel=1)
    try:
        c.send_frame(FRAME_METHOD, 1, method_payload(QUEUE_DECLARE, args))
        code, text, cls, mth = c.expect_connection_close()
        assert code == FRAME_ERROR and text.startswith("FRAME_ERROR")
        assert (cls, mth) == QUEUE_DECLARE
    finally:
        c.close()
    assert_broker_serves(broker)


@pytest.mark.parametrize("table_bytes", [
    pytest.param(long_(5) + b"\x09abcd", id="key-past-table-end"),
    pytest.param(long_(4) + b"\x01aZ\x00", id="unknown-field-type"),
    pytest.param(long_(7) + b"\x01aS\x00\x00\x01\x00", id="longstr-past-table-end"),
])
def test_bad_field_table_contents(broker, table_bytes):
    c = opened(broker, channel=1)
    try:
        c.send_frame(FRAME_METHOD, 1, method_payload(
            QUEUE_DECLARE, short(0) + shortstr(qname()) + bits(False, False, False, True)
            + table_bytes))
        result = close_or_drop(c)
        if c.is_rabbitmq():
            # RabbitMQ's reader crashes on these and drops the socket.
            assert result is None
        else:
            # Deliberate difference: Warren answers like any undecodable method.
            assert result is not None, "expected connection.close 501, socket dropped"
            code, _, cls, mth = result
            assert (code, (cls, mth)) == (FRAME_ERROR, QUEUE_DECLARE)
    finally:
        c.close()
    assert_broker_serves(broker)


@pytest.mark.parametrize("cm", [(50, 99), (99, 10)], ids=["unknown-method", "unknown-class"])
def test_unknown_method_ends_connection(broker, cm):
    c = opened(broker, channel=1)
    try:
        c.send_method(1, cm)
        result = close_or_drop(c)
        if c.is_rabbitmq():
            assert result is None    # RabbitMQ's reader crashes: no close
        else:
            # Deliberate difference: a hard error with the offending ids.
            assert result is not None, "expected connection.close, socket dropped"
            assert result[0] in (COMMAND_INVALID, NOT_IMPLEMENTED)
            assert result[2:] == cm
    finally:
        c.close()
    assert_broker_serves(broker)


# ------------------------------------------------------------ stalls, heartbeats

def test_client_stalled_mid_frame_does_not_block_others(broker):
    stalled = opened(broker, channel=1)
    try:
        whole = method_frame(1, QUEUE_DECLARE, args_queue_declare(qname()))
        stalled.send(whole[:9])                  # header and 2 payload octets
        with pytest.raises(Timeout):
            stalled.read_frame(timeout=0.3)
        worker = opened(broker, channel=1)
        try:
            q, _, _ = worker.queue_declare(1, qname(), auto_delete=True)
            for i in range(20):
                worker.publish(1, b"m%d" % i, routing_key=q)
            assert [worker.basic_get(1, q) for _ in range(20)] == [b"m%d" % i for i in range(20)]
        finally:
            worker.close()
    finally:
        stalled.close()
    time.sleep(0.1)
    assert_broker_serves(broker)


def test_silent_client_is_closed_after_two_heartbeat_intervals(broker):
    c = connect(broker, timeout=5)
    try:
        c.start()
        c.start_ok()
        c.read_tune()
        c.tune_ok(heartbeat=1)
        c.send_method(0, CONNECTION_OPEN, shortstr("/") + shortstr("") + bits(False))
        c.expect_method(0, (10, 41))
        t0 = time.monotonic()
        heartbeats = 0
        closed_at = None
        while time.monotonic() - t0 < 5.0:
            try:
                ftype, ch, payload, raw = c.read_frame(timeout=5.0 - (time.monotonic() - t0))
            except Closed:
                closed_at = time.monotonic() - t0
                break
            except Timeout:
                break
            if ftype == FRAME_HEARTBEAT:
                assert raw == HEARTBEAT_FRAME
                heartbeats += 1
            else:
                # A connection.close before the socket closes is acceptable
                # (RabbitMQ sends none); nothing else is.
                assert (ftype, ch, payload[:4]) == (FRAME_METHOD, 0, b"\x00\x0a\x00\x32"), \
                    (ftype, ch, payload[:40])
        assert closed_at is not None, "connection still open 5 s after open-ok"
        # RabbitMQ: heartbeats every 0.5 s, closed after about 3 s.
        assert 1.0 <= closed_at <= 5.0, closed_at
        assert heartbeats >= 1
    finally:
        c.close()
    assert_broker_serves(broker)


def test_heartbeats_from_client_keep_connection_open(broker):
    c = connect(broker, timeout=5)
    try:
        c.handshake(heartbeat=1)
        c.open_channel(1)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:
            c.send(HEARTBEAT_FRAME)
            time.sleep(0.4)
        q = qname()
        assert c.queue_declare(1, q, auto_delete=True) == (q, 0, 0)
    finally:
        c.close()
    assert_broker_serves(broker)


# ------------------------------------------------------------ closing channels

def test_frames_after_channel_close_are_ignored_until_close_ok(broker):
    c = opened(broker, channel=1)
    try:
        q, _, _ = c.queue_declare(1, qname(), auto_delete=True)
        c.send_method(1, QUEUE_DECLARE, args_queue_declare(qname("missing"), passive=True))
        code, text, cls, mth = c.expect_channel_close(1)
        assert (code, (cls, mth)) == (NOT_FOUND, QUEUE_DECLARE)
        assert text.startswith("NOT_FOUND - no queue")
        # Everything on channel 1 before close-ok is discarded: a full publish,
        # a declare, a get.
        c.send(publish_method(1, routing_key=q) + header_frame(1, 4) + body_frame(1, b"lost")
               + method_frame(1, QUEUE_DECLARE, args_queue_declare(qname(), auto_delete=True))
               + method_frame(1, (60, 70), short(0) + shortstr(q) + bits(True)))
        with pytest.raises(Timeout):
            c.read_frame(timeout=0.3)
        c.send_method(1, CHANNEL_CLOSE_OK)
        c.open_channel(1)        # the next frame must be open-ok
        assert c.queue_declare(1, q, auto_delete=True) == (q, 0, 0)   # nothing published
    finally:
        c.close()
    assert_broker_serves(broker)


def test_content_of_publish_in_flight_at_channel_close_is_ignored(broker):
    # Publishing to a missing exchange: a broker may close the channel as
    # soon as it sees the method (Warren may) or after the body (RabbitMQ).
    # Either way the remaining content frames must not be an error.
    c = opened(broker, channel=1)
    try:
        c.send(method_frame(1, BASIC_PUBLISH, args_basic_publish(qname("no-exchange"), "k"))
               + header_frame(1, 6))
        time.sleep(0.2)
        c.send(body_frame(1, b"abc"))
        time.sleep(0.1)
        c.send(body_frame(1, b"def"))
        code, text, cls, mth = c.expect_channel_close(1)
        assert (code, (cls, mth)) == (NOT_FOUND, BASIC_PUBLISH)
        assert text.startswith("NOT_FOUND - no exchange")
        c.send(publish_method(1) + header_frame(1, 2) + body_frame(1, b"xx"))
        c.send_method(1, CHANNEL_CLOSE_OK)
        c.open_channel(1)
        q = qname()
        assert c.queue_declare(1, q, auto_delete=True) == (q, 0, 0)
    finally:
        c.close()
    assert_broker_serves(broker)


def test_channel_close_crossing_channel_close(broker):
    # Both sides close at once: the client's channel.close arriving while the
    # broker's is pending gets a close-ok (RabbitMQ does so).
    c = opened(broker, channel=1)
    try:
        c.send_method(1, QUEUE_DECLARE, args_queue_declare(qname("missing"), passive=True))
        c.send_method(1, CHANNEL_CLOSE, short(200) + shortstr("bye") + short(0) + short(0))
        assert c.expect_channel_close(1)[0] == NOT_FOUND
        c.expect_method(1, CHANNEL_CLOSE_OK)
        c.send_method(1, CHANNEL_CLOSE_OK)
        c.open_channel(1)
    finally:
        c.close()
    assert_broker_serves(broker)


def test_update_secret_is_answered_and_connection_keeps_working(broker):
    # connection.update-secret (10/70) with a new secret and a reason: the broker
    # answers update-secret-ok (10/71) and the connection stays usable.
    c = opened(broker, channel=1)
    try:
        c.send_method(0, (10, 70), longstr(b"new-secret") + shortstr(b"rotation"))
        c.expect_method(0, (10, 71))
        c.send_method(1, QUEUE_DECLARE, args_queue_declare(qname("after-secret")))
        c.expect_method(1, (50, 11))
    finally:
        c.close()


def test_body_size_above_the_max_message_size_is_406(broker):
    # RabbitMQ's max_message_size is 128 MiB; a header declaring more is refused
    # with a channel error before any body arrives, and the channel reopens fine.
    c = opened(broker, channel=1)
    try:
        too_big = 128 * 1024 * 1024 + 1
        c.send_method(1, BASIC_PUBLISH, args_basic_publish("", "nowhere"))
        c.send(header_frame(1, too_big))
        code, text, cls, mth = c.expect_channel_close(1)
        assert (code, cls, mth) == (406, 60, 40)
        assert text == ("PRECONDITION_FAILED - message size %d is larger than "
                        "configured max size 134217728" % too_big)
        c.send_method(1, CHANNEL_CLOSE_OK)
        c.open_channel(1)
    finally:
        c.close()
    assert_broker_serves(broker)
