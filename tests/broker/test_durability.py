"""Durable storage: what survives a clean restart (SIGTERM) and a crash
(SIGKILL) on the same data directory, and how the broker refuses a data
directory it must not use (locked by another broker, corrupt, foreign or
newer database).

Most tests run twice: `term` stops the broker with SIGTERM (after closing
the clients), `kill` kills it with SIGKILL while the clients are connected.
What the broker promises to have on disk at a given moment:
  * a persistent message to a durable queue once it is confirmed (or its
    tx.commit-ok has arrived);
  * a durable declare or bind once its -ok has arrived;
  * anything else (acks, deletes, purges, unbinds, delivery marks) once a
    later durable declare on the same connection has been answered:
    barrier() declares a new durable queue for that.
Skipped with AMQP_EXTERNAL (every test runs its own broker).
"""

import random
import sqlite3
import time
from pathlib import Path

import pika
import pytest
from pika import spec

from brokertest import channel_error, no_exchange, no_queue
from durabletest import (ALL_PROPERTIES, KILL, MODES, PERSISTENT, TERM,
                         TRANSIENT, Confirms, barrier, close_quietly,
                         connect, consume_all, get_all, kill, message_count,
                         publish_confirmed, restart, run_refused,
                         sanitizer_reports)

PROPERTY_NAMES = list(ALL_PROPERTIES)


def props_of(p):
    """The properties that are set, as a dict."""
    return {k: getattr(p, k) for k in PROPERTY_NAMES
            if getattr(p, k) is not None}


def inequivalent(arg, kind, name, detail):
    return ("PRECONDITION_FAILED - inequivalent arg '%s' for %s '%s' in "
            "vhost '/': %s" % (arg, kind, name, detail))


def expect_no_queue(conn, name):
    ch = conn.channel()
    with channel_error(ch, 404, no_queue(name), spec.Queue.Declare):
        ch.queue_declare(name, passive=True)


def expect_no_exchange(conn, name):
    ch = conn.channel()
    with channel_error(ch, 404, no_exchange(name), spec.Exchange.Declare):
        ch.exchange_declare(name, passive=True)


def drain_bodies(ch, queue):
    return [b for _, _, b in get_all(ch, queue)]


def check_get_sequence(ch, queue, expected):
    """basic.get (no-ack) every message of `queue`; expected is a list of
    (body, redelivered). Checks count, order, flags and get-ok's
    message_count, then that the queue is empty."""
    assert message_count(ch, queue) == len(expected), \
        "queue %s: message_count" % queue
    got = []
    for i in range(len(expected)):
        m, _, body = ch.basic_get(queue, auto_ack=True)
        assert m is not None, "queue %s empty after %d of %d" % (
            queue, i, len(expected))
        assert m.message_count == len(expected) - i - 1
        got.append((body, m.redelivered))
    assert got == expected
    assert ch.basic_get(queue, auto_ack=True)[0] is None


# ------------------------------------------------------------- entities

