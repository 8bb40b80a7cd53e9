"""The live page (``ui_path``): three static files and a small JSON API over the live buffer.

Answered in front of everything else of the app, like ``/metrics`` (no request span, no task
scope, no user middleware, no metric), behind the same ``metrics_auth`` check. The page polls
``api/live`` once a second while it is visible; nothing is computed for it otherwise.

Only the exact paths below, and only for GET and HEAD, are the page's: anything else under
``ui_path`` (``/tasks/42``, ``POST /tasks``) goes to the app's own routes.

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
import re
from collections.abc import Callable
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs

import anyio.to_thread
from prometheus_client import CollectorRegistry
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
#: The page's own paths after ``ui_path``; nothing else below it is the page's.
_OWN = frozenset(("", "/", "/app.js", "/app.css"))
_API = re.compile(r"/api/(?:live|task/[0-9]{1,18}|trace/[0-9a-f]{32}-[0-9a-f]{16})")


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


async def _respond(
    send: Send, status: int, headers: Headers, body: bytes = b"", head: bool = False
) -> None:
    """Send ``body`` (HEAD: its length, not the body, as GET would have)."""
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


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
        head = scope.get("method") == "HEAD"  # GET or HEAD: other methods go to the app
        if self._guard.auth is not None:
            refused = await self._guard._refusal(Request(scope))
            if refused is not None:
                status, headers, body = refused
                headers = [h for h in headers if h[0] != b"content-length"]
                await _respond(send, status, headers, body, head)
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
        await _respond(send, status, headers, body, head)

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
            # The per-name summary only when it changed since the page's copy (``names``:
            # the token it got with it; "keep": the page got it a moment ago).
            known = query.get("names", [None])[0]
            seq, tasks = buffer.recent(after)
            return _json(200, {**buffer.summary(names_known=known), "seq": seq, "tasks": tasks,
                               "epoch": buffer.epoch, "trace_url": self._trace_url,
                               "bounds": _bounds()})  # fmt: skip
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
        "summary_names": lb.SUMMARY_NAMES,
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
    """The part of the request path after ``path`` when the request is one of the page's
    (GET or HEAD of one of its exact paths), else None: the app answers it."""
    if scope["type"] != "http" or scope.get("method", "GET") not in ALLOWED_METHODS:
        return None
    relative = route_path(scope)
    if not relative.startswith(path):
        return None
    rest = relative[len(path) :]
    return rest if rest in _OWN or _API.fullmatch(rest) else None


def warn_if_shadowed(app: object, path: str) -> None:
    """One warning per app route (or mount) at ``path`` (or ``path/``) that answers GET: the
    page answers GET and HEAD there first. Its other paths are too specific to collide."""
    for route in getattr(app, "routes", ()):
        at = getattr(route, "path", None)
        methods = getattr(route, "methods", None)
        if at in (path, path + "/") and (methods is None or "GET" in methods):
            _logger.warning(
                "tasklens: the app's route %s %s is shadowed by the live page for GET and "
                "HEAD (ui_path=%r); its other methods and paths below it still reach the "
                "app. Choose another ui_path to keep the route.",
                ",".join(sorted(methods)) if methods else "*", at, path,
            )  # fmt: skip


class LivePageMiddleware:
    """Answers the page's own paths below ``path`` (relative to the mount point) with
    :class:`LivePage` before anything else of the app runs; the rest goes to the app."""

    def __init__(
        self,
        app: ASGIApp,
        path: str,
        buffer: Callable[[], LiveBuffer | None],
        auth: MetricsAuth | None = None,
        trace_url: str | None = None,
        owner: object = None,
    ) -> None:
        self.app = app
        self.path = path
        self.page = LivePage(buffer, auth, trace_url)
        # Built with the middleware stack (at the first request or lifespan): the routes
        # added after instrument() are there by now.
        warn_if_shadowed(owner, path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rest = _at(self.path, scope)
        if rest is None:
            await self.app(scope, receive, send)
            return
        await self.page({**scope, "tasklens.ui_path": self.path}, receive, send, rest)


def page_requests(path: str) -> Callable[[Scope], bool]:
    """A match for :func:`telemetry.exposition.exclude_from_fastapi_telemetry`: requests
    the page at ``path`` answers itself."""
    return lambda scope: _at(path, scope) is not None
