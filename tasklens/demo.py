"""The demo service: the FastAPI background-tasks tutorial, instrumented, with a traffic switch.

Endpoints schedule sync and async tasks, slow ones and failing ones, through every style the
FastAPI docs show (parameter, dependency, ``JSONResponse(background=...)``). With
``TASKLENS_DEMO_SELF_TRAFFIC=1`` the app sends itself requests so that metrics and traces
appear without a second terminal. The live page is on (``TASKLENS_DEMO_UI_PATH``, default
``/tasks``); the console stays calm (warnings, no task outcome: the page shows those) unless
``TASKLENS_DEMO_SPAN_LOGS=1`` prints spans as log lines and every log line, as before. Once
the server answers, the URLs to open are printed, last.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import httpx
import structlog
from fastapi import BackgroundTasks, Depends, FastAPI
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

import tasklens

log = structlog.get_logger("demo")
stdlib_log = logging.getLogger("demo.stdlib")
OUTBOX = Path(os.environ.get("TASKLENS_DEMO_DIR", tempfile.gettempdir())) / "tasklens-demo"
#: This process's demo: its /health says so, so the banner is printed for it only.
INSTANCE = secrets.token_hex(8)


class PaymentDeclinedError(Exception):
    """A business failure of the demo's payment capture task."""


# --- tasks (what users put in BackgroundTasks) -------------------------------------------
def write_notification(email: str, message: str = "") -> None:
    """Sync: the tutorial's notification write."""
    OUTBOX.mkdir(parents=True, exist_ok=True)
    with open(OUTBOX / "notifications.log", "a") as f:
        f.write(f"notification for {email}: {message}\n")
    stdlib_log.info("notification written")


def write_log(message: str) -> None:
    """Sync: the tutorial's log append, scheduled from a dependency."""
    OUTBOX.mkdir(parents=True, exist_ok=True)
    with open(OUTBOX / "log.txt", "a") as f:
        f.write(message + "\n")


async def send_email(email: str) -> None:
    """Async and quick."""
    await asyncio.sleep(random.uniform(0.002, 0.02))
    log.info("email sent")


async def generate_report(order_id: int) -> None:
    """Async and slow."""
    await asyncio.sleep(random.uniform(0.2, 0.8))
    log.info("report generated", order_id=order_id)


def resize_image(size: int) -> None:
    """Sync and slow (CPU-ish work in the thread pool)."""
    time.sleep(random.uniform(0.05, 0.3))


def capture_payment(order_id: int, fail_ratio: float) -> None:
    """Sync; fails for a share of orders."""
    time.sleep(0.005)
    if random.random() < fail_ratio:
        raise PaymentDeclinedError(f"card declined for order {order_id}")


async def sync_inventory(order_id: int, fail_ratio: float) -> None:
    """Async; times out for a share of orders."""
    await asyncio.sleep(0.01)
    if random.random() < fail_ratio:
        raise TimeoutError("inventory service did not answer")


async def rebuild_cache() -> None:
    """Async but blocks the event loop (a sync call inside async code): the loop-blocking
    panel and warning name it."""
    time.sleep(0.15)
    await asyncio.sleep(0)


# --- app ---------------------------------------------------------------------------------
def get_query(background_tasks: BackgroundTasks, q: str | None = None) -> str | None:
    """The tutorial's dependency: schedules a log write when a query is given."""
    if q:
        background_tasks.add_task(write_log, f"found query: {q}")
    return q