@pytest.mark.parametrize("mode", MODES)
def test_durable_entities_survive_transient_ones_do_not(fresh_broker, mode):
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    for t in ("direct", "fanout", "topic", "headers"):
        ch.exchange_declare("xd-" + t, exchange_type=t, durable=True)
    ch.exchange_declare("xd-internal", exchange_type="fanout", durable=True,
                        internal=True)
    ch.exchange_declare("xd-autodel", exchange_type="direct", durable=True,
                        auto_delete=True)
    ch.exchange_declare("xt", exchange_type="direct")
    for q in ("qd1", "qd2", "qd3", "qd4", "qd5", "qd6"):
        ch.queue_declare(q, durable=True)
    ch.queue_declare("qt")
    ch.queue_declare("qx", durable=True, exclusive=True)
    srv = ch.queue_declare("", durable=True).method.queue
    ch.queue_bind("qd1", "xd-direct", "k1")
    ch.queue_bind("qd1", "xd-direct", "k2")
    ch.queue_bind("qd2", "xd-fanout")
    ch.queue_bind("qd3", "xd-topic", "a.*.c")
    ch.queue_bind("qd3", "xd-topic", "#.z")
    ch.queue_bind("qd4", "xd-headers",
                  arguments={"x-match": "all", "h1": "v1", "h2": 2})
    ch.queue_bind("qd6", "xd-autodel", "ad")
    ch.queue_bind(srv, "xd-direct", "srv")
    ch.exchange_bind(destination="xd-fanout", source="xd-topic",
                     routing_key="e2e.#")
    ch.exchange_bind(destination="xd-internal", source="xd-direct",
                     routing_key="toint")
    ch.queue_bind("qd5", "xd-internal")
    # bindings that die with their transient end
    ch.queue_bind("qt", "xd-direct", "k1")
    ch.queue_bind("qd5", "xt", "k")
    ch.queue_bind("qx", "xd-direct", "k1")
    ch.exchange_bind(destination="xd-fanout", source="xt", routing_key="k")
    ch.exchange_bind(destination="xt", source="xd-direct", routing_key="tox")
    restart(b, mode, [conn])

    conn = connect(b)
    ch = conn.channel()
    for x in ("xd-direct", "xd-fanout", "xd-topic", "xd-headers",
              "xd-internal", "xd-autodel"):
        ch.exchange_declare(x, passive=True)
    for q in ("qd1", "qd2", "qd3", "qd4", "qd5", "qd6", srv):
        assert message_count(ch, q) == 0
    # flags kept: same declaration is fine, a different one is refused
    ch.exchange_declare("xd-topic", exchange_type="topic", durable=True)
    ch.exchange_declare("xd-internal", exchange_type="fanout", durable=True,
                        internal=True)
    ch.exchange_declare("xd-autodel", exchange_type="direct", durable=True,
                        auto_delete=True)
    ch.queue_declare("qd1", durable=True)
    with channel_error(ch, 406, inequivalent(
            "type", "exchange", "xd-topic",
            "received 'direct' but current is 'topic'"), spec.Exchange.Declare):
        ch.exchange_declare("xd-topic", exchange_type="direct", durable=True)
    ch = conn.channel()
    with channel_error(ch, 406, inequivalent(
            "internal", "exchange", "xd-internal",
            "received 'false' but current is 'true'"), spec.Exchange.Declare):
        ch.exchange_declare("xd-internal", exchange_type="fanout",
                            durable=True)
    ch = conn.channel()
    with channel_error(ch, 406, inequivalent(
            "auto_delete", "exchange", "xd-autodel",
            "received 'false' but current is 'true'"), spec.Exchange.Declare):
        ch.exchange_declare("xd-autodel", exchange_type="direct",
                            durable=True)
    ch = conn.channel()
    with channel_error(ch, 406, inequivalent(
            "durable", "queue", "qd2",
            "received 'false' but current is 'true'"), spec.Queue.Declare):
        ch.queue_declare("qd2")
    for name in ("qt", "qx"):
        expect_no_queue(conn, name)
    expect_no_exchange(conn, "xt")

    # every binding routes as before
    ch = conn.channel()
    sends = [("xd-direct", "k1", None), ("xd-direct", "k2", None),
             ("xd-direct", "k3", None), ("xd-direct", "srv", None),
             ("xd-fanout", "anything", None), ("xd-topic", "a.b.c", None),
             ("xd-topic", "x.y.z", None), ("xd-topic", "a.b", None),
             ("xd-topic", "e2e.1", None),
             ("xd-headers", "", {"h1": "v1", "h2": 2}),
             ("xd-headers", "", {"h1": "v1"}),
             ("xd-direct", "toint", None), ("xd-autodel", "ad", None)]
    for x, rk, headers in sends:
        body = ("%s/%s/%s" % (x, rk, sorted(headers) if headers else "")
                ).encode()
        ch.basic_publish(x, rk, body, pika.BasicProperties(headers=headers))
    expected = {
        "qd1": [b"xd-direct/k1/", b"xd-direct/k2/"],
        "qd2": [b"xd-fanout/anything/", b"xd-topic/e2e.1/"],
        "qd3": [b"xd-topic/a.b.c/", b"xd-topic/x.y.z/"],
        "qd4": [b"xd-headers//['h1', 'h2']"],
        "qd5": [b"xd-direct/toint/"],
        "qd6": [b"xd-autodel/ad/"],
        srv: [b"xd-direct/srv/"],
    }
    got = {q: drain_bodies(ch, q) for q in expected}
    assert got == expected
    # xt declared again has none of the old bindings, in either direction
    ch.exchange_declare("xt", exchange_type="direct")
    ch.queue_bind("qd1", "xt", "tox")
    ch.basic_publish("xd-direct", "tox", b"via old xd-direct->xt binding")
    ch.basic_publish("xt", "k", b"via old xt bindings")
    assert drain_bodies(ch, "qd1") == []
    assert drain_bodies(ch, "qd2") == []
    assert drain_bodies(ch, "qd5") == []
    # an internal exchange still refuses direct publishes
    with channel_error(ch, 403, "ACCESS_REFUSED - cannot publish to internal "
                       "exchange 'xd-internal' in vhost '/'",
                       spec.Basic.Publish):
        ch.basic_publish("xd-internal", "", b"direct")
        ch.queue_declare("qd5", passive=True)
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_exclusive_durable_queue_never_survives(fresh_broker, mode):
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("qx", durable=True, exclusive=True)
    ch.queue_bind("qx", "amq.direct", "qx")
    publish_confirmed(conn, ch, "qx", [b"p1", b"p2"])
    barrier(ch)
    restart(b, mode, [conn])
    conn = connect(b)
    expect_no_queue(conn, "qx")
    # and a new queue of that name starts empty, without the old binding
    ch = conn.channel()
    ch.queue_declare("qx", durable=True)
    ch.basic_publish("amq.direct", "qx", b"unrouted")
    assert message_count(ch, "qx") == 0
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_queue_and_exchange_arguments_survive(fresh_broker, mode):
    qargs = {"x-max-length": 10, "x-message-ttl": 60000,
             "x-dead-letter-exchange": "dlx", "x-custom": "kept"}
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("qa", durable=True, arguments=qargs)
    ch.exchange_declare("ae", exchange_type="fanout", durable=True)
    ch.queue_declare("qae", durable=True)
    ch.queue_bind("qae", "ae")
    ch.exchange_declare("xa", exchange_type="direct", durable=True,
                        arguments={"alternate-exchange": "ae"})
    restart(b, mode, [conn])

    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("qa", durable=True, arguments=qargs)
    ch.exchange_declare("xa", exchange_type="direct", durable=True,
                        arguments={"alternate-exchange": "ae"})
    # the alternate exchange still takes what xa cannot route
    ch.basic_publish("xa", "nobody", b"unroutable")
    assert drain_bodies(ch, "qae") == [b"unroutable"]
    cases = [
        (lambda c: c.queue_declare("qa", durable=True, arguments=dict(
            qargs, **{"x-max-length": 20})),
         inequivalent("x-max-length", "queue", "qa",
                      "received '20' but current is '10'"),
         spec.Queue.Declare),
        (lambda c: c.queue_declare("qa", durable=True),
         inequivalent("x-message-ttl", "queue", "qa",
                      "received none but current is the value '60000' of "
                      "type 'signedint'"), spec.Queue.Declare),
        (lambda c: c.queue_declare("qa", durable=True, arguments=dict(
            qargs, **{"x-dead-letter-exchange": "dlx2"})),
         inequivalent("x-dead-letter-exchange", "queue", "qa",
                      "received 'dlx2' but current is 'dlx'"),
         spec.Queue.Declare),
        (lambda c: c.exchange_declare(
            "xa", exchange_type="direct", durable=True,
            arguments={"alternate-exchange": "other"}),
         inequivalent("alternate-exchange", "exchange", "xa",
                      "received 'other' but current is 'ae'"),
         spec.Exchange.Declare),
        (lambda c: c.exchange_declare("xa", exchange_type="direct",
                                      durable=True),
         inequivalent("alternate-exchange", "exchange", "xa",
                      "received none but current is the value 'ae' of type "
                      "'longstr'"), spec.Exchange.Declare),
    ]
    for declare, text, method in cases:
        ch = conn.channel()
        with channel_error(ch, 406, text, method):
            declare(ch)
    conn.close()


