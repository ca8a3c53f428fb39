"""Message lifecycle: queue argument validation, message and queue TTLs,
dead-lettering (x-death), length limits, the retry patterns applications
build from them, and how they behave across a restart.

Expectations are RabbitMQ 3.10's, recorded on the wire (reply texts, header
key order and field types). Header tables are compared with their AMQP field
types: `Wire` records the raw content header frames the broker sends on a
connection, and decode_props() keeps each value's type character ('l' signed
64-bit, 'I' signed 32-bit, 'S' longstr, 'T' timestamp, 'A' array, 'F' table,
't' bool).

TTLs here are 50-300 ms and every wait is bounded. Tests that restart the
broker are skipped with AMQP_EXTERNAL.
"""

import os
import signal
import struct
import time
from datetime import datetime
from decimal import Decimal

import pika
import pytest
from pika import spec
from pika.compat import long as wide  # pika encodes wide(n) as 'l', int as 'I'

from brokertest import (Collector, channel_error, counts, no_queue, pump,
                        settle, sync)
from durabletest import (MODES, PERSISTENT, TERM, Confirms, barrier,
                         close_quietly, connect)


# --------------------------------------------------------------------------
# Content headers with field types

FLAG_BITS = [  # (bit, property name, kind)
    (15, "content_type", "s"), (14, "content_encoding", "s"),
    (13, "headers", "F"), (12, "delivery_mode", "o"), (11, "priority", "o"),
    (10, "correlation_id", "s"), (9, "reply_to", "s"), (8, "expiration", "s"),
    (7, "message_id", "s"), (6, "timestamp", "q"), (5, "type", "s"),
    (4, "user_id", "s"), (3, "app_id", "s"), (2, "cluster_id", "s"),
]


class _Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        assert self.pos + n <= len(self.data), "truncated field"
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def shortstr(self):
        return self.take(self.unpack(">B")).decode("utf-8", "replace")

    def table(self):
        sub = _Reader(self.take(self.unpack(">I")))
        out = []
        while sub.pos < len(sub.data):
            key = sub.shortstr()
            out.append((key, sub.value()))
        return out

    def value(self):
        t = chr(self.unpack(">B"))
        fixed = {"b": ">b", "B": ">B", "s": ">h", "u": ">H", "I": ">i",
                 "i": ">I", "l": ">q", "T": ">Q", "f": ">f", "d": ">d"}
        if t in fixed:
            return (t, self.unpack(fixed[t]))
        if t == "t":
            return (t, self.unpack(">B") != 0)
        if t == "S":
            return (t, self.take(self.unpack(">I")).decode("utf-8", "replace"))
        if t == "x":
            return (t, self.take(self.unpack(">I")))
        if t == "F":
            return (t, self.table())
        if t == "A":
            sub = _Reader(self.take(self.unpack(">I")))
            items = []
            while sub.pos < len(sub.data):
                items.append(sub.value())
            return (t, items)
        if t == "V":
            return (t, None)
        if t == "D":
            return (t, (self.unpack(">B"), self.unpack(">i")))
        raise AssertionError("unknown field type %r" % t)


def decode_props(payload):
    """A content header frame payload -> dict: 'flags' (the property flags)
    and every property present; 'headers' is a list of (key, (type, value))
    in wire order, nested tables and arrays likewise."""
    r = _Reader(payload)
    r.take(12)  # class, weight, body size
    flags = r.unpack(">H")
    out = {"flags": flags}
    for bit, name, kind in FLAG_BITS:
        if not flags & (1 << bit):
            continue
        if kind == "s":
            out[name] = r.shortstr()
        elif kind == "o":
            out[name] = r.unpack(">B")
        elif kind == "q":
            out[name] = r.unpack(">Q")
        else:
            out[name] = r.table()
    return out


class Wire:
    """Records, for one pika connection, every content header frame the
    broker sends, decoded with decode_props()."""

    def __init__(self, conn):
        self.frames = []  # (channel number, decoded properties)
        impl = conn._impl
        orig = impl._read_frame

        def read_frame():
            consumed, fv = orig()
            if isinstance(fv, pika.frame.Header):
                raw = bytes(impl._frame_buffer[7:consumed - 1])
                self.frames.append((fv.channel_number, decode_props(raw)))
            return consumed, fv

        impl._read_frame = read_frame

    def last(self, ch):
        for num, p in reversed(self.frames):
            if num == ch.channel_number:
                return p
        raise AssertionError("no content header seen on channel %d"
                             % ch.channel_number)

    def all(self, ch):
        return [p for num, p in self.frames if num == ch.channel_number]


def wire_channel(amqp):
    """A fresh connection with a Wire recorder, and a channel on it."""
    conn = amqp.connect()
    w = Wire(conn)
    return conn, conn.channel(), w


# --------------------------------------------------------------------------
# Expected header values

def S(v):
    return ("S", v)


class Recent:
    """Equal to a timestamp (seconds) of the last two minutes."""

    def __eq__(self, other):
        return isinstance(other, int) and abs(other - time.time()) <= 120

    def __repr__(self):
        return "<recent time>"


RECENT = Recent()


def death(queue, reason, exchange="", routing_keys=None, count=1,
          original_expiration=None, first=True, time_=RECENT):
    """One x-death entry as RabbitMQ writes it: the first entry a message
    gets is in build order (count, reason, queue, time, exchange,
    routing-keys, original-expiration); any entry added or updated later is
    sorted by key."""
    e = [("count", ("l", count)), ("reason", S(reason)), ("queue", S(queue)),
         ("time", ("T", time_)), ("exchange", S(exchange)),
         ("routing-keys", ("A", [S(k) for k in (routing_keys or [queue])]))]
    if original_expiration is not None:
        e.append(("original-expiration", S(original_expiration)))
    if not first:
        e.sort(key=lambda kv: kv[0].encode())
    return ("F", e)


# Warren also writes x-last-death-* (CONFORMANCE.md; RabbitMQ 3.13 and later), which
# RabbitMQ 3.10 does not; AMQP_EXTERNAL runs are against RabbitMQ 3.10.
LAST_DEATH_HEADERS = not os.environ.get("AMQP_EXTERNAL")


def dead_headers(deaths, first_queue, first_reason, first_exchange="",
                 others=(), last_exchange=None):
    """A whole dead-lettered header table: the user's headers `others`
    (already in key order) and x-death plus x-first-death-*, sorted; on
    Warren also x-last-death-* for the newest death (deaths[0]; its exchange
    is the one the message entered that queue through, `last_exchange` when it
    differs from the x-death entry's, which keeps the first one)."""
    h = list(others) + [
        ("x-death", ("A", list(deaths))),
        ("x-first-death-exchange", S(first_exchange)),
        ("x-first-death-queue", S(first_queue)),
        ("x-first-death-reason", S(first_reason)),
    ]
    if LAST_DEATH_HEADERS and deaths:
        newest = dict(deaths[0][1])
        exchange = newest["exchange"] if last_exchange is None else S(last_exchange)
        h += [("x-last-death-exchange", exchange),
              ("x-last-death-queue", newest["queue"]),
              ("x-last-death-reason", newest["reason"])]
    h.sort(key=lambda kv: kv[0].encode())
    return h


def header(props, key):
    for k, v in props.get("headers") or []:
        if k == key:
            return v
    return None


def death_times(props):
    """{(queue, reason): time} of the x-death entries."""
    out = {}
    for _, entry in header(props, "x-death")[1]:
        d = dict(entry)
        out[(d["queue"][1], d["reason"][1])] = d["time"][1]
    return out


# --------------------------------------------------------------------------
# Helpers

def invalid_arg(arg, queue, reason):
    return ("PRECONDITION_FAILED - invalid arg '%s' for queue '%s' in vhost "
            "'/': %s" % (arg, queue, reason))


def get_wait(ch, queue, timeout=3.0, auto_ack=True):
    """basic.get until a message arrives (bounded): (method, props, body),
    or (None, None, None)."""
    deadline = time.monotonic() + timeout
    while True:
        m, p, b = ch.basic_get(queue, auto_ack=auto_ack)
        if m is not None or time.monotonic() >= deadline:
            return m, p, b
        ch.connection.process_data_events(time_limit=0.02)


def get_bodies(ch, queue, limit=1000):
    out = []
    for _ in range(limit):
        m, _, b = ch.basic_get(queue, auto_ack=True)
        if m is None:
            return out
        out.append(b)
    raise AssertionError("queue %s did not run empty" % queue)


def ready(ch, queue):
    return counts(ch, queue)[0]


