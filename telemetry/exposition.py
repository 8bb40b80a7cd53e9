"""``/metrics``: the exposition of the right registry, rendered off the event loop.

Single process: the default registry (exemplars shown with OpenMetrics negotiation,
``Accept: application/openmetrics-text``). In prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR`` set before the process started): a fresh registry with
prometheus_client's ``MultiProcessCollector``, summing the files of all workers, live and
dead (see :mod:`telemetry.multiprocess`); exemplars are not available there.
"""

from __future__ import annotations

import glob
import gzip
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import anyio
import anyio.to_thread
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .metrics import TaskMetrics, multiprocess_mode
from .metrics import _by_registry as _task_metrics
from .multiprocess import ENV, directory_from_env, pid_alive, pid_of

_logger = logging.getLogger("tasklens.telemetry")


_HEADER_BYTES = 8  # prometheus_client's file header: 4 bytes "used", 4 bytes padding


class WorkerFilesCollector(MultiProcessCollector):  # type: ignore[misc]
    """prometheus_client's ``MultiProcessCollector``, minus files too short to hold a header.

    A worker creates its file empty and sizes it a moment later; a worker killed in
    between leaves it empty for ever. prometheus_client reads such a file with
    ``struct.error`` and the whole scrape answers 500 (prometheus/client_python#1199).
    An empty file holds no sample, so skipping it loses nothing.
    """

    def collect(self) -> Iterable[Metric]:
        files = [path for path in glob.glob(os.path.join(self._path, "*.db")) if _has_header(path)]
        return self.merge(files, accumulate=True)  # type: ignore[no-any-return]


class LiveWorkerFilesCollector(WorkerFilesCollector):
    """:class:`WorkerFilesCollector` that also drops the live gauges of exited processes
    (prometheus_client's ``mark_process_dead``) when it finds them: for process managers
    with no exit hook of their own, such as Celery's prefork pool. Counters of dead
    processes stay, as with gunicorn's ``child_exit``."""

    def collect(self) -> Iterable[Metric]:
        for path in glob.glob(os.path.join(self._path, "gauge_live*_*.db")):
            pid = pid_of(os.path.basename(path))
            if pid is not None and not pid_alive(pid):
                mark_process_dead(pid, self._path)
        return super().collect()


def _has_header(path: str) -> bool:
    try:
        return os.stat(path).st_size >= _HEADER_BYTES
    except FileNotFoundError:  # a dead worker's live gauge, removed since the glob
        return False


def metrics_registry(drop_dead_processes: bool = False) -> CollectorRegistry:
    """The registry /metrics exposes (a multiprocess collector when several workers write;
    ``drop_dead_processes``: :class:`LiveWorkerFilesCollector`)."""
    if multiprocess_mode():
        directory = directory_from_env()
        registry = CollectorRegistry()
        collector = LiveWorkerFilesCollector if drop_dead_processes else WorkerFilesCollector
        collector(registry, path=str(directory) if directory else None)
        return registry
    if directory_from_env() is not None:
        _logger.warning(
            "tasklens: %s is set but prometheus_client was imported before it was, so it "
            "is not in multiprocess mode: /metrics shows this process only. Set the "
            "variable in the environment the server starts with.",
            ENV,
        )
    return REGISTRY


# --- Rendering: an adapter over prometheus_client's negotiation ---------------------------
# ``choose_encoder`` and ``gzip_accepted`` are module-level functions of
# prometheus_client.exposition (not in its ``__all__``) with the same signatures from 0.18 to
# 0.26; they are used only here, and tests/e2e/test_metrics_endpoint.py runs on both ends.


@dataclass(frozen=True)
class Rendering:
    """What one scrape asked for: the format (from Accept), gzip, and a ``name[]`` filter."""

    accept: str
    compress: bool
    names: tuple[str, ...]

    @classmethod
    def of(cls, scope: Scope) -> Rendering:
        headers = Headers(scope=scope)
        accept = ",".join(headers.getlist("accept"))
        accept_encoding = ",".join(headers.getlist("accept-encoding"))
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        return cls(accept, gzip_accepted(accept_encoding), tuple(query.get("name[]", ())))

    @property
    def content_type(self) -> str:
        return str(choose_encoder(self.accept)[1])

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", self.content_type.encode("latin-1"))]
        if self.compress:
            headers.append((b"content-encoding", b"gzip"))
        return headers

    def render(self, registry: CollectorRegistry) -> bytes:
        """The exposition body (blocking: seconds for a large registry, so off the loop)."""
        encoder, _ = choose_encoder(self.accept)
        source: Any = registry.restricted_registry(list(self.names)) if self.names else registry
        metrics = _task_metrics.get(id(registry))
        if metrics is not None and not self.names:
            source = AccountedFirst(registry, metrics)
        body: bytes = encoder(source)
        return gzip.compress(body) if self.compress else body


class AccountedFirst:
    """The registry, with the four metrics whose difference counts lost tasks (enqueued -
    finished - pending - in progress, the ``BgTaskLost`` rule) read first, back to back, in
    the order enqueued, pending, in progress, finished. A scrape reads metric after metric
    while tasks move on: in this order a task that moves meanwhile can only lower the
    difference (in the registration order, a backlog draining during a one-second render
    showed up to +1,724 phantom lost tasks)."""

    def __init__(self, registry: CollectorRegistry, metrics: TaskMetrics) -> None:
        self.registry = registry
        self.first = (metrics.enqueued, metrics.pending, metrics.in_progress, metrics.finished)

    def collect(self) -> Iterator[Metric]:
        first = [family for collector in self.first for family in collector.collect()]
        names = {family.name for family in first}
        yield from first
        for family in self.registry.collect():
            if family.name not in names:
                yield family


