"""An inline-mode app whose background task raises ``SystemExit`` or ``KeyboardInterrupt``:
``uvicorn tests.runtime.apps.inline_base_exit:app``.

``$TASKLENS_TEST_VARIANT``: ``plain`` (no tasklens), ``tasklens``; with
``$TASKLENS_TEST_MIDDLEWARE=1`` the app also has an ``@app.middleware("http")`` (a
``BaseHTTPMiddleware``);
``$TASKLENS_TEST_FRAMEWORK``: ``fastapi`` or ``starlette``. ``GET /exit`` and
``GET /interrupt`` add the raising task, ``GET /health`` answers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def exits() -> None:
    sys.exit(3)


def interrupts() -> None:
    raise KeyboardInterrupt


async def raising(request: Request) -> Response:
    task = exits if request.url.path == "/exit" else interrupts
    return JSONResponse({"ok": True}, background=BackgroundTask(task))


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


ROUTES = [Route("/exit", raising), Route("/interrupt", raising), Route("/health", health)]
app: Starlette
if os.environ.get("TASKLENS_TEST_FRAMEWORK", "fastapi") == "fastapi":
    app = FastAPI(routes=ROUTES)
else:
    app = Starlette(routes=ROUTES)


async def passthrough(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    return await call_next(request)


if os.environ.get("TASKLENS_TEST_MIDDLEWARE") == "1":
    if isinstance(app, FastAPI):
        app.middleware("http")(passthrough)
    else:  # what ``@app.middleware("http")`` does (Starlette 1.0 removed the decorator)
        app.add_middleware(BaseHTTPMiddleware, dispatch=passthrough)


if os.environ.get("TASKLENS_TEST_VARIANT", "tasklens") == "tasklens":
    import tasklens

    tasklens.instrument(app, loop_lag_interval=None, metrics_path=None)
