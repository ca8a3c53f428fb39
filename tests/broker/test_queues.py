"""queue.declare/bind/unbind/purge/delete, exclusive and auto-delete queues."""

import pytest
from pika import spec

from brokertest import (Collector, bodies, channel_error, counts,
                        expect_queue_gone, no_exchange, no_queue, publish,
                        pump, settle, uname, wait_count)


def locked(name):
    return ("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue "
            "'%s' in vhost '/'. It could be originally declared on another "
            "connection or the exclusive property value does not match that "
            "of the original declaration." % name)


def test_declare_returns_name_and_counts(amqp, ch):
    q = amqp.qname()
    ok = ch.queue_declare(q).method
    assert isinstance(ok, spec.Queue.DeclareOk)
    assert (ok.queue, ok.message_count, ok.consumer_count) == (q, 0, 0)


@pytest.mark.parametrize("flags", [
    dict(durable=True), dict(exclusive=True), dict(auto_delete=True),
    dict(durable=True, auto_delete=True), dict(exclusive=True, auto_delete=True),
])
def test_declare_flags_and_redeclare_same(amqp, ch, flags):
    q = amqp.queue(ch, **flags)
    ok = ch.queue_declare(q, **flags).method
    assert (ok.queue, ok.message_count, ok.consumer_count) == (q, 0, 0)
    ok = ch.queue_declare(q, passive=True).method
    assert ok.queue == q


def test_server_named_queue(amqp, ch):
    ok = ch.queue_declare("", exclusive=True).method
    amqp.track_queue(ok.queue)
    assert ok.queue.startswith("amq.gen-") and len(ok.queue) > len("amq.gen-")
    ok2 = ch.queue_declare("", exclusive=True).method
    amqp.track_queue(ok2.queue)
    assert ok2.queue.startswith("amq.gen-") and ok2.queue != ok.queue
    publish(ch, "", ok.queue, b"hi")
    assert bodies(ch, ok.queue) == [b"hi"]


def test_declare_reserved_amq_prefix_refused(ch):
    with channel_error(
            ch, 403,
            "ACCESS_REFUSED - queue name 'amq.foo' contains reserved prefix "
            "'amq.*'", spec.Queue.Declare):
        ch.queue_declare("amq.foo")


def test_declare_ok_counts_ready_messages_and_consumers(amqp, ch):
    q = amqp.queue(ch)
    for i in range(5):
        publish(ch, "", q, b"%d" % i)
    assert wait_count(ch.connection, ch, q, 5) == 5
    assert counts(ch, q) == (5, 0)
    # a consumer holding 2 unacked messages: they are not "ready"
    cch = amqp.channel()
    cch.basic_qos(prefetch_count=2)
    got = Collector()
    cch.basic_consume(q, got)
    assert pump(cch.connection, lambda: len(got) == 2)
    ok = ch.queue_declare(q).method  # non-passive redeclare reports too
    assert (ok.message_count, ok.consumer_count) == (3, 1)
    cch2 = amqp.channel()
    cch2.basic_consume(q, Collector(), auto_ack=False)
    assert pump(ch.connection, lambda: counts(ch, q)[1] == 2)


def test_passive_declare_missing(ch):
    q = uname("missing")
    with channel_error(ch, 404, no_queue(q), spec.Queue.Declare):
        ch.queue_declare(q, passive=True)


def test_passive_declare_ignores_flags(amqp, ch):
    q = amqp.queue(ch)
    ok = ch.queue_declare(q, passive=True, durable=True, auto_delete=True).method
    assert ok.queue == q


def inequivalent(arg, q, detail):
    return ("PRECONDITION_FAILED - inequivalent arg '%s' for queue '%s' in "
            "vhost '/': %s" % (arg, q, detail))


def test_redeclare_other_durable(amqp, ch):
    q = amqp.queue(ch)
    with channel_error(ch, 406,
                       inequivalent("durable", q,
                                    "received 'true' but current is 'false'"),
                       spec.Queue.Declare):
        ch.queue_declare(q, durable=True)


def test_redeclare_other_auto_delete(amqp, ch):
    q = amqp.queue(ch, durable=True)
    with channel_error(ch, 406,
                       inequivalent("auto_delete", q,
                                    "received 'true' but current is 'false'"),
                       spec.Queue.Declare):
        ch.queue_declare(q, durable=True, auto_delete=True)


def test_redeclare_other_argument_value(amqp, ch):
    q = amqp.queue(ch, arguments={"x-max-length": 10})
    with channel_error(ch, 406,
                       inequivalent("x-max-length", q,
                                    "received '20' but current is '10'"),
                       spec.Queue.Declare):
        ch.queue_declare(q, arguments={"x-max-length": 20})