def wait_ready(ch, queue, n, timeout=3.0):
    last = [None]

    def check():
        last[0] = ready(ch, queue)
        return last[0] == n

    pump(ch.connection, check, timeout)
    return last[0]


def props(**kw):
    return pika.BasicProperties(**kw)


def with_dlq(amqp, ch, **src_args):
    """A fanout dead-letter exchange with a queue bound to it, and a source
    queue using it (plus `src_args`). Returns (src, dlx, dlq)."""
    dlx = amqp.exchange(ch, "fanout")
    dlq = amqp.queue(ch)
    ch.queue_bind(dlq, dlx)
    args = {"x-dead-letter-exchange": dlx}
    args.update(src_args)
    src = amqp.queue(ch, arguments=args)
    return src, dlx, dlq


def reject_one(ch, queue, requeue=False):
    m, p, b = get_wait(ch, queue, auto_ack=False)
    assert m is not None, "nothing to reject in %s" % queue
    ch.basic_reject(m.delivery_tag, requeue=requeue)
    return m, p, b


class ConfirmLog:
    """Publisher confirms with each outcome kept: outcomes() is 'ack' or
    'nack' per publish in order; nack_requeue the requeue bits of the nacks;
    returns the basic.return methods."""

    def __init__(self, ch):
        self.ch = ch
        self.next_tag = 1
        self.outcome = {}
        self.nack_requeue = []
        self.returns = []
        box = []
        ch._impl.confirm_delivery(self._on_confirm, callback=box.append)
        ch._impl.add_on_return_callback(
            lambda _ch, m, _p, _b: self.returns.append(m))
        ch._flush_output(lambda: box)

    def _on_confirm(self, frame):
        m = frame.method
        nack = isinstance(m, spec.Basic.Nack)
        if nack:
            self.nack_requeue.append(m.requeue)
        for t in range(1, self.next_tag):
            if t in self.outcome:
                continue
            if t == m.delivery_tag or (m.multiple and t < m.delivery_tag):
                self.outcome[t] = "nack" if nack else "ack"

    def publish(self, exchange, routing_key, body, properties=None,
                mandatory=False):
        self.ch._impl.basic_publish(exchange, routing_key, body, properties,
                                    mandatory)
        self.next_tag += 1

    def outcomes(self, timeout=5.0):
        n = self.next_tag - 1
        pump(self.ch.connection, lambda: len(self.outcome) == n, timeout)
        return [self.outcome.get(t) for t in range(1, n + 1)]


# ==========================================================================
# Queue argument validation

INVALID_ARGS = [
    # (arguments, failing argument, reason as RabbitMQ prints it)
    ({"x-message-ttl": -1}, "x-message-ttl", "{value_negative,-1}"),
    ({"x-message-ttl": wide(-1)}, "x-message-ttl", "{value_negative,-1}"),
    ({"x-message-ttl": "abc"}, "x-message-ttl",
     '"expected integer, got longstr"'),
    ({"x-message-ttl": "100"}, "x-message-ttl",
     '"expected integer, got longstr"'),
    ({"x-message-ttl": True}, "x-message-ttl", '"expected integer, got bool"'),
    ({"x-message-ttl": Decimal("1.5")}, "x-message-ttl",
     '"expected integer, got decimal"'),
    ({"x-message-ttl": wide(315360000001)}, "x-message-ttl",
     "{value_too_large,315360000001}"),
    ({"x-expires": 0}, "x-expires", "{value_zero,0}"),
    ({"x-expires": -1}, "x-expires", "{value_negative,-1}"),
    ({"x-expires": "x"}, "x-expires", '"expected integer, got longstr"'),
    ({"x-expires": wide(315360000001)}, "x-expires",
     "{value_too_large,315360000001}"),
    ({"x-max-length": -1}, "x-max-length", "{value_negative,-1}"),
    ({"x-max-length": "x"}, "x-max-length", '"expected integer, got longstr"'),
    ({"x-max-length-bytes": -1}, "x-max-length-bytes", "{value_negative,-1}"),
    ({"x-max-length-bytes": "x"}, "x-max-length-bytes",
     '"expected integer, got longstr"'),
    ({"x-overflow": "foo"}, "x-overflow", "invalid_overflow"),
    ({"x-overflow": "Drop-Head"}, "x-overflow", "invalid_overflow"),
    ({"x-overflow": 5}, "x-overflow", "{unacceptable_type,signedint}"),
    ({"x-overflow": wide(5)}, "x-overflow", "{unacceptable_type,long}"),
    ({"x-overflow": b"drop-head"}, "x-overflow", "{unacceptable_type,binary}"),
    ({"x-max-priority": 256}, "x-max-priority", "{max_value_exceeded,256}"),
    ({"x-max-priority": -1}, "x-max-priority", "{value_negative,-1}"),
    ({"x-max-priority": "x"}, "x-max-priority",
     '"expected integer, got longstr"'),
    ({"x-dead-letter-routing-key": "rk"}, "x-dead-letter-routing-key",
     "routing_key_but_no_dlx_defined"),
    ({"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": wide(5)},
     "x-dead-letter-routing-key", "{unacceptable_type,long}"),
    ({"x-dead-letter-routing-key": wide(5)}, "x-dead-letter-routing-key",
     "{unacceptable_type,long}"),
    # the first failing check wins, whatever the order in the table
    ({"x-message-ttl": -1, "x-expires": 0}, "x-expires", "{value_zero,0}"),
    ({"x-max-length": -1, "x-message-ttl": -1}, "x-message-ttl",
     "{value_negative,-1}"),
    ({"x-dead-letter-routing-key": "rk", "x-message-ttl": -1},
     "x-message-ttl", "{value_negative,-1}"),
    ({"x-dead-letter-routing-key": "rk", "x-max-length": -1},
     "x-dead-letter-routing-key", "routing_key_but_no_dlx_defined"),
    ({"x-overflow": "foo", "x-max-priority": 300}, "x-max-priority",
     "{max_value_exceeded,300}"),
]


@pytest.mark.parametrize("args,arg,reason", INVALID_ARGS,
                         ids=[repr(a[0]) for a in INVALID_ARGS])
def test_invalid_queue_argument_refused(amqp, args, arg, reason):
    ch = amqp.channel()
    q = amqp.qname()
    with channel_error(ch, 406, invalid_arg(arg, q, reason),
                       spec.Queue.Declare):
        ch.queue_declare(q, arguments=args)
    ch = amqp.channel()
    with channel_error(ch, 404, no_queue(q), spec.Queue.Declare):
        ch.queue_declare(q, passive=True)


@pytest.mark.parametrize("value,type_name", [
    (5, "signedint"), (wide(5), "long"), (True, "bool"), (b"dlx", "binary")])
def test_dead_letter_exchange_of_wrong_type_refused(amqp, value, type_name):
    ch = amqp.channel()
    q = amqp.qname()
    text = ("PRECONDITION_FAILED - invalid type '%s' for arg "
            "'x-dead-letter-exchange' in queue '%s' in vhost '/'"
            % (type_name, q))
    # checked before every other argument
    with channel_error(ch, 406, text, spec.Queue.Declare):
        ch.queue_declare(q, arguments={"x-expires": 0,
                                       "x-dead-letter-exchange": value})


def test_delivery_limit_on_a_classic_queue(amqp):
    """RabbitMQ 3.10 refuses x-delivery-limit on classic queues. Deliberate
    difference (docs/lifecycle.md): Warren accepts it and applies it as
    RabbitMQ's quorum queues do."""
    ch = amqp.channel()
    q = amqp.qname()
    if not amqp.is_rabbitmq():
        ch.queue_declare(q, arguments={"x-delivery-limit": 3})
        return
    text = ("PRECONDITION_FAILED - invalid arg 'x-delivery-limit' for queue "
            "'%s' in vhost '/' of queue type rabbit_classic_queue" % q)
    with channel_error(ch, 406, text, spec.Queue.Declare):
        ch.queue_declare(q, arguments={"x-delivery-limit": 3})


