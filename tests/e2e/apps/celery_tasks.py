"""The Celery app of the Celery end-to-end tests: what ``celery -A ... worker`` loads.

Broker from ``SHOP_BROKER_URL``; worker metrics on ``SHOP_WORKER_METRICS_PORT``; each run
of ``write_notification`` appends a line to ``$SHOP_OUTBOX/notifications.log``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import structlog
from celery import Celery

import tasklens.celery

celery_app = Celery("shop", broker=os.environ.get("SHOP_BROKER_URL", "redis://127.0.0.1:6379/0"))
celery_app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_acks_late=False,
    worker_prefetch_multiplier=1,
    # A broker that stops answering fails a send after this, instead of holding it forever.
    broker_transport_options={"socket_timeout": 1.0, "socket_connect_timeout": 1.0},
)
log = structlog.get_logger("shop")


class PaymentDeclinedError(Exception):
    """The business failure of ``capture_payment``."""


@celery_app.task
def write_notification(email: str, message: str = "") -> None:
    outbox = Path(os.environ["SHOP_OUTBOX"])
    with open(outbox / "notifications.log", "a") as f:
        f.write(f"{os.getpid()} notification for {email}: {message}\n")
    log.info("notification written")


@celery_app.task
def capture_payment(order: int) -> None:
    raise PaymentDeclinedError(f"order {order} declined")


@celery_app.task(bind=True, max_retries=3)
def flaky_sync(self: Any, account: int) -> None:
    """Asks for one retry, then succeeds (each attempt is a run)."""
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    outbox = Path(os.environ["SHOP_OUTBOX"])
    with open(outbox / "synced.log", "a") as f:
        f.write(f"{os.getpid()} synced {account} after {self.request.retries} retry\n")


@celery_app.task
def slow_report(seconds: float) -> None:
    outbox = Path(os.environ["SHOP_OUTBOX"])
    (outbox / f"slow-{os.getpid()}.started").write_text("started")
    time.sleep(seconds)


tasklens.celery.instrument_worker(
    celery_app,
    service_name="shop-worker",
    metrics_port=int(os.environ.get("SHOP_WORKER_METRICS_PORT", "9808")),
)
