"""exchange.declare/delete/bind/unbind, alternate exchanges, internal and
auto-delete exchanges."""

import pytest
from pika import spec

from brokertest import (bodies, channel_error, connection_error, counts,
                        expect_exchange_gone, no_exchange, publish, pump,
                        settle, uname)

DEFAULT_EXCHANGE_REFUSED = ("ACCESS_REFUSED - operation not permitted on the "
                            "default exchange")


def inequivalent(arg, name, received, current):
    return ("PRECONDITION_FAILED - inequivalent arg '%s' for exchange '%s' in "
            "vhost '/': received '%s' but current is '%s'" % (
                arg, name, received, current))


@pytest.mark.parametrize("xtype", ["direct", "fanout", "topic", "headers"])
def test_declare_each_type(amqp, ch, xtype):
    x = amqp.xname()
    ok = ch.exchange_declare(x, exchange_type=xtype)
    assert isinstance(ok.method, spec.Exchange.DeclareOk)
    # redeclaring with the same properties is fine, passive too
    ch.exchange_declare(x, exchange_type=xtype)
    ok = ch.exchange_declare(x, passive=True)
    assert isinstance(ok.method, spec.Exchange.DeclareOk)


def test_declare_durable_and_auto_delete_flags(amqp, ch):
    x = amqp.exchange(ch, "topic", durable=True, auto_delete=False)
    ch.exchange_declare(x, exchange_type="topic", durable=True)


def test_passive_declare_missing(amqp, ch):
    x = uname("missing")
    expect_exchange_gone(ch, x)


def test_passive_declare_ignores_type(amqp, ch):
    # passive declare only checks existence
    x = amqp.exchange(ch, "direct")
    ch.exchange_declare(x, exchange_type="fanout", passive=True)
    ch.exchange_declare(x, exchange_type="direct", durable=True, passive=True)


def test_redeclare_other_type(amqp, ch):
    x = amqp.exchange(ch, "direct")
    with channel_error(ch, 406, inequivalent("type", x, "fanout", "direct"),
                       spec.Exchange.Declare):
        ch.exchange_declare(x, exchange_type="fanout")


def test_redeclare_other_durable(amqp, ch):
    x = amqp.exchange(ch, "direct")
    with channel_error(ch, 406, inequivalent("durable", x, "true", "false"),
                       spec.Exchange.Declare):
        ch.exchange_declare(x, exchange_type="direct", durable=True)


def test_redeclare_other_auto_delete(amqp, ch):
    x = amqp.exchange(ch, "direct", durable=True)
    with channel_error(ch, 406,
                       inequivalent("auto_delete", x, "true", "false"),
                       spec.Exchange.Declare):
        ch.exchange_declare(x, exchange_type="direct", durable=True,
                            auto_delete=True)


def test_redeclare_other_internal(amqp, ch):
    x = amqp.exchange(ch, "fanout")
    with channel_error(ch, 406, inequivalent("internal", x, "true", "false"),
                       spec.Exchange.Declare):
        ch.exchange_declare(x, exchange_type="fanout", internal=True)


def test_unknown_type_is_command_invalid(amqp):
    conn = amqp.connect()
    ch = conn.channel()
    with connection_error(conn, 503,
                          "COMMAND_INVALID - invalid exchange type 'foo'",
                          spec.Exchange.Declare):
        ch.exchange_declare(uname("x"), exchange_type="foo")


def test_declare_reserved_amq_prefix_refused(ch):
    with channel_error(
            ch, 403,
            "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved "
            "prefix 'amq.*'", spec.Exchange.Declare):
        ch.exchange_declare("amq.foo", exchange_type="direct")


def test_redeclare_predeclared_equivalent_is_ok(ch):
    # amq.* exchanges exist, so an equivalent declare just succeeds
    ch.exchange_declare("amq.direct", exchange_type="direct", durable=True)
    ch.exchange_declare("amq.topic", exchange_type="topic", durable=True)


@pytest.mark.parametrize("x", ["amq.direct", "amq.fanout", "amq.nonexistent"])
def test_delete_amq_exchange_refused(ch, x):
    with channel_error(
            ch, 403,
            "ACCESS_REFUSED - deletion of system exchange '%s' in vhost '/' "
            "not allowed" % x, spec.Exchange.Delete):
        ch.exchange_delete(x)


def test_default_exchange_cannot_be_declared(ch):
    with channel_error(ch, 403, DEFAULT_EXCHANGE_REFUSED,
                       spec.Exchange.Declare):
        ch.exchange_declare("", exchange_type="direct", durable=True)


def test_default_exchange_cannot_be_deleted(ch):
    with channel_error(ch, 403, DEFAULT_EXCHANGE_REFUSED,
                       spec.Exchange.Delete):
        ch.exchange_delete("")


