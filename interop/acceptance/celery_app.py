"""Celery app used by celery_check.py (Debian python3-celery, kombu + py-amqp).

Configuration comes from the environment so that the worker and the client agree:
  ACC_BROKER   broker URL, e.g. amqp://guest:guest@127.0.0.1:5672//
  ACC_BACKEND  result backend (default rpc://; "none" for no backend)
  ACC_QUEUE    task queue name (default acc_celery)
  ACC_OUT      file each task appends its argument to (one line per run)
"""
import os

from celery import Celery

backend = os.environ.get("ACC_BACKEND", "rpc://")
app = Celery("acc",
             broker=os.environ.get("ACC_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
             backend=None if backend == "none" else backend)
app.conf.task_default_queue = os.environ.get("ACC_QUEUE", "acc_celery")
app.conf.worker_hijack_root_logger = False


@app.task
def record(n):
    """Appends n to ACC_OUT (the side effect checked) and returns n squared."""
    with open(os.environ["ACC_OUT"], "a") as f:
        f.write(f"{n}\n")
    return n * n
