"""Connection and channel level behaviour: handshake, authentication, tune
negotiation, heartbeats, channel lifecycle, channel.flow."""

import pika
import pytest
from pika import spec
from pika.exceptions import (NoFreeChannels, ProbableAccessDeniedError,
                             ProbableAuthenticationError)

from brokertest import (connection_error, counts, publish, uname,
                        wait_count)

REQUIRED_CAPABILITIES = (
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "per_consumer_qos",
    "authentication_failure_close",
)

# RabbitMQ advertises these nine. Warren advertises only those it implements; it
# sends no connection.blocked until it has resource alarms, so it does not claim
# connection.blocked, consumer_priorities or direct_reply_to yet.
RABBITMQ_CAPABILITIES = REQUIRED_CAPABILITIES + (
    "connection.blocked", "consumer_priorities", "direct_reply_to")

LOGIN_REFUSED = ("ACCESS_REFUSED - Login was refused using authentication "
                 "mechanism PLAIN. For details see the broker logfile.")


def test_connect_and_close(amqp):
    conn = amqp.connect()
    assert conn.is_open
    ch = conn.channel()
    assert ch.is_open
    conn.close()
    assert conn.is_closed
    assert ch.is_closed


def test_server_properties_and_capabilities(amqp):
    conn = amqp.connect()
    props = conn._impl.server_properties
    for key in ("product", "version", "platform", "copyright",
                "information", "cluster_name"):
        assert key in props, "server-properties lacks %r" % key
    caps = conn._impl.server_capabilities
    for cap in REQUIRED_CAPABILITIES:
        assert caps.get(cap) is True, "capability %r is %r" % (cap, caps.get(cap))
    unknown = set(caps) - set(RABBITMQ_CAPABILITIES)
    assert not unknown, "capabilities RabbitMQ does not define: %r" % unknown
    assert all(v is True for v in caps.values())


def test_bad_password_is_access_refused(amqp):
    with pytest.raises(ProbableAuthenticationError) as ei:
        amqp.connect(credentials=pika.PlainCredentials("guest", "wrong"))
    # pika wraps the broker's connection.close in this message
    assert ei.value.args[0] == "ConnectionClosedByBroker: (403) %r" % LOGIN_REFUSED


def test_unknown_user_is_access_refused(amqp):
    with pytest.raises(ProbableAuthenticationError) as ei:
        amqp.connect(credentials=pika.PlainCredentials(uname("nouser"), "x"))
    assert ei.value.args[0] == "ConnectionClosedByBroker: (403) %r" % LOGIN_REFUSED


def test_unknown_vhost_is_not_allowed(amqp):
    vhost = uname("novhost")
    with pytest.raises(ProbableAccessDeniedError) as ei:
        amqp.connect(virtual_host=vhost)
    assert ei.value.args[0] == "ConnectionClosedByBroker: (530) %r" % (
        "NOT_ALLOWED - vhost %s not found" % vhost)


def test_tune_defaults_are_rabbitmqs(amqp):
    # A client asking for the maximum gets the server's proposal.
    conn = amqp.connect()
    p = conn._impl.params
    assert p.channel_max == 2047
    assert p.frame_max == 131072
    assert p.heartbeat == 60


def test_channel_max_negotiated_and_enforced(amqp):
    conn = amqp.connect(channel_max=10)
    assert conn._impl.params.channel_max == 10
    chans = [conn.channel() for _ in range(10)]
    assert sorted(c.channel_number for c in chans) == list(range(1, 11))
    assert all(c.is_open for c in chans)
    # pika itself refuses an 11th channel...
    with pytest.raises(NoFreeChannels):
        conn.channel()
    # ...so ask for channel 11 explicitly: the broker must refuse it with a
    # connection error.
    with connection_error(
            conn, 530,
            "NOT_ALLOWED - number of channels opened (10) has reached the "
            "negotiated channel_max (10)"):
        conn.channel(channel_number=11)


