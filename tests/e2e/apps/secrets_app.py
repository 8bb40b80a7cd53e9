"""The app of the secret-scrubbing end-to-end test (``tests/e2e/test_secrets.py``).

``POST /trigger?token=...`` (with an ``Authorization`` header) schedules one async task that
calls this same server's ``GET /upstream?api_key=...`` with httpx and ``raise_for_status()``s
the 503 it answers: httpx's message carries the URL, query string included. The task's
arguments hold the secrets in every shape ``record_args=True`` must redact: the request's
Starlette ``Headers``, a list of header pairs, the raw ASGI ``scope["headers"]``, a DSN with a
password (str and starlette ``URL``) and a dict with ``pwd``/``private_key`` keys.
``SECRETS_APP_RECORD_ARGS=1`` turns ``record_args`` on.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from fastapi import BackgroundTasks, FastAPI, Request, Response
from starlette.datastructures import URL, Headers

import tasklens

tasklens.setup(service_name="secrets-e2e")
app = FastAPI()
API_KEY = os.environ["SECRETS_APP_API_KEY"]
DB_PASSWORD = os.environ["SECRETS_APP_DB_PASSWORD"]


async def call_upstream(
    url: str,
    headers: Headers,
    pairs: list[tuple[str, str]],
    raw_headers: list[tuple[bytes, bytes]],
    dsn: str,
    dsn_url: URL,
    settings: dict[str, Any],
) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(url)
        response.raise_for_status()


@app.get("/upstream")
def upstream() -> Response:
    return Response("unavailable", status_code=503)


@app.post("/trigger")
async def trigger(request: Request, background_tasks: BackgroundTasks) -> dict[str, str]:
    port = request.url.port
    dsn = f"postgresql://app:{DB_PASSWORD}@db.internal:5432/shop"
    background_tasks.add_task(
        call_upstream,
        f"http://127.0.0.1:{port}/upstream?api_key={API_KEY}&page=2",
        request.headers,
        [("Authorization", request.headers["authorization"]), ("Accept", "*/*")],
        request.scope["headers"],
        dsn,
        URL(dsn),
        {"user": "app", "pwd": DB_PASSWORD, "private_key": API_KEY, "region": "eu"},
    )
    return {"status": "scheduled"}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


tasklens.instrument(app, record_args=os.environ.get("SECRETS_APP_RECORD_ARGS") == "1")