class CalmConsole(logging.Filter):
    """The console of the calm demo: warnings and errors, but not the per-task outcome lines
    (failures, loop blocking), which the live page shows. Set on the console handler only:
    an OTLP log export (``OTEL_LOGS_EXPORTER=otlp``) still gets every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        message = record.msg
        return not (record.name == "tasklens" and isinstance(message, dict) and "task" in message)


def _calm_console() -> None:
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:  # setup()'s console handler, not OTel's
            handler.addFilter(CalmConsole())


def create_app() -> FastAPI:
    """Build the demo app from environment settings (used by ``tasklens demo``)."""
    span_logs = os.environ.get("TASKLENS_DEMO_SPAN_LOGS", "") == "1"
    # span_logs=None keeps setup()'s default (spans as log lines when nothing exports them).
    tasklens.setup(
        service_name=os.environ.get("OTEL_SERVICE_NAME", "tasklens-demo"),
        span_logs=None if span_logs else False,
    )
    if not span_logs:
        _calm_console()
    fail_ratio = float(os.environ.get("TASKLENS_DEMO_FAIL_RATIO", "0.2"))
    self_traffic = os.environ.get("TASKLENS_DEMO_SELF_TRAFFIC", "") == "1"
    ui_path = os.environ.get("TASKLENS_DEMO_UI_PATH", "/tasks") or None
    banner = os.environ.get("TASKLENS_DEMO_BANNER", "1") == "1"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(_self_traffic(app))] if self_traffic else []
        if banner:
            tasks.append(asyncio.create_task(_print_urls(ui_path, self_traffic, span_logs)))
        yield
        for task in tasks:
            task.cancel()

    app = FastAPI(title="tasklens demo", lifespan=lifespan)

    @app.post("/send-notification/{email}")
    async def send_notification(
        email: str, background_tasks: BackgroundTasks, q: Annotated[str | None, Depends(get_query)]
    ) -> dict[str, str]:
        background_tasks.add_task(write_notification, email, message="some notification")
        background_tasks.add_task(send_email, email)
        return {"message": "Notification sent in the background"}

    @app.post("/orders/{order_id}")
    def create_order(order_id: int, background_tasks: BackgroundTasks) -> dict[str, int]:
        background_tasks.add_task(capture_payment, order_id, fail_ratio)
        background_tasks.add_task(sync_inventory, order_id, fail_ratio / 2)
        background_tasks.add_task(generate_report, order_id)
        return {"order_id": order_id}

    @app.post("/images")
    async def upload_image() -> JSONResponse:
        tasks = BackgroundTasks()
        tasks.add_task(resize_image, 256)
        tasks.add_task(resize_image, 1024)
        return JSONResponse({"status": "resizing"}, background=tasks)

    @app.post("/cache/rebuild")
    async def rebuild() -> JSONResponse:
        response = JSONResponse({"status": "rebuilding"})
        response.background = BackgroundTask(rebuild_cache)
        return response

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "demo": INSTANCE}

    mode = os.environ.get("TASKLENS_DEMO_MODE", "inline")
    tasklens.instrument(
        app,
        mode="detached" if mode == "detached" else "inline",
        ui_path=ui_path,
        ui_trace_url=os.environ.get("TASKLENS_DEMO_TRACE_URL") or None,
    )
    return app


def _base_url() -> str:
    host = os.environ.get("TASKLENS_DEMO_HOST", "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{os.environ.get('TASKLENS_DEMO_PORT', '8000')}"


def urls_banner(ui_path: str | None, self_traffic: bool, span_logs: bool) -> str:
    """What to open, in a few lines (printed once, when the server answers)."""
    base = _base_url()
    lines = ["", "tasklens demo is running; open:"]
    if ui_path:
        lines.append(f"  live page  {base}{ui_path}")
    lines += [f"  metrics    {base}/metrics", f"  API docs   {base}/docs"]
    notes = ["sending itself traffic"] if self_traffic else []
    notes.append(
        "spans and every log line printed" if span_logs
        else "console: warnings only (--span-logs for spans and every log line)"
    )  # fmt: skip
    lines += [f"  ({'; '.join(notes)}; Ctrl+C stops)", ""]
    return "\n".join(lines)


def _ours(response: httpx.Response) -> bool:
    """The answer is this demo process's ``/health`` (not another server's on the port)."""
    try:
        return response.status_code == 200 and response.json().get("demo") == INSTANCE
    except (ValueError, AttributeError):
        return False


async def _print_urls(
    ui_path: str | None, self_traffic: bool, span_logs: bool, attempts: int = 600
) -> None:
    """Print the URLs once this server answers (after uvicorn's own start-up lines); not
    at all if in ``attempts`` tenths of a second only something else answered."""
    async with httpx.AsyncClient(base_url=_base_url(), timeout=2) as client:
        for _ in range(attempts):  # 60 s at most
            try:
                if _ours(await client.get("/health")):
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        else:
            return
    print(urls_banner(ui_path, self_traffic, span_logs), file=sys.stderr, flush=True)


async def _self_traffic(app: FastAPI) -> None:
    """Send requests to the running server (loopback) for a bounded time."""
    port = int(os.environ.get("TASKLENS_DEMO_PORT", "8000"))
    rate = float(os.environ.get("TASKLENS_DEMO_RATE", "20"))
    duration = float(os.environ.get("TASKLENS_DEMO_TRAFFIC_SECONDS", "3600"))
    await asyncio.sleep(0.5)
    deadline = time.monotonic() + duration
    routes = [
        ("POST", "/send-notification/ada@example.com?q=tasks", 4),
        ("POST", "/orders/{n}", 4),
        ("POST", "/images", 1),
        ("POST", "/cache/rebuild", 1),
    ]
    weighted = [r for r in routes for _ in range(r[2])]
    n = 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        while time.monotonic() < deadline:
            n += 1
            method, path, _ = random.choice(weighted)
            try:
                await client.request(method, path.format(n=n))
            except httpx.ConnectError:
                return  # the server stopped listening: shutting down
            except httpx.HTTPError as exc:
                log.warning("self-traffic request failed", error=str(exc))
            await asyncio.sleep(1 / rate)
    log.info("self-traffic finished", requests=n)
