"""tasklens's own request spans, in process (in-memory exporter): websockets named as
opentelemetry-instrumentation-asgi names them (the route alone, here its template), a 404
named after the method alone, options validated with the option's name."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.routing import Mount, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

import tasklens
from tests.conftest import task_spans

RAN: list[str] = []


def note(room: str) -> None:
    RAN.append(room)


async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())
    await websocket.close()


def _app() -> Starlette:
    inner = Starlette(routes=[WebSocketRoute("/chat/{room}", chat)])
    app = Starlette(routes=[Mount("/rooms", app=inner)])
    tasklens.instrument(app, metrics_path=None)
    return app


def test_websocket_span_named_after_its_route_template(spans: InMemorySpanExporter) -> None:
    with TestClient(_app()) as client, client.websocket_connect("/rooms/chat/lobby") as ws:
        ws.send_text("hi")
        assert ws.receive_text() == "hi"
    (server,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert server.name == "/rooms/chat/{room}"
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/rooms/chat/{room}"
    assert server.attributes["url.scheme"] == "ws"
    assert server.attributes["network.protocol.name"] == "websocket"
    assert "lobby" not in server.name


def test_unmatched_path_named_after_the_method(spans: InMemorySpanExporter) -> None:
    with TestClient(_app()) as client:
        assert client.get("/nowhere/alice").status_code == 404
    (server,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert server.name == "GET"
    assert server.attributes is not None
    assert "http.route" not in server.attributes
    assert server.attributes["http.response.status_code"] == 404


def test_request_spans_off_tasks_still_under_an_inner_tracers_span(
    spans: InMemorySpanExporter,
) -> None:
    """OpenTelemetry's ASGI middleware inside the instrumented stack (added before
    ``instrument``) traces the request; before, the task's parent was the context at the
    stack's outer edge (none: the task span was a root of its own)."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from starlette.middleware import Middleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def endpoint(request: object) -> PlainTextResponse:
        return PlainTextResponse("ok", background=BackgroundTask(note, "x"))

    app = Starlette(
        routes=[Route("/", endpoint)],
        middleware=[Middleware(OpenTelemetryMiddleware, exclude_spans=["receive", "send"])],
    )
    tasklens.instrument(app, metrics_path=None, request_spans=False)
    with TestClient(app) as client:
        assert client.get("/").status_code == 200
    (server,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    (task,) = task_spans(spans)
    assert task.parent is not None
    assert task.parent.span_id == server.context.span_id


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("task_trace", "sibling", "'child' or 'link'"),
        ("tracer_provider", object(), "an OpenTelemetry TracerProvider, or None"),
        ("meter_provider", "global", "an OpenTelemetry MeterProvider, or None"),
        ("record_url_query", 1, "True or False"),
    ],
)
def test_invalid_options_name_the_option(option: str, value: object, expected: str) -> None:
    with pytest.raises(ValueError, match=rf"invalid {option}=.*expected {expected}"):
        tasklens.instrument(Starlette(), **{option: value})
