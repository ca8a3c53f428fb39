#!/usr/bin/python3
"""Acceptance check: a pika work queue with competing consumers.

Usage: pika_workqueue.py [AMQP_URL | PORT]
The broker URL comes from the first argument (a full URL or a bare port number),
else from $AMQP_URL, else amqp://guest:guest@127.0.0.1:5672/.
The broker must already be running; this script starts nothing.

Part 1: 200 tasks, two worker threads (each with its own connection, basic_qos
        prefetch_count=1, manual acks). Every task must be processed exactly once
        and both workers must get a fair share.
Part 2: worker A takes one message and holds it unacked; worker B must still get
        all the other messages, and A must get nothing more (prefetch 1). When A's
        connection closes, its unacked message is requeued and B gets it with
        redelivered=True.
Exit status 0 only if every check passed.
"""
import os
import sys
import threading
import time
from collections import Counter

import pika

from acceptance import broker_url, check, finish, start_watchdog

N_TASKS = 200
PART2_MSGS = 10
DEADLINE_S = 30


URL = broker_url()


def connect():
    return pika.BlockingConnection(pika.URLParameters(URL))


def part1(queue):
    print(f"-- part 1: {N_TASKS} tasks, 2 workers, prefetch_count=1, manual acks")
    processed = {"w1": [], "w2": []}
    redelivered = []
    lock = threading.Lock()
    all_done = threading.Event()
    consuming = threading.Barrier(3, timeout=10)
    errors = []

    def worker(name):
        try:
            conn = connect()
            ch = conn.channel()
            ch.basic_qos(prefetch_count=1)
            gen = ch.consume(queue, auto_ack=False, inactivity_timeout=0.2)
            consuming.wait()
            for item in gen:
                if all_done.is_set():
                    break
                if item == (None, None, None):
                    continue
                method, _props, body = item
                time.sleep(0.003)              # "work"
                with lock:
                    processed[name].append(body.decode())
                    if method.redelivered:
                        redelivered.append(body.decode())
                    if sum(len(v) for v in processed.values()) >= N_TASKS:
                        all_done.set()
                ch.basic_ack(method.delivery_tag)
            ch.cancel()
            conn.close()
        except Exception as e:               # reported as a failed check below
            errors.append(f"{name}: {e!r}")
            all_done.set()

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in processed]
    for t in threads:
        t.start()
    consuming.wait()                         # both consumers are registered

    conn = connect()
    ch = conn.channel()
    ok = ch.queue_declare(queue, passive=True)
    check(ok.method.consumer_count == 2,
          f"passive declare reports 2 consumers (got {ok.method.consumer_count})")
    for i in range(N_TASKS):
        ch.basic_publish("", queue, f"task-{i:03d}".encode(),
                         pika.BasicProperties(delivery_mode=2))
    print(f"published {N_TASKS} tasks to {queue}")

    all_done.wait(15)
    for t in threads:
        t.join(5)
    check(not errors, f"workers raised no errors {errors}")

    counts = Counter(processed["w1"] + processed["w2"])
    expected = {f"task-{i:03d}" for i in range(N_TASKS)}
    dup = sorted(k for k, v in counts.items() if v > 1)
    missing = sorted(expected - set(counts))
    print(f"w1 processed {len(processed['w1'])}, w2 processed {len(processed['w2'])}")
    check(set(counts) == expected and not dup,
          f"each of the {N_TASKS} tasks processed exactly once "
          f"(missing={missing[:5]}, duplicates={dup[:5]})")
    check(len(processed["w1"]) >= N_TASKS // 10 and len(processed["w2"]) >= N_TASKS // 10,
          "both workers got at least 10% of the tasks")
    check(not redelivered, f"no task was redelivered ({redelivered[:5]})")
    ok = ch.queue_declare(queue, passive=True)
    check(ok.method.message_count == 0,
          f"queue empty afterwards (message_count={ok.method.message_count})")
    conn.close()


def part2(queue):
    print(f"-- part 2: worker A holds its one unacked message, worker B drains the rest")
    pub = connect()
    pch = pub.channel()
    pch.confirm_delivery()     # so the queue holds them all before the passive declare
    for i in range(PART2_MSGS):
        pch.basic_publish("", queue, f"job-{i:02d}".encode())
    ok = pch.queue_declare(queue, passive=True)
    check(ok.method.message_count == PART2_MSGS,
          f"{PART2_MSGS} messages ready before consuming (got {ok.method.message_count})")

    # Worker A: prefetch 1, takes one message and never acks it.
    conn_a = connect()
    ch_a = conn_a.channel()
    ch_a.basic_qos(prefetch_count=1)
    got_a = []
    ch_a.basic_consume(queue, lambda c, m, p, b: got_a.append(b.decode()), auto_ack=False)
    t_end = time.monotonic() + 5
    while not got_a and time.monotonic() < t_end:
        conn_a.process_data_events(time_limit=0.1)
    check(len(got_a) == 1, f"worker A received one message and holds it: {got_a}")

    # Worker B: its own connection; must get every other message while A holds one.
    conn_b = connect()
    ch_b = conn_b.channel()
    ch_b.basic_qos(prefetch_count=1)
    got_b = []

    def on_b(c, m, p, b):
        got_b.append((b.decode(), m.redelivered))
        c.basic_ack(m.delivery_tag)

    ch_b.basic_consume(queue, on_b, auto_ack=False)
    t_end = time.monotonic() + 5
    while len(got_b) < PART2_MSGS - 1 and time.monotonic() < t_end:
        conn_b.process_data_events(time_limit=0.1)
    # give the broker a moment to (wrongly) push more to A or B
    conn_a.process_data_events(time_limit=0.3)
    conn_b.process_data_events(time_limit=0.3)
    check(len(got_b) == PART2_MSGS - 1,
          f"worker B got the other {PART2_MSGS - 1} messages while A held one "
          f"(got {len(got_b)})")
    check(len(got_a) == 1, f"worker A got nothing more while unacked (A has {got_a})")
    all_bodies = sorted(got_a + [b for b, _ in got_b])
    check(all_bodies == [f"job-{i:02d}" for i in range(PART2_MSGS)],
          "A's message plus B's messages are exactly the ones published")

    # A goes away without acking: its message must be requeued and reach B.
    conn_a.close()
    t_end = time.monotonic() + 5
    while len(got_b) < PART2_MSGS and time.monotonic() < t_end:
        conn_b.process_data_events(time_limit=0.1)
    check(len(got_b) == PART2_MSGS and got_b[-1] == (got_a[0], True),
          f"after A closed, B got A's message with redelivered=True ({got_b[-1:]})")
    conn_b.close()
    ok = pch.queue_declare(queue, passive=True)
    check(ok.method.message_count == 0 and ok.method.consumer_count == 0,
          f"queue empty and no consumers at the end "
          f"(messages={ok.method.message_count}, consumers={ok.method.consumer_count})")
    pub.close()


def main():
    start_watchdog(DEADLINE_S)
    print(f"broker: {URL}  pika {pika.__version__}")
    queue = f"acc.workqueue.{os.getpid()}"
    conn = connect()
    ch = conn.channel()
    ch.queue_declare(queue, durable=True)
    print(f"server product: {conn._impl.server_properties.get('product')!r} "
          f"version {conn._impl.server_properties.get('version')!r}")
    try:
        part1(queue)
        part2(queue)
    finally:
        ch.queue_delete(queue)
        conn.close()
    return finish()


if __name__ == "__main__":
    sys.exit(main())
