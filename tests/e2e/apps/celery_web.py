"""The web app of the Celery end-to-end tests: the issue's example, unchanged user code."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import BackgroundTasks, FastAPI

import tasklens
from tests.e2e.apps.celery_tasks import (
    capture_payment,
    celery_app,
    flaky_sync,
    slow_report,
    write_notification,
)

tasklens.setup(service_name="shop-web")
app = FastAPI()


def audit(email: str) -> None:
    """An in-process task beside the Celery one: it still runs here."""
    with open(Path(os.environ["SHOP_OUTBOX"]) / "audit.log", "a") as f:
        f.write(f"{os.getpid()} audit {email}\n")


@app.post("/send-notification/{email}")
async def send_notification(email: str, background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(write_notification, email, message="some notification")
    background_tasks.add_task(audit, email)
    return {"message": "Notification sent in the background"}


@app.post("/pay/{order}")
async def pay(order: int, background_tasks: BackgroundTasks) -> dict[str, int]:
    background_tasks.add_task(capture_payment, order)
    return {"order": order}


@app.post("/sync/{account}")
async def sync(account: int, background_tasks: BackgroundTasks) -> dict[str, int]:
    background_tasks.add_task(flaky_sync, account)
    return {"account": account}


@app.post("/report")
async def report(seconds: float, background_tasks: BackgroundTasks) -> dict[str, float]:
    background_tasks.add_task(slow_report, seconds)
    return {"seconds": seconds}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


tasklens.instrument(app, celery=celery_app)