def test_channel_max_allows_reuse_after_close(amqp):
    conn = amqp.connect(channel_max=3)
    for _ in range(3):
        chans = [conn.channel() for _ in range(3)]
        for c in chans:
            c.close()
    ch = conn.channel()
    q = amqp.queue(ch, exclusive=True)
    assert counts(ch, q) == (0, 0)


@pytest.mark.parametrize("frame_max", [4096, 131072])
def test_frame_max_negotiated(amqp, frame_max):
    conn = amqp.connect(frame_max=frame_max)
    assert conn._impl.params.frame_max == frame_max
    ch = conn.channel()
    q = amqp.queue(ch, exclusive=True)
    body = bytes(range(256)) * (3 * frame_max // 256 + 1)
    publish(ch, "", q, body)
    m, _, got = ch.basic_get(q, auto_ack=True)
    assert got == body


def test_heartbeat_negotiated_and_kept_alive(amqp):
    conn = amqp.connect(heartbeat=1)
    assert conn._impl.params.heartbeat == 1
    before = conn._impl.bytes_received
    # Idle for 3 s, longer than two heartbeat intervals: the connection must
    # survive (the broker gets pika's heartbeats) and the broker must have
    # sent heartbeat frames (8 bytes each) of its own.
    conn.process_data_events(time_limit=3.0)
    assert conn.is_open
    assert conn._impl.bytes_received - before >= 16
    ch = conn.channel()
    q = amqp.queue(ch, exclusive=True)
    publish(ch, "", q, b"alive")
    assert ch.basic_get(q, auto_ack=True)[2] == b"alive"


def test_heartbeat_disabled_by_client(amqp):
    conn = amqp.connect(heartbeat=0)
    assert conn._impl.params.heartbeat == 0
    before = conn._impl.bytes_received
    conn.process_data_events(time_limit=1.5)
    assert conn.is_open
    assert conn._impl.bytes_received == before


# pika 1.2 (Debian's python3-pika) has no connection.update-secret; that
# method is left to the raw-frame tests.


# ---------------------------------------------------------------- channels

def test_open_many_channels_close_and_reopen(amqp):
    conn = amqp.connect()
    n = 100
    chans = [conn.channel() for _ in range(n)]
    assert len({c.channel_number for c in chans}) == n
    for c in chans:
        c.close()
    assert all(c.is_closed for c in chans)
    chans = [conn.channel() for _ in range(n)]
    assert all(c.is_open for c in chans)
    # every reopened channel works
    q = amqp.queue(chans[0], exclusive=True)
    for c in chans:
        publish(c, "", q, b"x")
    # publishes from different channels are not ordered with respect to each
    # other, so wait (bounded) for all of them to arrive
    assert wait_count(conn, chans[-1], q, n) == n


def test_channel_close_keeps_connection_and_other_channels(amqp):
    conn = amqp.connect()
    a, b = conn.channel(), conn.channel()
    q = amqp.queue(a, exclusive=True)
    a.close()
    assert conn.is_open and b.is_open
    publish(b, "", q, b"y")
    assert b.basic_get(q, auto_ack=True)[2] == b"y"


def test_channel_error_does_not_close_other_channels(amqp):
    conn = amqp.connect()
    a, b = conn.channel(), conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        a.queue_declare(uname("missing"), passive=True)
    assert a.is_closed and b.is_open and conn.is_open
    q = amqp.queue(b, exclusive=True)
    assert counts(b, q) == (0, 0)


def test_channel_flow_active(ch):
    assert ch.flow(True) is True
    q = ch.queue_declare("", exclusive=True).method.queue
    publish(ch, "", q, b"z")
    assert ch.basic_get(q, auto_ack=True)[2] == b"z"


def test_channel_flow_inactive_not_implemented(amqp):
    # RabbitMQ does not support a client stopping the server's deliveries
    # with channel.flow(active=false): 540 NOT_IMPLEMENTED connection error.
    conn = amqp.connect()
    ch = conn.channel()
    with connection_error(conn, 540, "NOT_IMPLEMENTED - active=false",
                          spec.Channel.Flow):
        ch.flow(False)
