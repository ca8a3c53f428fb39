"""Helpers shared by the broker tests (pika BlockingConnection based).

Every wait here is bounded. Entity names come from uname() so tests never
collide; Amqp (the `amqp` fixture) deletes what a test declared.
"""

import re
import time
import uuid
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal

import pika
import pytest
from pika import spec
from pika.exceptions import (AMQPConnectionError, ChannelClosed,
                             ChannelClosedByBroker, ConnectionClosedByBroker)

DEFAULT_TIMEOUT = 5.0


def uname(prefix="t"):
    """A unique entity name."""
    return "%s-%s" % (prefix, uuid.uuid4().hex[:12])


def ids(method_cls):
    """(class_id, method_id) of a pika spec method class, e.g.
    ids(spec.Queue.Declare) == (50, 10)."""
    return method_cls.INDEX >> 16, method_cls.INDEX & 0xFFFF


# --------------------------------------------------------------------------
# Recording the close frames the broker sends (pika drops class/method ids)

class CloseRecorder:
    """Hooks a BlockingConnection's frame dispatch and records every
    channel.close and connection.close the broker sends, so tests can check
    the class-id and method-id that pika's exceptions do not carry."""

    def __init__(self, conn):
        self.closes = []  # (channel_number, spec.Channel.Close|Connection.Close)
        impl = conn._impl
        orig = impl._process_frame

        def process(frame_value):
            m = getattr(frame_value, "method", None)
            if isinstance(m, (spec.Channel.Close, spec.Connection.Close)):
                self.closes.append((frame_value.channel_number, m))
            return orig(frame_value)

        impl._process_frame = process
        conn._close_recorder = self

    def last(self, channel_number):
        for num, m in reversed(self.closes):
            if num == channel_number:
                return m
        return None


def _text_matches(actual, expected):
    if isinstance(expected, re.Pattern):
        return expected.fullmatch(actual) is not None
    return actual == expected


@contextmanager
def channel_error(ch, code, text, method=None):
    """Expect the block to end with the broker closing channel `ch` with
    reply `code` and `text` (str: exact; compiled regex: fullmatch); if
    `method` (a pika spec method class) is given, the close must name its
    class and method ids."""
    with pytest.raises(ChannelClosedByBroker) as ei:
        yield ei
    got = (ei.value.reply_code, ei.value.reply_text)
    assert got[0] == code and _text_matches(got[1], text), \
        "channel closed with %r, expected (%r, %r)" % (got, code, text)
    if method is not None:
        m = ch.connection._close_recorder.last(ch.channel_number)
        assert m is not None, "no channel.close frame recorded"
        assert (m.class_id, m.method_id) == ids(method), \
            "channel.close names (%d, %d), expected %s %r" % (
                m.class_id, m.method_id, method.NAME, ids(method))
    assert ch.is_closed


@contextmanager
def connection_error(conn, code, text, method=None):
    """Like channel_error, for a connection.close sent by the broker."""
    with pytest.raises(ConnectionClosedByBroker) as ei:
        yield ei
    got = (ei.value.reply_code, ei.value.reply_text)
    assert got[0] == code and _text_matches(got[1], text), \
        "connection closed with %r, expected (%r, %r)" % (got, code, text)
    if method is not None:
        m = conn._close_recorder.last(0)
        assert m is not None, "no connection.close frame recorded"
        assert (m.class_id, m.method_id) == ids(method), \
            "connection.close names (%d, %d), expected %s %r" % (
                m.class_id, m.method_id, method.NAME, ids(method))
    assert conn.is_closed


# --------------------------------------------------------------------------
# Low-level access for what BlockingChannel does not expose

def rpc(ch, method, replies):
    """Send a synchronous method on BlockingChannel `ch` and wait (bounded by
    the channel/connection) for one of `replies` (spec classes); returns the
    reply method. Raises ChannelClosedByBroker/ConnectionClosedByBroker."""
    box = []
    ch._impl._rpc(method, box.append, list(replies))
    ch._flush_output(lambda: bool(box))
    return box[0].method


