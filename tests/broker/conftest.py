"""Harness for the broker tests: starts the real Warren binary (or uses an
external broker) and gives each test fresh pika connections.

Environment:
  WARREN_BIN       broker binary (default: build/warren under the repo root)
  AMQP_EXTERNAL    host:port of a running broker to test instead (e.g. a
                   RabbitMQ used to validate the tests); tests that start and
                   stop their own broker are skipped then.
  WARREN_TEST_KEEP if set, keep the brokers' data and stderr directories.
  WARREN_START_TIMEOUT  seconds to wait for a started broker to accept
                   connections (default 10).

Markers: `crash` (tests/broker/test_crash.py, SIGKILL rounds; run by default,
deselect with `-m "not crash"`).
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pika
import pytest

from brokertest import Amqp

REPO_ROOT = Path(__file__).resolve().parents[2]
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:")
READY_TIMEOUT = float(os.environ.get("WARREN_START_TIMEOUT", "10"))
STOP_TIMEOUT = 10.0


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _probe(host, port):
    """'closed' if nothing accepts on the port; 'answers' if the server
    replies to an AMQP protocol header; 'accepts' if it only accepts the
    TCP connection (or hangs up without a reply)."""
    try:
        s = socket.create_connection((host, port), timeout=0.5)
    except OSError:
        return "closed"
    try:
        s.settimeout(1.0)
        s.sendall(b"AMQP\x00\x00\x09\x01")
        return "answers" if s.recv(1) else "accepts"
    except OSError:
        return "accepts"
    finally:
        s.close()


def warren_bin():
    return os.environ.get("WARREN_BIN") or str(REPO_ROOT / "build" / "warren")


def external_address():
    ext = os.environ.get("AMQP_EXTERNAL")
    if not ext:
        return None
    host, _, port = ext.rpartition(":")
    return host or "127.0.0.1", int(port)


def make_params(host, port, **overrides):
    """pika.ConnectionParameters for guest/guest on vhost '/'; any keyword
    overrides the default (heartbeat, channel_max, frame_max, credentials,
    virtual_host...)."""
    kw = dict(
        host=host,
        port=port,
        virtual_host="/",
        credentials=pika.PlainCredentials("guest", "guest"),
        connection_attempts=1,
        socket_timeout=5,
        stack_timeout=10,
    )
    kw.update(overrides)
    return pika.ConnectionParameters(**kw)


class ExternalBroker:
    external = True

    def __init__(self, host, port):
        self.host = host
        self.port = port

    def params(self, **overrides):
        return make_params(self.host, self.port, **overrides)


class BrokerProcess:
    """One Warren process on a free port with its own data directory; its
    stderr goes to a file that stop() checks for sanitizer reports."""

    external = False

    def __init__(self, binary=None, env=None, args=None):
        self.binary = binary or warren_bin()
        self.env = dict(env or {})  # added to (overriding) os.environ
        self.args = list(args or [])  # extra command-line options
        self.host = "127.0.0.1"
        self.port = None
        self.proc = None
        self.workdir = Path(tempfile.mkdtemp(prefix="warren-test-"))
        self.datadir = self.workdir / "data"
        self.stderr_path = self.workdir / "stderr.log"
        self.returncode = None

    def params(self, **overrides):
        return make_params(self.host, self.port, **overrides)

    def start(self):
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(
                "broker binary %s not found or not executable (build it with "
                "`make`, or set WARREN_BIN / AMQP_EXTERNAL)" % self.binary)
        self.datadir.mkdir(exist_ok=True)
        for _attempt in range(3):
            self.port = _free_port()
            errf = open(self.stderr_path, "ab")
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", self.host,
                 "--data", str(self.datadir), "--log-level", "debug"]
                + self.args,
                stdin=subprocess.DEVNULL, stdout=errf, stderr=errf,
                env=dict(os.environ, **self.env) if self.env else None)
            errf.close()
            # Ready when the broker answers a protocol header; a port that
            # only accepts TCP until the deadline counts as ready too, so
            # that a broken handshake fails the tests, not the harness.
            deadline = time.monotonic() + READY_TIMEOUT
            accepted = False
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                state = _probe(self.host, self.port)
                if state == "answers":
                    return self
                accepted = accepted or state == "accepts"
                time.sleep(0.05)
            if self.proc.poll() is None and accepted:
                return self
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
                raise RuntimeError("broker did not accept connections on port "
                                   "%d within %.0f s:\n%s" % (
                                       self.port, READY_TIMEOUT,
                                       self.stderr_tail()))
            # exited early: maybe the port was taken meanwhile; try again
        raise RuntimeError("broker exited at startup (code %s):\n%s" % (
            self.proc.returncode, self.stderr_tail()))

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Send sig, wait at most timeout seconds; returns the exit code
        (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                self.returncode = None
                return None
        self.returncode = self.proc.returncode
        return self.returncode

    def stderr_text(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stderr_tail(self, lines=60):
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    def problems(self):
        """What is wrong with how the broker ended: a non-zero exit code or
        a sanitizer report. Empty list if all is well. Call after stop()."""
        out = []
        if self.returncode != 0:
            out.append("broker exit code %r (expected 0)" % (self.returncode,))
        text = self.stderr_text()
        for marker in SANITIZER_MARKERS:
            if marker in text:
                out.append("broker stderr contains %r" % marker)
        return out

    def cleanup(self, keep=False):
        if keep or os.environ.get("WARREN_TEST_KEEP"):
            return
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_broker():
    """Start a fresh, separate Warren broker (the caller must stop() it and
    check problems()). Prefer the `fresh_broker` fixture."""
    return BrokerProcess().start()


def _finish(b, what):
    if b.proc is None:  # never started
        b.cleanup()
        return None
    rc = b.stop()
    problems = b.problems()
    b.cleanup(keep=bool(problems))
    if problems:
        pytest.fail("%s: %s\n(stderr in %s)\n--- stderr tail ---\n%s" % (
            what, "; ".join(problems), b.stderr_path, b.stderr_tail()),
            pytrace=False)
    return rc


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "crash: SIGKILL crash rounds (test_crash.py); run by "
        "default, deselect with -m 'not crash'")


@pytest.fixture(scope="session")
def broker():
    ext = external_address()
    if ext:
        yield ExternalBroker(*ext)
        return
    b = BrokerProcess()
    try:
        b.start()
    except RuntimeError as e:
        b.cleanup(keep=True)
        pytest.fail(str(e), pytrace=False)
    yield b
    _finish(b, "session broker")


@pytest.fixture
def fresh_broker():
    """Factory: fresh_broker() starts a separate broker for this test. At
    teardown each one still running gets SIGTERM and must exit 0 with a
    clean stderr. Skipped against an external broker."""
    if external_address():
        pytest.skip("needs its own broker process (AMQP_EXTERNAL is set)")
    started = []

    def factory(env=None, start=True, args=None):
        """env: extra environment variables for the broker; args: extra
        command-line options (e.g. ["--consumer-timeout", "300"]);
        start=False returns it unstarted (call .start() after preparing
        .datadir)."""
        b = BrokerProcess(env=env, args=args)
        started.append(b)
        return b.start() if start else b

    yield factory
    for b in started:
        _finish(b, "fresh broker")


@pytest.fixture
def amqp(broker):
    """Connections, channels and entity names for one test; closes the
    connections and deletes the declared entities at teardown."""
    a = Amqp(broker)
    yield a
    a.teardown()


@pytest.fixture
def ch(amqp):
    """An open channel on a fresh connection."""
    return amqp.channel()
