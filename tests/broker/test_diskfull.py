"""Disk full and I/O errors: when a commit fails the broker keeps the batch
and retries it, raises a disk alarm (connection.blocked "low on disk" to the
connections that published, which it stops reading), withholds the confirms
of the stuck publishes, and when writing works again commits the batch,
sends the confirms and connection.unblocked and reads again. Nothing stored
is lost: a SIGKILL restart afterwards finds every confirmed message once.

Two ways to make writes fail:
  * WARREN_FAULT_FILE: the broker's SQLite writes fail while the named file
    contains "full" (disk full) or "ioerr" (I/O error);
  * a real disk full: the data directory on a small tmpfs (needs root and
    mount), filled by a ballast file.
"""

import errno
import os
import subprocess

import pytest
from pika.exceptions import ChannelClosedByBroker

from brokertest import pump
from durabletest import KILL, Confirms, Watched, close_quietly, connect, kill, restart

LOW_ON_DISK = "low on disk"
WAIT = 10.0  # bound for anything that should happen "soon" (ASan is slow)


def passive_declare_async(ch, queue):
    """Sends a passive queue.declare without waiting; returns a list that
    gets the declare-ok frame."""
    box = []
    ch._impl.queue_declare(queue, passive=True, callback=box.append)
    return box


def check_queue(b, queue, bodies):
    """All of `bodies`, in order, exactly once, none redelivered."""
    conn = connect(b)
    ch = conn.channel()
    assert ch.queue_declare(queue, passive=True).method.message_count == \
        len(bodies)
    got = []
    for _ in range(len(bodies) + 1):
        m, _, body = ch.basic_get(queue, auto_ack=True)
        if m is None:
            break
        assert not m.redelivered, body[:40]
        got.append(body)
    assert len(got) == len(bodies)
    assert got == bodies
    conn.close()


HELD = b"held-by-the-alarm"


def expect_alarm_cycle(b, pub, ch, c, stuck, other, ochannel, clear):
    """With writes failing and `stuck` publish tags outstanding: pub gets
    connection.blocked, the stuck confirms are withheld; pub publishes HELD
    into "q", after which it is not read (as RabbitMQ holds a connection
    once it publishes during an alarm) while the non-publishing `other`
    connection still is; then clear() makes writing work and everything
    resumes. HELD is in "q" after the messages published before it."""
    assert pump(pub.conn, lambda: pub.blocked(), WAIT), \
        "no connection.blocked within %.0f s; events %r" % (WAIT, pub.events)
    assert pub.blocked() == [LOW_ON_DISK]
    assert not pub.unblocked()
    # the broker no longer reads from the blocked connection once it publishes...
    held = c.publish("", "q", HELD)
    declared = passive_declare_async(ch, "q")
    c.pump(1.0)
    assert stuck | {held} <= c.pending, "confirms sent while writes fail: %r" % sorted(
        (stuck | {held}) - c.pending)[:10]
    assert not declared, "a blocked connection was read from after it published"
    # ...but still serves a connection that never published
    assert ochannel.queue_declare("q", passive=True).method.queue == "q"
    assert other.events == []
    clear()
    assert pump(pub.conn, lambda: not c.pending and pub.unblocked()
                and declared, WAIT), \
        "after writes work again: %d unconfirmed, events %r, declare-ok %r" % (
            len(c.pending), pub.events, bool(declared))
    assert not c.nacked and not c.errors
    assert pub.events == [("blocked", LOW_ON_DISK), ("unblocked", None)]
    assert other.events == []


def start_with_fault_file(fresh_broker):
    b = fresh_broker(start=False)
    fault_file = b.workdir / "fault"
    b.env["WARREN_FAULT_FILE"] = str(fault_file)
    b.start()
    return b, fault_file


