"""The apps under test, one per variant; each is built in a fresh process.

Every variant serves the same endpoints, which add ``n`` no-op tasks to a Starlette
``BackgroundTasks`` and return an empty response, so the variants differ only in what
observes the tasks:

- ``plain``: a Starlette app; no tracer provider is set (nothing traces anything).
- ``otel``: a FastAPI app with its native telemetry switched off
  (``FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})``) and
  ``FastAPIInstrumentor.instrument_app`` with an explicit SDK ``TracerProvider`` (sampled,
  ``BatchSpanProcessor`` to an exporter that drops spans): its request span and one span per
  task (it wraps ``BackgroundTask.__call__``), nothing else. No global provider is set.
- ``tasklens``: a Starlette app with ``tasklens.instrument(app)`` (default options) after
  ``tasklens.setup()`` kept a global SDK provider (``ALWAYS_ON``, same processor): spans,
  Prometheus metrics and logs.
- ``tasklens-unsampled``: the same with the sampler ``ALWAYS_OFF`` (inline mode).
- ``tasklens-bare``: ``tasklens.instrument(app, observers=[])`` and no tracer provider: the
  runtime's own cost (records, ordering, batching, isolation) without any telemetry.
- ``tasklens-detached``: ``tasklens`` with ``mode="detached"`` (end-to-end case only).
- ``fastapi-native``: FastAPI's own telemetry (``FastAPI(telemetry={"tracer_provider": ...})``,
  defaults otherwise: a request span, and a ``fastapi.background_task`` span per task of
  FastAPI's ``BackgroundTasks``); same sampled SDK provider (sustained case only).

Every app also serves :mod:`bench.probe`'s ``/load`` and ``/_bench/stats`` (sustained case).

Starlette apps are used for tasklens so that FastAPI's native telemetry (on as soon as a
global tracer provider exists) cannot add spans of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from starlette.applications import Starlette
from starlette.background import BackgroundTasks
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench import probe

DESCRIPTIONS = {
    "plain": "Starlette, no tracer provider",
    "otel": "FastAPI + FastAPIInstrumentor task spans (SDK provider, sampled)",
    "tasklens": "tasklens: spans + metrics + logs (SDK provider, sampled)",
    "tasklens-unsampled": "tasklens: metrics + logs, tracing sampled out (ALWAYS_OFF)",
    "tasklens-bare": "tasklens runtime, no observers, no tracer provider",
    "tasklens-inline": "tasklens, mode=inline: spans + metrics + logs (sampled)",
    "tasklens-detached": "tasklens, mode=detached: spans + metrics + logs (sampled)",
    "fastapi-native": "FastAPI native telemetry: request + background_task spans (sampled)",
}


class CountingExporter(SpanExporter):
    """Drops spans, counting them (so a case can show how many spans it made)."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


async def noop_async() -> None:
    return None


def noop_sync() -> None:
    return None


def _tasks_endpoint(func: Callable[[], Any]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        n = int(request.path_params["n"])
        tasks = BackgroundTasks()
        for _ in range(n):
            tasks.add_task(func)
        return Response(b"", background=tasks)

    return endpoint


#: Tasks run by the end-to-end endpoint (checked against requests served).
RAN = {"async": 0, "sync": 0}


async def counted_async() -> None:
    RAN["async"] += 1


def counted_sync() -> None:
    RAN["sync"] += 1


async def _mixed(request: Request) -> Response:
    """The end-to-end endpoint: one async and one sync task."""
    tasks = BackgroundTasks()
    tasks.add_task(counted_async)
    tasks.add_task(counted_sync)
    return Response(b"ok", media_type="text/plain", background=tasks)


ROUTES = [
    Route("/async/{n:int}", _tasks_endpoint(noop_async)),
    Route("/sync/{n:int}", _tasks_endpoint(noop_sync)),
    Route("/", _mixed),
]


class Variant:
    """An app of one variant plus what the case needs to know about it."""

    def __init__(
        self, name: str, app: Any, provider: TracerProvider | None, exporter: CountingExporter
    ) -> None:
        self.name = name
        self.app = app
        self.provider = provider
        self.exporter = exporter

    def spans_exported(self) -> int:
        if self.provider is not None:
            self.provider.force_flush()
        return self.exporter.count


def _provider(sampled: bool, exporter: CountingExporter) -> TracerProvider:
    provider = TracerProvider(sampler=ALWAYS_ON if sampled else ALWAYS_OFF)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def build(
    name: str, routes: Sequence[Route] = ROUTES, observers: Sequence[Any] | None = None
) -> Variant:
    """Build the app of variant ``name`` (call once per process); ``observers`` replaces
    tasklens' default observers (profiling one observer at a time)."""
    exporter = CountingExporter()
    routes = [*routes, *probe.routes(name)]
    if name in ("otel", "fastapi-native"):
        from fastapi import BackgroundTasks as FastAPIBackgroundTasks

        probe.TASKS_CLASS[0] = FastAPIBackgroundTasks
    if name == "plain":
        return Variant(name, Starlette(routes=list(routes)), None, exporter)
    if name == "otel":
        from fastapi import FastAPI
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        provider = _provider(True, exporter)
        app = FastAPI(
            routes=list(routes),
            openapi_url=None,
            telemetry={"tracing": False, "metrics": False, "logs": False},
        )
        FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
        return Variant(name, app, provider, exporter)
    if name == "fastapi-native":
        from fastapi import FastAPI

        provider = _provider(True, exporter)
        telemetry = {"tracer_provider": provider}
        app = FastAPI(routes=list(routes), openapi_url=None, telemetry=telemetry)
        return Variant(name, app, provider, exporter)
    if name == "tasklens-bare":
        import tasklens

        app = Starlette(routes=list(routes))
        tasklens.instrument(app, observers=[])
        return Variant(name, app, None, exporter)
    if name in ("tasklens", "tasklens-unsampled", "tasklens-inline", "tasklens-detached"):
        from opentelemetry import trace

        import tasklens

        provider = _provider(name != "tasklens-unsampled", exporter)
        trace.set_tracer_provider(provider)
        tasklens.setup(service_name="bench")  # keeps the provider set above
        app = Starlette(routes=list(routes))
        mode = "detached" if name == "tasklens-detached" else "inline"
        tasklens.instrument(app, mode=mode, observers=observers)
        return Variant(name, app, provider, exporter)
    raise ValueError(f"unknown variant {name!r}")


# --- a minimal ASGI driver -------------------------------------------------------------------
_REQUEST = {"type": "http.request", "body": b"", "more_body": False}
_DISCONNECT = {"type": "http.disconnect"}


async def _send(message: Any) -> None:
    return None


def _scope(target: str, state: dict[str, Any]) -> dict[str, Any]:
    path, _, query = target.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": dict(state),
    }


async def request(app: Any, target: str, state: dict[str, Any]) -> None:
    """One GET of ``target`` (path and query) through the ASGI app; returns when the app
    returns (after its tasks, in inline mode)."""
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:
            await asyncio.sleep(0)
            return _DISCONNECT
        received = True
        return _REQUEST

    await app(_scope(target, state), receive, _send)


class Lifespan:
    """Runs the app's lifespan around a block (tasklens starts its runtime there)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Lifespan:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}
        self._task = asyncio.ensure_future(self.app(scope, self._to_app.get, self._from_app.put))
        await self._to_app.put({"type": "lifespan.startup"})
        message = await self._from_app.get()
        if message["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"lifespan startup failed: {message}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._to_app.put({"type": "lifespan.shutdown"})
        await self._from_app.get()
        assert self._task is not None
        await self._task
