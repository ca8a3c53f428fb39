"""What the Python acceptance scripts share: the broker URL from argv or AMQP_URL,
ok/FAIL check lines with a tally, and a watchdog that bounds a whole script."""

import os
import sys
import threading

failures = []


def broker_url(vhost_suffix="/"):
    """argv[1] or $AMQP_URL; a bare port number means guest@127.0.0.1 on that port.
    vhost_suffix is what follows host:port ("/" for pika, "//" for Celery)."""
    arg = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    return f"amqp://guest:guest@127.0.0.1:{arg}{vhost_suffix}" if arg.isdigit() else arg


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def start_watchdog(seconds):
    """Ends the process with exit code 2 if it is still running after seconds."""
    def expire():
        print(f"FAIL overall deadline of {seconds}s exceeded", flush=True)
        os._exit(2)
    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


def finish():
    """Prints the closing RESULT line; returns the script's exit code."""
    print(f"RESULT: {'PASS' if not failures else 'FAIL'} "
          f"({len(failures)} failed check(s))")
    return 0 if not failures else 1
