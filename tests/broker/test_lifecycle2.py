"""Message lifecycle, part 2: priority queues, consumer priorities, single
active consumer, delivery limits and x-delivery-count, direct reply-to,
CC/BCC sender-selected distribution and the consumer timeout.

Expectations are RabbitMQ 3.10's as recorded on the wire (reply texts,
header key order and field types); where Warren deliberately differs
(docs/lifecycle.md) the test says so and asserts Warren's documented
behaviour when the broker is not RabbitMQ. Header tables are compared with
their AMQP field types through `Wire` (see test_lifecycle.py).

Every wait is bounded and short. Tests that need their own broker (a
SIGKILL restart, --consumer-timeout) are skipped with AMQP_EXTERNAL.
"""

import re
import signal
import time
from datetime import datetime

import pika
import pytest
from pika import spec
from pika.compat import long as wide  # pika encodes wide(n) as 'l', int as 'I'

from brokertest import (Collector, channel_error, counts, no_queue, pump,
                        rpc, settle, sync, uname)
from durabletest import Confirms, barrier, close_quietly, connect
from test_lifecycle import (FLAG_BITS, S, Wire, dead_headers, death,
                            get_bodies, get_wait, invalid_arg, props,
                            wait_ready, wire_channel, with_dlq)

REPLY = "amq.rabbitmq.reply-to"
NAME_CHARS = "[A-Za-z0-9_-]"


def flags_of(*names):
    """The property flags of a content header carrying `names`."""
    return sum(1 << bit for bit, name, _ in FLAG_BITS if name in names)


def get_props(ch, queue, n):
    """n messages by basic.get (no-ack): [(body, priority, redelivered)]."""
    out = []
    for _ in range(n):
        m, p, b = ch.basic_get(queue, auto_ack=True)
        assert m is not None, "queue %s ran empty after %d" % (queue, len(out))
        out.append((b, p.priority, m.redelivered))
    return out


def on_return(ch):
    """Records the basic.return methods the broker sends on `ch`, as soon
    as the frame is read."""
    returns = []
    ch._impl.add_on_return_callback(
        lambda _ch, m, _p, _b: returns.append(
            (m.reply_code, m.reply_text, m.exchange, m.routing_key)))
    return returns


# ==========================================================================
# Priority queues (x-max-priority)

def test_priority_order_with_priorities_above_the_maximum(amqp):
    """Highest priority first, FIFO within a level; a priority above the
    maximum counts as the maximum (and keeps FIFO order with the others at
    that level); no priority counts as 0. The property is delivered
    unchanged."""
    conn, ch, w = wire_channel(amqp)
    q = amqp.queue(ch, arguments={"x-max-priority": 5})
    for body, prio in ((b"p1", 1), (b"p5", 5), (b"p3", 3), (b"p9", 9),
                       (b"none", None)):
        ch.basic_publish("", q, body, props(priority=prio))
    assert wait_ready(ch, q, 5) == 5
    assert get_props(ch, q, 5) == [
        (b"p5", 5, False), (b"p9", 9, False), (b"p3", 3, False),
        (b"p1", 1, False), (b"none", None, False)]
    assert [p.get("priority") for p in w.all(ch)] == [5, 9, 3, 1, None]
    assert w.all(ch)[1] == {"flags": flags_of("priority"), "priority": 9}
    assert w.all(ch)[4] == {"flags": 0}
    assert ch.basic_get(q)[0] is None


def test_priority_order_second_check(amqp):
    ch = amqp.channel()
    q = amqp.queue(ch, arguments={"x-max-priority": 5})
    sent = [(b"a", 7), (b"b", 9), (b"c", 5), (b"d", 6), (b"e", 0),
            (b"f", None), (b"g", 255)]
    for body, prio in sent:
        ch.basic_publish("", q, body, props(priority=prio))
    assert wait_ready(ch, q, 7) == 7
    assert get_props(ch, q, 7) == [
        (b"a", 7, False), (b"b", 9, False), (b"c", 5, False),
        (b"d", 6, False), (b"g", 255, False), (b"e", 0, False),
        (b"f", None, False)]


@pytest.mark.parametrize("args", [{"x-max-priority": 0}, {}], ids=repr)
def test_max_priority_zero_and_plain_queue_are_fifo(amqp, args):
    ch = amqp.channel()
    q = amqp.queue(ch, arguments=args)
    sent = [(b"one", 1), (b"nine", 9), (b"five", 5), (b"none", None)]
    for body, prio in sent:
        ch.basic_publish("", q, body, props(priority=prio))
    assert wait_ready(ch, q, 4) == 4
    assert get_props(ch, q, 4) == [(b, p, False) for b, p in sent]


def test_priority_order_for_a_consumer(amqp):
    """Messages waiting in a priority queue reach a later consumer in
    priority order."""
    ch = amqp.channel()
    q = amqp.queue(ch, arguments={"x-max-priority": 10})
    for body, prio in ((b"lo", 1), (b"hi", 8), (b"mid", 4), (b"hi2", 8)):
        ch.basic_publish("", q, body, props(priority=prio))
    assert wait_ready(ch, q, 4) == 4
    got = Collector()
    ch.basic_consume(q, got, auto_ack=True)
    pump(ch.connection, lambda: len(got) == 4, 3)
    assert got.bodies == [b"hi", b"hi2", b"mid", b"lo"]


def test_requeue_returns_a_message_to_its_place_in_priority_order(amqp):
    """Requeued messages go back to their original place: before the
    messages of their level published after them, after those published
    before them."""
    ch = amqp.channel()
    q = amqp.queue(ch, arguments={"x-max-priority": 5})
    for body, prio in ((b"a", 1), (b"b", 3), (b"c", 5)):
        ch.basic_publish("", q, body, props(priority=prio))
    assert wait_ready(ch, q, 3) == 3
    m1, _, b1 = ch.basic_get(q, auto_ack=False)
    m2, _, b2 = ch.basic_get(q, auto_ack=False)
    assert (b1, b2) == (b"c", b"b")
    for body, prio in ((b"d", 5), (b"e", 3), (b"f", None)):
        ch.basic_publish("", q, body, props(priority=prio))
    assert wait_ready(ch, q, 4) == 4
    ch.basic_nack(m2.delivery_tag, multiple=True, requeue=True)
    assert wait_ready(ch, q, 6) == 6
    assert get_props(ch, q, 6) == [
        (b"c", 5, True), (b"d", 5, False), (b"b", 3, True),
        (b"e", 3, False), (b"a", 1, False),
        (b"f", None, False)]
    assert ch.basic_get(q)[0] is None


