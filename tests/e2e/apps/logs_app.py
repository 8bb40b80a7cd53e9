"""A failing task under each logging set-up of the app (``LOGS_APP_CONFIG``), configured
before ``tasklens.setup()``: ``basic`` (``logging.basicConfig()``), ``structlog_json`` and
``structlog_console`` (the app's own structlog chain and renderer), ``none``."""

from __future__ import annotations

import logging
import os

import structlog
from fastapi import BackgroundTasks, FastAPI

import tasklens

CONFIG = os.environ.get("LOGS_APP_CONFIG", "none")
if CONFIG == "basic":
    logging.basicConfig(level=logging.INFO)
elif CONFIG == "structlog_json":
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()]
    )
elif CONFIG == "structlog_console":
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.dev.ConsoleRenderer(colors=False),
        ]
    )

tasklens.setup(service_name="logs-e2e")
app = FastAPI()


def charge_card(order: int) -> None:
    raise ValueError(f"card declined for order {order}")


@app.post("/orders/{order}")
async def order(order: int, background_tasks: BackgroundTasks) -> dict[str, int]:
    background_tasks.add_task(charge_card, order)
    return {"order": order}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


tasklens.instrument(app)