def test_redeclare_adding_argument(amqp, ch):
    q = amqp.queue(ch)
    with channel_error(ch, 406,
                       inequivalent("x-max-length", q,
                                    "received the value '20' of type "
                                    "'signedint' but current is none"),
                       spec.Queue.Declare):
        ch.queue_declare(q, arguments={"x-max-length": 20})


def test_redeclare_dropping_argument(amqp, ch):
    q = amqp.queue(ch, arguments={"x-message-ttl": 60000})
    with channel_error(ch, 406,
                       inequivalent("x-message-ttl", q,
                                    "received none but current is the value "
                                    "'60000' of type 'signedint'"),
                       spec.Queue.Declare):
        ch.queue_declare(q)


# ------------------------------------------------------------ exclusivity

EXCLUSIVE_OPS = {
    "declare": lambda ch, q, x: ch.queue_declare(q, exclusive=True),
    "declare_nonexclusive": lambda ch, q, x: ch.queue_declare(q),
    "passive_declare": lambda ch, q, x: ch.queue_declare(q, passive=True),
    "bind": lambda ch, q, x: ch.queue_bind(q, x, routing_key="other"),
    "unbind": lambda ch, q, x: ch.queue_unbind(q, x, routing_key="k"),
    "purge": lambda ch, q, x: ch.queue_purge(q),
    "delete": lambda ch, q, x: ch.queue_delete(q),
    "consume": lambda ch, q, x: ch.basic_consume(q, Collector()),
    "get": lambda ch, q, x: ch.basic_get(q),
}

EXCLUSIVE_METHOD = {
    "declare": spec.Queue.Declare, "declare_nonexclusive": spec.Queue.Declare,
    "passive_declare": spec.Queue.Declare, "bind": spec.Queue.Bind,
    "unbind": spec.Queue.Unbind, "purge": spec.Queue.Purge,
    "delete": spec.Queue.Delete, "consume": spec.Basic.Consume,
    "get": spec.Basic.Get,
}


@pytest.mark.parametrize("op", sorted(EXCLUSIVE_OPS))
def test_exclusive_queue_locked_to_other_connection(amqp, op):
    owner = amqp.channel(amqp.connect())
    q = amqp.queue(owner, exclusive=True)
    x = amqp.exchange(owner, "direct")
    owner.queue_bind(q, x, routing_key="k")
    publish(owner, "", q, b"mine")
    other = amqp.channel(amqp.connect())
    with channel_error(other, 405, locked(q), EXCLUSIVE_METHOD[op]):
        EXCLUSIVE_OPS[op](other, q, x)
    # the owner is unaffected
    assert wait_count(owner.connection, owner, q, 1) == 1
    assert counts(owner, q) == (1, 0)


def test_exclusive_queue_usable_from_other_channel_same_connection(amqp):
    conn = amqp.connect()
    a, b = conn.channel(), conn.channel()
    q = amqp.queue(a, exclusive=True)
    publish(b, "", q, b"m")
    assert wait_count(conn, b, q, 1) == 1
    assert bodies(b, q) == [b"m"]


def test_exclusive_queue_deleted_with_its_connection(amqp):
    conn = amqp.connect()
    ch = conn.channel()
    q = amqp.queue(ch, exclusive=True)
    gen = ch.queue_declare("", exclusive=True).method.queue
    conn.close()
    expect_queue_gone(amqp.channel(), q)
    expect_queue_gone(amqp.channel(), gen)


def test_exclusive_queue_survives_its_channel_close(amqp):
    conn = amqp.connect()
    ch = conn.channel()
    q = amqp.queue(ch, exclusive=True)
    ch.close()
    assert counts(conn.channel(), q) == (0, 0)


# ------------------------------------------------------------ auto-delete

def test_auto_delete_not_deleted_before_first_consumer(amqp, ch):
    q = amqp.queue(ch, auto_delete=True)
    settle(ch.connection, 0.2)
    assert counts(ch, q) == (0, 0)


def test_auto_delete_deleted_when_last_consumer_cancels(amqp, ch):
    q = amqp.queue(ch, auto_delete=True)
    t1 = ch.basic_consume(q, Collector())
    t2 = ch.basic_consume(q, Collector())
    other = amqp.channel()
    assert counts(other, q) == (0, 2)
    ch.basic_cancel(t1)
    assert counts(other, q) == (0, 1)
    ch.basic_cancel(t2)
    expect_queue_gone(other, q)


def test_auto_delete_deleted_when_consumer_channel_closes(amqp, ch):
    q = amqp.queue(ch, auto_delete=True)
    cch = amqp.channel()
    cch.basic_consume(q, Collector())
    cch.close()
    expect_queue_gone(ch, q)


