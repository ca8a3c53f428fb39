"""Helpers for the durability, crash, disk-full and memory-alarm tests
(test_durability.py, test_crash.py, test_diskfull.py, test_shutdown.py,
test_memory_alarm.py): restarting a broker on
the same data directory, pipelined publishing with publisher confirms,
commit barriers, draining queues, and starting a broker that must refuse to
run.

Every wait is bounded.
"""

import os
import signal
import socket
import subprocess
import time

import pika

from brokertest import ALL_PROPERTIES, CloseRecorder, Collector, get_all, pump, uname  # noqa: F401
from conftest import SANITIZER_MARKERS, warren_bin

# Shutdown modes the restart tests run with.
TERM, KILL = "term", "kill"
MODES = [TERM, KILL]


PERSISTENT = pika.BasicProperties(delivery_mode=2)
TRANSIENT = pika.BasicProperties(delivery_mode=1)


def connect(b, **kw):
    """A BlockingConnection to broker b with close frames recorded."""
    conn = pika.BlockingConnection(b.params(**kw))
    CloseRecorder(conn)
    return conn


class Watched:
    """A connection with its connection.blocked/unblocked events recorded."""

    def __init__(self, b):
        self.conn = connect(b)
        self.events = []  # ("blocked", reason) / ("unblocked", None)
        self.conn.add_on_connection_blocked_callback(
            lambda c, f: self.events.append(("blocked", f.method.reason)))
        self.conn.add_on_connection_unblocked_callback(
            lambda c, f: self.events.append(("unblocked", None)))

    def blocked(self):
        return [r for e, r in self.events if e == "blocked"]

    def unblocked(self):
        return [e for e, _ in self.events if e == "unblocked"]


def close_quietly(*conns):
    for c in conns:
        try:
            if c is not None and c.is_open:
                c.close()
        except Exception:
            pass


def restart(b, mode, conns=()):
    """Stops broker b (TERM: closes `conns` first, then SIGTERM, which must
    exit 0; KILL: SIGKILL with the connections still open) and starts it
    again on the same data directory."""
    if mode == TERM:
        close_quietly(*conns)
        rc = b.stop()
        assert rc == 0, "SIGTERM: exit code %r\n%s" % (rc, b.stderr_tail())
    else:
        b.stop(sig=signal.SIGKILL)
        assert b.returncode == -signal.SIGKILL, \
            "expected death by SIGKILL, got %r" % (b.returncode,)
        close_quietly(*conns)
    b.start()
    return b


def kill(b, conns=()):
    b.stop(sig=signal.SIGKILL)
    close_quietly(*conns)


def barrier(ch):
    """Declares a new durable queue. The broker sends declare-ok only once
    the declaration is committed, and commits are in order, so everything
    this connection did before (acks, deletes, delivery marks) is on disk
    when this returns."""
    ch.queue_declare(uname("barrier"), durable=True)