@pytest.mark.parametrize("args", [
    {"x-message-ttl": 0},
    {"x-message-ttl": wide(315360000000)},
    {"x-expires": 1},
    {"x-expires": wide(315360000000)},
    {"x-max-length": 0},
    {"x-max-length": wide(2 ** 40)},
    {"x-max-length-bytes": 0},
    {"x-overflow": "drop-head"},
    {"x-overflow": "reject-publish"},
    {"x-overflow": "reject-publish-dlx"},
    {"x-max-priority": 0},
    {"x-max-priority": 255},
    {"x-dead-letter-exchange": "no-such-exchange"},
    {"x-dead-letter-exchange": ""},
    {"x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "rk"},
    {"x-dead-letter-routing-key": "rk", "x-dead-letter-exchange": "dlx"},
    {"x-foo-unknown": "bar"},
], ids=repr)
def test_valid_queue_arguments_accepted(amqp, args):
    ch = amqp.channel()
    q = amqp.queue(ch, arguments=args)
    assert counts(ch, q) == (0, 0)
    ch.queue_declare(q, arguments=args)  # the same again is equivalent


# ==========================================================================
# The expiration property

@pytest.mark.parametrize("expiration,reason", [
    ("abc", "no_integer"),
    ("", "no_integer"),
    (" 100", "no_integer"),
    ("-1", "{value_negative,-1}"),
    ("1.5", '{leftover_string,".5"}'),
    ("100 ", '{leftover_string," "}'),
    ("1e3", '{leftover_string,"e3"}'),
    ("315360000001", "{value_too_large,315360000001}"),
])
def test_invalid_expiration_closes_channel(amqp, expiration, reason):
    ch = amqp.channel()
    q = amqp.queue(ch)
    with channel_error(ch, 406, "PRECONDITION_FAILED - invalid expiration "
                       "'%s': %s" % (expiration, reason), spec.Basic.Publish):
        ch.basic_publish("", q, b"m", props(expiration=expiration))
        sync(ch)
    ch = amqp.channel()
    assert counts(ch, q) == (0, 0)


def test_expiration_passed_through_as_sent(amqp):
    conn, ch, w = wire_channel(amqp)
    q = amqp.queue(ch)
    for e in ("+60000", "0060000", "315360000000"):
        ch.basic_publish("", q, b"m", props(expiration=e))
        m, p, _ = get_wait(ch, q)
        assert m is not None and p.expiration == e
        assert w.last(ch)["expiration"] == e


# ==========================================================================
# Message TTL

def test_queue_ttl_expires_messages_without_any_consumer(amqp):
    ch = amqp.channel()
    q = amqp.queue(ch, arguments={"x-message-ttl": 100})
    keep = amqp.queue(ch)
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
        ch.basic_publish("", keep, b"%d" % i)
    settle(ch.connection, 0.35)
    assert counts(ch, q) == (0, 0)
    assert ch.basic_get(q)[0] is None
    assert get_bodies(ch, keep) == [b"0", b"1", b"2"]


def test_message_from_ttl_queue_has_no_expiration_property(amqp):
    conn, ch, w = wire_channel(amqp)
    q = amqp.queue(ch, arguments={"x-message-ttl": 60000})
    ch.basic_publish("", q, b"m")
    m, p, b = get_wait(ch, q)
    assert b == b"m" and p.expiration is None
    assert w.last(ch) == {"flags": 0}


def test_per_message_expiration(amqp):
    ch = amqp.channel()
    q = amqp.queue(ch)
    ch.basic_publish("", q, b"short", props(expiration="100"))
    ch.basic_publish("", q, b"long", props(expiration="60000"))
    ch.basic_publish("", q, b"none")
    settle(ch.connection, 0.35)
    assert counts(ch, q) == (2, 0)
    got = []
    for _ in range(2):
        m, p, b = ch.basic_get(q, auto_ack=True)
        got.append((b, p.expiration))
    assert got == [(b"long", "60000"), (b"none", None)]
    assert ch.basic_get(q)[0] is None


@pytest.mark.parametrize("queue_ttl,expiration", [(100, "60000"),
                                                  (60000, "100")])
def test_lower_of_queue_ttl_and_expiration_wins(amqp, queue_ttl, expiration):
    conn, ch, w = wire_channel(amqp)
    src, dlx, dlq = with_dlq(amqp, ch, **{"x-message-ttl": queue_ttl})
    t0 = time.monotonic()
    ch.basic_publish("", src, b"m", props(expiration=expiration))
    m, p, b = get_wait(ch, dlq)
    assert m is not None and time.monotonic() - t0 < 3
    assert p.expiration is None
    assert w.last(ch)["headers"] == dead_headers(
        [death(src, "expired", original_expiration=expiration)],
        src, "expired")


def test_expired_messages_never_delivered_to_a_late_consumer(amqp):
    ch = amqp.channel()
    q = amqp.queue(ch, arguments={"x-message-ttl": 100})
    ch.basic_publish("", q, b"old1")
    ch.basic_publish("", q, b"old2", props(expiration="50"))
    settle(ch.connection, 0.35)
    got = Collector()
    ch.basic_consume(q, got, auto_ack=True)
    settle(ch.connection, 0.2)
    assert got.bodies == []
    ch.basic_publish("", q, b"fresh")
    pump(ch.connection, lambda: len(got) == 1, 3)
    assert got.bodies == [b"fresh"]
    assert got.items[0][1].expiration is None


def test_waiting_messages_expire_while_the_consumer_is_at_its_prefetch(amqp):
    """Messages queued behind a consumer's prefetch limit expire (and are
    dead-lettered, in order) even though a consumer is attached."""
    ch = amqp.channel()
    src, dlx, dlq = with_dlq(amqp, ch, **{"x-message-ttl": 150})
    ch.basic_qos(prefetch_count=1)
    got = Collector()
    ch.basic_consume(src, got)
    for b in (b"m1", b"m2", b"m3"):
        ch.basic_publish("", src, b)
    pump(ch.connection, lambda: len(got) == 1, 3)
    settle(ch.connection, 0.4)
    assert got.bodies == [b"m1"]
    ch.basic_ack(got.tags[0])
    settle(ch.connection, 0.2)
    assert got.bodies == [b"m1"]
    ch2 = amqp.channel()
    assert wait_ready(ch2, dlq, 2) == 2
    assert get_bodies(ch2, dlq) == [b"m2", b"m3"]


def test_requeued_message_past_its_ttl_expires(amqp):
    """A delivered message keeps its expiry time: requeued after the TTL
    has passed, it is dead-lettered as expired, not delivered again."""
    conn, ch, w = wire_channel(amqp)
    src, dlx, dlq = with_dlq(amqp, ch, **{"x-message-ttl": 150})
    ch.basic_publish("", src, b"m")
    m, _, _ = get_wait(ch, src, auto_ack=False)
    assert m is not None
    settle(conn, 0.3)
    ch.basic_reject(m.delivery_tag, requeue=True)
    m, p, b = get_wait(ch, dlq)
    assert b == b"m"
    assert w.last(ch)["headers"] == dead_headers(
        [death(src, "expired")], src, "expired")
    assert counts(ch, src) == (0, 0)


def test_expired_message_behind_a_live_head(amqp):
    """RabbitMQ checks only the head of a queue for per-message expiry:
    expired messages behind a live head are still counted, and dropped (and
    dead-lettered) once they reach the head. Deliberate difference
    (docs/lifecycle.md): Warren removes them when they expire wherever they
    are."""
    conn, ch, w = wire_channel(amqp)
    src, dlx, dlq = with_dlq(amqp, ch)
    ch.basic_publish("", src, b"head")
    ch.basic_publish("", src, b"x1", props(expiration="100"))
    ch.basic_publish("", src, b"x2", props(expiration="100"))
    ch.basic_publish("", src, b"tail")
    settle(conn, 0.35)
    rabbitmq = amqp.is_rabbitmq()
    if rabbitmq:
        assert counts(ch, src) == (4, 0)
        assert ch.basic_get(dlq)[0] is None
    else:
        assert counts(ch, src) == (2, 0)
        assert wait_ready(ch, dlq, 2) == 2
    m, _, b = ch.basic_get(src, auto_ack=True)
    assert (b, m.message_count) == (b"head", 1)
    assert counts(ch, src) == (1, 0)
    m, _, b = ch.basic_get(src, auto_ack=True)
    assert (b, m.message_count) == (b"tail", 0)
    assert wait_ready(ch, dlq, 2) == 2
    for body in (b"x1", b"x2"):
        m, p, b = ch.basic_get(dlq, auto_ack=True)
        assert b == body
        assert w.last(ch)["headers"] == dead_headers(
            [death(src, "expired", original_expiration="100")],
            src, "expired")


def test_expired_messages_dead_lettered_by_the_timer(amqp):
    """No client touches the source queue: the dead-letter queue receives
    the message once its TTL has passed."""
    conn, ch, w = wire_channel(amqp)
    src, dlx, dlq = with_dlq(amqp, ch, **{"x-message-ttl": 200})
    t0 = time.monotonic()
    ch.basic_publish("", src, b"m", props(priority=1, headers={"h": 1}))
    m, p, b = get_wait(ch, dlq)
    elapsed = time.monotonic() - t0
    assert b == b"m"
    assert 0.15 <= elapsed < 3, elapsed
    assert (m.exchange, m.routing_key, m.redelivered) == (dlx, src, False)
    got = w.last(ch)
    assert got["priority"] == 1
    assert got["headers"] == dead_headers(
        [death(src, "expired")], src, "expired", others=[("h", ("I", 1))])


# ---------------------------------------------------------------- TTL 0

def test_ttl_zero_without_consumer_expires_at_once(amqp):
    conn, ch, w = wire_channel(amqp)
    src, dlx, dlq = with_dlq(amqp, ch, **{"x-message-ttl": 0})
    ch.basic_publish("", src, b"z")
    m, p, b = get_wait(ch, dlq)
    assert b == b"z"
    assert w.last(ch)["headers"] == dead_headers(
        [death(src, "expired")], src, "expired")
    assert counts(ch, src) == (0, 0)


def test_ttl_zero_delivered_to_a_ready_consumer(amqp):
    ch = amqp.channel()
    src, dlx, dlq = with_dlq(amqp, ch, **{"x-message-ttl": 0})
    got = Collector()
    ch.basic_consume(src, got, auto_ack=True)
    ch.basic_publish("", src, b"z")
    pump(ch.connection, lambda: len(got) == 1, 3)
    assert got.bodies == [b"z"]
    settle(ch.connection, 0.1)
    assert ch.basic_get(dlq)[0] is None


def test_ttl_zero_expires_when_the_consumer_is_at_its_prefetch(amqp):
    conn, ch, w = wire_channel(amqp)
    src, dlx, dlq = with_dlq(amqp, ch, **{"x-message-ttl": 0})
    ch.basic_qos(prefetch_count=1)
    got = Collector()
    ch.basic_consume(src, got)
    ch.basic_publish("", src, b"first")
    pump(conn, lambda: len(got) == 1, 3)
    ch.basic_publish("", src, b"second")
    ch2 = amqp.channel(conn)
    m, p, b = get_wait(ch2, dlq)
    assert b == b"second"
    assert w.last(ch2)["headers"] == dead_headers(
        [death(src, "expired")], src, "expired")
    assert got.bodies == [b"first"]


def test_expiration_zero(amqp):
    conn, ch, w = wire_channel(amqp)
    src, dlx, dlq = with_dlq(amqp, ch)
    ch.basic_publish("", src, b"nobody", props(expiration="0"))
    m, p, b = get_wait(ch, dlq)
    assert b == b"nobody"
    assert w.last(ch)["headers"] == dead_headers(
        [death(src, "expired", original_expiration="0")], src, "expired")
    got = Collector()
    ch.basic_consume(src, got, auto_ack=True)
    ch.basic_publish("", src, b"taken", props(expiration="0"))
    pump(conn, lambda: len(got) == 1, 3)
    assert got.bodies == [b"taken"]
    assert got.items[0][1].expiration == "0"
    settle(conn, 0.1)
    assert ch.basic_get(dlq)[0] is None


# ==========================================================================
# Queue expiry (x-expires)

def expect_expired(amqp, queue, expires, timeout=3.0):
    """Waits (bounded) until `queue` has been deleted by its x-expires.
    Every passive declare restarts the countdown, so checks are spaced by
    more than `expires` (seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(expires * 1.5)
        ch = amqp.channel()
        try:
            ch.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            assert (e.reply_code, e.reply_text) == (404, no_queue(queue))
            return
        ch.close()
        assert time.monotonic() < deadline, \
            "queue %s still there after %.1f s" % (queue, timeout)


def test_unused_queue_deleted_after_expires(amqp):
    ch = amqp.channel()
    q = amqp.queue(ch, arguments={"x-expires": 200})
    ch.basic_publish("", q, b"m")  # messages do not keep it alive
    assert counts(ch, q)[1] == 0
    t0 = time.monotonic()
    expect_expired(amqp, q, 0.2)
    assert time.monotonic() - t0 >= 0.2


def test_queue_with_consumer_does_not_expire(amqp):
    ch = amqp.channel()
    q = amqp.queue(ch, arguments={"x-expires": 150})
    tag = ch.basic_consume(q, lambda *a: None)
    time.sleep(0.45)
    other = amqp.channel()
    assert counts(other, q) == (0, 1)
    ch.basic_cancel(tag)
    expect_expired(amqp, q, 0.15)


def test_queue_expires_after_its_last_consumer_channel_closes(amqp):
    conn = amqp.connect()
    ch = conn.channel()
    q = amqp.queue(ch, arguments={"x-expires": 150})
    ch.basic_consume(q, lambda *a: None)
    time.sleep(0.3)
    conn.close()
    expect_expired(amqp, q, 0.15)


@pytest.mark.parametrize("activity", ["get", "redeclare", "passive"])
def test_queue_use_restarts_the_expiry_countdown(amqp, activity):
    ch = amqp.channel()
    args = {"x-expires": 300}
    q = amqp.queue(ch, arguments=args)
    for _ in range(6):  # 0.9 s in all, three times x-expires
        time.sleep(0.15)
        if activity == "get":
            assert ch.basic_get(q)[0] is None
        elif activity == "redeclare":
            ch.queue_declare(q, arguments=args)
        else:
            ch.queue_declare(q, passive=True)
    assert counts(ch, q) == (0, 0)
    expect_expired(amqp, q, 0.3)


def test_expired_queue_does_not_dead_letter_its_messages(amqp):
    ch = amqp.channel()
    dlx = amqp.exchange(ch, "fanout")
    dlq = amqp.queue(ch)
    ch.queue_bind(dlq, dlx)
    q = amqp.queue(ch, arguments={"x-expires": 150,
                                  "x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"m")
    expect_expired(amqp, q, 0.15)
    ch = amqp.channel()
    assert counts(ch, dlq) == (0, 0)


# ==========================================================================
# Dead-lettering

ALL_PROPS = dict(
    content_type="text/plain", content_encoding="utf-8",
    headers={"h": wide(1), "hi": 2, "hs": "v"}, delivery_mode=2, priority=3,
    correlation_id="corr", reply_to="rt", expiration="60000",
    message_id="mid", timestamp=1700000000, type="typ", user_id="guest",
    app_id="app", cluster_id="clu")
USER_HEADERS = [("h", ("l", 1)), ("hi", ("I", 2)), ("hs", S("v"))]


def test_reject_dead_letters_with_every_property_but_expiration(amqp):
    conn, ch, w = wire_channel(amqp)
    src, dlx, dlq = with_dlq(amqp, ch)
    ch.basic_publish("", src, b"body1", props(**ALL_PROPS))
    m, p, b = reject_one(ch, src)
    sent = w.last(ch)
    assert sent["flags"] == 0xfffc
    m, p, b = get_wait(ch, dlq, auto_ack=False)
    assert b == b"body1"
    assert (m.exchange, m.routing_key, m.redelivered, m.message_count) == \
        (dlx, src, False, 0)
    got = w.last(ch)
    assert got["flags"] == 0xfefc
    expected = dict(sent, flags=0xfefc)
    del expected["expiration"]
    expected["headers"] = dead_headers(
        [death(src, "rejected", original_expiration="60000")],
        src, "rejected", others=USER_HEADERS)
    assert got == expected
    ch.basic_ack(m.delivery_tag)


def test_nack_dead_letters_to_a_consumer(amqp):
    """basic.nack(requeue=false) is a rejection too; the dead letter is not
    marked redelivered although the original was; the x-death exchange is
    the one the message was published to."""
    conn, ch, w = wire_channel(amqp)
    src, dlx, dlq = with_dlq(amqp, ch)
    ch.queue_bind(src, "amq.direct", "k")
    ch.basic_publish("amq.direct", "k", b"n")
    m, _, _ = get_wait(ch, src, auto_ack=False)
    ch.basic_nack(m.delivery_tag, requeue=True)
    m, _, _ = get_wait(ch, src, auto_ack=False)
    assert m.redelivered
    ch.basic_nack(m.delivery_tag, requeue=False)
    ch2 = conn.channel()
    got = Collector()
    ch2.basic_consume(dlq, got, auto_ack=True)
    pump(conn, lambda: len(got) == 1, 3)
    m, p, b = got.items[0]
    assert (b, m.exchange, m.routing_key, m.redelivered) == \
        (b"n", dlx, "k", False)
    assert w.last(ch2) == {"flags": 0x2000, "headers": dead_headers(
        [death(src, "rejected", "amq.direct", ["k"])],
        src, "rejected", "amq.direct")}
    assert counts(ch, src) == (0, 0)


def test_multiple_nack_dead_letters_each_message(amqp):
    ch = amqp.channel()
    src, dlx, dlq = with_dlq(amqp, ch)
    for b in (b"a", b"b", b"c"):
        ch.basic_publish("", src, b)
    tags = [get_wait(ch, src, auto_ack=False)[0].delivery_tag
            for _ in range(3)]
    ch.basic_nack(tags[-1], multiple=True, requeue=False)
    assert wait_ready(ch, dlq, 3) == 3
    assert get_bodies(ch, dlq) == [b"a", b"b", b"c"]


def test_requeue_true_does_not_dead_letter(amqp):
    ch = amqp.channel()
    src, dlx, dlq = with_dlq(amqp, ch)
    ch.basic_publish("", src, b"m")
    reject_one(ch, src, requeue=True)
    m, p, b = ch.basic_get(src, auto_ack=True)
    assert b == b"m" and m.redelivered and p.headers is None
    assert ch.basic_get(dlq)[0] is None


def test_header_table_sorted_when_x_death_written(amqp):
    conn, ch, w = wire_channel(amqp)
    plain = amqp.queue(ch)
    src, dlx, dlq = with_dlq(amqp, ch)
    headers = {"zz": "1", "aa": wide(2), "x-first-death-queue": wide(7),
               "mm": {"z": True, "a": False}}
    ch.basic_publish("", plain, b"p", props(headers=headers))
    get_wait(ch, plain)
    assert w.last(ch)["headers"] == [  # order kept without dead-lettering
        ("zz", S("1")), ("aa", ("l", 2)), ("x-first-death-queue", ("l", 7)),
        ("mm", ("F", [("z", ("t", True)), ("a", ("t", False))]))]
    ch.basic_publish("", src, b"b", props(headers=headers))
    reject_one(ch, src)
    get_wait(ch, dlq)
    assert w.last(ch)["headers"] == dead_headers(
        [death(src, "rejected")], src, "rejected", others=[
            ("aa", ("l", 2)),
            ("mm", ("F", [("z", ("t", True)), ("a", ("t", False))])),
            ("zz", S("1"))])


def test_dead_letter_routing_key_replaces_the_routing_key(amqp):
    """With x-dead-letter-routing-key the dead letter is routed by it alone
    (the CC header is removed); x-death keeps the original keys."""
    conn, ch, w = wire_channel(amqp)
    dlx = amqp.exchange(ch, "direct")
    dlq = amqp.queue(ch)
    by_cc = amqp.queue(ch)
    ch.queue_bind(dlq, dlx, "newrk")
    ch.queue_bind(by_cc, dlx, "k2")
    src = amqp.queue(ch, arguments={"x-dead-letter-exchange": dlx,
                                    "x-dead-letter-routing-key": "newrk"})
    ch.queue_bind(src, "amq.direct", "k1")
    ch.basic_publish("amq.direct", "k1", b"d",
                     props(headers={"CC": ["k2"], "u": "v"}))
    reject_one(ch, src)
    m, p, b = get_wait(ch, dlq)
    assert (b, m.exchange, m.routing_key) == (b"d", dlx, "newrk")
    assert w.last(ch)["headers"] == dead_headers(
        [death(src, "rejected", "amq.direct", ["k1", "k2"])],
        src, "rejected", "amq.direct", others=[("u", S("v"))])
    settle(conn, 0.1)
    assert ch.basic_get(by_cc)[0] is None


def test_dead_letter_keeps_cc_and_routes_by_cc_and_bcc(amqp):
    conn, ch, w = wire_channel(amqp)
    dlx = amqp.exchange(ch, "direct")
    dq = {k: amqp.queue(ch) for k in ("j1", "j2", "j3")}
    for k, q in dq.items():
        ch.queue_bind(q, dlx, k)
    src = amqp.queue(ch, arguments={"x-dead-letter-exchange": dlx})
    ch.queue_bind(src, "amq.direct", "j1")
    ch.basic_publish("amq.direct", "j1", b"e",
                     props(headers={"CC": ["j2"], "BCC": ["j3"]}))
    reject_one(ch, src)
    # RabbitMQ still routes the dead letter by the original BCC keys; Warren strips BCC
    # at publish and routes dead letters by routing key and CC (docs/lifecycle.md).
    keys = ("j1", "j2", "j3") if amqp.is_rabbitmq() else ("j1", "j2")
    for k in keys:
        m, p, b = get_wait(ch, dq[k])
        assert (k, b, m.exchange, m.routing_key) == (k, b"e", dlx, "j1")
        assert w.last(ch)["headers"] == dead_headers(
            [death(src, "rejected", "amq.direct", ["j1", "j2"])],
            src, "rejected", "amq.direct",
            others=[("CC", ("A", [S("j2")]))])
    if not amqp.is_rabbitmq():
        sync(ch)
        assert ch.basic_get(dq["j3"])[0] is None


def test_dead_letter_exchange_missing_drops_the_message(amqp):
    ch = amqp.channel()
    src = amqp.queue(ch, arguments={
        "x-dead-letter-exchange": amqp.xname("missing")})
    ch.basic_publish("", src, b"m")
    reject_one(ch, src)
    sync(ch)
    assert counts(ch, src) == (0, 0)


def test_dead_letter_to_the_default_exchange(amqp):
    conn, ch, w = wire_channel(amqp)
    target = amqp.queue(ch)
    src = amqp.queue(ch, arguments={"x-dead-letter-exchange": "",
                                    "x-dead-letter-routing-key": target})
    ch.basic_publish("", src, b"m")
    reject_one(ch, src)
    m, p, b = get_wait(ch, target)
    assert (b, m.exchange, m.routing_key) == (b"m", "", target)
    assert w.last(ch)["headers"] == dead_headers(
        [death(src, "rejected")], src, "rejected")


def test_x_death_counts_and_order_over_repeated_deaths(amqp):
    """src -> dlx -> dlq -> dlx2 -> src, by rejection each time. Entries are
    keyed by (queue, reason); a repeated death increments count (nothing
    else changes, not even time) and moves its entry to the front; entries
    added or updated after the first are key-sorted."""
    conn, ch, w = wire_channel(amqp)
    src, dlx, dlq = with_dlq(amqp, ch)
    dlx2 = amqp.exchange(ch, "fanout")
    ch.queue_bind(src, dlx2)
    ch.queue_delete(dlq)
    ch.queue_declare(dlq, arguments={"x-dead-letter-exchange": dlx2})
    ch.queue_bind(dlq, dlx)
    ch.basic_publish("", src, b"c", props(expiration="60000"))

    def death_of(q, count, first):
        return death(src if q == "src" else dlq, "rejected",
                     "" if q == "src" else dlx, [src], count,
                     "60000" if q == "src" else None, first)

    reject_one(ch, src)
    m, p, b = get_wait(ch, dlq, auto_ack=False)
    assert (m.exchange, m.routing_key) == (dlx, src)
    first = w.last(ch)
    assert header(first, "x-death") == ("A", [death_of("src", 1, True)])
    t_src = death_times(first)[(src, "rejected")]
    time.sleep(1.05)  # the next deaths happen in a later second
    ch.basic_reject(m.delivery_tag, requeue=False)
    steps = [
        (src, dlx2, [("dlq", 1, False), ("src", 1, True)]),
        (dlq, dlx, [("src", 2, False), ("dlq", 1, False)]),
        (src, dlx2, [("dlq", 2, False), ("src", 2, False)]),
        (dlq, dlx, [("src", 3, False), ("dlq", 2, False)]),
    ]
    for i, (q, x, deaths) in enumerate(steps):
        m, p, b = get_wait(ch, q, auto_ack=False)
        assert m is not None, "step %d: nothing in %s" % (i, q)
        assert (b, m.exchange, m.routing_key, m.redelivered) == \
            (b"c", x, src, False)
        got = w.last(ch)
        # x-last-death-exchange: how the message entered the queue it last died in
        # (the x-death entry keeps the exchange of that queue's first death)
        died_in, times, _ = deaths[0]
        entered_by = dlx if died_in == "dlq" else ("" if times == 1 else dlx2)
        assert got["headers"] == dead_headers(
            [death_of(*d) for d in deaths], src, "rejected",
            last_exchange=entered_by), "step %d" % i
        assert death_times(got)[(src, "rejected")] == t_src
        if i < len(steps) - 1:
            if i == 2:
                ch.basic_nack(m.delivery_tag, requeue=False)
            else:
                ch.basic_reject(m.delivery_tag, requeue=False)


def test_client_supplied_x_death_is_continued(amqp):
    conn, ch, w = wire_channel(amqp)
    q = amqp.queue(ch, arguments={"x-dead-letter-exchange": ""})
    old = {"count": wide(5), "reason": "rejected", "queue": q,
           "time": datetime(1970, 1, 1, 0, 0, 1),
           "exchange": "", "routing-keys": [q]}
    ch.basic_publish("", q, b"m", props(headers={"x-death": [old]}))
    reject_one(ch, q)
    get_wait(ch, q)
    expected = [("x-death", ("A", [
        death(q, "rejected", count=6, first=False, time_=1)]))]
    if LAST_DEATH_HEADERS:
        expected += [("x-last-death-exchange", S("")), ("x-last-death-queue", S(q)),
                     ("x-last-death-reason", S("rejected"))]
    assert w.last(ch)["headers"] == expected


# ---------------------------------------------------------------- cycles

def test_rejection_cycle_to_the_same_queue_continues(amqp):
    conn, ch, w = wire_channel(amqp)
    q = amqp.queue(ch, arguments={"x-dead-letter-exchange": ""})
    ch.basic_publish("", q, b"r")
    m, _, _ = get_wait(ch, q, auto_ack=False)
    for count in (1, 2, 3):
        ch.basic_reject(m.delivery_tag, requeue=False)
        m, p, b = get_wait(ch, q, auto_ack=False)
        assert (b, m.exchange, m.routing_key, m.redelivered) == \
            (b"r", "", q, False)
        assert w.last(ch)["headers"] == dead_headers(
            [death(q, "rejected", count=count, first=count == 1)],
            q, "rejected")


def test_expiry_into_the_same_queue_drops_the_message(amqp):
    ch = amqp.channel()
    q = amqp.queue(ch, arguments={"x-message-ttl": 50,
                                  "x-dead-letter-exchange": ""})
    ch.basic_publish("", q, b"cyc")
    settle(ch.connection, 0.4)
    assert counts(ch, q) == (0, 0)
    assert ch.basic_get(q)[0] is None


def test_expiry_cycle_over_two_queues_dropped_on_return(amqp):
    """A (ttl) -> B (ttl) -> A: dropped when it would re-enter A, as no
    death on the way was a rejection."""
    conn, ch, w = wire_channel(amqp)
    a, b = amqp.qname("A"), amqp.qname("B")
    ch.queue_declare(a, arguments={"x-message-ttl": 150,
                                   "x-dead-letter-exchange": "",
                                   "x-dead-letter-routing-key": b})
    ch.queue_declare(b, arguments={"x-message-ttl": 150,
                                   "x-dead-letter-exchange": "",
                                   "x-dead-letter-routing-key": a})
    ch.basic_publish("", a, b"pp")
    assert wait_ready(ch, b, 1) == 1
    settle(conn, 0.45)
    assert (ready(ch, a), ready(ch, b)) == (0, 0)
    settle(conn, 0.25)
    assert (ready(ch, a), ready(ch, b)) == (0, 0)
    assert ch.basic_get(a)[0] is None and ch.basic_get(b)[0] is None


def test_max_length_drop_into_the_same_queue_drops_the_message(amqp):
    ch = amqp.channel()
    q = amqp.queue(ch, arguments={"x-max-length": 1,
                                  "x-dead-letter-exchange": ""})
    ch.basic_publish("", q, b"m1")
    ch.basic_publish("", q, b"m2")
    settle(ch.connection, 0.1)
    m, p, b = ch.basic_get(q, auto_ack=True)
    assert (b, p.headers, m.message_count) == (b"m2", None, 0)
    settle(ch.connection, 0.1)
    assert counts(ch, q) == (0, 0)


def test_cycle_skips_only_the_cyclic_queue(amqp):
    conn, ch, w = wire_channel(amqp)
    fx = amqp.exchange(ch, "fanout")
    q = amqp.queue(ch, arguments={"x-message-ttl": 100,
                                  "x-dead-letter-exchange": fx})
    other = amqp.queue(ch)
    ch.queue_bind(q, fx)
    ch.queue_bind(other, fx)
    ch.basic_publish("", q, b"f")
    m, p, b = get_wait(ch, other)
    assert (b, m.exchange, m.routing_key) == (b"f", fx, q)
    assert w.last(ch)["headers"] == dead_headers(
        [death(q, "expired")], q, "expired")
    settle(conn, 0.3)
    assert counts(ch, q) == (0, 0)


# ==========================================================================
# Length limits

def test_max_length_drop_head_dead_letters_the_oldest(amqp):
    conn, ch, w = wire_channel(amqp)
    src, dlx, dlq = with_dlq(amqp, ch, **{"x-max-length": 2})
    c = ConfirmLog(ch)
    for b in (b"m1", b"m2", b"m3"):
        c.publish("", src, b, mandatory=True)
    assert c.outcomes() == ["ack", "ack", "ack"]
    assert c.returns == []
    assert counts(ch, src) == (2, 0)
    m, p, b = get_wait(ch, dlq)
    assert (b, m.exchange, m.routing_key) == (b"m1", dlx, src)
    assert w.last(ch)["headers"] == dead_headers(
        [death(src, "maxlen")], src, "maxlen")
    settle(conn, 0.1)
    assert ch.basic_get(dlq)[0] is None
    assert get_bodies(ch, src) == [b"m2", b"m3"]


def test_max_length_without_dlx_drops_the_oldest(amqp):
    ch = amqp.channel()
    q = amqp.queue(ch, arguments={"x-max-length": 3})
    for i in range(10):
        ch.basic_publish("", q, b"%d" % i)
    assert get_bodies(ch, q) == [b"7", b"8", b"9"]


def test_reject_publish_nacks_and_keeps_the_queue(amqp):
    ch = amqp.channel()
    src, dlx, dlq = with_dlq(amqp, ch, **{"x-max-length": 2,
                                          "x-overflow": "reject-publish"})
    c = ConfirmLog(ch)
    for b in (b"r1", b"r2", b"r3", b"r4"):
        c.publish("", src, b, mandatory=True)
    assert c.outcomes() == ["ack", "ack", "nack", "nack"]
    assert c.nack_requeue and all(c.nack_requeue)  # RabbitMQ sets requeue
    assert c.returns == []
    settle(ch.connection, 0.1)
    assert ch.basic_get(dlq)[0] is None
    assert get_bodies(ch, src) == [b"r1", b"r2"]
    c.publish("", src, b"r5")  # room again
    assert c.outcomes()[-1] == "ack"


def test_reject_publish_without_confirms_drops_silently(amqp):
    ch = amqp.channel()
    q = amqp.queue(ch, arguments={"x-max-length": 1,
                                  "x-overflow": "reject-publish"})
    for b in (b"a", b"b", b"c"):
        ch.basic_publish("", q, b)
    sync(ch)
    assert ch.is_open
    assert get_bodies(ch, q) == [b"a"]


def test_reject_publish_with_one_full_queue_of_two(amqp):
    ch = amqp.channel()
    fx = amqp.exchange(ch, "fanout")
    full = amqp.queue(ch, arguments={"x-max-length": 1,
                                     "x-overflow": "reject-publish"})
    ok = amqp.queue(ch)
    ch.queue_bind(full, fx)
    ch.queue_bind(ok, fx)
    c = ConfirmLog(ch)
    c.publish(fx, "", b"1")
    c.publish(fx, "", b"2")
    assert c.outcomes() == ["ack", "nack"]
    assert get_bodies(ch, ok) == [b"1", b"2"]
    assert get_bodies(ch, full) == [b"1"]


def test_reject_publish_dlx_nacks_and_dead_letters(amqp):
    conn, ch, w = wire_channel(amqp)
    src, dlx, dlq = with_dlq(amqp, ch, **{"x-max-length": 2,
                                          "x-overflow": "reject-publish-dlx"})
    c = ConfirmLog(ch)
    for b in (b"d1", b"d2", b"d3"):
        c.publish("", src, b, props(expiration="60000"))
    assert c.outcomes() == ["ack", "ack", "nack"]
    m, p, b = get_wait(ch, dlq)
    assert (b, m.exchange, m.routing_key, p.expiration) == \
        (b"d3", dlx, src, None)
    assert w.last(ch)["headers"] == dead_headers(
        [death(src, "maxlen", original_expiration="60000")], src, "maxlen")
    assert get_bodies(ch, src) == [b"d1", b"d2"]


def test_max_length_bytes_drop_head(amqp):
    conn, ch, w = wire_channel(amqp)
    src, dlx, dlq = with_dlq(amqp, ch, **{"x-max-length-bytes": 10})
    for b in (b"abcde1", b"abcde2", b"abcde3"):
        ch.basic_publish("", src, b, props(headers={"big": "x" * 100}))
    assert wait_ready(ch, dlq, 2) == 2  # only bodies count
    for body in (b"abcde1", b"abcde2"):
        m, p, b = ch.basic_get(dlq, auto_ack=True)
        assert b == body
        assert header(w.last(ch), "x-death") == ("A", [death(src, "maxlen")])
    assert get_bodies(ch, src) == [b"abcde3"]


def test_max_length_bytes_message_larger_than_the_limit(amqp):
    ch = amqp.channel()
    src, dlx, dlq = with_dlq(amqp, ch, **{"x-max-length-bytes": 10})
    ch.basic_publish("", src, b"abcdefghijk")
    m, p, b = get_wait(ch, dlq)
    assert b == b"abcdefghijk"
    assert counts(ch, src) == (0, 0)


def test_max_length_bytes_reject_publish(amqp):
    ch = amqp.channel()
    q = amqp.queue(ch, arguments={"x-max-length-bytes": 10,
                                  "x-overflow": "reject-publish"})
    c = ConfirmLog(ch)
    for b in (b"abcde1", b"abcde2", b"abcde3"):
        c.publish("", q, b)
    assert c.outcomes() == ["ack", "nack", "nack"]
    assert get_bodies(ch, q) == [b"abcde1"]


@pytest.mark.parametrize("overflow,outcome,dead", [
    ("drop-head", "ack", True), ("reject-publish", "nack", False),
    ("reject-publish-dlx", "nack", True)])
def test_max_length_zero(amqp, overflow, outcome, dead):
    ch = amqp.channel()
    src, dlx, dlq = with_dlq(amqp, ch, **{"x-max-length": 0,
                                          "x-overflow": overflow})
    c = ConfirmLog(ch)
    c.publish("", src, b"z")
    assert c.outcomes() == [outcome]
    if dead:
        assert get_wait(ch, dlq)[2] == b"z"
    else:
        settle(ch.connection, 0.1)
        assert ch.basic_get(dlq)[0] is None
    assert counts(ch, src) == (0, 0)


def test_max_length_counts_only_ready_messages(amqp):
    ch = amqp.channel()
    src, dlx, dlq = with_dlq(amqp, ch, **{"x-max-length": 1})
    got = Collector()
    ch.basic_consume(src, got)
    sent = [b"c%d" % i for i in range(10)]
    for b in sent:
        ch.basic_publish("", src, b)
    pump(ch.connection, lambda: len(got) == len(sent), 3)
    assert got.bodies == sent
    settle(ch.connection, 0.1)
    assert ch.basic_get(dlq)[0] is None


def test_requeue_into_a_full_drop_head_queue_drops_the_head(amqp):
    """Unacked messages do not count toward x-max-length; requeued into a
    full drop-head queue they go back to the head, and the head is dropped
    (dead-lettered 'maxlen') down to the limit."""
    ch = amqp.channel()
    src, dlx, dlq = with_dlq(amqp, ch, **{"x-max-length": 2})
    for b in (b"a", b"b"):
        ch.basic_publish("", src, b)
    get_wait(ch, src, auto_ack=False)
    m2 = get_wait(ch, src, auto_ack=False)[0]
    ch.basic_publish("", src, b"c")
    ch.basic_publish("", src, b"d")
    assert wait_ready(ch, src, 2) == 2
    ch.basic_nack(m2.delivery_tag, multiple=True, requeue=True)
    assert wait_ready(ch, dlq, 2) == 2
    for body in (b"a", b"b"):
        m, p, b = ch.basic_get(dlq, auto_ack=True)
        assert (b, m.redelivered) == (body, False)
        assert [(d["queue"], d["reason"]) for d in p.headers["x-death"]] == \
            [(src, "maxlen")]
    assert get_bodies(ch, src) == [b"c", b"d"]


def test_requeue_into_a_full_reject_publish_queue_is_kept(amqp):
    ch = amqp.channel()
    src, dlx, dlq = with_dlq(amqp, ch, **{"x-max-length": 1,
                                          "x-overflow": "reject-publish"})
    ch.basic_publish("", src, b"a")
    m = get_wait(ch, src, auto_ack=False)[0]
    ch.basic_publish("", src, b"b")
    assert wait_ready(ch, src, 1) == 1
    ch.basic_reject(m.delivery_tag, requeue=True)
    assert wait_ready(ch, src, 2) == 2
    got = []
    for _ in range(2):
        m, p, b = ch.basic_get(src, auto_ack=True)
        got.append((b, m.redelivered))
    assert got == [(b"a", True), (b"b", False)]
    assert ch.basic_get(dlq)[0] is None


# ==========================================================================
# Retry patterns

def test_retry_queue_sends_rejected_messages_back_after_the_ttl(amqp):
    """work (DLX -> retry) / retry (ttl, DLX -> work): a rejected message
    comes back after the TTL, with x-death for both queues."""
    conn, ch, w = wire_channel(amqp)
    work, retry = amqp.qname("work"), amqp.qname("retry")
    ch.queue_declare(work, arguments={"x-dead-letter-exchange": "",
                                      "x-dead-letter-routing-key": retry})
    ch.queue_declare(retry, arguments={"x-message-ttl": 150,
                                       "x-dead-letter-exchange": "",
                                       "x-dead-letter-routing-key": work})
    got = Collector()
    arrivals = []

    def on_msg(c, m, p, b):
        arrivals.append(time.monotonic())
        got(c, m, p, b)
        if len(got) < 3:
            c.basic_reject(m.delivery_tag, requeue=False)
        else:
            c.basic_ack(m.delivery_tag)

    ch.basic_consume(work, on_msg)
    ch.basic_publish("", work, b"job", props(message_id="j1"))
    pump(conn, lambda: len(got) == 3, 5)
    assert len(got) == 3
    for i in (1, 2):
        assert arrivals[i] - arrivals[i - 1] >= 0.12
    headers = [p["headers"] if "headers" in p else None for p in w.all(ch)]
    assert headers[0] is None
    for n, (m, p, b) in enumerate(got.items[1:], 1):
        assert (b, p.message_id, m.exchange, m.routing_key,
                m.redelivered) == (b"job", "j1", "", work, False)
        assert headers[n] == dead_headers([
            death(retry, "expired", "", [retry], n, first=False),
            death(work, "rejected", "", [work], n, first=n == 1)],
            work, "rejected")
    settle(conn, 0.3)
    assert len(got) == 3
    assert counts(ch, work)[0] == 0 and counts(ch, retry) == (0, 0)


def test_retry_counter_then_parking_lot(amqp):
    """The consumer reads the x-death count of its own rejections; after
    3 attempts it parks the message (publishes it to a parking-lot queue,
    headers included) and acks."""
    conn, ch, w = wire_channel(amqp)
    work, retry = amqp.qname("work"), amqp.qname("retry")
    parked = amqp.queue(ch)
    ch.queue_declare(work, arguments={"x-dead-letter-exchange": "",
                                      "x-dead-letter-routing-key": retry})
    ch.queue_declare(retry, arguments={"x-message-ttl": 50,
                                       "x-dead-letter-exchange": "",
                                       "x-dead-letter-routing-key": work})
    attempts = []

    def rejections(p):
        for d in (p.headers or {}).get("x-death", []):
            if d["queue"] == work and d["reason"] == "rejected":
                return d["count"]
        return 0

    def on_msg(c, m, p, b):
        n = rejections(p)
        attempts.append((b, n))
        if n >= 2:
            c.basic_publish("", parked, b, p)
            c.basic_ack(m.delivery_tag)
        else:
            c.basic_reject(m.delivery_tag, requeue=False)

    ch.basic_consume(work, on_msg)
    for b in (b"a", b"b"):
        ch.basic_publish("", work, b)
    pump(conn, lambda: len(attempts) == 6, 5)
    assert sorted(attempts) == [(b"a", 0), (b"a", 1), (b"a", 2),
                                (b"b", 0), (b"b", 1), (b"b", 2)]
    ch2 = conn.channel()
    assert wait_ready(ch2, parked, 2) == 2
    for _ in range(2):
        m, p, b = ch2.basic_get(parked, auto_ack=True)
        assert (m.exchange, m.routing_key) == ("", parked)
        # as the consumer saw them (re-encoded by pika on the way back)
        deaths = [(d["queue"], d["reason"], d["count"], d["exchange"],
                   d["routing-keys"]) for d in p.headers["x-death"]]
        assert deaths == [(retry, "expired", 2, "", [retry]),
                          (work, "rejected", 2, "", [work])]
        assert (p.headers["x-first-death-queue"],
                p.headers["x-first-death-reason"]) == (work, "rejected")
    settle(conn, 0.2)
    assert len(attempts) == 6
    assert counts(ch2, retry) == (0, 0)


def test_delay_queue(amqp):
    """A queue with a TTL, a DLX and no consumer delays messages on their
    way to the target queue."""
    conn, ch, w = wire_channel(amqp)
    target = amqp.queue(ch)
    delay = amqp.queue(ch, arguments={"x-message-ttl": 250,
                                      "x-dead-letter-exchange": "",
                                      "x-dead-letter-routing-key": target})
    got = Collector()
    arrivals = []

    def on_msg(c, m, p, b):
        arrivals.append(time.monotonic())
        got(c, m, p, b)

    ch.basic_consume(target, on_msg, auto_ack=True)
    t0 = time.monotonic()
    for i in range(3):
        ch.basic_publish("", delay, b"d%d" % i,
                         props(delivery_mode=2, correlation_id="c%d" % i))
    pump(conn, lambda: len(got) == 3, 5)
    assert got.bodies == [b"d0", b"d1", b"d2"]
    assert all(a - t0 >= 0.2 for a in arrivals), [a - t0 for a in arrivals]
    for i, (m, p, b) in enumerate(got.items):
        assert (m.exchange, m.routing_key) == ("", target)
        assert (p.delivery_mode, p.correlation_id) == (2, "c%d" % i)
    for p in w.all(ch):
        assert p["headers"] == dead_headers(
            [death(delay, "expired")], delay, "expired")


def test_delay_queue_with_per_message_delays(amqp):
    """Per-message expirations in one delay queue. RabbitMQ: a short delay
    behind a long one waits for it (only the head expires). Deliberate
    difference (docs/lifecycle.md): Warren releases each message at its own
    time."""
    ch = amqp.channel()
    target = amqp.queue(ch)
    delay = amqp.queue(ch, arguments={"x-dead-letter-exchange": "",
                                      "x-dead-letter-routing-key": target})
    got = Collector()
    arrivals = []

    def on_msg(c, m, p, b):
        arrivals.append(time.monotonic() - t0)
        got(c, m, p, b)

    ch.basic_consume(target, on_msg, auto_ack=True)
    t0 = time.monotonic()
    ch.basic_publish("", delay, b"long", props(expiration="300"))
    ch.basic_publish("", delay, b"short", props(expiration="50"))
    pump(ch.connection, lambda: len(got) == 2, 5)
    if amqp.is_rabbitmq():
        assert got.bodies == [b"long", b"short"]
        assert arrivals[0] >= 0.25 and arrivals[1] >= 0.25, arrivals
    else:
        assert got.bodies == [b"short", b"long"]
        assert 0.04 <= arrivals[0] < 0.25 <= arrivals[1], arrivals


# ==========================================================================
# Across restarts (own broker)

@pytest.mark.parametrize("mode", MODES)
def test_ttl_queue_across_restart(fresh_broker, mode):
    """Durable queues with x-message-ttl holding persistent messages:
    `long` (60 s) keeps them; `short` (2.5 s) still holds them right after
    the restart and dead-letters them when the TTL is up, counted from the
    publish (time while the broker was down included); `gone` (300 ms)
    expired while the broker was down and dead-letters them after it
    starts. The dead-letter queue is durable."""
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("dlq", durable=True)
    for q, ttl in (("long", 60000), ("short", 2500), ("gone", 300)):
        ch.queue_declare(q, durable=True, arguments={
            "x-message-ttl": ttl, "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "dlq"})
    c = Confirms(conn, ch)
    t_publish = time.monotonic()
    for q in ("long", "short", "gone"):
        for i in range(3):
            c.publish("", q, b"%s-%d" % (q.encode(), i),
                      pika.BasicProperties(delivery_mode=2,
                                           headers={"n": i}))
    c.wait_all()
    if mode == TERM:
        close_quietly(conn)
        assert b.stop() == 0
    else:
        b.stop(sig=signal.SIGKILL)
        close_quietly(conn)
    time.sleep(max(0.0, t_publish + 1.0 - time.monotonic()))
    b.start()
    t_start = time.monotonic()
    conn = connect(b)
    w = Wire(conn)
    ch = conn.channel()
    assert t_start - t_publish < 2.0, "restart too slow for this test"
    assert ch.queue_declare("long", passive=True).method.message_count == 3
    assert ch.queue_declare("short", passive=True).method.message_count == 3
    assert ch.basic_get("gone")[0] is None
    assert wait_ready(ch, "dlq", 3) == 3
    assert get_bodies(ch, "dlq") == [b"gone-0", b"gone-1", b"gone-2"]
    # `short` dead-letters 2.5 s after the publish, not 2.5 s after start
    assert wait_ready(ch, "dlq", 3, timeout=4.0) == 3
    t_dead = time.monotonic()
    timing = "dead-lettered %.2f s after the publish, %.2f s after start" % (
        t_dead - t_publish, t_dead - t_start)
    assert t_dead - t_publish >= 2.3, timing
    assert t_dead - t_start < 2.2, timing
    for i in range(3):
        m, p, body = ch.basic_get("dlq", auto_ack=True)
        assert (body, m.exchange, m.routing_key) == \
            (b"short-%d" % i, "", "dlq")
        assert p.delivery_mode == 2
        assert w.last(ch)["headers"] == dead_headers(
            [death("short", "expired")], "short", "expired",
            others=[("n", ("I", i))])
    assert ch.queue_declare("short", passive=True).method.message_count == 0
    assert ch.queue_declare("long", passive=True).method.message_count == 3
    conn.close()


@pytest.mark.parametrize("how", ["reject", "expire", "maxlen"])
def test_dead_letter_survives_sigkill(fresh_broker, how):
    """A persistent message dead-lettered from a durable queue into a
    durable queue is there after a SIGKILL that follows a barrier, with its
    x-death; the source queue does not have it any more. This is Warren's
    guarantee (docs/lifecycle.md); RabbitMQ 3.10 dead-letters at most once
    and lost the dead letter on SIGKILL here, while after a SIGTERM restart
    it matched every assertion below."""
    b = fresh_broker()
    conn = connect(b)
    w = Wire(conn)
    ch = conn.channel()
    ch.exchange_declare("dlx", exchange_type="fanout", durable=True)
    ch.queue_declare("dlq", durable=True)
    ch.queue_bind("dlq", "dlx")
    args = {"x-dead-letter-exchange": "dlx"}
    if how == "expire":
        args["x-message-ttl"] = 100
    if how == "maxlen":
        args["x-max-length"] = 1
    ch.queue_declare("src", durable=True, arguments=args)
    c = Confirms(conn, ch)
    c.publish("", "src", b"m1", pika.BasicProperties(
        delivery_mode=2, headers={"k": "v"}, expiration="60000"))
    if how == "maxlen":
        c.publish("", "src", b"m2", PERSISTENT)
    c.wait_all()
    if how == "reject":
        m, _, _ = get_wait(ch, "src", auto_ack=False)
        ch.basic_reject(m.delivery_tag, requeue=False)
    reason = {"reject": "rejected", "expire": "expired",
              "maxlen": "maxlen"}[how]
    assert wait_ready(ch, "dlq", 1) == 1
    barrier(ch)
    b.stop(sig=signal.SIGKILL)
    close_quietly(conn)
    b.start()
    conn = connect(b)
    w = Wire(conn)
    ch = conn.channel()
    assert ch.queue_declare("dlq", passive=True).method.message_count == 1
    m, p, body = ch.basic_get("dlq", auto_ack=True)
    assert (body, m.exchange, m.routing_key, m.redelivered) == \
        (b"m1", "dlx", "src", False)
    assert (p.delivery_mode, p.expiration) == (2, None)
    assert w.last(ch)["headers"] == dead_headers(
        [death("src", reason, original_expiration="60000")],
        "src", reason, others=[("k", S("v"))])
    left = [b"m2"] if how == "maxlen" else []
    assert get_bodies(ch, "src") == left
    conn.close()