def send(ch, method, content=None):
    """Send an asynchronous method (optionally with (properties, body))."""
    ch._impl._send_method(method, content)
    ch._flush_output()


def sync(ch):
    """A round trip on `ch` (basic.qos is harmless only before consumers, so
    use a passive declare of amq.direct): surfaces any asynchronous error
    the broker raised for earlier methods on this channel."""
    ch.exchange_declare("amq.direct", passive=True)


# --------------------------------------------------------------------------
# Waiting

def pump(conn, until, timeout=DEFAULT_TIMEOUT, step=0.02):
    """Process I/O on `conn` until until() is true; returns its last value
    (false on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        ok = until()
        if ok or time.monotonic() >= deadline:
            return ok
        conn.process_data_events(time_limit=step)


def pump_all(conns, until, timeout=DEFAULT_TIMEOUT, step=0.01):
    """pump() over several connections in turn."""
    deadline = time.monotonic() + timeout
    while True:
        ok = until()
        if ok or time.monotonic() >= deadline:
            return ok
        for c in conns:
            c.process_data_events(time_limit=step)


def settle(conn, seconds=0.3):
    """Let the broker act for a short, fixed time (used to check that
    something does NOT happen)."""
    conn.process_data_events(time_limit=seconds)


class Collector:
    """A basic_consume callback that stores (method, properties, body)."""

    def __init__(self):
        self.items = []

    def __call__(self, ch, method, props, body):
        self.items.append((method, props, body))

    def __len__(self):
        return len(self.items)

    @property
    def bodies(self):
        return [b for _, _, b in self.items]

    @property
    def tags(self):
        return [m.delivery_tag for m, _, _ in self.items]

    @property
    def redelivered(self):
        return [m.redelivered for m, _, _ in self.items]


# --------------------------------------------------------------------------
# Messages

def publish(ch, exchange, routing_key, body=b"", mandatory=False, **props):
    ch.basic_publish(exchange, routing_key, body,
                     properties=pika.BasicProperties(**props) if props else None,
                     mandatory=mandatory)


def get_all(ch, queue, ack=True, limit=100000):
    """basic.get until get-empty; returns [(method, props, body)]. With
    ack=True the messages are fetched with no-ack."""
    out = []
    for _ in range(limit):
        m, p, b = ch.basic_get(queue, auto_ack=ack)
        if m is None:
            return out
        out.append((m, p, b))
    raise AssertionError("queue %s did not run empty" % queue)


def bodies(ch, queue):
    """Drain `queue` with no-ack basic.get and return the bodies."""
    return [b for _, _, b in get_all(ch, queue)]


def counts(ch, queue):
    """(message_count, consumer_count) from a passive queue.declare."""
    ok = ch.queue_declare(queue, passive=True).method
    return ok.message_count, ok.consumer_count


def no_queue(name):
    return "NOT_FOUND - no queue '%s' in vhost '/'" % name


def no_exchange(name):
    return "NOT_FOUND - no exchange '%s' in vhost '/'" % name


def expect_queue_gone(ch, queue, timeout=DEFAULT_TIMEOUT):
    """Poll with passive declares until `queue` no longer exists (404 with
    RabbitMQ's text); fails if it is still there after `timeout`. Closes
    `ch`."""
    with channel_error(ch, 404, no_queue(queue), spec.Queue.Declare):
        pump(ch.connection, lambda: counts(ch, queue) is None, timeout)


def expect_exchange_gone(ch, exchange, timeout=DEFAULT_TIMEOUT):
    """Like expect_queue_gone, for an exchange."""
    def check():
        ch.exchange_declare(exchange, passive=True)
        return False
    with channel_error(ch, 404, no_exchange(exchange), spec.Exchange.Declare):
        pump(ch.connection, check, timeout)


def wait_count(conn, ch, queue, n, timeout=DEFAULT_TIMEOUT):
    """Wait until `queue` holds n ready messages; returns the last count."""
    last = [None]

    def check():
        last[0] = counts(ch, queue)[0]
        return last[0] == n

    pump(conn, check, timeout)
    return last[0]


# --------------------------------------------------------------------------
# Per-test connections and entities

class Amqp:
    """Per-test state: connections (closed at teardown) and the queues and
    exchanges a test names through qname()/xname()/queue()/exchange(),
    deleted at teardown through a fresh connection."""

    def __init__(self, broker):
        self.broker = broker
        self._conns = []
        self._conn = None
        self._queues = []
        self._exchanges = []

    # connections and channels
    def connect(self, **params):
        conn = pika.BlockingConnection(self.broker.params(**params))
        CloseRecorder(conn)
        self._conns.append(conn)
        return conn

    def is_rabbitmq(self):
        """True when the broker under test is RabbitMQ (AMQP_EXTERNAL runs)."""
        product = self.conn._impl.server_properties.get("product")
        if isinstance(product, bytes):
            product = product.decode()
        return product == "RabbitMQ"

    @property
    def conn(self):
        """The default connection of this test (reopened if it was closed)."""
        if self._conn is None or not self._conn.is_open:
            self._conn = self.connect()
        return self._conn

    def channel(self, conn=None):
        return (conn or self.conn).channel()

    # names
    def qname(self, prefix="q"):
        n = uname(prefix)
        self._queues.append(n)
        return n

    def xname(self, prefix="x"):
        n = uname(prefix)
        self._exchanges.append(n)
        return n

    def track_queue(self, name):
        self._queues.append(name)
        return name

    # declarations
    def queue(self, ch=None, name=None, **kw):
        """Declare a queue with a unique name (or `name`); returns the name."""
        ch = ch or self.channel()
        name = name if name is not None else self.qname()
        ok = ch.queue_declare(name, **kw).method
        self.track_queue(ok.queue)
        return ok.queue

    def exchange(self, ch=None, exchange_type="direct", name=None, **kw):
        ch = ch or self.channel()
        name = name or self.xname()
        ch.exchange_declare(name, exchange_type=exchange_type, **kw)
        if name not in self._exchanges:
            self._exchanges.append(name)
        return name

    def teardown(self):
        for c in self._conns:
            try:
                if c.is_open:
                    c.close()
            except Exception:
                pass
        if not (self._queues or self._exchanges):
            return
        try:
            conn = pika.BlockingConnection(self.broker.params())
        except AMQPConnectionError:
            return
        try:
            ch = conn.channel()
            for kind, names in (("q", self._queues), ("x", self._exchanges)):
                for n in names:
                    try:
                        if kind == "q":
                            ch.queue_delete(n)
                        else:
                            ch.exchange_delete(n)
                    except ChannelClosed:
                        ch = conn.channel()
        finally:
            try:
                conn.close()
            except Exception:
                pass


# Every basic property, with a header table that uses each field type.
ALL_PROPERTIES = dict(
    content_type="application/json",
    content_encoding="gzip",
    headers={
        "str": "hello \u2713",
        "int": 42,
        "neg": -7,
        "long": 2 ** 40,
        "bool_t": True,
        "bool_f": False,
        "dec": Decimal("3.14"),
        "negdec": Decimal("-0.5"),
        "ts": datetime(2024, 1, 2, 3, 4, 5),
        "void": None,
        "bytes": b"\x00\x01\xfe\xff",
        "table": {"a": 1, "nested": {"b": [1, "two", {"c": True}]}},
        "array": [1, "x", [2, 3], {"k": "v"}, None, Decimal("1.5")],
        "empty_table": {},
        "empty_array": [],
        "": "empty key",
    },
    delivery_mode=2,
    priority=7,
    correlation_id="corr-\u00e9",
    reply_to="reply.queue",
    expiration="600000",
    message_id="msg-1",
    timestamp=1700000000,
    type="order.created",
    user_id="guest",  # must be the connection's user (RabbitMQ validates it)
    app_id="warren-tests",
    cluster_id="cluster-a",
)
