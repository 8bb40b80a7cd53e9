"""Core proof on real parts: uvicorn + httpx on loopback, the real OTLP exporters, a real
OTLP receiver (HTTP/protobuf and gRPC), and /metrics parsed with prometheus_client."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from tests.support.metrics import Samples
from tests.support.net import free_port
from tests.support.otlp_receiver import OTLPReceiver, ReceivedSpan
from tests.support.polling import wait_for
from tests.support.server import ServerProcess, clean_env

REQUESTS = 50
APP = "tests.e2e.apps.core_app:app"
FAILING = {n for n in range(REQUESTS) if n % 3 == 0}  # notify() fails for these orders


def settled(metrics_text: str, finished: int) -> bool:
    """/metrics counts ``finished`` finished tasks, none pending or in progress, and each
    failure's exception too (its counter is the last finish hook)."""
    samples = Samples.parse(metrics_text)
    return (
        samples.total("bgtask_finished_total") == finished
        and samples.total("bgtask_in_progress") == samples.total("bgtask_pending") == 0
        and samples.total("bgtask_failures_total")
        == samples.total("bgtask_finished_total", outcome="failure")
    )


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_tasks_join_the_request_trace_and_metrics_match(tmp_path: Path, protocol: str) -> None:
    with OTLPReceiver() as rx:
        endpoint = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
        env = clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_METRIC_EXPORT_INTERVAL="500",
        )
        with ServerProcess.uvicorn(APP, env, tmp_path / "server.log", free_port()) as server:
            server.wait_ready("/health")
            parents: dict[str, str] = {}
            with httpx.Client(base_url=server.base_url, timeout=10) as client:
                for order in range(REQUESTS):
                    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
                    parents[trace_id] = parent_id
                    response = client.post(
                        f"/orders/{order}",
                        headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
                    )
                    assert response.status_code == 200
                # Every non-failing task ran; the last response's tasks may still be running.
                expected_effects = REQUESTS + (REQUESTS - len(FAILING))
                wait_for(
                    lambda: client.get("/side-effects").json()["count"] >= expected_effects,
                    10,
                    "every task to run",
                )
                assert client.get("/side-effects").json() == {"count": expected_effects}
                # A task is counted after its side effect: wait for /metrics to settle.
                metrics_text = wait_for(
                    lambda: settled(text := client.get("/metrics").text, 2 * REQUESTS) and text,
                    10,
                    f"/metrics to count {2 * REQUESTS} finished tasks, none pending or running",
                )
                openmetrics = client.get(
                    "/metrics", headers={"Accept": "application/openmetrics-text"}
                ).text

            def task_spans(r: OTLPReceiver) -> list[ReceivedSpan]:
                spans = [s for s in r.spans() if s.name.startswith("bgtask ")]
                return spans if len(spans) >= 2 * REQUESTS else []

            spans = rx.wait_for(task_spans, timeout=20)

            def request_spans(r: OTLPReceiver) -> list[ReceivedSpan]:
                """A request span ends after its tasks: it can come in a later batch."""
                received = r.spans()
                servers = [s for s in received if s.kind == 2 and s.url_path.startswith("/orders/")]
                return received if len(servers) >= REQUESTS else []

            all_spans = rx.wait_for(request_spans, timeout=20)

            def latest_finished(r: OTLPReceiver) -> dict:
                # Cumulative points: the latest value of each series is the total.
                latest = {}
                for p in r.metrics():
                    if p.name == "bgtask_finished_total":
                        latest[tuple(sorted(p.attributes.items()))] = p.value or 0
                return latest if sum(latest.values()) >= 2 * REQUESTS else {}

            finished_latest = rx.wait_for(latest_finished, timeout=20)
        log = server.log_text()

    # --- traces: each request's two task spans sit under its server span, in its trace.
    assert len(spans) == 2 * REQUESTS
    assert {s.transport for s in spans} == {"grpc" if protocol == "grpc" else "http"}
    servers = {
        s.trace_id: s for s in all_spans if s.kind == 2 and s.url_path.startswith("/orders/")
    }
    assert set(servers) == set(parents)
    for trace_id, server_span in servers.items():
        assert server_span.parent_span_id == parents[trace_id]  # the incoming traceparent
        mine = sorted(
            (s for s in spans if s.trace_id == trace_id), key=lambda s: s.attributes["bgtask.index"]
        )
        assert [s.name for s in mine] == [
            "bgtask tests.e2e.apps.core_app.charge",
            "bgtask tests.e2e.apps.core_app.notify",
        ]
        assert all(s.parent_span_id == server_span.span_id for s in mine)
        assert all(s.kind == 1 for s in mine)  # INTERNAL
        charge, notify = mine
        assert charge.attributes["bgtask.executor"] == "thread_pool"
        assert notify.attributes["bgtask.executor"] == "event_loop"
        assert charge.attributes["bgtask.batch_size"] == 2
        assert charge.attributes["code.function.name"] == "tests.e2e.apps.core_app.charge"
        assert str(charge.attributes["code.file.path"]).endswith("tests/e2e/apps/core_app.py")
        assert charge.attributes["code.line.number"] == 21  # def charge
        assert "code.function" not in charge.attributes
        assert "code.namespace" not in charge.attributes
        assert "bgtask.threadpool_wait_seconds" in charge.attributes
        assert "bgtask.threadpool_wait_seconds" not in notify.attributes
        order = int(server_span.url_path.rsplit("/", 1)[1])
        if order in FAILING:
            assert notify.attributes["bgtask.outcome"] == "failure"
            assert notify.attributes["error.type"] == "tests.e2e.apps.core_app.InventoryError"
            assert notify.status_code == 2  # ERROR
            assert [e[0] for e in notify.events] == ["exception"]
        else:
            assert notify.attributes["bgtask.outcome"] == "success"
        enqueued = [e for e in server_span.events if e[0] == "bgtask.enqueued"]
        assert [e[1]["bgtask.name"] for e in enqueued] == [
            "tests.e2e.apps.core_app.charge",
            "tests.e2e.apps.core_app.notify",
        ]

    # --- /metrics, parsed with prometheus_client.
    samples = Samples.parse(metrics_text)
    assert samples.total("bgtask_enqueued_total") == 2 * REQUESTS
    assert samples.total("bgtask_finished_total") == 2 * REQUESTS
    assert samples.total("bgtask_finished_total", outcome="failure") == len(FAILING)
    assert samples.total("bgtask_finished_total", outcome="success") == 2 * REQUESTS - len(FAILING)
    assert samples.total(
        "bgtask_failures_total",
        task="tests.e2e.apps.core_app.notify",
        exception="tests.e2e.apps.core_app.InventoryError",
    ) == len(FAILING)
    assert samples.total("bgtask_duration_seconds_count") == 2 * REQUESTS
    assert samples.total("bgtask_queue_seconds_count", executor="thread_pool") == REQUESTS
    assert samples.total("bgtask_threadpool_wait_seconds_count") == REQUESTS
    assert samples.total("bgtask_pending") == 0
    assert samples.total("bgtask_in_progress") == 0
    # Exemplars (trace ids of sampled task spans) with OpenMetrics negotiation.
    exemplar_traces = _exemplar_trace_ids(openmetrics)
    assert exemplar_traces and exemplar_traces <= set(parents)

    # --- OTLP metrics: the same counters, exported by the same recording path.
    assert sum(finished_latest.values()) == 2 * REQUESTS
    failures = {k: v for k, v in finished_latest.items() if ("outcome", "failure") in k}
    assert sum(failures.values()) == len(FAILING)
    # A task failure is logged once, with the task and trace fields, not as an ASGI error.
    assert log.count('"event": "background task failed"') == len(FAILING)
    assert "Exception in ASGI application" not in log


def _exemplar_trace_ids(openmetrics: str) -> set[str]:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

    return {
        s.exemplar.labels["trace_id"]
        for family in om_parse(openmetrics)
        if family.name == "bgtask_duration_seconds"
        for s in family.samples
        if s.exemplar is not None
    }
