"""gunicorn settings for a tasklens-instrumented app with several uvicorn workers.

    PROMETHEUS_MULTIPROC_DIR=/run/myservice-metrics \\
        gunicorn -c python:tasklens.gunicorn_conf myservice.main:app

(or a copy written by ``tasklens export --out DIR``: ``gunicorn -c DIR/gunicorn.conf.py``).

``/metrics`` (any worker) then reports the sum over all workers. The directory is
prepared when gunicorn starts (created if missing; refused if it is a symlink, a file, or
not owned/writable by the service's user; ``*.db`` files of a previous run deleted), and
each worker that exits (crash, SIGKILL, ``max_requests`` restart) has its live gauges
removed from the sums; its counters stay. See docs/multi-worker.md.

Settings read from the environment (command-line flags override them all):
``PROMETHEUS_MULTIPROC_DIR`` (required), ``WEB_CONCURRENCY`` (workers, default: CPU count),
``TASKLENS_BIND`` (default ``127.0.0.1:8000``), ``TASKLENS_GRACEFUL_TIMEOUT`` (seconds,
default 30; keep it above ``instrument(shutdown_timeout=...)`` in detached mode).
"""

from __future__ import annotations

import importlib.util
import os

if not (os.environ.get("PROMETHEUS_MULTIPROC_DIR") or "").strip():
    raise RuntimeError(
        "tasklens gunicorn config: set PROMETHEUS_MULTIPROC_DIR to a directory reserved for "
        "this service's metric files (e.g. /run/myservice-metrics); prometheus_client reads "
        "it when the workers start"
    )

# Imported after the check above (it imports prometheus_client, which reads the variable).
from tasklens import multiprocess

# uvicorn.workers is deprecated in favour of the uvicorn-worker package; use it if present.
worker_class = (
    "uvicorn_worker.UvicornWorker"
    if importlib.util.find_spec("uvicorn_worker") is not None
    else "uvicorn.workers.UvicornWorker"
)
workers = int(os.environ.get("WEB_CONCURRENCY", os.cpu_count() or 1))
bind = [os.environ.get("TASKLENS_BIND", "127.0.0.1:8000")]
graceful_timeout = int(os.environ.get("TASKLENS_GRACEFUL_TIMEOUT", "30"))
# preload_app must stay off: each worker sets telemetry up (exporter threads, metric
# files) after the fork.
preload_app = False


def on_starting(server):  # type: ignore[no-untyped-def]
    multiprocess.on_starting(server)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    multiprocess.child_exit(server, worker)