class FailingStore:
    """A broker with the fault VFS, a Watched publisher with confirms on
    durable queue "q", `before` published and confirmed, then the fault
    file set to `fault` and `during` published into the failing store."""

    def __init__(self, fresh_broker, fault, n_before, n_during, other=False):
        self.b, self.fault_file = start_with_fault_file(fresh_broker)
        self.pub = Watched(self.b)
        self.ch = self.pub.conn.channel()
        self.ch.queue_declare("q", durable=True)
        self.other = Watched(self.b) if other else None
        self.c = Confirms(self.pub.conn, self.ch)
        self.before = [b"before%02d" % i for i in range(n_before)]
        self.c.publish_all("", "q", self.before)
        self.fault_file.write_text(fault)
        self.during = [b"during%02d" % i for i in range(n_during)]
        self.stuck = {self.c.publish("", "q", body) for body in self.during}


@pytest.mark.parametrize("fault", ["full", "ioerr"])
def test_fault_file_blocks_publishers_and_recovers(fresh_broker, fault):
    f = FailingStore(fresh_broker, fault, 50, 20, other=True)
    b, fault_file, pub, ch, c, other = f.b, f.fault_file, f.pub, f.ch, f.c, f.other
    och = other.conn.channel()
    before, during, stuck = f.before, f.during, f.stuck

    def clear():
        if fault == "full":
            fault_file.unlink()
        else:
            fault_file.write_text("ok")

    expect_alarm_cycle(b, pub, ch, c, stuck, other, och, clear)
    after = [b"after%02d" % i for i in range(10)]
    c.publish_all("", "q", after, timeout=WAIT)
    restart(b, KILL, [pub.conn, other.conn])
    check_queue(b, "q", before + during + [HELD] + after)


def test_kill_while_writes_fail_keeps_what_was_confirmed(fresh_broker):
    """SIGKILL during the alarm, restart with writing working: the confirmed
    messages are there once; the stuck ones, if at all, once and in order."""
    f = FailingStore(fresh_broker, "ioerr", 30, 10)
    b, fault_file, pub, c, before, during = f.b, f.fault_file, f.pub, f.c, f.before, f.during
    assert pump(pub.conn, lambda: pub.blocked(), WAIT), pub.events
    c.pump(0.3)
    assert len(c.pending) == len(during)
    fault_file.unlink()
    restart(b, KILL, [pub.conn])
    conn = connect(b)
    ch = conn.channel()
    got = []
    for _ in range(len(before) + len(during) + 1):
        m, _, body = ch.basic_get("q", auto_ack=True)
        if m is None:
            break
        got.append(body)
    assert got[:len(before)] == before
    assert got[len(before):] == during[:len(got) - len(before)]
    conn.close()


# ------------------------------------------------------------------ tmpfs

TMPFS_SIZE_KIB = 4096