def test_auto_delete_deleted_when_consumer_connection_closes(amqp, ch):
    q = amqp.queue(ch, auto_delete=True)
    conn = amqp.connect()
    conn.channel().basic_consume(q, Collector())
    conn.close()
    expect_queue_gone(ch, q)


# ------------------------------------------------------------ bind/unbind

def test_bind_and_unbind(amqp, ch):
    x = amqp.exchange(ch, "direct")
    q = amqp.queue(ch)
    ok = ch.queue_bind(q, x, routing_key="k")
    assert isinstance(ok.method, spec.Queue.BindOk)
    publish(ch, x, "k", b"1")
    ok = ch.queue_unbind(q, x, routing_key="k")
    assert isinstance(ok.method, spec.Queue.UnbindOk)
    publish(ch, x, "k", b"2")
    assert bodies(ch, q) == [b"1"]


def test_unbind_missing_binding_is_ok(amqp, ch):
    x = amqp.exchange(ch, "direct")
    q = amqp.queue(ch)
    ok = ch.queue_unbind(q, x, routing_key="never-bound")
    assert isinstance(ok.method, spec.Queue.UnbindOk)


def test_bind_missing_queue(amqp, ch):
    x = amqp.exchange(ch, "direct")
    q = uname("missing")
    with channel_error(ch, 404, no_queue(q), spec.Queue.Bind):
        ch.queue_bind(q, x, routing_key="k")


def test_bind_missing_exchange(amqp, ch):
    q = amqp.queue(ch)
    x = uname("missing")
    with channel_error(ch, 404, no_exchange(x), spec.Queue.Bind):
        ch.queue_bind(q, x, routing_key="k")


def test_bindings_removed_with_queue(amqp, ch):
    x = amqp.exchange(ch, "fanout")
    q = amqp.queue(ch)
    ch.queue_bind(q, x)
    ch.queue_delete(q)
    ch.queue_declare(q)
    publish(ch, x, "", b"lost")
    assert counts(ch, q) == (0, 0)


# ------------------------------------------------------------ purge/delete

def test_purge_returns_count_and_keeps_unacked(amqp, ch):
    q = amqp.queue(ch)
    for i in range(4):
        publish(ch, "", q, b"%d" % i)
    m, _, body = ch.basic_get(q)  # unacked
    assert body == b"0"
    ok = ch.queue_purge(q).method
    assert isinstance(ok, spec.Queue.PurgeOk)
    assert ok.message_count == 3
    assert counts(ch, q) == (0, 0)
    ch.basic_reject(m.delivery_tag, requeue=True)
    assert bodies(ch, q) == [b"0"]
    assert ch.queue_purge(q).method.message_count == 0


def test_delete_returns_message_count(amqp, ch):
    q = amqp.queue(ch)
    for i in range(4):
        publish(ch, "", q, b"%d" % i)
    assert wait_count(ch.connection, ch, q, 4) == 4
    ok = ch.queue_delete(q).method
    assert isinstance(ok, spec.Queue.DeleteOk)
    assert ok.message_count == 4
    with channel_error(ch, 404, no_queue(q), spec.Queue.Declare):
        ch.queue_declare(q, passive=True)


def test_delete_missing_is_ok(ch):
    ok = ch.queue_delete(uname("missing")).method
    assert isinstance(ok, spec.Queue.DeleteOk)
    assert ok.message_count == 0


def test_delete_if_unused_with_consumer(amqp, ch):
    q = amqp.queue(ch)
    ch.basic_consume(q, Collector())
    other = amqp.channel()
    with channel_error(other, 406,
                       "PRECONDITION_FAILED - queue '%s' in vhost '/' in use" % q,
                       spec.Queue.Delete):
        other.queue_delete(q, if_unused=True)
    assert counts(ch, q) == (0, 1)


def test_delete_if_empty_with_messages(amqp, ch):
    q = amqp.queue(ch)
    publish(ch, "", q, b"m")
    assert wait_count(ch.connection, ch, q, 1) == 1
    with channel_error(ch, 406,
                       "PRECONDITION_FAILED - queue '%s' in vhost '/' not empty" % q,
                       spec.Queue.Delete):
        ch.queue_delete(q, if_empty=True)
    assert counts(amqp.channel(), q) == (1, 0)


def test_delete_if_unused_if_empty_succeed_when_true(amqp, ch):
    q = amqp.queue(ch)
    ok = ch.queue_delete(q, if_unused=True, if_empty=True).method
    assert ok.message_count == 0
    with channel_error(ch, 404, no_queue(q)):
        ch.queue_declare(q, passive=True)
