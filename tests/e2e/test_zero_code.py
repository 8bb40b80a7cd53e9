"""Zero-code: the real ``opentelemetry-instrument`` command (with opentelemetry-distro's
auto-configuration) runs uvicorn on a plain FastAPI app file that never imports tasklens;
the task spans and bgtask metrics arrive at a real OTLP receiver (HTTP and gRPC)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.support.metrics import Samples
from tests.support.net import free_port
from tests.support.otlp_receiver import OTLPReceiver, ReceivedSpan
from tests.support.polling import wait_for
from tests.support.server import REPO, ServerProcess, clean_env

BIN = Path(sys.executable).parent
REQUESTS = 6
FAILING = {0, 3}

PLAIN_APP = """
from fastapi import BackgroundTasks, FastAPI

app = FastAPI()
done = []


class NotifyError(Exception):
    pass


def notify(order: int) -> None:
    if order in (0, 3):
        raise NotifyError(f"order {order} has no address")
    done.append(order)


@app.post("/orders/{order}")
async def orders(order: int, background_tasks: BackgroundTasks):
    background_tasks.add_task(notify, order)
    return {"order": order}


@app.get("/done")
async def get_done():
    return {"count": len(done)}
"""


def settled(response: httpx.Response, finished: int) -> bool:
    """/metrics counts ``finished`` finished tasks and none pending or in progress."""
    if response.status_code != 200:
        return False
    samples = Samples.parse(response.text)
    return (
        samples.total("bgtask_finished_total") == finished
        and samples.total("bgtask_in_progress") == samples.total("bgtask_pending") == 0
    )


@pytest.mark.parametrize(
    ("protocol", "fastapi_instrumentor", "metrics_path"),
    [
        ("http/protobuf", False, ""),
        ("grpc", True, "/metrics"),
    ],
    ids=["http-tasklens-request-spans", "grpc-fastapi-instrumentor-metrics-path"],
)
def test_opentelemetry_instrument_gives_tasks_spans_and_metrics(
    tmp_path: Path, protocol: str, fastapi_instrumentor: bool, metrics_path: str
) -> None:
    (tmp_path / "shop.py").write_text(PLAIN_APP)
    port = free_port()
    with OTLPReceiver() as rx:
        endpoint = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
        env = clean_env(
            PYTHONPATH="",  # the app directory only: nothing of this repository but tasklens
            OTEL_SERVICE_NAME="zero-code-shop",
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_METRIC_EXPORT_INTERVAL="500",
            OTEL_LOGS_EXPORTER="none",
            OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="" if fastapi_instrumentor else "fastapi",
            TASKLENS_METRICS_PATH=metrics_path,
        )
        args = [str(BIN / "opentelemetry-instrument"), str(BIN / "uvicorn"), "shop:app",
                "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
        server = ServerProcess(args, env, tmp_path / "server.log", port, cwd=tmp_path)
        with server:
            server.wait_ready("/done")
            with httpx.Client(base_url=server.base_url, timeout=10) as client:
                for order in range(REQUESTS):
                    assert client.post(f"/orders/{order}").status_code == 200
                wait_for(
                    lambda: client.get("/done").json()["count"] == REQUESTS - len(FAILING),
                    10,
                    "the tasks to run",
                )
                metrics_response = client.get("/metrics")
                if metrics_path:  # a task is counted after its side effect: wait for /metrics
                    metrics_response = wait_for(
                        lambda: settled(r := client.get("/metrics"), REQUESTS) and r,
                        10,
                        f"/metrics to count {REQUESTS} finished tasks, none pending or running",
                    )

            def task_spans(r: OTLPReceiver) -> list[ReceivedSpan]:
                spans = [s for s in r.spans() if s.name.startswith("bgtask ")]
                return spans if len(spans) >= REQUESTS else []

            spans = rx.wait_for(task_spans, timeout=20)

            def request_spans(r: OTLPReceiver) -> list[ReceivedSpan]:
                """A request span ends after its task: it can come in a later batch."""
                servers = [
                    s for s in r.spans() if s.kind == 2 and s.url_path.startswith("/orders/")
                ]
                return servers if len(servers) >= REQUESTS else []

            rx.wait_for(request_spans, timeout=20)

            def finished(r: OTLPReceiver) -> dict[str, float]:
                latest: dict[str, float] = {}
                for p in r.metrics():
                    if p.name == "bgtask_finished_total":
                        latest[str(p.attributes["outcome"])] = p.value or 0
                return latest if sum(latest.values()) >= REQUESTS else {}

            latest = rx.wait_for(finished, timeout=20)
            points = rx.metrics()
            all_spans = rx.spans()
        log = server.log_text()

    assert "Exception in ASGI application" not in log, log
    assert log.count('"event": "background task failed"') == len(FAILING)
    assert "Overriding of current" not in log
    # One server span per request, whoever made it, and the task span is its child.
    servers = [s for s in all_spans if s.kind == 2 and s.url_path.startswith("/orders/")]
    assert len(servers) == REQUESTS
    assert len(spans) == REQUESTS
    by_trace = {s.trace_id: s for s in servers}
    assert len(by_trace) == REQUESTS
    for span in spans:
        server_span = by_trace[span.trace_id]
        assert span.parent_span_id == server_span.span_id
        assert span.name == "bgtask shop.notify"
        order = int(server_span.url_path.rsplit("/", 1)[1])
        expected = "failure" if order in FAILING else "success"
        assert span.attributes["bgtask.outcome"] == expected
        assert span.transport == ("grpc" if protocol == "grpc" else "http")
        assert span.resource["service.name"] == "zero-code-shop"
    # Metrics over OTLP, under the auto-configured resource.
    assert {k: v for k, v in latest.items() if v} == {
        "success": REQUESTS - len(FAILING),
        "failure": len(FAILING),
    }
    bg = [p for p in points if p.name.startswith("bgtask_")]
    assert {p.resource["service.name"] for p in bg} == {"zero-code-shop"}
    # /metrics only when asked for.
    if metrics_path:
        assert metrics_response.status_code == 200
        samples = Samples.parse(metrics_response.text)
        assert samples.total("bgtask_finished_total", task="shop.notify", outcome="failure") == 2
    else:
        assert metrics_response.status_code == 404


_UNINSTRUMENT = """
import json
from fastapi import FastAPI
from starlette.applications import Starlette
from tasklens.instrumentor import TasklensInstrumentor
originals = (Starlette.build_middleware_stack, FastAPI.build_middleware_stack)
instrumentor = TasklensInstrumentor()
instrumentor.instrument()
hooked = (Starlette.build_middleware_stack, FastAPI.build_middleware_stack)
before = FastAPI()
before.build_middleware_stack()
starlette_app = Starlette()
starlette_app.build_middleware_stack()
# A sub-app is built during a request of the instrumented app: its tasks are the outer
# app's, counted once.
from prometheus_client import REGISTRY
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
ran = []
def endpoint(request):
    return JSONResponse({}, background=BackgroundTask(ran.append, 1))