def test_declare_ok_means_on_disk(fresh_broker):
    """SIGKILL right after the last -ok: every durable declaration and
    binding is there after the restart."""
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.exchange_declare("x1", exchange_type="topic", durable=True)
    ch.exchange_declare("x2", exchange_type="fanout", durable=True)
    ch.queue_declare("q1", durable=True, arguments={"x-max-length": 5})
    ch.queue_declare("q2", durable=True)
    ch.exchange_bind(destination="x2", source="x1", routing_key="to.x2")
    ch.queue_bind("q2", "x2")
    ch.queue_bind("q1", "x1", "a.#")
    kill(b, [conn])
    b.start()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("q1", durable=True, arguments={"x-max-length": 5})
    ch.basic_publish("x1", "a.b", b"one")
    ch.basic_publish("x1", "to.x2", b"two")
    assert drain_bodies(ch, "q1") == [b"one"]
    assert drain_bodies(ch, "q2") == [b"two"]
    conn.close()


# -------------------------------------------------------------- messages

@pytest.mark.parametrize("mode", MODES)
def test_properties_body_exchange_and_routing_key_preserved(fresh_broker,
                                                            mode):
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("qp", durable=True)
    ch.exchange_declare("xp", exchange_type="topic", durable=True)
    ch.queue_bind("qp", "xp", "p.#")
    rnd = random.Random(7)
    multi_frame = rnd.randbytes(300000)  # several body frames
    binary = bytes(range(256)) * 4
    msgs = [  # exchange, routing key, body, properties
        ("", "qp", b"all properties", dict(ALL_PROPERTIES)),
        ("xp", "p.empty.body", b"", {"delivery_mode": 2}),
        ("xp", "p.bin", binary, {"delivery_mode": 2,
                                 "content_type": "application/octet-stream"}),
        ("", "qp", multi_frame, {"delivery_mode": 2, "headers": {"n": 1},
                                 "priority": 0}),
        ("xp", "p." + "r" * 200, b"long routing key",
         {"delivery_mode": 2, "message_id": "m" * 255}),
    ]
    c = Confirms(conn, ch)
    for x, rk, body, props in msgs:
        c.publish(x, rk, body, pika.BasicProperties(**props))
    c.wait_all()
    restart(b, mode, [conn])

    conn = connect(b)
    ch = conn.channel()
    assert message_count(ch, "qp") == len(msgs)
    for i, (x, rk, body, props) in enumerate(msgs):
        m, p, got = ch.basic_get("qp", auto_ack=False)
        assert m is not None, "message %d missing" % i
        assert (m.exchange, m.routing_key, m.redelivered,
                m.message_count) == (x, rk, False, len(msgs) - i - 1), i
        assert got == body, "message %d: body differs (%d bytes, expected " \
            "%d)" % (i, len(got), len(body))
        assert props_of(p) == props, "message %d properties" % i
        ch.basic_ack(m.delivery_tag)
    assert ch.basic_get("qp", auto_ack=True)[0] is None
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_only_persistent_messages_in_durable_queues_survive(fresh_broker,
                                                           mode):
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("qd", durable=True)
    ch.queue_declare("qt")
    ch.exchange_declare("xt", exchange_type="fanout")  # transient exchange
    ch.queue_bind("qd", "xt")
    c = Confirms(conn, ch)
    unset = pika.BasicProperties(content_type="text/plain")
    c.publish("", "qd", b"p0", PERSISTENT)
    c.publish("", "qd", b"t1", TRANSIENT)
    c.publish("", "qd", b"u2", unset)
    c.publish("", "qd", b"p3", PERSISTENT)
    c.publish("xt", "", b"p4-via-transient-exchange", PERSISTENT)
    c.publish("xt", "", b"t5-via-transient-exchange", TRANSIENT)
    c.publish("", "qt", b"p6-in-transient-queue", PERSISTENT)
    c.publish("", "qd", b"u7", None)
    c.publish("", "qd", b"p8", PERSISTENT)
    c.wait_all()
    assert message_count(ch, "qd") == 8
    restart(b, mode, [conn])

    conn = connect(b)
    ch = conn.channel()
    check_get_sequence(ch, "qd", [(b"p0", False), (b"p3", False),
                                  (b"p4-via-transient-exchange", False),
                                  (b"p8", False)])
    expect_no_queue(conn, "qt")
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_1000_persistent_messages_in_order(fresh_broker, mode):
    """1000 confirmed messages, a restart, 5 more, another restart: all
    1005 in order, exactly once, none redelivered; the count is exact."""
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("q", durable=True)
    bodies = [b"m%04d" % i for i in range(1000)]
    publish_confirmed(conn, ch, "q", bodies)
    restart(b, mode, [conn])

    conn = connect(b)
    ch = conn.channel()
    assert message_count(ch, "q") == 1000
    more = [b"n%d" % i for i in range(5)]
    publish_confirmed(conn, ch, "q", more)
    assert message_count(ch, "q") == 1005
    restart(b, mode, [conn])

    conn = connect(b)
    ch = conn.channel()
    assert message_count(ch, "q") == 1005
    items = consume_all(conn, ch, "q", 1005)
    got = [body for _, _, body in items]
    assert got == bodies + more
    assert [m.redelivered for m, _, _ in items] == [False] * 1005
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_acked_gone_unacked_redelivered_others_not(fresh_broker, mode):
    """basic.get ten, then ack, multiple-ack, nack with and without
    requeue, reject, and leave one unacked: after the restart the queue
    holds the survivors in their original order, redelivered=True exactly
    for those that were delivered."""
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("q", durable=True)
    publish_confirmed(conn, ch, "q", [b"m%d" % i for i in range(12)])
    gch = conn.channel()
    tags = {}
    for i in range(9):
        m, _, body = gch.basic_get("q", auto_ack=False)
        assert body == b"m%d" % i
        tags[i] = m.delivery_tag
    gch.basic_ack(tags[0])
    gch.basic_ack(tags[2], multiple=True)          # m1, m2
    gch.basic_nack(tags[3], requeue=True)          # back, redelivered
    gch.basic_reject(tags[4], requeue=False)       # dropped
    gch.basic_nack(tags[5], requeue=False)         # dropped
    gch.basic_ack(tags[7])
    # m6 and m8 stay unacked; m9..m11 were never delivered
    barrier(gch)
    assert message_count(gch, "q") == 4  # m3, m9, m10, m11 ready
    restart(b, mode, [conn])

    conn = connect(b)
    ch = conn.channel()
    check_get_sequence(ch, "q", [(b"m3", True), (b"m6", True), (b"m8", True),
                                 (b"m9", False), (b"m10", False),
                                 (b"m11", False)])
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_consumer_unacked_come_back_redelivered(fresh_broker, mode):
    """A consumer with prefetch 3 gets m0..m2, is cancelled (its deliveries
    stay unacked) and acks m1 only; the connection stays open until the
    broker stops."""
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("q", durable=True)
    publish_confirmed(conn, ch, "q", [b"m%d" % i for i in range(6)])
    cch = conn.channel()
    cch.basic_qos(prefetch_count=3)
    got = []
    tag = cch.basic_consume("q", lambda c, m, p, body: got.append((m, body)))
    deadline = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    conn.process_data_events(time_limit=0.1)
    assert [body for _, body in got] == [b"m0", b"m1", b"m2"]
    cch.basic_cancel(tag)  # so that the ack frees no slot for m3
    cch.basic_ack(got[1][0].delivery_tag)
    barrier(ch)
    # TERM with the consumer still connected: the broker closes it (320)
    # and requeues m0 and m2 itself.
    if mode == TERM:
        assert b.stop() == 0
        close_quietly(conn)
        b.start()
    else:
        restart(b, KILL, [conn])

    conn = connect(b)
    ch = conn.channel()
    check_get_sequence(ch, "q", [(b"m0", True), (b"m2", True), (b"m3", False),
                                 (b"m4", False), (b"m5", False)])
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_fanout_copies_acked_independently(fresh_broker, mode):
    """One message routed to two durable queues and a transient one: acking
    it in one durable queue leaves the other's copy, across restarts."""
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.exchange_declare("xf", exchange_type="fanout", durable=True)
    for q, durable in (("q1", True), ("q2", True), ("q3", False)):
        ch.queue_declare(q, durable=durable)
        ch.queue_bind(q, "xf")
    bodies = [b"f%d" % i for i in range(10)]
    publish_confirmed(conn, ch, "", bodies, exchange="xf")
    # q1 loses f0..f4 (no-ack gets); q2 loses f5..f9 (acked), and f0..f4
    # go back to q2 with requeue
    ch1 = conn.channel()
    for i in range(5):
        assert ch1.basic_get("q1", auto_ack=True)[2] == bodies[i]
    ch2 = conn.channel()
    got = [ch2.basic_get("q2", auto_ack=False) for _ in range(10)]
    assert [body for _, _, body in got] == bodies
    for m, _, _ in got[5:]:
        ch2.basic_ack(m.delivery_tag)
    for m, _, _ in got[:5]:
        ch2.basic_nack(m.delivery_tag, requeue=True)
    barrier(ch2)
    assert (message_count(ch, "q1"), message_count(ch, "q2"),
            message_count(ch, "q3")) == (5, 5, 10)
    restart(b, mode, [conn])

    conn = connect(b)
    ch = conn.channel()
    expect_no_queue(conn, "q3")
    assert (message_count(ch, "q1"), message_count(ch, "q2")) == (5, 5)
    # consume q1 completely now; q2 keeps its copies
    assert drain_bodies(ch, "q1") == bodies[5:]
    barrier(ch)
    restart(b, mode, [conn])

    conn = connect(b)
    ch = conn.channel()
    assert message_count(ch, "q1") == 0
    check_get_sequence(ch, "q2", [(body, True) for body in bodies[:5]])
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_deleting_one_queue_keeps_the_other_copies(fresh_broker, mode):
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.exchange_declare("xf", exchange_type="fanout", durable=True)
    for q in ("q1", "q2"):
        ch.queue_declare(q, durable=True)
        ch.queue_bind(q, "xf")
    bodies = [b"d%d" % i for i in range(5)]
    publish_confirmed(conn, ch, "", bodies, exchange="xf")
    assert ch.queue_delete("q1").method.message_count == 5
    barrier(ch)
    restart(b, mode, [conn])

    conn = connect(b)
    expect_no_queue(conn, "q1")
    ch = conn.channel()
    check_get_sequence(ch, "q2", [(body, False) for body in bodies])
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_purge_survives(fresh_broker, mode):
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("q", durable=True)
    publish_confirmed(conn, ch, "q", [b"old%d" % i for i in range(5)])
    assert ch.queue_purge("q").method.message_count == 5
    ch2 = conn.channel()
    publish_confirmed(conn, ch2, "q", [b"new0", b"new1"])
    barrier(ch)
    restart(b, mode, [conn])

    conn = connect(b)
    ch = conn.channel()
    check_get_sequence(ch, "q", [(b"new0", False), (b"new1", False)])
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_queue_delete_survives_and_redeclare_starts_empty(fresh_broker,
                                                         mode):
    """A deleted queue stays deleted; one deleted and declared again holds
    only what arrived after, and none of the old bindings."""
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.exchange_declare("x", exchange_type="direct", durable=True)
    for q in ("gone", "again", "kept"):
        ch.queue_declare(q, durable=True)
        ch.queue_bind(q, "x", q)
    c = Confirms(conn, ch)
    for q in ("gone", "again", "kept"):
        for i in range(3):
            c.publish("", q, ("%s-old%d" % (q, i)).encode())
    c.wait_all()
    assert ch.queue_delete("gone").method.message_count == 3
    assert ch.queue_delete("again").method.message_count == 3
    ch.queue_declare("again", durable=True)
    c.publish("", "again", b"again-new")
    c.wait_all()
    barrier(ch)
    restart(b, mode, [conn])

    conn = connect(b)
    expect_no_queue(conn, "gone")
    ch = conn.channel()
    ch.basic_publish("x", "again", b"not bound any more")
    ch.basic_publish("x", "kept", b"kept-routed")
    check_get_sequence(ch, "again", [(b"again-new", False)])
    check_get_sequence(ch, "kept", [(b"kept-old0", False), (b"kept-old1", False),
                                    (b"kept-old2", False),
                                    (b"kept-routed", False)])
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_unbind_survives(fresh_broker, mode):
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.exchange_declare("x", exchange_type="direct", durable=True)
    ch.exchange_declare("x2", exchange_type="fanout", durable=True)
    ch.queue_declare("q", durable=True)
    ch.queue_declare("q2", durable=True)
    ch.queue_bind("q", "x", "k1")
    ch.queue_bind("q", "x", "k2")
    ch.queue_bind("q2", "x2")
    ch.exchange_bind(destination="x2", source="x", routing_key="e1")
    ch.exchange_bind(destination="x2", source="x", routing_key="e2")
    ch.queue_unbind("q", "x", "k1")
    ch.exchange_unbind(destination="x2", source="x", routing_key="e1")
    barrier(ch)
    restart(b, mode, [conn])

    conn = connect(b)
    ch = conn.channel()
    for rk in ("k1", "k2", "e1", "e2"):
        ch.basic_publish("x", rk, rk.encode())
    assert drain_bodies(ch, "q") == [b"k2"]
    assert drain_bodies(ch, "q2") == [b"e2"]
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_exchange_delete_survives(fresh_broker, mode):
    """A deleted durable exchange stays deleted, its bindings too (also as
    source and destination of exchange bindings); declared again it has
    none."""
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    for x in ("x", "src", "dst"):
        ch.exchange_declare(x, exchange_type="direct", durable=True)
    ch.queue_declare("q", durable=True)
    ch.queue_bind("q", "x", "k")
    ch.queue_bind("q", "dst", "k")
    ch.exchange_bind(destination="x", source="src", routing_key="k")
    ch.exchange_bind(destination="dst", source="x", routing_key="k")
    ch.exchange_delete("x")
    ch.exchange_declare("gone", exchange_type="fanout", durable=True)
    ch.exchange_delete("gone")
    barrier(ch)
    restart(b, mode, [conn])

    conn = connect(b)
    expect_no_exchange(conn, "x")
    expect_no_exchange(conn, "gone")
    ch = conn.channel()
    ch.exchange_declare("x", exchange_type="direct", durable=True)
    ch.basic_publish("x", "k", b"via x")
    ch.basic_publish("src", "k", b"via src")
    ch.basic_publish("dst", "k", b"via dst")
    assert drain_bodies(ch, "q") == [b"via dst"]
    conn.close()