def test_single_requeue_into_a_priority_queue(amqp):
    ch = amqp.channel()
    q = amqp.queue(ch, arguments={"x-max-priority": 5})
    ch.basic_publish("", q, b"x", props(priority=2))
    ch.basic_publish("", q, b"y", props(priority=2))
    assert wait_ready(ch, q, 2) == 2
    m, _, b = ch.basic_get(q, auto_ack=False)
    assert b == b"x"
    ch.basic_publish("", q, b"z", props(priority=4))
    ch.basic_publish("", q, b"w", props(priority=1))
    assert wait_ready(ch, q, 3) == 3
    ch.basic_reject(m.delivery_tag, requeue=True)
    assert wait_ready(ch, q, 4) == 4
    assert get_props(ch, q, 4) == [(b"z", 4, False), (b"x", 2, True),
                                   (b"y", 2, False), (b"w", 1, False)]


def test_durable_priority_queue_across_sigkill(fresh_broker):
    """A durable priority queue with persistent messages: after a SIGKILL
    the order is kept, the message that was delivered and not acked comes
    back with redelivered=True, the transient one is gone, and priorities
    are delivered as published. (The delivered message is the first
    published, so that Warren's redelivered window, docs/lifecycle.md,
    covers it alone.)"""
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("pq", durable=True, arguments={"x-max-priority": 5})
    c = Confirms(conn, ch)
    sent = [(b"top", 9, 2), (b"a", 1, 2), (b"b", 5, 2), (b"t", 5, 1),
            (b"c", None, 2), (b"d", 3, 2), (b"e", 5, 2)]
    for body, prio, mode in sent:
        c.publish("", "pq", body,
                  pika.BasicProperties(delivery_mode=mode, priority=prio))
    c.wait_all()
    ch2 = conn.channel()
    m, p, body = get_wait(ch2, "pq", auto_ack=False)
    assert (body, p.priority, m.redelivered) == (b"top", 9, False)
    barrier(ch2)
    b.stop(sig=signal.SIGKILL)
    assert b.returncode == -signal.SIGKILL
    close_quietly(conn)
    b.start()
    conn = connect(b)
    ch = conn.channel()
    assert ch.queue_declare("pq", passive=True).method.message_count == 6
    got = []
    for _ in range(6):
        m, p, body = ch.basic_get("pq", auto_ack=True)
        assert m is not None
        got.append((body, p.priority, p.delivery_mode, m.redelivered))
    assert got == [(b"top", 9, 2, True), (b"b", 5, 2, False),
                   (b"e", 5, 2, False), (b"d", 3, 2, False),
                   (b"a", 1, 2, False), (b"c", None, 2, False)]
    assert ch.basic_get("pq")[0] is None
    # still a priority queue after the restart
    for body, prio in ((b"l", 1), (b"h", 4)):
        ch.basic_publish("", "pq", body, props(priority=prio))
    assert get_bodies(ch, "pq") == [b"h", b"l"]
    conn.close()


# ==========================================================================
# Consumer priorities (x-priority)

def test_higher_priority_consumer_gets_everything(amqp):
    ch = amqp.channel()
    q = amqp.queue(ch)
    low, high = Collector(), Collector()
    amqp.channel().basic_consume(q, low, auto_ack=True)
    amqp.channel().basic_consume(q, high, auto_ack=True,
                                 arguments={"x-priority": wide(10)})
    sent = [b"n%d" % i for i in range(4)]
    for body in sent:
        ch.basic_publish("", q, body)
    pump(amqp.conn, lambda: len(high) == 4, 3)
    settle(amqp.conn, 0.1)
    assert (high.bodies, low.bodies) == (sent, [])


def test_lower_priority_consumer_gets_messages_while_the_higher_is_blocked(
        amqp):
    ch = amqp.channel()
    q = amqp.queue(ch)
    hch, lch = amqp.channel(), amqp.channel()
    hch.basic_qos(prefetch_count=1)
    lch.basic_qos(prefetch_count=10)
    high, low = Collector(), Collector()
    lch.basic_consume(q, low)
    hch.basic_consume(q, high, arguments={"x-priority": 10})
    for i in range(4):
        ch.basic_publish("", q, b"n%d" % i)
    pump(amqp.conn, lambda: len(high) + len(low) == 4, 3)
    settle(amqp.conn, 0.1)
    assert (high.bodies, low.bodies) == ([b"n0"], [b"n1", b"n2", b"n3"])
    # room again on the higher one: it takes the next message
    hch.basic_ack(high.tags[0])
    sync(hch)
    ch.basic_publish("", q, b"n4")
    ch.basic_publish("", q, b"n5")
    pump(amqp.conn, lambda: len(high) + len(low) == 6, 3)
    settle(amqp.conn, 0.1)
    assert (high.bodies, low.bodies) == ([b"n0", b"n4"],
                                         [b"n1", b"n2", b"n3", b"n5"])
    assert counts(ch, q) == (0, 2)


def test_negative_consumer_priority(amqp):
    ch = amqp.channel()
    q = amqp.queue(ch)
    neg, default = Collector(), Collector()
    amqp.channel().basic_consume(q, neg, auto_ack=True,
                                 arguments={"x-priority": wide(-5)})
    amqp.channel().basic_consume(q, default, auto_ack=True)
    for i in range(4):
        ch.basic_publish("", q, b"n%d" % i)
    pump(amqp.conn, lambda: len(default) == 4, 3)
    settle(amqp.conn, 0.1)
    assert (len(default), neg.bodies) == (4, [])