def test_default_exchange_cannot_be_bound(amqp, ch):
    q = amqp.queue(ch)
    with channel_error(ch, 403, DEFAULT_EXCHANGE_REFUSED, spec.Queue.Bind):
        ch.queue_bind(q, "", routing_key="k")


def test_default_exchange_cannot_be_unbound(amqp, ch):
    q = amqp.queue(ch)
    with channel_error(ch, 403, DEFAULT_EXCHANGE_REFUSED, spec.Queue.Unbind):
        ch.queue_unbind(q, "", routing_key=q)


def test_default_exchange_cannot_be_exchange_bound(amqp, ch):
    x = amqp.exchange(ch, "fanout")
    with channel_error(ch, 403, DEFAULT_EXCHANGE_REFUSED,
                       spec.Exchange.Bind):
        ch.exchange_bind(destination=x, source="", routing_key="k")


def test_delete_if_unused_with_binding(amqp, ch):
    x = amqp.exchange(ch, "direct")
    q = amqp.queue(ch)
    ch.queue_bind(q, x, routing_key="k")
    with channel_error(ch, 406,
                       "PRECONDITION_FAILED - exchange '%s' in vhost '/' in "
                       "use" % x, spec.Exchange.Delete):
        ch.exchange_delete(x, if_unused=True)
    ch = amqp.channel()
    ch.exchange_declare(x, passive=True)  # still there
    ch.queue_unbind(q, x, routing_key="k")
    ch.exchange_delete(x, if_unused=True)
    with channel_error(ch, 404, no_exchange(x)):
        ch.exchange_declare(x, passive=True)


def test_delete_if_unused_as_destination_only(amqp, ch):
    # "unused" looks at the bindings the exchange is the source of
    src = amqp.exchange(ch, "fanout")
    dst = amqp.exchange(ch, "fanout")
    ch.exchange_bind(destination=dst, source=src)
    ch.exchange_delete(dst, if_unused=True)
    with channel_error(ch, 404, no_exchange(dst)):
        ch.exchange_declare(dst, passive=True)


def test_delete_removes_bindings(amqp, ch):
    x = amqp.exchange(ch, "fanout")
    q = amqp.queue(ch)
    ch.queue_bind(q, x)
    ch.exchange_delete(x)
    ch.exchange_declare(x, exchange_type="fanout")
    publish(ch, x, "", b"after")
    assert counts(ch, q) == (0, 0)


def test_delete_missing_is_ok(ch):
    ok = ch.exchange_delete(uname("missing"))
    assert isinstance(ok.method, spec.Exchange.DeleteOk)


# -------------------------------------------------- exchange-to-exchange

def test_exchange_bind_two_hops_each_queue_once(amqp, ch):
    x1 = amqp.exchange(ch, "topic")
    x2 = amqp.exchange(ch, "fanout")
    q1, q2, q3 = amqp.queue(ch), amqp.queue(ch), amqp.queue(ch)
    # x1 reaches x2 through two bindings that both match "a.b"
    ok = ch.exchange_bind(destination=x2, source=x1, routing_key="a.*")
    assert isinstance(ok.method, spec.Exchange.BindOk)
    ch.exchange_bind(destination=x2, source=x1, routing_key="*.b")
    ch.queue_bind(q1, x2)
    ch.queue_bind(q2, x2)
    # q1 is also bound to x1 directly: still one copy
    ch.queue_bind(q1, x1, routing_key="#")
    ch.queue_bind(q3, x1, routing_key="c.#")
    publish(ch, x1, "a.b", b"m1")
    publish(ch, x1, "c.d", b"m2")
    publish(ch, x1, "a.x", b"m3")
    assert bodies(ch, q1) == [b"m1", b"m2", b"m3"]
    assert bodies(ch, q2) == [b"m1", b"m3"]
    assert bodies(ch, q3) == [b"m2"]


def test_exchange_bind_cycle_delivers_once(amqp, ch):
    x1 = amqp.exchange(ch, "fanout")
    x2 = amqp.exchange(ch, "fanout")
    q = amqp.queue(ch)
    ch.exchange_bind(destination=x2, source=x1)
    ch.exchange_bind(destination=x1, source=x2)
    ch.queue_bind(q, x2)
    publish(ch, x1, "", b"loop")
    publish(ch, x2, "", b"loop2")
    assert bodies(ch, q) == [b"loop", b"loop2"]


def test_exchange_unbind(amqp, ch):
    x1 = amqp.exchange(ch, "direct")
    x2 = amqp.exchange(ch, "fanout")
    q = amqp.queue(ch)
    ch.exchange_bind(destination=x2, source=x1, routing_key="k")
    ch.queue_bind(q, x2)
    publish(ch, x1, "k", b"before")
    ok = ch.exchange_unbind(destination=x2, source=x1, routing_key="k")
    assert isinstance(ok.method, spec.Exchange.UnbindOk)
    publish(ch, x1, "k", b"after")
    assert bodies(ch, q) == [b"before"]
    # unbinding again (binding gone) is fine
    ch.exchange_unbind(destination=x2, source=x1, routing_key="k")