@pytest.mark.parametrize("mode", MODES)
def test_1mib_message_survives(fresh_broker, mode):
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("q", durable=True)
    big = random.Random(1).randbytes(1 << 20)
    publish_confirmed(conn, ch, "q", [b"before", big, b"after"])
    restart(b, mode, [conn])

    conn = connect(b)
    ch = conn.channel()
    got = get_all(ch, "q")
    assert [len(body) for _, _, body in got] == [6, 1 << 20, 5]
    assert [body for _, _, body in got] == [b"before", big, b"after"]
    conn.close()


def test_tx_commit_survives_sigkill(fresh_broker):
    """tx.commit-ok means on disk: SIGKILL right after it keeps the
    committed publishes (and the committed acks, after a barrier), not the
    rolled back or uncommitted ones."""
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("q", durable=True)
    ch.tx_select()
    for i in range(5):
        ch.basic_publish("", "q", b"c%d" % i, PERSISTENT)
    ch.tx_commit()
    ch.basic_publish("", "q", b"rolled-back", PERSISTENT)
    ch.tx_rollback()
    kill(b, [conn])
    b.start()

    conn = connect(b)
    ch = conn.channel()
    assert message_count(ch, "q") == 5
    ch.tx_select()
    m0 = ch.basic_get("q", auto_ack=False)[0]
    m1 = ch.basic_get("q", auto_ack=False)[0]
    ch.basic_ack(m1.delivery_tag, multiple=True)  # c0, c1
    ch.basic_publish("", "q", b"c5", PERSISTENT)
    ch.tx_commit()
    ch.basic_publish("", "q", b"uncommitted", PERSISTENT)
    barrier(conn.channel())
    assert m0.delivery_tag < m1.delivery_tag
    kill(b, [conn])
    b.start()

    conn = connect(b)
    ch = conn.channel()
    check_get_sequence(ch, "q", [(b"c2", False), (b"c3", False),
                                 (b"c4", False), (b"c5", False)])
    conn.close()