def test_equal_priority_consumers_share_round_robin(amqp):
    ch = amqp.channel()
    q = amqp.queue(ch)
    a, b, low = Collector(), Collector(), Collector()
    amqp.channel().basic_consume(q, low, auto_ack=True)
    amqp.channel().basic_consume(q, a, auto_ack=True,
                                 arguments={"x-priority": 5})
    amqp.channel().basic_consume(q, b, auto_ack=True,
                                 arguments={"x-priority": 5})
    for i in range(6):
        ch.basic_publish("", q, b"n%d" % i)
    pump(amqp.conn, lambda: len(a) + len(b) == 6, 3)
    settle(amqp.conn, 0.1)
    assert (len(a), len(b), low.bodies) == (3, 3, [])


@pytest.mark.parametrize("value,type_name", [
    ("high", "longstr"), (True, "bool"),
    (datetime(2024, 1, 1), "timestamp")])
def test_invalid_consumer_priority(amqp, value, type_name):
    ch = amqp.channel()
    q = amqp.queue(ch)
    with channel_error(ch, 406, invalid_arg(
            "x-priority", q, '"expected integer, got %s"' % type_name),
            spec.Basic.Consume):
        ch.basic_consume(q, lambda *a: None, arguments={"x-priority": value})
    assert counts(amqp.channel(), q) == (0, 0)


@pytest.mark.parametrize("value", [3, wide(2 ** 40), wide(-2 ** 40)],
                         ids=repr)
def test_integer_consumer_priorities_accepted(amqp, value):
    ch = amqp.channel()
    q = amqp.queue(ch)
    ch.basic_consume(q, lambda *a: None, arguments={"x-priority": value})
    assert counts(ch, q) == (0, 1)


# ==========================================================================
# Single active consumer

def test_single_active_consumer(amqp):
    ch = amqp.channel()
    q = amqp.queue(ch, arguments={"x-single-active-consumer": True})
    ca, cb = amqp.channel(), amqp.channel()
    A, B = Collector(), Collector()
    tag_a = ca.basic_consume(q, A)
    cb.basic_consume(q, B)
    assert counts(ch, q) == (0, 2)  # the waiting consumer is counted
    ok = ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    assert (ok.method.message_count, ok.method.consumer_count) == (0, 2)
    for i in range(3):
        ch.basic_publish("", q, b"s%d" % i)
    pump(amqp.conn, lambda: len(A) == 3, 3)
    settle(amqp.conn, 0.15)
    assert (A.bodies, B.bodies) == ([b"s0", b"s1", b"s2"], [])
    # A goes: B does not get A's unacked messages, but does get new ones
    ca.basic_ack(A.tags[0])
    ca.basic_cancel(tag_a)
    settle(amqp.conn, 0.15)
    assert B.bodies == []
    assert counts(ch, q) == (0, 1)
    ch.basic_publish("", q, b"s3")
    pump(amqp.conn, lambda: len(B) == 1, 3)
    assert B.bodies == [b"s3"] and len(A) == 3
    # A's channel closes: its unacked messages go to B, redelivered
    ca.close()
    pump(amqp.conn, lambda: len(B) == 3, 3)
    settle(amqp.conn, 0.1)
    assert B.bodies == [b"s3", b"s1", b"s2"]
    assert B.redelivered == [False, True, True]


def test_single_active_consumer_not_taken_over_by_later_consumers(amqp):
    """RabbitMQ 3.10 has no priority-based switch: a later consumer with a
    higher x-priority waits too."""
    ch = amqp.channel()
    q = amqp.queue(ch, arguments={"x-single-active-consumer": True})
    first, plain, prio = Collector(), Collector(), Collector()
    amqp.channel().basic_consume(q, first, auto_ack=True)
    amqp.channel().basic_consume(q, plain, auto_ack=True)
    amqp.channel().basic_consume(q, prio, auto_ack=True,
                                 arguments={"x-priority": 100})
    for i in range(4):
        ch.basic_publish("", q, b"m%d" % i)
    pump(amqp.conn, lambda: len(first) == 4, 3)
    settle(amqp.conn, 0.1)
    assert (len(first), plain.bodies, prio.bodies) == (4, [], [])
    assert counts(ch, q) == (0, 3)


def test_single_active_consumer_false_is_a_plain_queue(amqp):
    ch = amqp.channel()
    q = amqp.queue(ch, arguments={"x-single-active-consumer": False})
    a, b = Collector(), Collector()
    amqp.channel().basic_consume(q, a, auto_ack=True)
    amqp.channel().basic_consume(q, b, auto_ack=True)
    for i in range(4):
        ch.basic_publish("", q, b"m%d" % i)
    pump(amqp.conn, lambda: len(a) + len(b) == 4, 3)
    assert (len(a), len(b)) == (2, 2)


def test_exclusive_consume_on_a_single_active_consumer_queue(amqp):
    ch = amqp.channel()
    q = amqp.queue(ch, arguments={"x-single-active-consumer": True})
    ch.basic_consume(q, lambda *a: None)
    ch2 = amqp.channel()
    with channel_error(ch2, 403, "ACCESS_REFUSED - queue '%s' in vhost '/' "
                       "in exclusive use" % q, spec.Basic.Consume):
        ch2.basic_consume(q, lambda *a: None, exclusive=True)


@pytest.mark.parametrize("value,type_name", [
    ("yes", "longstr"), (1, "signedint"), (wide(1), "long")])
def test_single_active_consumer_of_wrong_type_refused(amqp, value, type_name):
    ch = amqp.channel()
    q = amqp.qname()
    with channel_error(ch, 406, invalid_arg(
            "x-single-active-consumer", q,
            "{unacceptable_type,%s}" % type_name), spec.Queue.Declare):
        ch.queue_declare(q, arguments={"x-single-active-consumer": value})
    ch = amqp.channel()
    with channel_error(ch, 404, no_queue(q), spec.Queue.Declare):
        ch.queue_declare(q, passive=True)


# ==========================================================================
# x-queue-type / x-queue-mode (the queue types used below)

