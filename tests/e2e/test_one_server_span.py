"""One server span per request, whoever makes it, and the request's task under it: a real
uvicorn serving ``tests/e2e/apps/server_span_app.py`` in each tracing set-up, exporting over
OTLP to the test receiver. Before, tasklens's request span sat outermost and only asked "is
a span current?": with a tracer inside it (OpenTelemetry's ASGI middleware or Starlette's
own added before ``instrument``) each request had two SERVER spans in two traces, the task
under tasklens's; its own spans were named after the raw path and recorded the query."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.net import free_port
from tests.support.otlp_receiver import OTLPReceiver, ReceivedSpan
from tests.support.server import ServerProcess, clean_env

APP = "tests.e2e.apps.server_span_app:served"
TASK = "bgtask tests.e2e.apps.server_span_app.note"
FASTAPI_NATIVE = importlib.util.find_spec("fastapi.telemetry") is not None
STARLETTE_OTEL = importlib.util.find_spec("starlette.middleware.opentelemetry") is not None
SERVER = 2  # SpanKind.SERVER in OTLP
#: Variants and the instrumentation scope of their server span.
VARIANTS = {
    "plain": "tasklens",
    "asgi_inner": "opentelemetry.instrumentation.asgi",
    "asgi_outer": "opentelemetry.instrumentation.asgi",
    "instrumentor": "opentelemetry.instrumentation.fastapi",
    "native": "fastapi" if FASTAPI_NATIVE else "tasklens",
}
if STARLETTE_OTEL:  # Starlette >= 1.0
    VARIANTS |= {"starlette_inner": "starlette", "starlette_outer": "starlette"}


@dataclass
class Run:
    spans: list[ReceivedSpan]
    log: str
    recording: list[bool]
    #: span id (hex) -> the (trace id, span id) of each of its links, from the raw requests.
    links: dict[str, list[tuple[str, str]]]

    def servers(self, path: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.kind == SERVER and s.url_path.startswith(path)]


@contextmanager
def served(
    tmp_path: Path, variant: str, protocol: str = "http/protobuf", **env: str
) -> Iterator[tuple[ServerProcess, OTLPReceiver]]:
    """The app in ``variant`` under uvicorn; setup()'s exporters use ``protocol`` (the
    app's own providers always OTLP/HTTP)."""
    with OTLPReceiver() as rx:
        grpc = protocol == "grpc"
        environment = clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.grpc_endpoint if grpc else rx.http_endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
            SPAN_APP_OWN_ENDPOINT=rx.http_endpoint,
            OTEL_BSP_SCHEDULE_DELAY="50",
            OTEL_METRICS_EXPORTER="none",
            SPAN_APP_VARIANT=variant,
            **env,
        )
        log = tmp_path / f"{variant}.log"
        with ServerProcess.uvicorn(APP, environment, log, free_port()) as server:
            server.wait_ready("/recording")
            yield server, rx


def run(
    tmp_path: Path, variant: str, tasks: int = 2, protocol: str = "http/protobuf", **env: str
) -> Run:
    with served(tmp_path, variant, protocol, **env) as (server, rx):
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            response = client.post("/users/alice@example.com", params={"token": "s3cr3t-q"})
            assert response.status_code == 200
            assert client.get("/health").status_code == 200
            rx.wait_for(
                lambda r: r.spans() if sum(s.name == TASK for s in r.spans()) >= tasks else [],
                timeout=15,
            )
            recording = client.get("/recording").json()["recording"]
        # A request span ends after its tasks, so it can come in a later export batch than
        # theirs: stop the server (its shutdown flushes every batch) before reading spans.
        server.stop()
        spans = rx.spans()
        log = server.log_text()
        links = {
            span.span_id.hex(): [(k.trace_id.hex(), k.span_id.hex()) for k in span.links]
            for _, request in rx.export_requests("traces")
            for resource_spans in request.resource_spans  # type: ignore[attr-defined]
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        }
    return Run(spans, log, recording, links)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_one_server_span_and_the_task_under_it(tmp_path: Path, variant: str) -> None:
    result = run(tmp_path, variant)
    (server,) = result.servers("/users/")
    assert server.scope == VARIANTS[variant]
    (task,) = [s for s in result.spans if s.name == TASK and s.trace_id == server.trace_id]
    assert task.parent_span_id == server.span_id
    assert len([s for s in result.spans if s.name == TASK]) == 2  # one per request
    assert result.recording == [True, True]


def test_own_request_span_named_after_the_route_without_the_query(tmp_path: Path) -> None:
    result = run(tmp_path, "plain")
    (server,) = result.servers("/users/")
    assert server.name == "POST /users/{name}"
    assert server.attributes["http.route"] == "/users/{name}"
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.response.status_code"] == 200
    assert "url.query" not in server.attributes
    assert not any("s3cr3t-q" in str(v) for s in result.spans for v in s.attributes.values())
    assert not any("alice@example.com" in s.name for s in result.spans)


def test_query_recorded_scrubbed_when_opted_in(tmp_path: Path) -> None:
    result = run(tmp_path, "plain", SPAN_APP_OPTIONS='{"record_url_query": true}')
    (server,) = result.servers("/users/")
    assert server.attributes["url.query"] == "token=[redacted]"


def test_excluded_urls_get_no_request_span(tmp_path: Path) -> None:
    result = run(tmp_path, "plain", OTEL_PYTHON_EXCLUDED_URLS="health,recording")
    assert result.servers("/health") == []
    assert len(result.servers("/users/")) == 1
    (health_task,) = [s for s in result.spans if s.name == TASK and s.parent_span_id == ""]
    assert health_task.attributes["bgtask.outcome"] == "success"


@pytest.mark.skipif(not FASTAPI_NATIVE, reason="FastAPI < 0.164 has no native telemetry")
@pytest.mark.parametrize("variant", ["plain", "native"])
def test_fastapi_per_request_telemetry_survives(tmp_path: Path, variant: str) -> None:
    """``plain`` is ``FastAPI(telemetry={"tracing": False})``: before, tasklens's request
    span started from a fresh context, dropping FastAPI's per-request data."""
    with served(tmp_path, variant) as (server, rx):
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            assert client.post("/items", json={"quantity": "many"}).status_code == 422
            assert client.get("/telemetry-data").json() == {"present": True}
        logs = rx.wait_for(
            lambda r: [x for x in r.logs() if x.body == "Request validation failed"], timeout=10
        )
        servers = rx.wait_for(
            lambda r: [s for s in r.spans() if s.kind == SERVER and s.url_path == "/items"],
            timeout=10,
        )
    assert len(logs) == 1
    assert logs[0].attributes["fastapi.validation.error_count"] == 1
    assert len(servers) == 1
    assert logs[0].trace_id == servers[0].trace_id  # the log sits in the request's trace


EXCLUDING = ["asgi_inner_excluding"] + (["starlette_inner_excluding"] if STARLETTE_OTEL else [])


@pytest.mark.parametrize("variant", EXCLUDING)
def test_an_inner_tracers_exclusion_stands(tmp_path: Path, variant: str) -> None:
    """The app's tracer excluded ``/health``: tasklens adds no span of its own there
    (before: tasklens's outer span traced it)."""
    result = run(tmp_path, variant)
    assert result.servers("/health") == []
    assert len(result.servers("/users/")) == 1
    (health_task,) = [s for s in result.spans if s.name == TASK and s.parent_span_id == ""]
    assert health_task.attributes["bgtask.outcome"] == "success"