def test_deep_backlog_20000_messages(fresh_broker):
    """20,000 confirmed 1 KiB messages, SIGKILL: all there, count exact,
    consumed in order exactly once."""
    n = 20000
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("deep", durable=True)
    pad = b"." * 1016

    def body(i):
        return b"%08d" % i + pad

    t0 = time.monotonic()
    publish_confirmed(conn, ch, "deep", (body(i) for i in range(n)),
                      window=2000, timeout=60)
    t1 = time.monotonic()
    kill(b, [conn])
    b.start()
    t2 = time.monotonic()
    conn = connect(b)
    ch = conn.channel()
    assert message_count(ch, "deep") == n
    items = consume_all(conn, ch, "deep", n, timeout=60, prefetch=2000)
    t3 = time.monotonic()
    print("deep backlog: publish %.1f s, restart %.1f s, consume %.1f s" % (
        t1 - t0, t2 - t1, t3 - t2))
    seqs = [int(body[:8]) for _, _, body in items]
    assert seqs == list(range(n)), "first difference at %s" % next(
        (i for i, s in enumerate(seqs) if s != i), None)
    assert all(body == body_ for (_, _, body), body_ in
               zip(items, (body(i) for i in range(n))))
    assert not any(m.redelivered for m, _, _ in items)
    conn.close()