@pytest.mark.parametrize("args,durable,reason", [
    ({"x-queue-type": "foo"}, True, "\"unsupported queue type 'foo'\""),
    ({"x-queue-type": wide(5)}, True, "{unacceptable_type,long}"),
    ({"x-queue-type": b"classic"}, True, "{unacceptable_type,binary}"),
    ({"x-queue-mode": "foo"}, False, "\"unsupported queue mode 'foo'\""),
    ({"x-queue-mode": wide(5)}, False, "{unacceptable_type,long}"),
], ids=repr)
def test_invalid_queue_type_or_mode_refused(amqp, args, durable, reason):
    ch = amqp.channel()
    q = amqp.qname()
    arg = next(iter(args))
    with channel_error(ch, 406, invalid_arg(arg, q, reason),
                       spec.Queue.Declare):
        ch.queue_declare(q, durable=durable, arguments=args)


def test_quorum_queue_must_be_durable(amqp):
    ch = amqp.channel()
    q = amqp.qname()
    with channel_error(ch, 406, "PRECONDITION_FAILED - invalid property "
                       "'non-durable' for queue '%s' in vhost '/'" % q,
                       spec.Queue.Declare):
        ch.queue_declare(q, arguments={"x-queue-type": "quorum"})
    ch = amqp.channel()
    with channel_error(ch, 404, no_queue(q), spec.Queue.Declare):
        ch.queue_declare(q, passive=True)


# ==========================================================================
# x-delivery-limit and x-delivery-count

def delivery_limit_queue(amqp, ch, limit):
    """A queue with x-delivery-limit `limit` dead-lettering to a fanout DLX
    with a queue: (src, dlx, dlq). RabbitMQ 3.10 allows x-delivery-limit
    only on quorum queues (durable); Warren applies it to any queue
    (docs/lifecycle.md)."""
    if not amqp.is_rabbitmq():
        return with_dlq(amqp, ch, **{"x-delivery-limit": limit})
    dlx = amqp.exchange(ch, "fanout")
    dlq = amqp.queue(ch)
    ch.queue_bind(dlq, dlx)
    src = amqp.queue(ch, durable=True, arguments={
        "x-queue-type": "quorum", "x-delivery-limit": limit,
        "x-dead-letter-exchange": dlx})
    return src, dlx, dlq


def test_delivery_limit_dead_letters_after_the_limit(amqp):
    """x-delivery-limit 1: delivered twice (x-delivery-count 0, then 1,
    appended after the message's headers), then dead-lettered with reason
    delivery_limit, without x-delivery-count."""
    conn, ch, w = wire_channel(amqp)
    src, dlx, dlq = delivery_limit_queue(amqp, ch, 1)
    ch.basic_publish("", src, b"m", props(headers={"h": "v", "n": wide(3)}))
    user = [("h", S("v")), ("n", ("l", 3))]
    for count in (0, 1):
        m, p, b = get_wait(ch, src, auto_ack=False)
        assert (b, m.redelivered) == (b"m", count > 0)
        assert w.last(ch)["headers"] == user + [
            ("x-delivery-count", ("l", count))]
        ch.basic_reject(m.delivery_tag, requeue=True)
    m, p, b = get_wait(ch, dlq)
    assert (b, m.exchange, m.routing_key, m.redelivered) == \
        (b"m", dlx, src, False)
    if amqp.is_rabbitmq():
        assert "x-delivery-count" not in p.headers
        assert [(d["queue"], d["reason"]) for d in p.headers["x-death"]] == \
            [(src, "delivery_limit")]
    else:
        assert w.last(ch)["headers"] == dead_headers(
            [death(src, "delivery_limit")], src, "delivery_limit",
            others=user)
    assert counts(ch, src) == (0, 0)


def first_consumer_delivery(amqp, headers):
    """The content header of a message's first basic.deliver from a queue
    that counts deliveries, for a message published with `headers` (a wire
    header list, or None for no headers property).

    RabbitMQ 3.10.8 (observed with this file against a private node, not in
    rabbit_facts.md, whose l:0 was seen with basic.get) adds no
    x-delivery-count to a quorum queue's first basic.deliver: the message
    goes out as published. Warren documents x-delivery-count l:0 on every
    first delivery (docs/lifecycle.md, "Delivery counts")."""
    if amqp.is_rabbitmq():
        if headers is None:
            return {"flags": 0}
        return {"flags": flags_of("headers"), "headers": headers}
    kept = [kv for kv in headers or [] if kv[0] != "x-delivery-count"]
    return {"flags": flags_of("headers"),
            "headers": kept + [("x-delivery-count", ("l", 0))]}


def test_delivery_count_on_consumer_deliveries(amqp):
    """The count also comes with basic.deliver; a message without headers
    gets a header table with x-delivery-count alone."""
    conn, ch, w = wire_channel(amqp)
    src, dlx, dlq = delivery_limit_queue(amqp, ch, 2)
    got = Collector()

    def on_msg(c, m, p, b):
        got(c, m, p, b)
        c.basic_nack(m.delivery_tag, requeue=True)

    ch.basic_consume(src, on_msg)
    ch.basic_publish("", src, b"c")
    pump(conn, lambda: len(got) == 3, 3)
    m, p, b = get_wait(ch, dlq)
    assert b == b"c"
    assert got.redelivered == [False, True, True]
    deliveries = [p for p in w.all(ch)][:3]
    assert deliveries == [first_consumer_delivery(amqp, None)] + [
        {"flags": flags_of("headers"),
         "headers": [("x-delivery-count", ("l", n))]} for n in (1, 2)]
    if not amqp.is_rabbitmq():
        assert w.last(ch)["headers"] == dead_headers(
            [death(src, "delivery_limit")], src, "delivery_limit")
    settle(conn, 0.1)
    assert len(got) == 3