class Confirms:
    """Publisher confirms with many publishes in flight on a
    BlockingChannel (pika's own confirm mode waits for each one).

        c = Confirms(conn, ch)
        tag = c.publish("", q, body, PERSISTENT)
        c.wait_all()              # every tag acked (bounded)

    Confirms(conn, ch) again on the same channel returns the same object
    (delivery tags count on per channel)."""

    def __new__(cls, conn, ch, timeout=10.0):
        existing = getattr(ch, "_warren_confirms", None)
        if existing is not None:
            return existing
        self = super().__new__(cls)
        self._init(conn, ch, timeout)
        ch._warren_confirms = self
        return self

    def _init(self, conn, ch, timeout):
        self.conn, self.ch = conn, ch
        self.next_tag = 1
        self.pending = set()
        self.acked = set()
        self.nacked = set()
        self.errors = []  # acks for tags not outstanding
        ok = []
        ch._impl.confirm_delivery(ack_nack_callback=self._on_confirm,
                                  callback=ok.append)
        assert pump(conn, lambda: ok, timeout), "no confirm.select-ok"

    def _on_confirm(self, frame):
        m = frame.method
        nack = isinstance(m, pika.spec.Basic.Nack)
        if m.multiple:
            tags = sorted(t for t in self.pending if t <= m.delivery_tag)
        else:
            tags = [m.delivery_tag] if m.delivery_tag in self.pending else []
        if not tags:
            self.errors.append("%s for tag %d (multiple=%s) not outstanding" % (
                "nack" if nack else "ack", m.delivery_tag, m.multiple))
        for t in tags:
            self.pending.discard(t)
            (self.nacked if nack else self.acked).add(t)

    def publish(self, exchange, routing_key, body, props=PERSISTENT,
                mandatory=False):
        self.ch._impl.basic_publish(exchange, routing_key, body, props,
                                    mandatory)
        tag = self.next_tag
        self.next_tag += 1
        self.pending.add(tag)
        return tag

    def pump(self, seconds=0.0):
        self.conn.process_data_events(time_limit=seconds)

    def wait_all(self, timeout=10.0):
        pump(self.conn, lambda: not self.pending, timeout)
        assert not self.pending, "%d publishes unconfirmed after %.0f s" % (
            len(self.pending), timeout)
        assert not self.nacked, "nacked: %r" % sorted(self.nacked)[:20]
        assert not self.errors, self.errors[:5]

    def publish_all(self, exchange, routing_key, bodies, props=PERSISTENT,
                    window=500, timeout=30.0):
        """Publishes every body with at most `window` unconfirmed, then waits
        for all confirms."""
        deadline = time.monotonic() + timeout
        for body in bodies:
            while len(self.pending) >= window:
                assert time.monotonic() < deadline, "confirms too slow"
                self.conn.process_data_events(time_limit=0.01)
            self.publish(exchange, routing_key, body, props)
        self.wait_all(max(deadline - time.monotonic(), 1.0))


def publish_confirmed(conn, ch, routing_key, bodies, exchange="",
                      props=PERSISTENT, window=500, timeout=30.0):
    """Puts `ch` in confirm mode and publishes every body (pipelined), then
    waits for all confirms."""
    c = Confirms(conn, ch)
    c.publish_all(exchange, routing_key, bodies, props, window, timeout)
    return c


def consume_all(conn, ch, queue, n, timeout=30.0, prefetch=1000):
    """Consumes (no-ack) until n messages arrived, then checks that the
    queue is empty. Returns [(method, props, body)]."""
    got = Collector()
    ch.basic_qos(prefetch_count=prefetch)
    tag = ch.basic_consume(queue, got, auto_ack=True)
    pump(conn, lambda: len(got) >= n, timeout)
    conn.process_data_events(time_limit=0.1)
    ch.basic_cancel(tag)
    assert len(got) == n, "consumed %d of %d messages from %s" % (
        len(got), n, queue)
    m, _, _ = ch.basic_get(queue, auto_ack=True)
    assert m is None, "queue %s not empty after %d messages" % (queue, n)
    return got.items


def message_count(ch, queue):
    return ch.queue_declare(queue, passive=True).method.message_count


# ------------------------------------------------- a broker that must refuse

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_refused(datadir, timeout=20.0, env=None):
    """Runs the broker on `datadir`, expecting it to exit by itself.
    Returns (exit code, stderr text); fails if it is still running after
    `timeout` seconds (then it is killed)."""
    args = [warren_bin(), "--port", str(_free_port()), "--bind", "127.0.0.1",
            "--data", str(datadir)]
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env=dict(os.environ, **(env or {})))
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate(timeout=5)
        raise AssertionError("broker on %s did not exit within %.0f s; "
                             "output:\n%s" % (datadir, timeout,
                                              out.decode(errors="replace")))
    return p.returncode, out.decode(errors="replace")


def sanitizer_reports(text):
    return [m for m in SANITIZER_MARKERS if m in text]

