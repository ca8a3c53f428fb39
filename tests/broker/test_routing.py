"""Routing through each exchange type and the predeclared exchanges."""

import pytest

from brokertest import bodies, publish, pump


def route(amqp, ch, xtype, bindings, messages, x=None):
    """Declare an exchange (unless x is given) and one queue per entry of
    `bindings` (a list of lists of (routing_key, arguments)); publish each
    (routing_key, headers, body) of `messages`; return the bodies each queue
    received, in the order of `bindings`."""
    x = x or amqp.exchange(ch, xtype)
    queues = []
    for binds in bindings:
        q = amqp.queue(ch)
        for key, args in binds:
            ch.queue_bind(q, x, routing_key=key, arguments=args)
        queues.append(q)
    for key, headers, body in messages:
        if headers is None:
            publish(ch, x, key, body)
        else:
            publish(ch, x, key, body, headers=headers)
    return [bodies(ch, q) for q in queues]


def test_direct(amqp, ch):
    got = route(amqp, ch, "direct",
                [[("a", None)], [("b", None)], [("a", None), ("b", None)]],
                [("a", None, b"1"), ("b", None, b"2"), ("c", None, b"3"),
                 ("A", None, b"4"), ("", None, b"5")])
    assert got == [[b"1"], [b"2"], [b"1", b"2"]]


def test_direct_same_binding_twice_delivers_once(amqp, ch):
    x = amqp.exchange(ch, "direct")
    q = amqp.queue(ch)
    ch.queue_bind(q, x, routing_key="k")
    ch.queue_bind(q, x, routing_key="k")
    publish(ch, x, "k", b"once")
    assert bodies(ch, q) == [b"once"]


def test_fanout_to_three_queues(amqp, ch):
    got = route(amqp, ch, "fanout",
                [[("", None)], [("ignored", None)], [("x", None)]],
                [("any", None, b"1"), ("", None, b"2")])
    assert got == [[b"1", b"2"]] * 3


def test_topic_bindings_from_the_issue(amqp, ch):
    got = route(amqp, ch, "topic",
                [[("order.#", None)], [("*.*.us", None)],
                 [("order.*.electronics", None)]],
                [("order.created.us", None, b"order.created.us"),
                 ("order", None, b"order"),
                 ("order.x.electronics", None, b"order.x.electronics"),
                 ("a.b.us", None, b"a.b.us"),
                 ("x.y", None, b"x.y")])
    order_all, star_star_us, electronics = got
    assert order_all == [b"order.created.us", b"order", b"order.x.electronics"]
    assert star_star_us == [b"order.created.us", b"a.b.us"]
    assert electronics == [b"order.x.electronics"]


@pytest.mark.parametrize("binding,matches,misses", [
    ("#", ["", "a", "a.b.c"], []),
    ("*", ["a"], ["", "a.b"]),
    ("a.*", ["a.b"], ["a", "a.b.c", "b.a"]),
    ("a.#", ["a", "a.b", "a.b.c"], ["b", "ab"]),
    ("#.a", ["a", "x.a", "x.y.a"], ["a.x"]),
    ("a.#.b", ["a.b", "a.x.b", "a.x.y.b"], ["a", "b", "a.b.c"]),
    ("*.#", ["a", "a.b"], [""]),
    ("#.*.#", ["a", "a.b"], [""]),
    ("a.*.#", ["a.b", "a.b.c"], ["a"]),
    ("exact.key", ["exact.key"], ["exact", "exact.key.more", "Exact.key"]),
])
def test_topic_patterns(amqp, ch, binding, matches, misses):
    keys = matches + misses
    got = route(amqp, ch, "topic", [[(binding, None)]],
                [(k, None, k.encode() or b"<empty>") for k in keys])
    assert got == [[k.encode() or b"<empty>" for k in matches]]