def test_delivery_limit_queue_reject_and_ack(amqp):
    """Below the limit a rejection without requeue dead-letters as
    'rejected'; an ack removes the message."""
    conn, ch, w = wire_channel(amqp)
    src, dlx, dlq = delivery_limit_queue(amqp, ch, 5)
    ch.basic_publish("", src, b"r")
    ch.basic_publish("", src, b"k")
    m, p, b = get_wait(ch, src, auto_ack=False)
    assert b == b"r"
    ch.basic_reject(m.delivery_tag, requeue=False)
    m, p, b = get_wait(ch, src, auto_ack=False)
    assert b == b"k"
    ch.basic_ack(m.delivery_tag)
    m, p, b = get_wait(ch, dlq)
    assert b == b"r"
    assert [(d["queue"], d["reason"]) for d in p.headers["x-death"]] == \
        [(src, "rejected")]
    if not amqp.is_rabbitmq():
        assert w.last(ch)["headers"] == dead_headers(
            [death(src, "rejected")], src, "rejected")
    assert counts(ch, src) == (0, 0)


def test_quorum_queue_deliveries_carry_the_delivery_count(amqp):
    conn, ch, w = wire_channel(amqp)
    q = amqp.queue(ch, durable=True, arguments={"x-queue-type": "quorum"})
    ch.basic_publish("", q, b"m", props(headers={"a": 1}))
    for count in (0, 1, 2, 3):
        m, p, b = get_wait(ch, q, auto_ack=False)
        assert (b, m.redelivered) == (b"m", count > 0)
        assert w.last(ch)["headers"] == [
            ("a", ("I", 1)), ("x-delivery-count", ("l", count))]
        ch.basic_reject(m.delivery_tag, requeue=True)
    m, p, b = get_wait(ch, q, auto_ack=True)
    assert w.last(ch)["headers"][-1] == ("x-delivery-count", ("l", 4))


def test_client_supplied_delivery_count_replaced(amqp):
    """A client's own x-delivery-count is removed and the broker's appended
    (on the first basic.deliver RabbitMQ passes it through, see
    first_consumer_delivery)."""
    conn, ch, w = wire_channel(amqp)
    q = amqp.queue(ch, durable=True, arguments={"x-queue-type": "quorum"})
    sent = {"x-delivery-count": 7, "a": 1}
    ch.basic_publish("", q, b"g", props(headers=sent))
    m, p, b = get_wait(ch, q, auto_ack=True)
    assert w.last(ch)["headers"] == [("a", ("I", 1)),
                                     ("x-delivery-count", ("l", 0))]
    got = Collector()

    def on_msg(c, m, p, b):
        got(c, m, p, b)
        c.basic_reject(m.delivery_tag, requeue=len(got) < 3)

    for hdrs in ({}, sent):
        got.items.clear()
        n = len(w.all(ch))
        ch.basic_publish("", q, b"c", props(headers=hdrs))
        tag = ch.basic_consume(q, on_msg)
        pump(conn, lambda: len(got) == 3, 3)
        ch.basic_cancel(tag)
        wire = [("I", v) if isinstance(v, int) else v for v in hdrs.values()]
        wire = list(zip(hdrs, wire))
        assert w.all(ch)[n:] == [first_consumer_delivery(amqp, wire)] + [
            {"flags": flags_of("headers"), "headers": [
                kv for kv in wire if kv[0] != "x-delivery-count"] + [
                ("x-delivery-count", ("l", k))]} for k in (1, 2)]


def test_classic_queue_has_no_delivery_count(amqp):
    conn, ch, w = wire_channel(amqp)
    q = amqp.queue(ch)
    bare = amqp.queue(ch)
    ch.basic_publish("", q, b"m", props(headers={"h": "v"}))
    ch.basic_publish("", bare, b"b")
    for redelivered in (False, True, True):
        m, p, b = get_wait(ch, q, auto_ack=False)
        assert (b, m.redelivered) == (b"m", redelivered)
        assert w.last(ch) == {"flags": flags_of("headers"),
                              "headers": [("h", S("v"))]}
        ch.basic_reject(m.delivery_tag, requeue=True)
        m, p, b = get_wait(ch, bare, auto_ack=False)
        assert (b, m.redelivered) == (b"b", redelivered)
        assert w.last(ch) == {"flags": 0}
        ch.basic_reject(m.delivery_tag, requeue=True)


# ==========================================================================
# Direct reply-to

def test_reply_consumer_must_be_no_ack(amqp):
    ch = amqp.channel()
    with channel_error(ch, 406, "PRECONDITION_FAILED - reply consumer cannot "
                       "acknowledge", spec.Basic.Consume):
        ch.basic_consume(REPLY, lambda *a: None, auto_ack=False)


def test_second_reply_consumer_on_a_channel(amqp):
    ch = amqp.channel()
    ch.basic_consume(REPLY, lambda *a: None, auto_ack=True)
    with channel_error(ch, 406, "PRECONDITION_FAILED - reply consumer "
                       "already set", spec.Basic.Consume):
        ch.basic_consume(REPLY, lambda *a: None, auto_ack=True)


@pytest.mark.parametrize("situation", ["none", "other channel", "cancelled"])
def test_request_without_a_reply_consumer(amqp, situation):
    ch = amqp.channel()
    q = amqp.queue(ch)
    if situation == "other channel":
        amqp.channel().basic_consume(REPLY, lambda *a: None, auto_ack=True)
    elif situation == "cancelled":
        tag = ch.basic_consume(REPLY, lambda *a: None, auto_ack=True)
        ch.basic_cancel(tag)
    with channel_error(ch, 406, "PRECONDITION_FAILED - fast reply consumer "
                       "does not exist", spec.Basic.Publish):
        ch.basic_publish("", q, b"req", props(reply_to=REPLY))
        sync(ch)
    assert counts(amqp.channel(), q) == (0, 0)


def test_reply_consumer_tag_generated_or_kept(amqp):
    ch = amqp.channel()
    ok = rpc(ch, spec.Basic.Consume(queue=REPLY, consumer_tag="",
                                    no_ack=True), [spec.Basic.ConsumeOk])
    assert re.fullmatch(r"amq\.ctag-%s{22}" % NAME_CHARS, ok.consumer_tag), \
        ok.consumer_tag
    ch2 = amqp.channel()
    assert ch2.basic_consume(REPLY, lambda *a: None, auto_ack=True,
                             consumer_tag="mytag") == "mytag"