# ------------------------------------------------------ refusing to start

def test_second_broker_on_same_data_dir_refused(fresh_broker):
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("q", durable=True)
    publish_confirmed(conn, ch, "q", [b"one"])
    lock = b.datadir / "warren.lock"
    assert lock.exists()
    lock_text = lock.read_text()
    assert str(b.proc.pid) in lock_text.split(), lock_text
    t0 = time.monotonic()
    rc, out = run_refused(b.datadir)
    elapsed = time.monotonic() - t0
    assert rc == 1, out
    assert "is in use by another warren" in out, out
    assert str(b.datadir) in out, out
    assert not sanitizer_reports(out), out
    assert elapsed < 5, "took %.1f s to refuse" % elapsed
    # the running broker is undisturbed, and so is its lock file
    assert b.proc.poll() is None
    assert lock.read_text() == lock_text
    ch.basic_publish("", "q", b"two", PERSISTENT)
    assert ch.queue_declare("q", durable=True).method.message_count == 2
    barrier(ch)  # "two" was not confirmed: make sure it is on disk before the kill
    restart(b, KILL, [conn])
    assert str(b.proc.pid) in (b.datadir / "warren.lock").read_text().split()
    conn = connect(b)
    ch = conn.channel()
    check_get_sequence(ch, "q", [(b"one", False), (b"two", False)])
    conn.close()


def stopped_broker_with_data(fresh_broker):
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("q", durable=True)
    publish_confirmed(conn, ch, "q", [b"kept"])
    conn.close()
    assert b.stop() == 0
    db = b.datadir / "warren.db"
    assert db.is_file()
    return b, db


def expect_refused(b, db, *phrases):
    rc, out = run_refused(b.datadir)
    assert rc == 1, "exit code %r, expected 1\n%s" % (rc, out)
    assert not sanitizer_reports(out), out
    assert str(db) in out, "output does not name %s:\n%s" % (db, out)
    for phrase in phrases:
        assert phrase in out, "output lacks %r:\n%s" % (phrase, out)
    return out


@pytest.mark.parametrize("kind", ["random", "sqlite-header"])
def test_corrupt_database_refused(fresh_broker, kind):
    b, db = stopped_broker_with_data(fresh_broker)
    garbage = random.Random(5).randbytes(8192)
    if kind == "sqlite-header":  # a valid header, then garbage
        garbage = db.read_bytes()[:100] + garbage[100:]
        assert garbage.startswith(b"SQLite format 3\0")
    db.write_bytes(garbage)
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    expect_refused(b, db)