@pytest.mark.parametrize("xmatch,bind_args,yes,no", [
    ("all", {"a": 1, "b": "x"},
     [{"a": 1, "b": "x"}, {"a": 1, "b": "x", "c": 3}],
     [{"a": 1}, {"a": 1, "b": "y"}, {"a": "1", "b": "x"}, {}, None]),
    ("any", {"a": 1, "b": "x"},
     [{"a": 1}, {"b": "x"}, {"a": 1, "b": "z"}],
     [{"a": 2}, {"c": 1}, {}, None]),
    # plain all/any ignore binding arguments starting with "x-"
    ("all", {"a": 1, "x-foo": "bar"},
     [{"a": 1}, {"a": 1, "x-foo": "other"}],
     [{"x-foo": "bar"}]),
    ("any", {"x-foo": "bar"},
     [],
     [{"x-foo": "bar"}, {"a": 1}]),
    # ...and the -with-x variants do not
    ("all-with-x", {"a": 1, "x-foo": "bar"},
     [{"a": 1, "x-foo": "bar"}],
     [{"a": 1}, {"a": 1, "x-foo": "baz"}]),
    ("any-with-x", {"x-foo": "bar", "a": 1},
     [{"x-foo": "bar"}, {"a": 1}],
     [{"x-foo": "baz"}, {}]),
])
def test_headers_exchange(amqp, ch, xmatch, bind_args, yes, no):
    args = dict(bind_args, **{"x-match": xmatch})
    msgs = [("", h, ("yes%d" % i).encode()) for i, h in enumerate(yes)]
    msgs += [("", h, ("no%d" % i).encode()) for i, h in enumerate(no)]
    got = route(amqp, ch, "headers", [[("", args)]], msgs)
    assert got == [[("yes%d" % i).encode() for i in range(len(yes))]]


def test_headers_default_is_all_and_routing_key_ignored(amqp, ch):
    got = route(amqp, ch, "headers", [[("ignored", {"k": "v"})]],
                [("whatever", {"k": "v"}, b"1"),
                 ("ignored", {"k": "w"}, b"2"),
                 ("", {"k": "v", "j": 1}, b"3")])
    assert got == [[b"1", b"3"]]


def test_headers_empty_binding_matches_everything_with_all(amqp, ch):
    got = route(amqp, ch, "headers", [[("", {})], [("", {"x-match": "any"})]],
                [("", None, b"1"), ("", {"a": 1}, b"2")])
    assert got == [[b"1", b"2"], []]


@pytest.mark.parametrize("x,xtype", [
    ("amq.direct", "direct"), ("amq.fanout", "fanout"),
    ("amq.topic", "topic"), ("amq.headers", "headers"),
    ("amq.match", "headers")])
def test_predeclared_exchanges(amqp, ch, x, xtype):
    ch.exchange_declare(x, passive=True)
    ch.exchange_declare(x, exchange_type=xtype, durable=True)
    q = amqp.queue(ch)
    key = q  # unique, so other tests' bindings on amq.* don't interfere
    if xtype == "headers":
        ch.queue_bind(q, x, arguments={"x-match": "all", "id": key})
        publish(ch, x, "", b"hit", headers={"id": key})
        publish(ch, x, "", b"miss", headers={"id": "other"})
    elif xtype == "fanout":
        ch.queue_bind(q, x)
        publish(ch, x, "anything", b"hit")
    elif xtype == "topic":
        ch.queue_bind(q, x, routing_key=key + ".#")
        publish(ch, x, key + ".a.b", b"hit")
        publish(ch, x, "other." + key, b"miss")
    else:
        ch.queue_bind(q, x, routing_key=key)
        publish(ch, x, key, b"hit")
        publish(ch, x, key + "x", b"miss")
    assert bodies(ch, q) == [b"hit"]
    # the binding goes with the queue at teardown


def test_default_exchange_routes_by_queue_name(amqp, ch):
    q1, q2 = amqp.queue(ch), amqp.queue(ch)
    publish(ch, "", q1, b"to-q1")
    publish(ch, "", q2, b"to-q2")
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m, b)))
    publish(ch, "", q1 + "-nosuch", b"lost", mandatory=True)
    assert bodies(ch, q1) == [b"to-q1"]
    assert bodies(ch, q2) == [b"to-q2"]
    assert pump(ch.connection, lambda: returned)
    m, b = returned[0]
    assert (m.reply_code, m.reply_text, m.exchange, m.routing_key, b) == (
        312, "NO_ROUTE", "", q1 + "-nosuch", b"lost")
