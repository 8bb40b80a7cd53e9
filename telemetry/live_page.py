"""The live page (``ui_path``): three static files and a small JSON API over the live buffer.

Answered in front of everything else of the app, like ``/metrics`` (no request span, no task
scope, no user middleware, no metric), behind the same ``metrics_auth`` check. The page polls
``api/live`` once a second while it is visible; nothing is computed for it otherwise.

``{path}``                    the page (``{path}/`` too)
``{path}/app.js``, ``app.css``  its script and style (package data, read once)
``{path}/api/live?after=N``   tasks after sequence number N, per-name summary, series
``{path}/api/task/N``         one task with its traceback
``{path}/api/trace/T-S``      a request (trace id T, server span id S) and its tasks
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs

import anyio.to_thread
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from . import live_buffer as lb
from .exposition import ALLOWED_METHODS, MetricsAuth, MetricsEndpoint, route_path
from .live_buffer import LiveBuffer

_logger = logging.getLogger("tasklens.telemetry")
_ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
#: No inline script or style, nothing from elsewhere: the page's own files and API only.
_CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
Headers = list[tuple[bytes, bytes]]


def _asset(name: str) -> bytes:
    return files("tasklens").joinpath("data", "ui", name).read_bytes()


def live_buffer_of(app: object) -> LiveBuffer | None:
    """The live buffer among the observers of ``app``'s runner (None: ``observers=``
    replaced the defaults, or the app is not instrumented yet)."""
    state = getattr(getattr(app, "state", None), "tasklens", None)
    runner = state[0] if isinstance(state, tuple) and state else None
    for observer in getattr(runner, "observers", ()):
        if isinstance(observer, LiveBuffer):
            return observer
    return None


async def _respond(send: Send, status: int, headers: Headers, body: bytes = b"") -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LivePage:
    """ASGI app of the page's paths (``rest``: the path after ``ui_path``)."""

    def __init__(
        self,
        buffer: Callable[[], LiveBuffer | None],
        auth: MetricsAuth | None = None,
        trace_url: str | None = None,
    ) -> None:
        self._buffer = buffer
        # The /metrics endpoint's own check (401/403/the check's HTTPException/500), reused.
        self._guard = MetricsEndpoint(CollectorRegistry(auto_describe=False), auth)
        self._trace_url = trace_url
        self._assets: dict[str, bytes] = {}
        self._warned = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send, rest: str) -> None:
        method = scope.get("method", "GET")
        if method not in ALLOWED_METHODS:
            await _respond(
                send, 405, _text_headers(b"allow", b"GET, HEAD"), b"Method Not Allowed\n"
            )
            return
        if self._guard.auth is not None:
            refused = await self._guard._refusal(Request(scope))
            if refused is not None:
                status, headers, body = refused
                await _respond(
                    send, status, [h for h in headers if h[0] != b"content-length"], body
                )
                return
        try:
            if rest.startswith("/api/"):
                # Off the event loop, as /metrics renders: a first look serialises 1,000 tasks.
                status, headers, body = await anyio.to_thread.run_sync(self._answer, scope, rest)
            else:
                status, headers, body = self._answer(scope, rest)
        except Exception:
            _logger.exception("tasklens: the live page failed to answer %s", rest or "/")
            status, headers, body = 500, _text_headers(), b"live page failed\n"
        await _respond(send, status, headers, b"" if method == "HEAD" else body)

    def _answer(self, scope: Scope, rest: str) -> tuple[int, Headers, bytes]:
        if rest in ("", "/"):
            base = str(scope.get("root_path", "")).rstrip("/") + scope["tasklens.ui_path"]
            return 200, _page_headers(b"text/html; charset=utf-8"), self._page(base)
        name = rest.lstrip("/")
        if name in _ASSETS:
            body = self._assets.get(name)
            if body is None:
                body = self._assets[name] = _asset(name)
            return 200, _page_headers(_ASSETS[name].encode()), body
        if not name.startswith("api/"):
            return 404, _text_headers(), b"Not Found\n"
        buffer = self._buffer()
        if buffer is None:
            if not self._warned:
                self._warned = True
                _logger.warning(
                    "tasklens: ui_path is set but observers= replaced the default observers: "
                    "the live page has nothing to show"
                )
            return _json(503, {"error": "no live buffer: observers= replaced the defaults"})
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        api = name[len("api/") :]
        if api == "live":
            after = _int(query.get("after", ["0"])[0])
            seq, tasks = buffer.recent(after)
            return _json(200, {**buffer.summary(), "seq": seq, "tasks": tasks,
                               "trace_url": self._trace_url, "bounds": _bounds()})  # fmt: skip
        if api.startswith("task/"):
            task = buffer.task(_int(api[len("task/") :]))
            return (
                _json(404, {"error": "task no longer kept"}) if task is None else _json(200, task)
            )
        if api.startswith("trace/"):
            key = lb.parse_trace_key(api[len("trace/") :])
            request = buffer.request(key) if key is not None else None
            if request is None:
                return _json(404, {"error": "request no longer kept"})
            return _json(200, {**request, "trace_url": self._trace_url})
        return 404, _text_headers(), b"Not Found\n"

    def _page(self, base: str) -> bytes:
        template = self._assets.get("index.html")
        if template is None:
            template = self._assets["index.html"] = _asset("index.html")
        return template.replace(b"{{base}}", html.escape(base, quote=True).encode())