def test_foreign_sqlite_database_refused(fresh_broker):
    b = fresh_broker(start=False)
    b.datadir.mkdir(parents=True, exist_ok=True)
    db = b.datadir / "warren.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    con.execute("INSERT INTO invoices (total) VALUES (12.5)")
    con.commit()
    con.close()
    before = db.read_bytes()
    expect_refused(b, db, "not a Warren database")
    assert db.read_bytes() == before, "the foreign database was modified"
    con = sqlite3.connect(db)
    assert con.execute("SELECT total FROM invoices").fetchall() == [(12.5,)]
    con.close()


def test_newer_schema_version_refused(fresh_broker):
    b, db = stopped_broker_with_data(fresh_broker)
    con = sqlite3.connect(db)
    version = con.execute("PRAGMA user_version").fetchone()[0]
    con.execute("PRAGMA user_version = 999")
    con.commit()
    con.close()
    expect_refused(b, db, "newer")
    # nothing was changed: with the version put back it starts with its data
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 999
    con.execute("PRAGMA user_version = %d" % version)
    con.commit()
    con.close()
    b.start()
    conn = connect(b)
    ch = conn.channel()
    check_get_sequence(ch, "q", [(b"kept", False)])
    conn.close()


# ------------------------------------------- deep queues (paged to disk)
# A stored queue keeps a window of its entries in memory and pages the rest
# out to the store (transient messages too, once the window is full); these
# tests go well past the window (4096 messages or 8 MiB in Warren today).

DEEP = 6000


def deep_body(i, transient=False):
    return (b"%s%06d|" % (b"t" if transient else b"p", i)) * 8


def publish_mixed(conn, ch, exchange, routing_key, n, transient_every=3,
                  start=0):
    """n messages, every transient_every-th transient; returns
    [(body, persistent)] in publish order."""
    c = Confirms(conn, ch)
    msgs = []
    deadline = time.monotonic() + 60
    for i in range(start, start + n):
        transient = transient_every and i % transient_every == 0
        body = deep_body(i, transient)
        while len(c.pending) >= 1000:
            assert time.monotonic() < deadline, "confirms too slow"
            c.pump(0.01)
        c.publish(exchange, routing_key, body,
                  TRANSIENT if transient else PERSISTENT)
        msgs.append((body, not transient))
    c.wait_all(60)
    return msgs


@pytest.mark.parametrize("mode", [None] + MODES)
def test_deep_queue_of_transient_and_persistent_messages(fresh_broker, mode):
    """Without a restart every message comes back in order (transient ones
    paged out included); after one, exactly the persistent ones."""
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("q", durable=True)
    msgs = publish_mixed(conn, ch, "", "q", DEEP)
    assert message_count(ch, "q") == DEEP
    if mode is None:
        expected = [body for body, _ in msgs]
    else:
        restart(b, mode, [conn])
        conn = connect(b)
        ch = conn.channel()
        expected = [body for body, persistent in msgs if persistent]
        assert message_count(ch, "q") == len(expected)
    items = consume_all(conn, ch, "q", len(expected))
    got = [body for _, _, body in items]
    assert got == expected, "first difference at %s" % next(
        (i for i, (g, e) in enumerate(zip(got, expected)) if g != e), None)
    conn.close()


@pytest.mark.parametrize("mode", [None, KILL])
def test_purge_of_deep_queue_removes_paged_out_messages(fresh_broker, mode):
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("q", durable=True)
    publish_mixed(conn, ch, "", "q", DEEP)
    assert ch.queue_purge("q").method.message_count == DEEP
    assert message_count(ch, "q") == 0
    publish_confirmed(conn, ch, "q", [b"after0", b"after1", b"after2"])
    if mode is not None:
        barrier(ch)
        restart(b, mode, [conn])
        conn = connect(b)
        ch = conn.channel()
    check_get_sequence(ch, "q", [(b"after%d" % i, False) for i in range(3)])
    conn.close()


@pytest.mark.parametrize("mode", [None, KILL])
def test_fanout_to_a_deep_and_a_shallow_queue(fresh_broker, mode):
    """Messages shared by a queue that pages them out and one that keeps
    them in memory: consuming and acking them in the shallow queue leaves
    the deep queue's copies whole."""
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.exchange_declare("xf", exchange_type="fanout", durable=True)
    ch.queue_declare("deep", durable=True)
    ch.queue_declare("shallow", durable=True)
    pre = publish_mixed(conn, ch, "", "deep", DEEP)
    ch.queue_bind("deep", "xf")
    ch.queue_bind("shallow", "xf")
    shared = publish_mixed(conn, ch, "xf", "", 300, start=DEEP)
    cch = conn.channel()
    cch.basic_qos(prefetch_count=100)
    got = []

    def on_message(c, m, p, body):
        got.append(body)
        c.basic_ack(m.delivery_tag)

    tag = cch.basic_consume("shallow", on_message)
    deadline = time.monotonic() + 20
    while len(got) < len(shared) and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    cch.basic_cancel(tag)
    assert got == [body for body, _ in shared]
    if mode is None:
        expected = [body for body, _ in pre + shared]
    else:
        barrier(ch)
        restart(b, mode, [conn])
        conn = connect(b)
        ch = conn.channel()
        expected = [body for body, persistent in pre + shared if persistent]
        assert message_count(ch, "shallow") == 0
    assert message_count(ch, "deep") == len(expected)
    items = consume_all(conn, ch, "deep", len(expected))
    assert [body for _, _, body in items] == expected
    conn.close()


