#!/usr/bin/python3
"""Acceptance check: pika publish/subscribe, topic routing and request/reply.

Usage: pika_pubsub.py [AMQP_URL | PORT]
The broker URL comes from the first argument (a full URL or a bare port number),
else from $AMQP_URL, else amqp://guest:guest@127.0.0.1:5672/.
The broker must already be running; this script starts nothing.

1. fanout: one exchange feeding three queues; each queue gets every message, in order.
2. topic: bindings order.#, *.*.us and order.*.electronics; each routing key must
   reach exactly the expected queues; an unroutable mandatory publish is returned.
3. request/reply: a server thread answers requests sent with reply_to (an exclusive
   server-named queue) and correlation_id; every reply must carry the correlation id
   of its request. Another connection may not use the exclusive reply queue.
Exit status 0 only if every check passed.
"""
import os
import sys
import threading
import time
import uuid

import pika

from acceptance import broker_url, check, finish, start_watchdog
import pika.exceptions

DEADLINE_S = 30


URL = broker_url()
TAG = os.getpid()


def connect():
    return pika.BlockingConnection(pika.URLParameters(URL))


def drain(ch, queue):
    """All bodies currently in queue, via basic.get until get-empty."""
    bodies = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body.decode())


def fanout(ch):
    print("-- fanout: 1 exchange -> 3 queues")
    ex = f"acc.fanout.{TAG}"
    ch.exchange_declare(ex, "fanout", auto_delete=False)
    queues = []
    for _ in range(3):
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, ex)
        queues.append(q)
    sent = [f"news-{i}" for i in range(5)]
    for body in sent:
        ch.basic_publish(ex, "ignored.key", body.encode())   # confirmed (see main)
    for q in queues:
        got = drain(ch, q)
        check(got == sent, f"{q} got every message in order: {got}")
    ch.exchange_delete(ex)


def topic(ch):
    print("-- topic: order.# / *.*.us / order.*.electronics")
    ex = f"acc.topic.{TAG}"
    ch.exchange_declare(ex, "topic")
    bindings = {"all_orders": "order.#", "us": "*.*.us", "order_electronics": "order.*.electronics"}
    qname = {}
    for label, pattern in bindings.items():
        qname[label] = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(qname[label], ex, routing_key=pattern)
    expected = {
        "order": {"all_orders"},                                   # '#' matches zero words
        "order.created": {"all_orders"},
        "order.created.us": {"all_orders", "us"},
        "order.shipped.electronics": {"all_orders", "order_electronics"},
        "order.electronics": {"all_orders"},                       # '*' needs exactly one word
        "order.a.b.us": {"all_orders"},
        "user.signup.us": {"us"},
        "ordering.created.us": {"us"},                             # 'ordering' is not 'order'
        "stock.electronics": set(),
    }
    for key, targets in expected.items():
        try:
            ch.basic_publish(ex, key, key.encode(), mandatory=True)
            returned = False
        except pika.exceptions.UnroutableError:
            returned = True
        check(returned == (not targets),
              f"key {key!r}: {'returned as unroutable' if returned else 'routed'}")
    got = {label: drain(ch, q) for label, q in qname.items()}
    for label in bindings:
        want = [k for k, t in expected.items() if label in t]
        check(got[label] == want,
              f"queue bound with {bindings[label]!r} got exactly {want} (got {got[label]})")
    ch.exchange_delete(ex)


def rpc_server(queue, ready, stop, errors):
    """Answers each request with the body upper-cased, echoing its correlation_id."""
    try:
        conn = connect()
        ch = conn.channel()
        ch.queue_declare(queue, auto_delete=True)
        ch.basic_qos(prefetch_count=10)

        def on_request(c, method, props, body):
            c.basic_publish("", props.reply_to, body.upper(),
                            pika.BasicProperties(correlation_id=props.correlation_id))
            c.basic_ack(method.delivery_tag)

        ch.basic_consume(queue, on_request)
        ready.set()
        while not stop.is_set():
            conn.process_data_events(time_limit=0.1)
        conn.close()
    except Exception as e:
        errors.append(repr(e))
        ready.set()


def rpc(ch, conn):
    print("-- request/reply with reply_to and correlation_id")
    rpc_queue = f"acc.rpc.{TAG}"
    ready, stop, errors = threading.Event(), threading.Event(), []
    server = threading.Thread(target=rpc_server, args=(rpc_queue, ready, stop, errors),
                              daemon=True)
    server.start()
    check(ready.wait(5) and not errors, f"rpc server consuming on {rpc_queue} {errors}")

    reply_q = ch.queue_declare("", exclusive=True).method.queue
    check(reply_q.startswith("amq.gen-"), f"server-named reply queue: {reply_q}")
    replies = []
    ch.basic_consume(reply_q, lambda c, m, p, b: replies.append((p.correlation_id, b.decode())),
                     auto_ack=True)
    requests = {str(uuid.uuid4()): f"request {i}" for i in range(5)}
    for corr, body in requests.items():
        ch.basic_publish("", rpc_queue, body.encode(),
                         pika.BasicProperties(reply_to=reply_q, correlation_id=corr))
    t_end = time.monotonic() + 5
    while len(replies) < len(requests) and time.monotonic() < t_end:
        conn.process_data_events(time_limit=0.1)
    print(f"got {len(replies)} replies")
    check(sorted(c for c, _ in replies) == sorted(requests),
          "each request got exactly one reply with its own correlation_id")
    check(all(requests.get(c, "").upper() == b for c, b in replies),
          "each reply body matches its request")

    # The exclusive reply queue belongs to this connection only.
    other = connect()
    och = other.channel()
    try:
        och.queue_declare(reply_q, passive=True)
        check(False, "another connection may not use the exclusive reply queue")
    except pika.exceptions.ChannelClosedByBroker as e:
        check(e.reply_code == 405,
              f"another connection gets 405 on the exclusive reply queue: "
              f"{e.reply_code} {e.reply_text}")
    other.close()
    stop.set()
    server.join(5)


def main():
    start_watchdog(DEADLINE_S)
    print(f"broker: {URL}  pika {pika.__version__}")
    conn = connect()
    ch = conn.channel()
    ch.confirm_delivery()         # publishes wait for the broker's ack; returns raise
    fanout(ch)
    topic(ch)
    rpc(ch, conn)
    conn.close()
    return finish()


if __name__ == "__main__":
    sys.exit(main())