@pytest.fixture
def tmpfs_broker(fresh_broker):
    """An unstarted broker whose data directory is a small tmpfs; stopped
    (SIGTERM) and unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    b = fresh_broker(start=False)
    b.datadir.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o",
                        "size=%dk" % TMPFS_SIZE_KIB, "tmpfs", str(b.datadir)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs: %s" % (r.stderr.strip() or
                                                  r.returncode))
    try:
        yield b
    finally:
        b.stop()
        r = subprocess.run(["umount", str(b.datadir)], capture_output=True)
        if r.returncode != 0:
            subprocess.run(["umount", "-l", str(b.datadir)],
                           capture_output=True)


def fill_up(path):
    """Writes `path` until the file system is full; returns bytes written."""
    n = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while n < (TMPFS_SIZE_KIB + 1024) * 1024:
            try:
                n += f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
        # whatever is left in partial pages
        while True:
            try:
                if f.write(b"\0" * 512) == 0:
                    break
                n += 512
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
    st = os.statvfs(os.path.dirname(path))
    assert st.f_bavail == 0, "tmpfs not full after the ballast"
    return n


def test_real_disk_full_on_tmpfs(tmpfs_broker):
    b = tmpfs_broker.start()
    pub = Watched(b)
    ch = pub.conn.channel()
    ch.queue_declare("q", durable=True)
    other = Watched(b)
    och = other.conn.channel()
    c = Confirms(pub.conn, ch)

    def body(i, size):
        head = b"%06d|" % i
        return (head * (size // len(head) + 1))[:size]

    bodies = [body(i, 1024) for i in range(20)]
    c.publish_all("", "q", bodies)
    ballast = b.datadir / "ballast"
    fill_up(str(ballast))
    # publish 8 KiB messages until the broker cannot write (SQLite may first
    # reuse space it already has); at most 4 MiB
    for _ in range(25):
        for _ in range(20):
            bodies.append(body(len(bodies), 8192))
            c.publish("", "q", bodies[-1])
        c.pump(0.2)
        if pub.blocked():
            break
    assert pub.blocked(), ("published %d messages onto a full disk without "
                           "connection.blocked; %d unconfirmed" % (
                               len(bodies), len(c.pending)))
    stuck = set(c.pending)
    assert stuck, "blocked, yet every publish was confirmed"

    def clear():
        ballast.unlink()

    expect_alarm_cycle(b, pub, ch, c, stuck, other, och, clear)
    bodies.append(HELD)
    more = [body(len(bodies) + i, 1024) for i in range(10)]
    c.publish_all("", "q", more, timeout=WAIT)
    bodies += more
    restart(b, KILL, [pub.conn, other.conn])
    check_queue(b, "q", bodies)
    close_quietly(pub.conn, other.conn)


@pytest.mark.parametrize("ending", ["recovers", "killed"])
def test_durable_declare_while_writes_fail(fresh_broker, ending):
    """declare-ok promises the declaration is on disk, also while writes
    fail: if it arrives, the queue (and its binding) survive a SIGKILL.
    `recovers`: writing works again, the ok must then arrive; `killed`:
    SIGKILL while writes still fail."""
    b, fault_file = start_with_fault_file(fresh_broker)
    conn = connect(b)
    ch = conn.channel()
    ch.exchange_declare("x", exchange_type="direct", durable=True)
    fault_file.write_text("full")
    declared = []
    ch._impl.queue_declare("qnew", durable=True, callback=declared.append)
    conn.process_data_events(time_limit=1.0)
    ok_while_failing = bool(declared)
    if ending == "recovers":
        fault_file.unlink()
        assert pump(conn, lambda: declared, WAIT), \
            "no declare-ok %.0f s after writes work again" % WAIT
        ch.queue_bind("qnew", "x", "k")
        restart(b, KILL, [conn])
    else:
        kill(b, [conn])
        fault_file.unlink()
        b.start()
    conn = connect(b)
    ch = conn.channel()
    if ending == "recovers" or ok_while_failing:
        what = ("declare-ok arrived while writes failed" if ok_while_failing
                else "declare-ok arrived after writes worked again")
        if ending == "recovers":
            what += ", bind-ok right after"
        gone = None
        try:
            ch.queue_declare("qnew", passive=True)
        except ChannelClosedByBroker as e:
            gone = e
        if gone is not None:
            pytest.fail("%s, yet after SIGKILL: %s" % (what, gone),
                        pytrace=False)
        if ending == "recovers":
            ch.basic_publish("x", "k", b"routed")
            assert ch.basic_get("qnew", auto_ack=True)[2] == b"routed", \
                "%s, yet after SIGKILL the binding is gone" % what
    conn.close()


def test_sigterm_while_writes_fail_does_not_hang(fresh_broker):
    """SIGTERM during the disk alarm: the broker stops within the harness's
    10 s (any exit status, but not a crash); restarted with writing working
    it has every confirmed message once, and the stuck ones at most once."""
    f = FailingStore(fresh_broker, "full", 20, 10)
    b, fault_file, pub, before, during = f.b, f.fault_file, f.pub, f.before, f.during
    assert pump(pub.conn, lambda: pub.blocked(), WAIT), pub.events
    rc = b.stop()
    assert rc is not None, "still running 10 s after SIGTERM\n%s" % (
        b.stderr_tail())
    assert rc >= 0, "died of signal %d" % -rc
    print("exit status on SIGTERM while writes fail: %d" % rc)
    close_quietly(pub.conn)
    fault_file.unlink()
    b.start()
    conn = connect(b)
    ch = conn.channel()
    got = []
    for _ in range(len(before) + len(during) + 1):
        m, _, body = ch.basic_get("q", auto_ack=True)
        if m is None:
            break
        got.append(body)
    assert got[:len(before)] == before
    assert got[len(before):] == during[:len(got) - len(before)]
    conn.close()