def test_exchange_bind_missing_source(amqp, ch):
    x = amqp.exchange(ch, "fanout")
    missing = uname("missing")
    with channel_error(ch, 404, no_exchange(missing), spec.Exchange.Bind):
        ch.exchange_bind(destination=x, source=missing)


def test_exchange_bind_missing_destination(amqp, ch):
    x = amqp.exchange(ch, "fanout")
    missing = uname("missing")
    with channel_error(ch, 404, no_exchange(missing), spec.Exchange.Bind):
        ch.exchange_bind(destination=missing, source=x)


# ------------------------------------------------------- alternate exchange

def test_alternate_exchange(amqp, ch):
    ae = amqp.exchange(ch, "fanout")
    x = amqp.exchange(ch, "direct", arguments={"alternate-exchange": ae})
    q, qa = amqp.queue(ch), amqp.queue(ch)
    ch.queue_bind(q, x, routing_key="k")
    ch.queue_bind(qa, ae)
    returned = []
    ch.add_on_return_callback(lambda *a: returned.append(a))
    publish(ch, x, "k", b"routed", mandatory=True)
    publish(ch, x, "other", b"to-ae", mandatory=True)
    assert bodies(ch, q) == [b"routed"]
    assert bodies(ch, qa) == [b"to-ae"]
    settle(ch.connection, 0.2)
    assert returned == []  # routed through the AE: not returned


def test_alternate_exchange_missing_means_unroutable(amqp, ch):
    x = amqp.exchange(ch, "direct",
                      arguments={"alternate-exchange": uname("nosuchae")})
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m, b)))
    publish(ch, x, "k", b"lost", mandatory=True)
    assert pump(ch.connection, lambda: returned)
    m, b = returned[0]
    assert (m.reply_code, m.reply_text, m.exchange, m.routing_key, b) == (
        312, "NO_ROUTE", x, "k", b"lost")


def test_alternate_exchange_chain(amqp, ch):
    ae2 = amqp.exchange(ch, "fanout")
    ae1 = amqp.exchange(ch, "direct", arguments={"alternate-exchange": ae2})
    x = amqp.exchange(ch, "direct", arguments={"alternate-exchange": ae1})
    q = amqp.queue(ch)
    ch.queue_bind(q, ae2)
    publish(ch, x, "nowhere", b"chained")
    assert bodies(ch, q) == [b"chained"]


# -------------------------------------------------------- internal exchange

def test_publish_to_internal_exchange_refused(amqp, ch):
    x = amqp.exchange(ch, "fanout", internal=True)
    with channel_error(
            ch, 403,
            "ACCESS_REFUSED - cannot publish to internal exchange '%s' in "
            "vhost '/'" % x, spec.Basic.Publish):
        publish(ch, x, "", b"no")
        ch.queue_declare(uname("sync"), passive=True)


def test_internal_exchange_routes_via_binding(amqp, ch):
    xi = amqp.exchange(ch, "fanout", internal=True)
    x = amqp.exchange(ch, "direct")
    q = amqp.queue(ch)
    ch.exchange_bind(destination=xi, source=x, routing_key="k")
    ch.queue_bind(q, xi)
    publish(ch, x, "k", b"through")
    assert bodies(ch, q) == [b"through"]


# ----------------------------------------------------- auto-delete exchange

def test_auto_delete_exchange_lives_until_last_binding_goes(amqp, ch):
    x = amqp.exchange(ch, "direct", auto_delete=True)
    # never bound: still there
    ch.exchange_declare(x, passive=True)
    q1, q2 = amqp.queue(ch), amqp.queue(ch)
    ch.queue_bind(q1, x, routing_key="a")
    ch.queue_bind(q2, x, routing_key="b")
    ch.queue_unbind(q1, x, routing_key="a")
    ch.exchange_declare(x, passive=True)
    ch.queue_unbind(q2, x, routing_key="b")
    expect_exchange_gone(ch, x)


def test_auto_delete_exchange_removed_when_bound_queue_deleted(amqp, ch):
    x = amqp.exchange(ch, "fanout", auto_delete=True)
    q = amqp.queue(ch)
    ch.queue_bind(q, x)
    ch.queue_delete(q)
    expect_exchange_gone(ch, x)


def test_auto_delete_exchange_removed_after_exchange_unbind(amqp, ch):
    src = amqp.exchange(ch, "fanout", auto_delete=True)
    dst = amqp.exchange(ch, "fanout")
    ch.exchange_bind(destination=dst, source=src)
    ch.exchange_unbind(destination=dst, source=src)
    expect_exchange_gone(ch, src)