def test_direct_reply_to_round_trip(amqp):
    client = amqp.connect()
    w = Wire(client)
    ca, cb = client.channel(), client.channel()
    got_a, got_b = Collector(), Collector()
    assert ca.basic_consume(REPLY, got_a, auto_ack=True,
                            consumer_tag="tag-a") == "tag-a"
    cb.basic_consume(REPLY, got_b, auto_ack=True, consumer_tag="tag-b")
    server = amqp.connect()
    sch = server.channel()
    rq = amqp.queue(sch)
    ca.basic_publish("", rq, b"req1", props(reply_to=REPLY,
                                             correlation_id="c1"))
    ca.basic_publish("", rq, b"req2", props(reply_to=REPLY,
                                             correlation_id="c2",
                                             headers={"h": "v"}))
    cb.basic_publish("", rq, b"req3", props(reply_to=REPLY,
                                             correlation_id="c3"))
    # requests from two channels: RabbitMQ does not order them between
    # channels, so they are matched by body
    reqs = sorted((get_wait(sch, rq) for _ in range(3)), key=lambda r: r[2])
    assert [(b, p.correlation_id) for _, p, b in reqs] == \
        [(b"req1", "c1"), (b"req2", "c2"), (b"req3", "c3")]
    assert reqs[1][1].headers == {"h": "v"}
    names = [p.reply_to for _, p, _ in reqs]
    for n in names:
        assert n.startswith(REPLY + "."), n
        if not amqp.is_rabbitmq():
            assert re.fullmatch(r"amq\.rabbitmq\.reply-to\.%s{22}"
                                % NAME_CHARS, n), n
    assert names[0] == names[1]  # stable per channel
    assert names[2] != names[0]  # differs between channels
    # the reply goes straight to the requesting channel
    reply = dict(content_type="text/plain", content_encoding="utf-8",
                 headers={"k": wide(7), "s": "v"}, delivery_mode=2,
                 priority=4, correlation_id="c1", message_id="r1",
                 timestamp=1700000000, type="reply", app_id="srv")
    sch.basic_publish("", names[0], b"resp1", props(**reply))
    sch.basic_publish("", names[2], b"resp3", props(correlation_id="c3"))
    pump(client, lambda: len(got_a) == 1 and len(got_b) == 1, 3)
    settle(client, 0.1)
    assert (len(got_a), len(got_b)) == (1, 1)
    m, p, b = got_a.items[0]
    assert (m.consumer_tag, m.redelivered, m.exchange, m.routing_key, b) == \
        ("tag-a", False, "", names[0], b"resp1")
    expected = dict(reply, headers=[("k", ("l", 7)), ("s", S("v"))])
    expected["flags"] = flags_of(*reply)
    assert w.last(ca) == expected
    m, p, b = got_b.items[0]
    assert (m.consumer_tag, m.redelivered, m.exchange, m.routing_key, b) == \
        ("tag-b", False, "", names[2], b"resp3")
    assert w.last(cb) == {"flags": flags_of("correlation_id"),
                          "correlation_id": "c3"}


def test_declare_of_a_reply_name(amqp):
    """queue.declare (passive or not, from any connection) of a live
    rewritten reply name answers declare-ok with the name, message_count 0
    and consumer_count 1; once the reply consumer is cancelled, and for a
    name no channel has, 404. Observed on RabbitMQ 3.10.8 with this test
    (rabbit_facts.md section 11 records only the 404)."""
    ch = amqp.channel()
    tag = ch.basic_consume(REPLY, lambda *a: None, auto_ack=True)
    q = amqp.queue(ch)
    ch.basic_publish("", q, b"req", props(reply_to=REPLY))
    name = get_wait(ch, q)[1].reply_to
    other = amqp.connect()
    for passive in (True, False):
        ok = other.channel().queue_declare(name, passive=passive).method
        assert (ok.queue, ok.message_count, ok.consumer_count) == \
            (name, 0, 1), "passive=%s" % passive
    for n in (name + "x", REPLY + ".garbage"):
        och = other.channel()
        with channel_error(och, 404, no_queue(n), spec.Queue.Declare):
            och.queue_declare(n, passive=True)
    ch.basic_cancel(tag)
    och = other.channel()
    with channel_error(och, 404, no_queue(name), spec.Queue.Declare):
        och.queue_declare(name, passive=True)


def test_mandatory_reply(amqp):
    """RabbitMQ 3.10 delivers a mandatory reply and also returns it (312
    NO_ROUTE). Deliberate difference (docs/lifecycle.md): Warren only
    delivers it."""
    client = amqp.connect()
    ca = client.channel()
    got = Collector()
    ca.basic_consume(REPLY, got, auto_ack=True)
    q = amqp.queue(ca)
    ca.basic_publish("", q, b"req", props(reply_to=REPLY))
    name = get_wait(ca, q)[1].reply_to
    sch = amqp.connect().channel()
    returns = on_return(sch)
    sch.basic_publish("", name, b"resp", mandatory=True)
    pump(client, lambda: len(got) == 1, 3)
    sync(sch)
    settle(sch.connection, 0.1)
    assert got.bodies == [b"resp"]
    if amqp.is_rabbitmq():
        assert returns == [(312, "NO_ROUTE", "", name)]
    else:
        assert returns == []


