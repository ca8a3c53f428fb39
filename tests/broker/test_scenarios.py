"""Application-shaped scenarios: a work queue, request/reply, pub/sub."""

import pika

from brokertest import Collector, pump_all, uname


def test_work_queue_two_workers_prefetch_one(amqp):
    n = 40
    setup = amqp.channel()
    q = amqp.queue(setup, durable=True)
    processed = {"w1": [], "w2": []}
    conns = []
    for name in processed:
        conn = amqp.connect()
        conns.append(conn)
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1)

        def work(ch, method, props, body, name=name):
            assert not method.redelivered
            processed[name].append(body)
            ch.basic_ack(method.delivery_tag)

        ch.basic_consume(q, work)
    pub = amqp.channel(amqp.connect())
    pub.confirm_delivery()
    sent = [b"task-%03d" % i for i in range(n)]
    for body in sent:
        pub.basic_publish("", q, body,
                          pika.BasicProperties(delivery_mode=2))
    total = lambda: sum(len(v) for v in processed.values())
    assert pump_all(conns, lambda: total() == n, timeout=15)
    pump_all(conns, lambda: False, timeout=0.2)
    done = processed["w1"] + processed["w2"]
    assert sorted(done) == sent  # each exactly once
    assert processed["w1"] and processed["w2"]  # spread over both
    # each worker saw its share in queue order
    for v in processed.values():
        assert v == sorted(v)


def test_request_reply(amqp):
    rpc_q = amqp.qname("rpc")
    server_conn = amqp.connect()
    sch = server_conn.channel()
    sch.queue_declare(rpc_q, auto_delete=True)
    sch.basic_qos(prefetch_count=1)

    def serve(ch, method, props, body):
        ch.basic_publish("", props.reply_to, body.upper(),
                         pika.BasicProperties(
                             correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)

    sch.basic_consume(rpc_q, serve)

    client_conn = amqp.connect()
    cch = client_conn.channel()
    reply_q = cch.queue_declare("", exclusive=True).method.queue
    assert reply_q.startswith("amq.gen-")
    replies = Collector()
    cch.basic_consume(reply_q, replies, auto_ack=True)
    requests = {uname("corr"): b"req-%d" % i for i in range(5)}
    for corr, body in requests.items():
        cch.basic_publish("", rpc_q, body, pika.BasicProperties(
            reply_to=reply_q, correlation_id=corr))
    conns = [server_conn, client_conn]
    assert pump_all(conns, lambda: len(replies) == len(requests))
    got = {p.correlation_id: b for _, p, b in replies.items}
    assert got == {c: b.upper() for c, b in requests.items()}


def test_fanout_pub_sub_three_subscribers(amqp):
    setup = amqp.channel()
    x = amqp.exchange(setup, "fanout")
    subs = []
    for _ in range(3):
        conn = amqp.connect()
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, x)
        got = Collector()
        ch.basic_consume(q, got, auto_ack=True)
        subs.append((conn, got))
    pub = amqp.channel(amqp.connect())
    sent = [b"event-%d" % i for i in range(20)]
    for body in sent:
        pub.basic_publish(x, "ignored", body)
    conns = [c for c, _ in subs]
    assert pump_all(conns, lambda: all(len(g) == 20 for _, g in subs))
    pump_all(conns, lambda: False, timeout=0.2)
    for _, got in subs:
        assert got.bodies == sent
