#!/usr/bin/python3
"""Acceptance check: a Celery worker (Debian python3-celery) against the broker.

Usage: celery_check.py [AMQP_URL | PORT]
The broker URL comes from the first argument (a full URL or a bare port number),
else from $AMQP_URL, else amqp://guest:guest@127.0.0.1:5672/.
The broker must already be running. This script starts and stops its own Celery
worker (python3 -m celery -A celery_app worker --pool=solo), sends 20 tasks with
delay(), waits for each result through the rpc:// result backend, checks from the
side-effect file that each task ran exactly once. Then it sends 20 tasks with
countdown=10 (held by the worker, unacked, until their ETA) followed by 5 ordinary
tasks, which must still run at once: kombu raises the consumer's prefetch with
basic.qos as it takes ETA tasks. Finally it stops the worker with SIGTERM (warm
shutdown) and checks that it exited cleanly.
Set ACC_BACKEND=none to run without a result backend (only the file is checked), and
ACC_POOL=prefork to run the worker with --pool=prefork --concurrency=2.
Exit status 0 only if every check passed.
"""
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

from acceptance import broker_url, check, finish

N_TASKS = 20
N_ETA, ETA_S = 20, 10            # tasks with a countdown, held unacked by the worker
N_AFTER, AFTER_LIMIT_S = 5, 5    # ordinary tasks sent after them, and how long they may take
HERE = os.path.dirname(os.path.abspath(__file__))




def read_lines(path):
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def wait_for(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def main():
    tmp = tempfile.mkdtemp(prefix="acc-celery-")
    out = os.path.join(tmp, "ran.txt")
    os.environ.update(ACC_BROKER=broker_url("//"), ACC_OUT=out,
                      ACC_QUEUE=f"acc_celery_{os.getpid()}")
    os.environ.setdefault("ACC_BACKEND", "rpc://")
    worker_log = os.path.join(tmp, "worker.log")
    print(f"broker: {os.environ['ACC_BROKER']}  backend: {os.environ['ACC_BACKEND']}  "
          f"queue: {os.environ['ACC_QUEUE']}")
    print(f"worker log: {worker_log}")

    sys.path.insert(0, HERE)
    import celery
    import kombu
    from celery_app import app, record
    print(f"celery {celery.__version__}, kombu {kombu.__version__}")
    with app.connection_for_write() as conn:
        conn.connect()
        props = conn.connection.server_properties
        spec_qos = conn.transport.qos_semantics_matches_spec(conn.connection)
    print(f"server product {props.get('product')!r} version {props.get('version')!r}: "
          f"kombu will send basic.qos(global={not spec_qos})")

    pool = ["--pool=solo", "--concurrency=1"] if os.environ.get("ACC_POOL", "solo") == "solo" \
        else ["--pool=prefork", "--concurrency=2"]
    cmd = [sys.executable, "-m", "celery", "-A", "celery_app", "worker", *pool,
           "--loglevel=debug", "-n", f"acc{os.getpid()}@%h"]
    print("starting:", " ".join(cmd))
    with open(worker_log, "w") as log:
        worker = subprocess.Popen(cmd, cwd=HERE, stdout=log, stderr=subprocess.STDOUT)
    try:
        ready = wait_for(lambda: "ready." in open(worker_log).read()
                         or worker.poll() is not None, 15)
        check(ready and worker.poll() is None, "worker started and logged 'ready.'")

        # -- part 1: N_TASKS ordinary tasks (ids 0..19)
        results = [record.delay(i) for i in range(N_TASKS)]
        print(f"sent {N_TASKS} tasks with record.delay(i)")
        if os.environ["ACC_BACKEND"] != "none":
            values = []
            for r in results:
                try:
                    values.append(r.get(timeout=10))
                except Exception as e:
                    values.append(repr(e))
                    break
            check(values == [i * i for i in range(N_TASKS)],
                  f"every result arrived through {os.environ['ACC_BACKEND']}: {values}")
        wait_for(lambda: len(read_lines(out)) >= N_TASKS, 10)
        time.sleep(0.5)                        # let a duplicate show up, if any
        ran = Counter(read_lines(out))
        check(ran == Counter(str(i) for i in range(N_TASKS)),
              f"each of the {N_TASKS} tasks ran exactly once "
              f"(runs per task: {dict(sorted(ran.items(), key=lambda kv: int(kv[0])))})")

        # -- part 2: ETA tasks (ids 1000..) must not block ordinary ones (ids 100..)
        for i in range(N_ETA):
            record.apply_async((1000 + i,), countdown=ETA_S)
        print(f"sent {N_ETA} tasks with countdown={ETA_S}")
        time.sleep(1)                          # the worker reserves what it may
        t0 = time.monotonic()
        for i in range(N_AFTER):
            record.delay(100 + i)
        print(f"sent {N_AFTER} ordinary tasks after them")
        wanted = {str(100 + i) for i in range(N_AFTER)}
        wait_for(lambda: wanted <= set(read_lines(out)), AFTER_LIMIT_S)
        took = time.monotonic() - t0
        done = wanted & set(read_lines(out))
        check(len(done) == N_AFTER,
              f"the {N_AFTER} ordinary tasks ran within {AFTER_LIMIT_S}s although "
              f"{N_ETA} ETA tasks were waiting (ran {len(done)} after {took:.1f}s)")
    finally:
        worker.send_signal(signal.SIGTERM)     # warm shutdown
        try:
            rc = worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
            rc = worker.wait()
        check(rc == 0, f"worker stopped cleanly on SIGTERM (exit status {rc})")
        with app.connection_for_write() as conn:     # remove this run's task queue
            conn.default_channel.queue_delete(os.environ["ACC_QUEUE"])
        app.close()

    ran = Counter(read_lines(out))
    check(all(ran[str(i)] == 1 for i in range(N_TASKS)) and all(v == 1 for v in ran.values()),
          "after the worker stopped: one run per part-1 task, no task ran twice")
    text = open(worker_log).read()
    bad = [l for l in text.splitlines() if "ERROR" in l or "CRITICAL" in l or "Traceback" in l]
    check(not bad, f"worker log has no ERROR/CRITICAL/Traceback lines {bad[:3]}")
    print("worker log (selected lines):")
    for line in text.splitlines():
        if any(k in line for k in ("Connected to", "ready.", "WARNING", "ERROR", "CRITICAL",
                                   "mingle: ", "Error", "restoring", "basic.qos")):
            print("   ", line.strip()[:160])
    print(f"    ... {text.count('succeeded in')} 'Task celery_app.record[...] succeeded' lines")
    return finish()


if __name__ == "__main__":
    sys.exit(main())