inner = Starlette(routes=[Route("/x", endpoint)])
outer = FastAPI()
outer.mount("/sub", inner)
with TestClient(outer) as client:
    client.get("/sub/x")
finished = sum(
    s.value for m in REGISTRY.collect() for s in m.samples if s.name == "bgtask_finished_total"
)
instrumentor.uninstrument()
after = FastAPI()
after.build_middleware_stack()
print(json.dumps({
    "hooked": [h is not o for h, o in zip(hooked, originals)],
    "restored": [Starlette.build_middleware_stack is originals[0],
                 FastAPI.build_middleware_stack is originals[1]],
    "instrumented_before": hasattr(before.state, "tasklens"),
    "starlette_instrumented": hasattr(starlette_app.state, "tasklens"),
    "instrumented_after": hasattr(after.state, "tasklens"),
    "mounted": [hasattr(outer.state, "tasklens"), hasattr(inner.state, "tasklens"), ran, finished],
}))
"""


def test_uninstrument_restores_what_instrument_hooked() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_UNINSTRUMENT)],
        env=clean_env(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "hooked": [True, True],
        "restored": [True, True],
        "instrumented_before": True,
        "starlette_instrumented": True,
        "instrumented_after": False,
        "mounted": [True, False, [1], 1.0],
    }


def test_bad_option_fails_at_instrument_time() -> None:
    code = (
        "from tasklens.instrumentor import TasklensInstrumentor\n"
        "TasklensInstrumentor().instrument()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(TASKLENS_METRICS_PATH="metrics"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "metrics_path" in proc.stderr.splitlines()[-1], proc.stderr[-2000:]
