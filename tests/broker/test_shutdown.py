"""Tests that run their own broker process: clean shutdown on SIGTERM and
durable state across a restart. Skipped with AMQP_EXTERNAL."""

import signal

import pika
from pika import spec

from brokertest import (Collector, CloseRecorder, channel_error,
                        connection_error, counts, pump)

FORCED = ("CONNECTION_FORCED - broker forced connection closure with reason "
          "'shutdown'")


def connect(b, **kw):
    conn = pika.BlockingConnection(b.params(**kw))
    CloseRecorder(conn)
    return conn


def test_sigterm_closes_clients_with_320_and_exits_0(fresh_broker):
    b = fresh_broker()
    conns = [connect(b) for _ in range(2)]
    ch = conns[0].channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_consume(q, Collector())
    conns[1].channel()
    idle = connect(b)  # a connection with no channel at all
    b.proc.send_signal(signal.SIGTERM)
    for conn in conns + [idle]:
        # connection.close from the server names no method: class/method 0
        with connection_error(conn, 320, FORCED):
            pump(conn, lambda: False, timeout=10)
        m = conn._close_recorder.last(0)
        assert (m.class_id, m.method_id) == (0, 0)
    assert b.stop(timeout=10) == 0
    assert b.problems() == []


def test_sigterm_with_no_clients_exits_0(fresh_broker):
    b = fresh_broker()
    assert b.stop() == 0
    assert b.problems() == []


def test_durable_entities_and_persistent_messages_survive_restart(
        fresh_broker):
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.exchange_declare("xd", exchange_type="topic", durable=True)
    ch.exchange_declare("xt", exchange_type="topic")
    ch.queue_declare("qd", durable=True)
    ch.queue_declare("qt")
    ch.queue_bind("qd", "xd", routing_key="a.#")
    ch.confirm_delivery()
    ch.basic_publish("xd", "a.b", b"persistent", pika.BasicProperties(
        delivery_mode=2, message_id="m1", headers={"k": [1, "v"]}))
    ch.basic_publish("xd", "a.c", b"transient",
                     pika.BasicProperties(delivery_mode=1))
    ch.basic_publish("", "qt", b"in-transient-queue",
                     pika.BasicProperties(delivery_mode=2))
    assert counts(ch, "qd") == (2, 0)
    conn.close()
    assert b.stop() == 0
    b.start()

    conn = connect(b)
    ch = conn.channel()
    ch.exchange_declare("xd", passive=True)
    assert counts(ch, "qd") == (1, 0)
    m, p, body = ch.basic_get("qd", auto_ack=True)
    assert body == b"persistent"
    assert (p.delivery_mode, p.message_id, p.headers) == (2, "m1",
                                                          {"k": [1, "v"]})
    # the binding survived too
    ch.basic_publish("xd", "a.z", b"again")
    assert ch.basic_get("qd", auto_ack=True)[2] == b"again"
    with channel_error(ch, 404, "NOT_FOUND - no queue 'qt' in vhost '/'",
                       spec.Queue.Declare):
        ch.queue_declare("qt", passive=True)
    ch = conn.channel()
    with channel_error(ch, 404, "NOT_FOUND - no exchange 'xt' in vhost '/'",
                       spec.Exchange.Declare):
        ch.exchange_declare("xt", passive=True)
    conn.close()


def test_exclusive_durable_queue_is_not_recovered(fresh_broker):
    b = fresh_broker()
    conn = connect(b)
    ch = conn.channel()
    ch.queue_declare("qx", durable=True, exclusive=True)
    ch.confirm_delivery()
    ch.basic_publish("", "qx", b"p", pika.BasicProperties(delivery_mode=2))
    assert b.stop() == 0
    b.start()
    conn = connect(b)
    ch = conn.channel()
    with channel_error(ch, 404, "NOT_FOUND - no queue 'qx' in vhost '/'",
                       spec.Queue.Declare):
        ch.queue_declare("qx", passive=True)
    conn.close()
