#!/usr/bin/python3
"""Runs RabbitMQ as if it were `warren --port P --bind H --data D ...`, so
that the tests which start their own broker (test_shutdown.py) can be checked
against RabbitMQ:

    WARREN_BIN=tests/broker/rabbitmq_shim.py WARREN_START_TIMEOUT=30 \
        /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/broker

Needs Debian's rabbitmq-server; run as root (the node runs as root with its
cookie and data under D). Not used by the normal test run.
"""
import hashlib
import os
import sys

args = sys.argv[1:]
opts = dict(zip(args[::2], args[1::2]))
port = opts["--port"]
data = os.path.abspath(opts["--data"])
tag = hashlib.sha1(data.encode()).hexdigest()[:10]
os.makedirs(data + "/log", exist_ok=True)
env = dict(os.environ,
           HOME=data,
           RABBITMQ_NODE_PORT=port,
           RABBITMQ_NODE_IP_ADDRESS=opts.get("--bind", "127.0.0.1"),
           RABBITMQ_NODENAME="w%s@localhost" % tag,
           RABBITMQ_MNESIA_BASE=data + "/mnesia",
           RABBITMQ_LOG_BASE=data + "/log",
           RABBITMQ_DIST_PORT=str(20000 + int(port) % 20000),
           RABBITMQ_ENABLED_PLUGINS_FILE=data + "/plugins")
os.execve("/usr/lib/rabbitmq/bin/rabbitmq-server", ["rabbitmq-server"], env)
