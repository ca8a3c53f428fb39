"""Publisher confirms (confirm.select) and transactions (tx.*)."""

import pika
import pytest
from pika import spec
from pika.exceptions import UnroutableError

from brokertest import (bodies, channel_error, counts, get_all, publish, pump,
                        rpc, settle, wait_count)


# ----------------------------------------------------------------- confirms

def test_confirm_delivery_publish_many(amqp, ch):
    q = amqp.queue(ch)
    ch.confirm_delivery()
    for i in range(100):
        # BlockingChannel waits for the ack of each publish and raises
        # NackError/UnroutableError otherwise
        publish(ch, "", q, b"%d" % i)
    assert counts(ch, q) == (100, 0)


def async_confirms(ch):
    """Put BlockingChannel `ch` in confirm mode through the channel
    implementation so that publishes don't wait; returns the list that the
    broker's basic.ack/nack methods are appended to."""
    confirms = []
    box = []
    ch._impl.confirm_delivery(lambda f: confirms.append(f.method),
                              callback=box.append)
    ch._flush_output(lambda: box)
    assert isinstance(box[0].method, spec.Confirm.SelectOk)
    return confirms


def covered(confirms):
    """The set of sequence numbers the confirms cover (multiple=true
    covers everything up to its tag)."""
    out = set()
    for m in confirms:
        if m.multiple:
            out.update(range(1, m.delivery_tag + 1))
        else:
            out.add(m.delivery_tag)
    return out