class _Flight:
    """One render in progress; scrapes asking for the same rendering meanwhile share it."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.body: bytes | None = None


class Exposition:
    """Renders the registry in a worker thread, one render at a time. Concurrent scrapes of
    the same rendering share the render in flight (N scrapers hold one thread, not N), and a
    render that took T seconds is reused for the next T seconds, so back-to-back scrapers
    keep the render thread (and its hold on the GIL) busy at most half of the time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._flights: dict[Rendering, _Flight] = {}
        self._limiter: anyio.CapacityLimiter | None = None
        #: The last completed render: (rendering, body, monotonic time it is reusable until).
        self._last: tuple[Rendering, bytes, float] | None = None

    async def body(self, rendering: Rendering) -> bytes:
        last = self._last
        if last is not None and last[0] == rendering and time.monotonic() < last[2]:
            return last[1]
        flight = self._flights.get(rendering)
        if flight is not None:
            await flight.done.wait()
            if flight.body is not None:
                return flight.body
        flight = self._flights[rendering] = _Flight()
        try:
            if self._limiter is None:  # created on the loop that serves (anyio needs one)
                self._limiter = anyio.CapacityLimiter(1)
            # Shielded: the thread runs to its end anyway, and the sharers need its result.
            with anyio.CancelScope(shield=True):
                started = time.monotonic()
                body = await anyio.to_thread.run_sync(
                    rendering.render, self.registry, limiter=self._limiter
                )
                finished = time.monotonic()
            flight.body = body
            self._last = (rendering, body, finished + (finished - started))
            return body
        finally:
            flight.done.set()
            if self._flights.get(rendering) is flight:
                del self._flights[rendering]


# --- The endpoint -------------------------------------------------------------------------

#: A check deciding whether a request may read the metrics (see ``metrics_auth``).
MetricsAuth = Callable[[Request], "bool | Awaitable[bool]"]
ALLOWED_METHODS = ("GET", "HEAD")


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _text(
    status: int, message: str, *extra: tuple[bytes, bytes]
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = message.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"),
               (b"content-length", str(len(body)).encode()), *extra]  # fmt: skip
    return status, headers, body


class MetricsEndpoint:
    """ASGI app of the metrics path: GET and HEAD only (405 with ``Allow`` otherwise), the
    optional ``auth`` check first, the exposition rendered off the event loop."""

    def __init__(self, registry: CollectorRegistry, auth: MetricsAuth | None = None) -> None:
        self.exposition = Exposition(registry)
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method", "GET")
        if method not in ALLOWED_METHODS:
            allow = (b"allow", ", ".join(ALLOWED_METHODS).encode())
            await _respond(send, *_text(405, "Method Not Allowed\n", allow))
            return
        if self.auth is not None:
            refused = await self._refusal(Request(scope))
            if refused is not None:
                await _respond(send, *refused)
                return
        rendering = Rendering.of(scope)
        if method == "HEAD":  # headers only: no render for a liveness probe
            await _respond(send, 200, rendering.headers())
            return
        try:
            body = await self.exposition.body(rendering)
        except Exception:
            _logger.exception("tasklens: rendering the metrics failed")
            await _respond(send, *_text(500, "metrics rendering failed\n"))
            return
        headers = [*rendering.headers(), (b"content-length", str(len(body)).encode())]
        await _respond(send, 200, headers, body)

    async def _refusal(
        self, request: Request
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """None when the check allows the request; else the response: the check's own
        ``HTTPException``, 401 without an Authorization header, 403 with one, 500 (logged)
        when the check itself fails (closed, never open)."""
        assert self.auth is not None
        try:
            verdict = self.auth(request)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except HTTPException as exc:
            extra = [
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in (exc.headers or {}).items()
            ]
            return _text(exc.status_code, f"{exc.detail}\n", *extra)
        except Exception:
            _logger.exception("tasklens: the metrics_auth check failed; answering 500")
            return _text(500, "metrics auth check failed\n")
        if verdict:
            return None
        if "authorization" in request.headers:
            return _text(403, "Forbidden\n")
        return _text(401, "Unauthorized\n")


def route_path(scope: Scope) -> str:
    """The request path relative to the app's mount point (``root_path``): an app mounted at
    ``/sub`` (``Mount("/sub", app)``, or a ``--root-path``) sees ``/sub/metrics`` as
    ``/metrics``. Same rule as Starlette's private ``get_route_path`` (0.40 to 1.x)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :]
    return path


class MetricsEndpointMiddleware:
    """Answers ``path`` (relative to the mount point) with :class:`MetricsEndpoint` before
    anything else of the app runs (no request span, no task scope, no user middleware)."""

    def __init__(self, app: ASGIApp, path: str, auth: MetricsAuth | None = None) -> None:
        self.app = app
        self.path = path
        self.metrics_app = MetricsEndpoint(metrics_registry(), auth)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and route_path(scope) == self.path:
            await self.metrics_app(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def exclude_from_fastapi_telemetry(app: Starlette, matches: Callable[[Scope], bool]) -> None:
    """Keep the requests ``matches`` accepts (tasklens's own endpoints) out of FastAPI's
    native request spans (FastAPI >= 0.164 wraps the whole app, outside any middleware);
    the user's own ``exclude`` still applies."""
    config = getattr(app, "_telemetry", None)
    if not isinstance(config, dict) or "exclude" not in config:
        return
    user_exclude = config["exclude"]

    def exclude(scope: Any) -> bool:
        return matches(scope) or bool(user_exclude and user_exclude(scope))

    config["exclude"] = exclude


def at_path(path: str) -> Callable[[Scope], bool]:
    """A match for :func:`exclude_from_fastapi_telemetry`: HTTP requests of ``path``
    (relative to the mount point)."""
    return lambda scope: scope.get("type") == "http" and route_path(scope) == path
