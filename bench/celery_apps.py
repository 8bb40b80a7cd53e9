"""The apps of ``bench.case_celery``: a no-op Celery task, an app that runs a no-op task in
process, and one whose tasks go to Celery (``celery=``). Also what ``celery -A`` loads for
the case's worker (``SHOP_BROKER_URL``, ``SHOP_WORKER_METRICS_PORT``)."""

from __future__ import annotations

import os

from celery import Celery
from fastapi import BackgroundTasks, FastAPI

import tasklens
import tasklens.celery

celery_app = Celery("bench", broker=os.environ.get("SHOP_BROKER_URL", "redis://127.0.0.1:6379/0"))
celery_app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
_sent = [0]


@celery_app.task
def noop(i: int) -> None:
    """The task: nothing (its cost is the transport's)."""


def local_noop(i: int) -> None:
    """The same, run in the web process."""


local_app = FastAPI()
celery_backed_app = FastAPI()


@local_app.post("/local")
async def local(n: int, background_tasks: BackgroundTasks) -> dict[str, int]:
    for i in range(n):
        background_tasks.add_task(local_noop, i)
    return {"n": n}


@celery_backed_app.post("/send")
async def send(n: int, background_tasks: BackgroundTasks) -> dict[str, int]:
    for i in range(n):
        background_tasks.add_task(noop, i)
    _sent[0] += n
    return {"n": n}


async def direct_publish(count: int) -> float:
    """µs per ``noop.apply_async`` (Celery alone; blocking, as a sync task would run it)."""
    import time

    noop.apply_async((0,))  # connect
    start = time.perf_counter()
    for i in range(count):
        noop.apply_async((i,))
    _sent[0] += count + 1
    return (time.perf_counter() - start) / count * 1e6


def sent_count() -> int:
    return _sent[0]


if os.environ.get("SHOP_WORKER_METRICS_PORT"):  # the case's worker
    tasklens.celery.instrument_worker(
        celery_app, metrics_port=int(os.environ["SHOP_WORKER_METRICS_PORT"])
    )
else:
    tasklens.setup(service_name="bench-celery", span_logs=False, configure_logs=False)
    tasklens.instrument(local_app, metrics_path=None, loop_lag_interval=None)
    tasklens.instrument(
        celery_backed_app, metrics_path=None, loop_lag_interval=None, celery=celery_app
    )