@pytest.mark.parametrize("durable", [False, True])
def test_confirms_cover_every_sequence_number(amqp, ch, durable):
    q = amqp.queue(ch, durable=durable)
    x = amqp.exchange(ch, "fanout")  # no bindings: unroutable
    confirms = async_confirms(ch)
    n = 200
    for i in range(n):
        if i % 10 == 9:
            ch._impl.basic_publish(x, "", b"unroutable")
        else:
            ch._impl.basic_publish(
                "", q, b"%d" % i,
                pika.BasicProperties(delivery_mode=2 if durable else 1))
    want = set(range(1, n + 1))
    assert pump(ch.connection, lambda: covered(confirms) >= want, timeout=10)
    settle(ch.connection, 0.2)
    assert all(isinstance(m, spec.Basic.Ack) for m in confirms)
    # (confirms need not come in order: RabbitMQ acks unroutable messages
    # at once, ahead of routed ones)
    assert all(1 <= m.delivery_tag <= n for m in confirms)
    assert covered(confirms) == want
    assert wait_count(ch.connection, ch, q, n - n // 10) == n - n // 10


def test_confirm_unroutable_mandatory_returned_then_acked(amqp, ch):
    x = amqp.exchange(ch, "direct")
    q = amqp.queue(ch)
    ch.queue_bind(q, x, routing_key="ok")
    ch.confirm_delivery()
    # pika raises UnroutableError only if basic.return comes before the ack
    with pytest.raises(UnroutableError) as ei:
        publish(ch, x, "nowhere", b"bounce", mandatory=True)
    (ret,) = ei.value.messages
    assert (ret.method.reply_code, ret.method.reply_text, ret.method.exchange,
            ret.method.routing_key, ret.body) == (
                312, "NO_ROUTE", x, "nowhere", b"bounce")
    publish(ch, x, "ok", b"fine", mandatory=True)
    assert bodies(ch, q) == [b"fine"]


def test_confirm_unroutable_not_mandatory_is_acked(amqp, ch):
    x = amqp.exchange(ch, "fanout")
    ch.confirm_delivery()
    publish(ch, x, "", b"void")  # no exception: acked


def test_confirm_select_twice_is_ok(ch):
    assert isinstance(rpc(ch, spec.Confirm.Select(), [spec.Confirm.SelectOk]),
                      spec.Confirm.SelectOk)
    assert isinstance(rpc(ch, spec.Confirm.Select(), [spec.Confirm.SelectOk]),
                      spec.Confirm.SelectOk)


def test_confirm_select_on_tx_channel(ch):
    ch.tx_select()
    with channel_error(ch, 406, "PRECONDITION_FAILED - cannot switch from tx "
                       "to confirm mode", spec.Confirm.Select):
        ch.confirm_delivery()


def test_tx_select_on_confirm_channel(ch):
    ch.confirm_delivery()
    with channel_error(ch, 406, "PRECONDITION_FAILED - cannot switch from "
                       "confirm to tx mode", spec.Tx.Select):
        ch.tx_select()


# ---------------------------------------------------------------------- tx

def test_tx_publish_commit_delivers(amqp, ch):
    q = amqp.queue(ch)
    ok = ch.tx_select()
    assert isinstance(ok.method, spec.Tx.SelectOk)
    for i in range(3):
        publish(ch, "", q, b"%d" % i)
    observer = amqp.channel()
    settle(ch.connection, 0.2)
    assert counts(observer, q) == (0, 0)
    ok = ch.tx_commit()
    assert isinstance(ok.method, spec.Tx.CommitOk)
    assert wait_count(observer.connection, observer, q, 3) == 3
    assert bodies(observer, q) == [b"0", b"1", b"2"]


def test_tx_publish_rollback_discards(amqp, ch):
    q = amqp.queue(ch)
    ch.tx_select()
    publish(ch, "", q, b"no1")
    publish(ch, "", q, b"no2")
    ok = ch.tx_rollback()
    assert isinstance(ok.method, spec.Tx.RollbackOk)
    ch.tx_commit()
    settle(ch.connection, 0.2)
    assert counts(ch, q) == (0, 0)
    # the channel stays transactional
    publish(ch, "", q, b"yes")
    ch.tx_commit()
    assert bodies(amqp.channel(), q) == [b"yes"]


def test_tx_several_transactions_in_a_row(amqp, ch):
    q = amqp.queue(ch)
    ch.tx_select()
    for t in range(3):
        publish(ch, "", q, b"t%d" % t)
        if t == 1:
            ch.tx_rollback()
        else:
            ch.tx_commit()
    assert bodies(amqp.channel(), q) == [b"t0", b"t2"]


def prepare_unacked(amqp, ch, n=2):
    q = amqp.queue(ch)
    for i in range(n):
        publish(ch, "", q, b"m%d" % i)
    ch.tx_select()
    for i in range(n):
        m, _, b = ch.basic_get(q)
        assert (m.delivery_tag, b) == (i + 1, b"m%d" % i)
    return q


def left_after_close(amqp, ch, q):
    ch.close()
    return [(b, m.redelivered) for m, _, b in get_all(amqp.channel(), q)]


def test_tx_ack_takes_effect_at_commit(amqp, ch):
    q = prepare_unacked(amqp, ch)
    ch.basic_ack(1)
    ch.tx_commit()
    assert left_after_close(amqp, ch, q) == [(b"m1", True)]


def test_tx_ack_not_committed_is_discarded_on_close(amqp, ch):
    q = prepare_unacked(amqp, ch)
    ch.basic_ack(1)
    assert left_after_close(amqp, ch, q) == [(b"m0", True), (b"m1", True)]


def test_tx_rollback_of_acks_leaves_them_unacked(amqp, ch):
    q = prepare_unacked(amqp, ch)
    ch.basic_ack(2, multiple=True)
    ch.tx_rollback()
    # still unacked (not requeued): the queue has nothing ready
    assert counts(ch, q) == (0, 0)
    # ...and they can be acked again
    ch.basic_ack(2)
    ch.tx_commit()
    assert left_after_close(amqp, ch, q) == [(b"m0", True)]


def test_tx_reject_takes_effect_at_commit(amqp, ch):
    q = prepare_unacked(amqp, ch)
    ch.basic_reject(1, requeue=False)
    ch.basic_nack(2, requeue=True)
    assert counts(ch, q) == (0, 0)
    ch.tx_commit()
    assert [(b, m.redelivered) for m, _, b in get_all(ch, q)] == [
        (b"m1", True)]


@pytest.mark.parametrize("op,method", [("commit", spec.Tx.Commit),
                                       ("rollback", spec.Tx.Rollback)])
def test_tx_without_select(ch, op, method):
    with channel_error(ch, 406, "PRECONDITION_FAILED - channel is not "
                       "transactional", method):
        getattr(ch, "tx_" + op)()