def test_reply_to_a_stale_name_is_dropped(amqp):
    """After the reply consumer is cancelled (or its channel closed), a
    reply to its name is dropped, and returned 312 NO_ROUTE if mandatory;
    so are replies to a garbage name and to the pseudo-queue itself. The
    replying channel stays open."""
    client = amqp.connect()
    w = Wire(client)
    ca, cb = client.channel(), client.channel()
    tag = ca.basic_consume(REPLY, lambda *a: None, auto_ack=True)
    got_b = Collector()
    cb.basic_consume(REPLY, got_b, auto_ack=True)
    q = amqp.queue(ca)
    ca.basic_publish("", q, b"a", props(reply_to=REPLY))
    cb.basic_publish("", q, b"b", props(reply_to=REPLY))
    names = dict((b, p.reply_to) for _, p, b in
                 (get_wait(ca, q) for _ in range(2)))
    name_a, name_b = names[b"a"], names[b"b"]
    assert name_a != name_b
    ca.basic_cancel(tag)
    cb.close()
    seen = len(w.frames)
    sch = amqp.connect().channel()
    returns = on_return(sch)
    targets = [name_a, name_b, REPLY + ".garbage", REPLY]
    for t in targets:
        sch.basic_publish("", t, b"late")
        sch.basic_publish("", t, b"late", mandatory=True)
    sync(sch)
    pump(sch.connection, lambda: len(returns) == len(targets), 2)
    settle(client, 0.2)
    assert returns == [(312, "NO_ROUTE", "", t) for t in targets]
    assert sch.is_open
    assert len(w.frames) == seen and got_b.bodies == []
    # the cancelled channel cannot make requests any more
    with channel_error(ca, 406, "PRECONDITION_FAILED - fast reply consumer "
                       "does not exist", spec.Basic.Publish):
        ca.basic_publish("", q, b"req", props(reply_to=REPLY))
        sync(ca)


def test_client_supplied_reply_to_name_passed_through(amqp):
    ch = amqp.channel()
    q = amqp.queue(ch)
    ch.basic_publish("", q, b"req", props(reply_to=REPLY + ".foo"))
    m, p, b = get_wait(ch, q)
    assert p.reply_to == REPLY + ".foo"
    assert ch.is_open


@pytest.mark.parametrize("passive", [False, True])
def test_declare_reply_to_pseudo_queue(amqp, passive):
    ch = amqp.connect().channel()
    ok = ch.queue_declare(REPLY, passive=passive).method
    assert (ok.queue, ok.message_count, ok.consumer_count) == (REPLY, 0, 1)


# ==========================================================================
# CC / BCC

def cc_setup(amqp, ch, n=3):
    """n queues bound to amq.direct with unique keys: (keys, queues)."""
    keys = [uname("k") for _ in range(n)]
    queues = [amqp.queue(ch) for _ in range(n)]
    for k, q in zip(keys, queues):
        ch.queue_bind(q, "amq.direct", k)
    return keys, queues


def test_cc_and_bcc_route_and_bcc_is_removed(amqp):
    conn, ch, w = wire_channel(amqp)
    (k1, k2, k3), (qa, qb, qc) = cc_setup(amqp, ch)
    ch.basic_publish("amq.direct", k1, b"cc", props(headers={
        "x": wide(1), "CC": [k2], "BCC": [k3], "z": wide(2)}))
    for q in (qa, qb, qc):
        m, p, b = get_wait(ch, q)
        assert (b, m.exchange, m.routing_key, m.redelivered) == \
            (b"cc", "amq.direct", k1, False)
        assert w.last(ch) == {"flags": flags_of("headers"), "headers": [
            ("x", ("l", 1)), ("CC", ("A", [S(k2)])), ("z", ("l", 2))]}
        assert ch.basic_get(q)[0] is None


def test_one_copy_per_queue(amqp):
    ch = amqp.channel()
    (k1, k2, k3), (qa, qb, qc) = cc_setup(amqp, ch)
    both = amqp.queue(ch)
    ch.queue_bind(both, "amq.direct", k1)
    ch.queue_bind(both, "amq.direct", k2)
    ch.basic_publish("amq.direct", k1, b"d", props(headers={
        "CC": [k1, k2, k2], "BCC": [k2, k3, k1]}))
    for q in (qa, qb, qc, both):
        assert wait_ready(ch, q, 1) == 1
    sync(ch)
    for q in (qa, qb, qc, both):
        assert get_bodies(ch, q) == [b"d"]


def test_bcc_only_leaves_an_empty_header_table(amqp):
    conn, ch, w = wire_channel(amqp)
    (k1, k2), (qa, qb) = cc_setup(amqp, ch, 2)
    ch.basic_publish("amq.direct", k1, b"b", props(headers={"BCC": [k2]}))
    for q in (qa, qb):
        m, p, b = get_wait(ch, q)
        assert (b, m.routing_key, p.headers) == (b"b", k1, {})
        assert w.last(ch) == {"flags": flags_of("headers"), "headers": []}


def test_cc_elements_that_are_not_strings_are_ignored(amqp):
    conn, ch, w = wire_channel(amqp)
    (k1, k2, k3), (qa, qb, qc) = cc_setup(amqp, ch)
    cc = [wide(5), k2.encode(), k3]
    ch.basic_publish("amq.direct", k1, b"n", props(headers={"CC": cc}))
    for q in (qa, qc):
        m, p, b = get_wait(ch, q)
        assert (b, m.routing_key) == (b"n", k1)
        assert w.last(ch)["headers"] == [("CC", ("A", [
            ("l", 5), ("x", k2.encode()), S(k3)]))]
    sync(ch)
    assert counts(ch, qb) == (0, 0)


def test_cc_empty_array_and_lowercase_names(amqp):
    """An empty CC is accepted; `cc` and `bcc` are ordinary headers."""
    conn, ch, w = wire_channel(amqp)
    (k1, k2, k3), (qa, qb, qc) = cc_setup(amqp, ch)
    ch.basic_publish("amq.direct", k1, b"l", props(headers={
        "CC": [], "cc": [k2], "bcc": [k3]}))
    m, p, b = get_wait(ch, qa)
    assert w.last(ch)["headers"] == [("CC", ("A", [])),
                                     ("cc", ("A", [S(k2)])),
                                     ("bcc", ("A", [S(k3)]))]
    sync(ch)
    assert (counts(ch, qb), counts(ch, qc)) == ((0, 0), (0, 0))


@pytest.mark.parametrize("key,value,type_name", [
    ("CC", "k2", "longstr"), ("CC", b"k2", "binary"), ("CC", {"a": 1}, "table"),
    ("CC", wide(5), "long"), ("BCC", "k3", "longstr"), ("BCC", None, "void")])
