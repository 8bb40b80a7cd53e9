"""Differences FastAPI's and Starlette's own suites found (``make upstream``), each pinned
here: an instrumented app behaves as the plain one towards the user's OpenTelemetry set-up."""

from __future__ import annotations

from typing import Any

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import tasklens


class CountingProvider(TracerProvider):
    """An SDK provider counting ``get_tracer`` calls (FastAPI's
    ``test_tracer_lookup_preserves_warning_deduplication`` counts them on the app's)."""

    def __init__(self) -> None:
        super().__init__()
        self.exporter = InMemorySpanExporter()
        self.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.calls = 0

    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return super().get_tracer(*args, **kwargs)


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def test_no_tracer_asked_of_the_provider_when_another_tracer_traces() -> None:
    """Another tracer makes the server span: tasklens makes none and asks the app's
    provider for nothing (before: one ``get_tracer`` call when the stack was built, which
    FastAPI's suite sees as a second tracer lookup on its provider)."""
    other = CountingProvider()
    provider = CountingProvider()
    app = Starlette(
        routes=[Route("/", hello)],
        middleware=[Middleware(OpenTelemetryMiddleware, tracer_provider=other,
                               exclude_spans=["receive", "send"])],
    )  # fmt: skip
    tasklens.instrument(app, metrics_path=None, tracer_provider=provider)
    with TestClient(app) as client:
        for _ in range(3):
            assert client.get("/").text == "ok"
    assert provider.calls == 0
    assert provider.exporter.get_finished_spans() == ()
    assert len([s for s in other.exporter.get_finished_spans() if s.kind == SpanKind.SERVER]) == 3


def test_own_request_spans_ask_for_one_tracer() -> None:
    """Nothing else traces: tasklens's request spans, from one tracer asked for once."""
    provider = CountingProvider()
    app = Starlette(routes=[Route("/", hello)])
    tasklens.instrument(app, metrics_path=None, tracer_provider=provider)
    with TestClient(app) as client:
        for _ in range(3):
            assert client.get("/").text == "ok"
    assert provider.calls == 1
    servers = [s for s in provider.exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert [s.name for s in servers] == ["GET /"] * 3
