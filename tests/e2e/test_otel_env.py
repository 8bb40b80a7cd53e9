"""The standard OpenTelemetry variables on a real uvicorn exporting to a real OTLP receiver:
``OTEL_SERVICE_NAME`` beats setup()'s default, ``OTEL_SDK_DISABLED`` and
``OTEL_TRACES_EXPORTER=none`` export nothing (tasks still run, ``/metrics`` still counts)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.support.metrics import Samples
from tests.support.net import free_port
from tests.support.otlp_receiver import OTLPReceiver
from tests.support.polling import wait_for
from tests.support.server import ServerProcess, clean_env

APP = "tests.e2e.apps.env_app:app"
FAILING_APP = "tests.e2e.apps.big_errors_app:app"
REQUESTS = 5


def _run(tmp_path: Path, rx: OTLPReceiver, **env: str) -> Samples:
    environment = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=rx.http_endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_METRIC_EXPORT_INTERVAL="300",
        **env,
    )
    with ServerProcess.uvicorn(APP, environment, tmp_path / "server.log", free_port()) as server:
        server.wait_ready("/done")
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            for n in range(REQUESTS):
                assert client.post(f"/work/{n}").status_code == 200
            wait_for(lambda: client.get("/done").json()["count"] == REQUESTS, 10, "tasks")
            # A task is counted after its side effect: wait for /metrics itself to settle.
            return wait_for(
                lambda: settled(s := Samples.parse(client.get("/metrics").text)) and s,
                10,
                f"/metrics to count {REQUESTS} finished tasks, none pending or running",
            )


def settled(samples: Samples) -> bool:
    return (
        samples.total("bgtask_finished_total") == REQUESTS
        and samples.total("bgtask_in_progress") == samples.total("bgtask_pending") == 0
    )


def test_otel_service_name_wins_over_the_default(tmp_path: Path) -> None:
    with OTLPReceiver() as rx:
        _run(tmp_path, rx, OTEL_SERVICE_NAME="billing")
        spans = rx.wait_for(lambda r: [s for s in r.spans() if s.name.startswith("bgtask ")])
        points = rx.wait_for(lambda r: [p for p in r.metrics() if p.name.startswith("bgtask_")])
    assert {s.resource["service.name"] for s in spans} == {"billing"}
    assert {p.resource["service.name"] for p in points} == {"billing"}


@pytest.mark.parametrize(
    ("env", "spans_expected", "metrics_expected"),
    [
        ({"OTEL_SDK_DISABLED": "true"}, False, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False, True),
        ({"OTEL_METRICS_EXPORTER": "none"}, True, False),
    ],
    ids=["sdk-disabled", "traces-none", "metrics-none"],
)
def test_disabled_signals_export_nothing_and_tasks_still_count(
    tmp_path: Path, env: dict[str, str], spans_expected: bool, metrics_expected: bool
) -> None:
    with OTLPReceiver() as rx:
        samples = _run(tmp_path, rx, **env)
        if spans_expected or metrics_expected:
            rx.wait_for(lambda r: r.spans() if spans_expected else r.metrics(), timeout=20)
        time.sleep(1.0)  # > 3 export intervals: anything exported would have arrived
        spans, points = rx.spans(), rx.metrics()
    assert samples.total("bgtask_finished_total", outcome="success") == REQUESTS
    assert bool([s for s in spans if s.name.startswith("bgtask ")]) is spans_expected
    assert bool([p for p in points if p.name.startswith("bgtask_")]) is metrics_expected


@pytest.mark.parametrize("logs_exporter", ["otlp", None])
def test_logs_exporter_sends_the_failure_line_with_its_trace(
    tmp_path: Path, logs_exporter: str | None
) -> None:
    env = {"BIG_MESSAGE_BYTES": "10", "OTEL_BLRP_SCHEDULE_DELAY": "100"}
    if logs_exporter:
        env["OTEL_LOGS_EXPORTER"] = logs_exporter
    with OTLPReceiver() as rx:
        environment = clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.http_endpoint, OTEL_BSP_SCHEDULE_DELAY="100", **env
        )
        log_path = tmp_path / "server.log"
        with ServerProcess.uvicorn(FAILING_APP, environment, log_path, free_port()) as server:
            server.wait_ready("/stats")
            with httpx.Client(base_url=server.base_url, timeout=10) as client:
                assert client.post("/fail/1").status_code == 200
            (span,) = rx.wait_for(
                lambda r: [s for s in r.spans() if s.name.startswith("bgtask ")], timeout=20
            )
        records = [r for r in rx.logs() if "background task failed" in r.body]
    if logs_exporter is None:
        assert records == []  # an endpoint alone exports no logs
        return
    (record,) = records
    assert (record.trace_id, record.span_id) == (span.trace_id, span.span_id)
    assert record.severity_text == "ERROR"
    assert record.body == "background task failed"
    assert record.attributes["task"] == "tests.e2e.apps.big_errors_app.fail"
    assert record.attributes["exception.type"] == "tests.e2e.apps.big_errors_app.BigError"
    assert record.attributes["exception.message"] == "#1 xxxxxxxxxx"
    assert "in fail" in str(record.attributes["exception.stacktrace"])
    assert record.resource["service.name"] == "big-errors"