def test_sparse_acks_in_deep_queue_survive_sigkill(fresh_broker):
    """Of the first 3000 of 6000 messages the even ones are acked and the odd
    ones left unacked; after SIGKILL the odd ones come back redelivered, in
    place, followed by the 3000 never delivered."""
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("q", durable=True)
    bodies = [deep_body(i) for i in range(DEEP)]
    publish_confirmed(conn, ch, "q", bodies, window=1000)
    cch = conn.channel()
    cch.basic_qos(prefetch_count=3000)
    got = []
    tag = cch.basic_consume("q", lambda c, m, p, body: got.append((m, body)))
    deadline = time.monotonic() + 20
    while len(got) < 3000 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    conn.process_data_events(time_limit=0.1)
    cch.basic_cancel(tag)
    assert [body for _, body in got] == bodies[:3000]
    for i, (m, _) in enumerate(got):
        if i % 2 == 0:
            cch.basic_ack(m.delivery_tag)
    barrier(ch)
    restart(b, KILL, [conn])

    conn = connect(b)
    ch = conn.channel()
    expected = [(bodies[i], True) for i in range(1, 3000, 2)] + \
        [(bodies[i], False) for i in range(3000, DEEP)]
    assert message_count(ch, "q") == len(expected)
    items = consume_all(conn, ch, "q", len(expected))
    assert [(body, m.redelivered) for m, _, body in items] == expected
    conn.close()


def test_large_transient_messages_past_the_window_bytes(fresh_broker):
    """Transient messages whose bodies fill the in-memory window by size
    (3 MiB each) come back whole and in order without a restart."""
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("q", durable=True)
    rnd = random.Random(3)
    bodies = []
    for i in range(6):
        bodies.append(rnd.randbytes(3 << 20) if i % 2 == 0 else b"small%d" % i)
    publish_confirmed(conn, ch, "q", bodies, props=TRANSIENT, window=10)
    got = get_all(ch, "q")
    assert [len(body) for _, _, body in got] == [len(x) for x in bodies]
    assert [body for _, _, body in got] == bodies
    conn.close()


@pytest.mark.parametrize("delivery_mode", [1, 2])
def test_get_right_after_publish_behind_recovered_messages(fresh_broker,
                                                          delivery_mode):
    """After a restart a durable queue's messages are on disk; a message
    published to it then queues behind them. basic.get in the same breath
    (one TCP write: publish, four gets, a passive declare) must still find
    all four: a get-empty while the queue holds messages is wrong."""
    import rawamqp as raw
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("q", durable=True)
    publish_confirmed(conn, ch, "q", [b"old0", b"old1", b"old2"])
    restart(b, TERM, [conn])

    c = raw.RawConn(b.host, b.port)
    try:
        c.handshake()
        c.open_channel(1)
        flags, props = (0x1000, raw.octet(delivery_mode))  # delivery-mode
        data = raw.method_frame(1, raw.BASIC_PUBLISH,
                                raw.args_basic_publish("", "q"))
        data += raw.header_frame(1, 3, flags=flags, props=props)
        data += raw.body_frame(1, b"new")
        for _ in range(4):
            data += raw.method_frame(1, raw.BASIC_GET,
                                     raw.args_basic_get("q"))
        data += raw.method_frame(1, raw.QUEUE_DECLARE,
                                 raw.args_queue_declare("q", passive=True))
        c.send(data)
        got = []
        for _ in range(4):
            ch_, cm, _ = c.read_method()
            assert ch_ == 1 and cm in (raw.BASIC_GET_OK, raw.BASIC_GET_EMPTY)
            if cm == raw.BASIC_GET_EMPTY:
                got.append(None)
                continue
            ftype, _, payload, _ = c.read_frame()
            assert ftype == raw.FRAME_HEADER
            size = raw.struct.unpack(">Q", payload[4:12])[0]
            body = b""
            while len(body) < size:
                ftype, _, payload, _ = c.read_frame()
                assert ftype == raw.FRAME_BODY
                body += payload
            got.append(body)
        r = raw.Reader(c.expect_method(1, raw.QUEUE_DECLARE_OK))
        r.shortstr()
        left = r.long()
        assert (got, left) == ([b"old0", b"old1", b"old2", b"new"], 0)
    finally:
        c.close()


def test_stale_lock_file_does_not_block_start(fresh_broker):
    """Only the lock (flock) counts, not the pid in the file: a lock file
    naming a live process (pid 1) left by a killed broker is no obstacle."""
    b, _db = stopped_broker_with_data(fresh_broker)
    lock = b.datadir / "warren.lock"
    lock.write_text("1\n")
    b.start()
    assert str(b.proc.pid) in lock.read_text().split()
    conn = connect(b)
    ch = conn.channel()
    check_get_sequence(ch, "q", [(b"kept", False)])
    conn.close()


def test_empty_database_file_is_initialised(fresh_broker):
    """A zero-byte warren.db (SQLite's empty database, e.g. left by a crash
    while creating it) is set up like a missing one."""
    b = fresh_broker(start=False)
    b.datadir.mkdir(parents=True, exist_ok=True)
    (b.datadir / "warren.db").write_bytes(b"")
    b.start()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("q", durable=True)
    publish_confirmed(conn, ch, "q", [b"one"])
    restart(b, KILL, [conn])
    conn = connect(b)
    ch = conn.channel()
    check_get_sequence(ch, "q", [(b"one", False)])
    conn.close()