def _int(text: str) -> int:
    try:
        return max(0, int(text))
    except ValueError:
        return 0


def _bounds() -> dict[str, int]:
    return {
        "tasks": lb.MAX_TASKS,
        "traces": lb.MAX_TRACES,
        "tasks_per_trace": lb.MAX_TASKS_PER_TRACE,
        "tracebacks": lb.MAX_FAILURES,
        "series_seconds": lb.SERIES_SECONDS,
        "summary_minutes": lb.SUMMARY_MINUTES,
    }


def _text_headers(*extra: bytes) -> Headers:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store")]
    if extra:
        headers.append((extra[0], extra[1]))
    return headers


def _page_headers(content_type: bytes) -> Headers:
    return [
        (b"content-type", content_type),
        (b"cache-control", b"no-store"),
        (b"content-security-policy", _CSP),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]


def _json(status: int, payload: Any) -> tuple[int, Headers, bytes]:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return status, _page_headers(b"application/json"), body


def _at(path: str, scope: Scope) -> str | None:
    """The part of the request path after ``path`` when it is the page's (else None)."""
    if scope["type"] != "http":
        return None
    relative = route_path(scope)
    if relative == path or (relative.startswith(path) and relative[len(path)] == "/"):
        return relative[len(path) :]
    return None


class LivePageMiddleware:
    """Answers ``path`` and below (relative to the mount point) with :class:`LivePage`
    before anything else of the app runs."""

    def __init__(
        self,
        app: ASGIApp,
        path: str,
        buffer: Callable[[], LiveBuffer | None],
        auth: MetricsAuth | None = None,
        trace_url: str | None = None,
    ) -> None:
        self.app = app
        self.path = path
        self.page = LivePage(buffer, auth, trace_url)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rest = _at(self.path, scope)
        if rest is None:
            await self.app(scope, receive, send)
            return
        await self.page({**scope, "tasklens.ui_path": self.path}, receive, send, rest)


def exclude_page_from_fastapi_telemetry(app: Starlette, path: str) -> None:
    """Keep the page's requests out of FastAPI's native request spans (FastAPI >= 0.164),
    as :func:`telemetry.exposition.exclude_from_fastapi_telemetry` does for ``/metrics``."""
    config = getattr(app, "_telemetry", None)
    if not isinstance(config, dict) or "exclude" not in config:
        return
    user_exclude = config["exclude"]

    def exclude(scope: Any) -> bool:
        return _at(path, scope) is not None or bool(user_exclude and user_exclude(scope))

    config["exclude"] = exclude