def test_cc_or_bcc_not_an_array(amqp, key, value, type_name):
    ch = amqp.channel()
    (k1,), (qa,) = cc_setup(amqp, ch, 1)
    with channel_error(ch, 406, 'PRECONDITION_FAILED - invalid message: '
                       '{unacceptable_type_in_header,"%s",%s}'
                       % (key, type_name), spec.Basic.Publish):
        ch.basic_publish("amq.direct", k1, b"bad",
                         props(headers={key: value}))
        sync(ch)
    assert counts(amqp.channel(), qa) == (0, 0)


def test_mandatory_with_routable_cc_is_not_returned(amqp):
    ch = amqp.channel()
    (k1,), (qa,) = cc_setup(amqp, ch, 1)
    returns = on_return(ch)
    nowhere = uname("nowhere")
    ch.basic_publish("amq.direct", nowhere, b"m", mandatory=True,
                     properties=props(headers={"CC": [k1]}))
    ch.basic_publish("amq.direct", nowhere, b"r", mandatory=True,
                     properties=props(headers={"CC": [nowhere + "2"]}))
    m, p, b = get_wait(ch, qa)
    assert (b, m.routing_key) == (b"m", nowhere)
    sync(ch)
    pump(ch.connection, lambda: returns, 2)
    assert returns == [(312, "NO_ROUTE", "amq.direct", nowhere)]
    assert ch.basic_get(qa)[0] is None


def test_cc_with_a_topic_exchange(amqp):
    ch = amqp.channel()
    tx = amqp.exchange(ch, "topic")
    q = amqp.queue(ch)
    other = amqp.queue(ch)
    ch.queue_bind(q, tx, "t.*")
    ch.queue_bind(other, tx, "u.#")
    ch.basic_publish(tx, "nothing", b"t", props(headers={"CC": ["t.x"]}))
    m, p, b = get_wait(ch, q)
    assert (b, m.exchange, m.routing_key, p.headers) == \
        (b"t", tx, "nothing", {"CC": ["t.x"]})
    sync(ch)
    assert counts(ch, other) == (0, 0)


# ==========================================================================
# Consumer timeout (--consumer-timeout)

def timeout_text(channel, ms):
    return ("PRECONDITION_FAILED - delivery acknowledgement on channel %d "
            "timed out. Timeout value used: %d ms. This timeout value can be "
            "configured, see consumers doc guide to learn more"
            % (channel, ms))


def closed_with(conn, ch):
    m = conn._close_recorder.last(ch.channel_number)
    assert m is not None, "no channel.close for channel %d" % ch.channel_number
    return (m.reply_code, m.reply_text, m.class_id, m.method_id)


def test_consumer_timeout_closes_the_channel(fresh_broker):
    b = fresh_broker(args=["--consumer-timeout", "300"])
    conn, other = connect(b), connect(b)
    ch1 = conn.channel()
    assert ch1.channel_number == 1
    ch2 = conn.channel()
    och = other.channel()
    for q in ("work", "side", "also"):
        och.queue_declare(q)
    held, side, also = Collector(), Collector(), Collector()
    ch1.basic_consume("work", held)
    ch1.basic_consume("also", also)
    ch2.basic_consume("side", side, auto_ack=True)
    och.basic_publish("", "work", b"slow")
    pump(conn, lambda: len(held) == 1, 3)
    t0 = time.monotonic()
    och.basic_publish("", "also", b"later")
    pump(conn, lambda: len(also) == 1, 3)
    pump(conn, lambda: ch1.is_closed, 3)
    elapsed = time.monotonic() - t0
    assert ch1.is_closed
    assert closed_with(conn, ch1) == (406, timeout_text(1, 300), 0, 0)
    assert 0.25 <= elapsed < 1.5, elapsed
    # both deliveries of the closed channel are back, redelivered
    for q, body in (("work", b"slow"), ("also", b"later")):
        m, p, got = get_wait(och, q)
        assert (got, m.redelivered) == (body, True)
    # the other channel of the connection goes on
    och.basic_publish("", "side", b"s")
    pump(conn, lambda: len(side) == 1, 3)
    assert side.bodies == [b"s"] and ch2.is_open and conn.is_open
    assert och.is_open and other.is_open
    close_quietly(conn, other)


def test_consumer_timeout_spares_a_channel_that_acks_in_time(fresh_broker):
    b = fresh_broker(args=["--consumer-timeout", "300"])
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("work")
    got = Collector()
    ch.basic_consume("work", got)
    for i in range(5):  # each held 150 ms, 0.75 s in all
        ch.basic_publish("", "work", b"m%d" % i)
        pump(conn, lambda: len(got) == i + 1, 3)
        settle(conn, 0.15)
        ch.basic_ack(got.tags[-1])
    settle(conn, 0.4)
    assert ch.is_open
    assert conn._close_recorder.closes == []
    assert got.redelivered == [False] * 5
    conn.close()


def test_consumer_timeout_counts_basic_get_and_names_the_channel(
        fresh_broker):
    b = fresh_broker(args=["--consumer-timeout", "300"])
    conn = connect(b)
    ch1, ch2 = conn.channel(), conn.channel()
    ch1.queue_declare("work")
    ch1.basic_publish("", "work", b"g")
    m, p, body = get_wait(ch2, "work", auto_ack=False)
    assert body == b"g"
    pump(conn, lambda: ch2.is_closed, 3)
    assert closed_with(conn, ch2) == (406, timeout_text(2, 300), 0, 0)
    assert ch1.is_open
    m, p, body = get_wait(ch1, "work")
    assert (body, m.redelivered) == (b"g", True)
    conn.close()


def test_no_consumer_timeout_by_default(amqp):
    """Without --consumer-timeout (RabbitMQ's default is 30 minutes) a
    delivery held for a while closes nothing."""
    ch = amqp.channel()
    q = amqp.queue(ch)
    got = Collector()
    ch.basic_consume(q, got)
    ch.basic_publish("", q, b"m")
    pump(amqp.conn, lambda: len(got) == 1, 3)
    settle(amqp.conn, 0.7)
    assert ch.is_open
    sync(ch)
    ch.basic_ack(got.tags[0])
    sync(ch)
    assert counts(ch, q) == (0, 1)
