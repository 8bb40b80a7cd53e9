"""The Celery demo: a shop whose order endpoint hands two of its three background tasks to
Celery workers, with the same ``add_task`` calls as in-process tasks.

    celery -A tasklens.demo_celery worker          # the worker (metrics on :9808/metrics)
    python -m tasklens.demo_celery --self-traffic  # the web app (metrics on :8001/metrics)

Both read the broker from ``TASKLENS_DEMO_BROKER_URL`` (default ``redis://127.0.0.1:6379/0``).
The worker serves ``/metrics`` on ``TASKLENS_DEMO_WORKER_METRICS_HOST``:
``TASKLENS_DEMO_WORKER_METRICS_PORT``; its default prefork pool needs
``PROMETHEUS_MULTIPROC_DIR`` (a directory of its own). ``make stack`` starts Redis, a worker
and this app beside the main demo (deploy/local/stack.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import structlog
from celery import Celery
from fastapi import BackgroundTasks, FastAPI

import tasklens
import tasklens.celery

BROKER_ENV = "TASKLENS_DEMO_BROKER_URL"
log = structlog.get_logger("demo.celery")

celery_app = Celery("tasklens_demo", broker=os.environ.get(BROKER_ENV, "redis://127.0.0.1:6379/0"))
celery_app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=1,
    # A broker that stops answering fails a send after 5 s (counted) instead of holding it.
    broker_transport_options={"socket_timeout": 5, "socket_connect_timeout": 5},
)


class CardDeclinedError(Exception):
    """The business failure of ``charge_card``."""


# --- Celery tasks (run on the workers) ------------------------------------------------------
@celery_app.task
def send_receipt(email: str, order_id: int) -> None:
    """Quick; never fails."""
    log.info("receipt sent", order_id=order_id)


@celery_app.task
def charge_card(order_id: int, fail_ratio: float) -> None:
    """Fails for a share of orders (the same orders every time: seeded by the order id)."""
    time.sleep(0.005)
    if random.Random(order_id).random() < fail_ratio:
        raise CardDeclinedError(f"card declined for order {order_id}")
    log.info("card charged", order_id=order_id)


@celery_app.task
def build_invoice(order_id: int) -> None:
    """Slow: a worker busy for a while."""
    time.sleep(random.uniform(0.05, 0.3))


tasklens.celery.instrument_worker(
    celery_app,
    service_name=os.environ.get("TASKLENS_DEMO_WORKER_SERVICE_NAME", "tasklens-demo-worker"),
    metrics_port=int(os.environ.get("TASKLENS_DEMO_WORKER_METRICS_PORT", "9808")),
    metrics_host=os.environ.get("TASKLENS_DEMO_WORKER_METRICS_HOST", "127.0.0.1"),
)


# --- the web app ----------------------------------------------------------------------------
def audit(order_id: int) -> None:
    """An in-process task beside the Celery ones: it still runs in the web process."""
    outbox = Path(os.environ.get("TASKLENS_DEMO_DIR", "/tmp")) / "tasklens-demo"
    outbox.mkdir(parents=True, exist_ok=True)
    with open(outbox / "audit.log", "a") as f:
        f.write(f"order {order_id}\n")


def create_app() -> FastAPI:
    """The shop (``uvicorn --factory tasklens.demo_celery:create_app``), settings from env."""
    tasklens.setup(service_name=os.environ.get("OTEL_SERVICE_NAME", "tasklens-demo-celery"))
    fail_ratio = float(os.environ.get("TASKLENS_DEMO_FAIL_RATIO", "0.2"))
    self_traffic = os.environ.get("TASKLENS_DEMO_SELF_TRAFFIC", "") == "1"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_self_traffic()) if self_traffic else None
        yield
        if task is not None:
            task.cancel()

    app = FastAPI(title="tasklens Celery demo", lifespan=lifespan)

    @app.post("/orders/{order_id}")
    async def create_order(order_id: int, background_tasks: BackgroundTasks) -> dict[str, int]:
        background_tasks.add_task(charge_card, order_id, fail_ratio)  # on a worker
        background_tasks.add_task(send_receipt, "ada@example.com", order_id)  # on a worker
        background_tasks.add_task(audit, order_id)  # here, in the thread pool
        return {"order_id": order_id}

    @app.post("/invoices/{order_id}")
    async def create_invoice(order_id: int, background_tasks: BackgroundTasks) -> dict[str, int]:
        background_tasks.add_task(build_invoice, order_id)
        return {"order_id": order_id}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    tasklens.instrument(app, celery=celery_app)
    return app


async def _self_traffic() -> None:
    """Requests to the running server (loopback) for a bounded time."""
    import httpx

    port = int(os.environ.get("TASKLENS_DEMO_PORT", "8001"))
    rate = float(os.environ.get("TASKLENS_DEMO_RATE", "5"))
    deadline = time.monotonic() + float(os.environ.get("TASKLENS_DEMO_TRAFFIC_SECONDS", "3600"))
    await asyncio.sleep(0.5)
    n = 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        while time.monotonic() < deadline:
            n += 1
            path = f"/invoices/{n}" if n % 5 == 0 else f"/orders/{n}"
            try:
                await client.post(path)
            except httpx.HTTPError as exc:
                log.warning("self-traffic request failed", error=str(exc))
            await asyncio.sleep(1 / rate)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tasklens.demo_celery``: the web app under uvicorn."""
    parser = argparse.ArgumentParser(prog="python -m tasklens.demo_celery", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--self-traffic", action="store_true", help="send requests to itself")
    parser.add_argument("--rate", type=float, default=5.0, help="self-traffic requests/s")
    parser.add_argument("--traffic-seconds", type=float, default=3600.0)
    parser.add_argument("--fail-ratio", type=float, default=0.2, help="share of declined cards")
    args = parser.parse_args(argv)
    import uvicorn

    os.environ.update(
        TASKLENS_DEMO_PORT=str(args.port),
        TASKLENS_DEMO_RATE=str(args.rate),
        TASKLENS_DEMO_TRAFFIC_SECONDS=str(args.traffic_seconds),
        TASKLENS_DEMO_FAIL_RATIO=str(args.fail_ratio),
    )
    if args.self_traffic:
        os.environ["TASKLENS_DEMO_SELF_TRAFFIC"] = "1"
    print(f"tasklens Celery demo on http://{args.host}:{args.port}", file=sys.stderr)
    uvicorn.run(
        "tasklens.demo_celery:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_config=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
