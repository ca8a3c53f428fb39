"""Interop: the broker driven by rabbitmq-c, unmodified.

* interop/rabbitmqc_basic.c (built as build/interop/rabbitmqc_basic by
  `make build/interop/rabbitmqc_basic`; directory overridable with
  WARREN_INTEROP_DIR) must exit 0.
* Debian's amqp-tools (rabbitmq-c's command-line programs): declare, publish,
  get and consume with exact body checks.

Only the `broker` fixture's host and port are used. Every subprocess is
bounded by a timeout.
"""

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30


def interop_bin(name):
    d = Path(os.environ.get("WARREN_INTEROP_DIR") or REPO_ROOT / "build" / "interop")
    path = d / name
    if not os.access(path, os.X_OK):
        pytest.fail("%s is missing: build it with `make build/interop/%s` "
                    "(or set WARREN_INTEROP_DIR)" % (path, name), pytrace=False)
    return str(path)


def test_rabbitmqc_basic(broker):
    r = subprocess.run([interop_bin("rabbitmqc_basic"), broker.host, str(broker.port)],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, "rabbitmqc_basic failed (exit %d):\n%s%s" % (
        r.returncode, out, r.stderr.decode(errors="replace"))
    assert out.splitlines()[-1] == "7 passed, 0 failed", out


# ------------------------------------------------------------ amqp-tools

def tool(name, broker, *args, input=b"", check=True):
    """Runs an amqp-tools program against the broker -> CompletedProcess."""
    path = shutil.which(name)
    if path is None:
        pytest.fail("%s not found: install Debian's amqp-tools "
                    "(tools/install-deps.sh test)" % name, pytrace=False)
    url = "--url=amqp://guest:guest@%s:%d" % (broker.host, broker.port)
    r = subprocess.run([path, url, *args], input=input, capture_output=True,
                       timeout=TIMEOUT)
    if check:
        assert r.returncode == 0, "%s %s: exit %d\n%s" % (
            name, " ".join(args), r.returncode, r.stderr.decode(errors="replace"))
    return r


@pytest.fixture
def tools_queue(broker):
    name = "amqp-tools-%s" % uuid.uuid4().hex[:10]
    r = tool("amqp-declare-queue", broker, "-q", name)
    assert r.stdout == name.encode() + b"\n"
    yield name
    tool("amqp-delete-queue", broker, "-q", name, check=False)


def test_amqp_tools_publish_get(broker, tools_queue):
    body = b"hello\x00binary\xff\xfe body\n"
    tool("amqp-publish", broker, "-r", tools_queue, "-C", "application/octet-stream",
         input=body)
    r = tool("amqp-get", broker, "-q", tools_queue)
    assert r.stdout == body
    # amqp-get exits 2 on get-empty: the message was taken (no-ack).
    r = tool("amqp-get", broker, "-q", tools_queue, check=False)
    assert (r.returncode, r.stdout) == (2, b"")


def test_amqp_tools_large_body(broker, tools_queue):
    # 300 000 octets: three body frames at frame_max 131072.
    body = bytes((i * 7 + (i >> 10)) % 256 for i in range(300000))
    tool("amqp-publish", broker, "-r", tools_queue, input=body)
    assert tool("amqp-get", broker, "-q", tools_queue).stdout == body


def test_amqp_tools_publish_consume_in_order(broker, tools_queue):
    for text in ("first message", "second message", "third message"):
        tool("amqp-publish", broker, "-r", tools_queue, "-b", text)
    # amqp-consume acks each message after its command exits; prefetch 1
    # keeps the others ready for the next run.
    out = tool("amqp-consume", broker, "-q", tools_queue, "-c", "1", "-p", "1", "cat").stdout
    assert out == b"first message"
    out = tool("amqp-consume", broker, "-q", tools_queue, "-c", "2", "-p", "1", "cat").stdout
    assert out == b"second messagethird message"
    r = tool("amqp-get", broker, "-q", tools_queue, check=False)
    assert (r.returncode, r.stdout) == (2, b"")


def test_amqp_tools_delete_queue_reports_count(broker, tools_queue):
    for i in range(3):
        tool("amqp-publish", broker, "-r", tools_queue, "-b", "m%d" % i)
    r = tool("amqp-delete-queue", broker, "-q", tools_queue)
    assert r.stdout == b"3\n"
    # Deleting it again succeeds (RabbitMQ made queue.delete idempotent).
    r = tool("amqp-delete-queue", broker, "-q", tools_queue)
    assert r.stdout == b"0\n"
