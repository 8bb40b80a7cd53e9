"""The contract's metrics through OpenTelemetry's API on the app's meter provider
(``meter_provider=``, or FastAPI's ``telemetry`` config), read by an in-memory reader; the
OTLP path is proven in tests/e2e/test_meter_provider.py."""

from __future__ import annotations

import importlib.util
import threading
import time
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tasklens
from tasklens.runtime.naming import TaskIdentity
from tasklens.runtime.record import TaskRecord
from tasklens.telemetry import TelemetryOptions, default_observers
from tasklens.telemetry import contract as c
from tasklens.telemetry.otel_metrics import (
    OTEL_METRICS,
    OTelMetricsObserver,
    otel_unit,
    prometheus_name,
)
from tests.conftest import task_spans
from tests.runtime.helpers import serve
from tests.support.polling import wait_for

pytestmark = pytest.mark.anyio
FASTAPI_NATIVE = importlib.util.find_spec("fastapi.telemetry") is not None
OK, FAIL = f"{__name__}.succeeding", f"{__name__}.failing"


class Declined(Exception):
    pass


async def succeeding() -> None:
    return None


def failing() -> None:
    raise Declined("card")


def _app(telemetry: dict[str, Any] | None = None) -> FastAPI:
    app = FastAPI(**({"telemetry": telemetry} if telemetry is not None else {}))

    @app.post("/run")
    async def run(background_tasks: BackgroundTasks, ok: int = 0, bad: int = 0) -> str:
        for _ in range(ok):
            background_tasks.add_task(succeeding)
        for _ in range(bad):
            background_tasks.add_task(failing)
        return "ok"

    return app


async def _post(app: FastAPI, ok: int, bad: int) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post("/run", params={"ok": ok, "bad": bad})).status_code == 200


def _points(reader: InMemoryMetricReader) -> dict[str, tuple[Any, list[Any]]]:
    """name -> (metric, its data points); empty when nothing was recorded."""
    data = reader.get_metrics_data()
    if data is None:
        return {}
    return {
        m.name: (m, list(m.data.data_points))
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        if sm.scope.name == "tasklens"
        for m in sm.metrics
    }


def _by_attrs(points: list[Any]) -> dict[tuple[Any, ...], Any]:
    return {tuple(sorted(dict(p.attributes).items())): p for p in points}


async def test_meter_provider_option_records_the_contract(
    spans: InMemorySpanExporter,
) -> None:
    reader = InMemoryMetricReader()
    app = _app()
    tasklens.instrument(app, meter_provider=MeterProvider(metric_readers=[reader]))
    await _post(app, ok=4, bad=3)
    got = _points(reader)

    finished = {
        (p.attributes["task"], p.attributes["outcome"]): p.value for p in got[c.FINISHED.name][1]
    }
    assert finished[(OK, c.OUTCOME_SUCCESS)] == 4
    assert finished[(FAIL, c.OUTCOME_FAILURE)] == 3
    assert sum(finished.values()) == 7 and len(finished) == 2 * len(c.OUTCOMES)
    assert {p.attributes["task"]: p.value for p in got[c.ENQUEUED.name][1]} == {OK: 4, FAIL: 3}
    (failure,) = got[c.FAILURES.name][1]
    assert dict(failure.attributes) == {"task": FAIL, "exception": f"{__name__}.Declined"}
    assert failure.value == 3
    assert [p.value for p in got[c.PENDING.name][1]] == [0]
    assert {p.value for p in got[c.IN_PROGRESS.name][1]} == {0}
    tokens = {p.attributes["state"]: p.value for p in got[c.THREADPOOL_TOKENS.name][1]}
    assert tokens == {"borrowed": 0, "total": 16}

    metric, durations = got[c.DURATION_SECONDS.name]
    assert metric.unit == "s" and metric.description == c.DURATION_SECONDS.help
    assert {p.attributes["outcome"]: p.count for p in durations} == {
        c.OUTCOME_SUCCESS: 4,
        c.OUTCOME_FAILURE: 3,
    }
    for name in (c.DURATION_SECONDS.name, c.QUEUE_SECONDS.name):
        for p in got[name][1]:
            assert tuple(p.explicit_bounds) == c.DURATION_BUCKETS
            assert len(p.bucket_counts) == len(c.DURATION_BUCKETS) + 1
    assert sum(p.count for p in got[c.QUEUE_SECONDS.name][1]) == 7
    assert [p.count for p in got[c.THREADPOOL_WAIT_SECONDS.name][1]] == [3]
    assert [p.count for p in got[c.LOOP_BLOCKING_SECONDS.name][1]] == [4]
    # Exemplars: the trace-based filter keeps the task span current while ``finished`` runs.
    span_ids = {s.context.span_id for s in task_spans(spans)}
    assert len(span_ids) == 7
    exemplar_spans = {e.span_id for p in durations for e in p.exemplars}
    assert exemplar_spans and exemplar_spans <= span_ids


@pytest.mark.skipif(not FASTAPI_NATIVE, reason="FastAPI < 0.164 has no telemetry config")
async def test_fastapi_app_meter_provider_is_used() -> None:
    reader = InMemoryMetricReader()
    app = _app({"meter_provider": MeterProvider(metric_readers=[reader]), "tracing": False})
    tasklens.instrument(app)
    await _post(app, ok=2, bad=1)
    finished = _by_attrs(_points(reader)[c.FINISHED.name][1])
    key = (("executor", c.EXECUTOR_EVENT_LOOP), ("outcome", c.OUTCOME_SUCCESS), ("task", OK))
    assert finished[key].value == 2


async def test_option_wins_over_the_fastapi_apps_provider() -> None:
    option, configured = InMemoryMetricReader(), InMemoryMetricReader()
    config = {"meter_provider": MeterProvider(metric_readers=[configured]), "tracing": False}
    app = _app(config) if FASTAPI_NATIVE else _app()
    if not FASTAPI_NATIVE:  # where FastAPI >= 0.164 keeps its telemetry config
        app._telemetry = config  # type: ignore[attr-defined]
    tasklens.instrument(app, meter_provider=MeterProvider(metric_readers=[option]))
    await _post(app, ok=1, bad=0)
    assert c.FINISHED.name in _points(option)
    assert _points(configured) == {}


def test_no_meter_provider_no_otel_observer() -> None:
    kinds = [type(o).__name__ for o in default_observers(TelemetryOptions(), FastAPI())]
    assert kinds == ["SpanObserver", "MetricsObserver", "LogObserver"]
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    observers = default_observers(TelemetryOptions(meter_provider=provider))
    (otel,) = [o for o in observers if isinstance(o, OTelMetricsObserver)]
    assert otel.meter_provider is provider
    # Between the Prometheus and the log observer: finished runs in reverse, the task span
    # (ended by the first observer) is current while it records.
    assert observers.index(otel) == 2


async def test_exception_label_bounded_by_max_exception_types() -> None:
    reader = InMemoryMetricReader()
    app = FastAPI()

    def one() -> None:
        raise KeyError("a")

    def two() -> None:
        raise LookupError("b")

    @app.post("/")
    async def run(background_tasks: BackgroundTasks) -> str:
        background_tasks.add_task(one)
        background_tasks.add_task(two)
        return "ok"

    tasklens.instrument(
        app, meter_provider=MeterProvider(metric_readers=[reader]), max_exception_types=1
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.post("/")
    got = {p.attributes["exception"]: p.value for p in _points(reader)[c.FAILURES.name][1]}
    assert got == {"KeyError": 1, c.OTHER_TASK: 1}


def test_prometheus_translation_gives_the_contracts_names() -> None:
    """What the collector's Prometheus exporters (suffixes on, the default) make of each
    instrument is the name /metrics, the dashboards and the alert rules use."""
    for spec in OTEL_METRICS:
        unit = otel_unit(spec)
        assert prometheus_name(spec.name, unit, spec.type == "counter") == spec.sample_name
    assert otel_unit(c.DURATION_SECONDS) == "s" and otel_unit(c.PENDING) == "{task}"
    assert prometheus_name("bgtask.duration", "s", False) == "bgtask_duration_seconds"


def test_counts_exact_when_tasks_finish_in_many_threads() -> None:
    """Sync tasks finish in worker threads: the tallies lose no increment."""
    reader = InMemoryMetricReader()
    observer = OTelMetricsObserver(MeterProvider(metric_readers=[reader]))
    identity = TaskIdentity("shop.send", False, "send", "shop")

    def work() -> None:
        for _ in range(2000):
            task = TaskRecord(identity, failing, (), {}, False, None)
            observer.enqueued(task)
            task.started_at = time.perf_counter()
            observer.started(task)
            task.finished_at, task.outcome = task.started_at, c.OUTCOME_SUCCESS
            observer.finished(task)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    got = _points(reader)
    finished = {p.attributes["outcome"]: p.value for p in got[c.FINISHED.name][1]}
    assert finished[c.OUTCOME_SUCCESS] == 16_000
    assert [p.value for p in got[c.ENQUEUED.name][1]] == [16_000]
    assert [p.value for p in got[c.PENDING.name][1]] == [0]
    assert [p.value for p in got[c.IN_PROGRESS.name][1]] == [0]
    assert [p.count for p in got[c.DURATION_SECONDS.name][1]] == [16_000]


def test_requests_held_at_max_pending_are_counted() -> None:
    """The runner's admission hooks reach the OTel instruments too (real uvicorn)."""
    reader = InMemoryMetricReader()
    app = FastAPI()
    gate = threading.Semaphore(0)

    def blocks() -> None:
        assert gate.acquire(timeout=10), "never released"

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> str:
        background_tasks.add_task(blocks)
        return "ok"

    runner = tasklens.instrument(
        app,
        meter_provider=MeterProvider(metric_readers=[reader]),
        metrics_path=None,
        max_pending=2,
    )
    statuses: list[int] = []
    with serve(app) as server, httpx.Client(base_url=server.base_url, timeout=10) as client:
        for _ in range(3):
            assert client.post("/work").status_code == 200
        assert runner.unfinished == 3

        def fourth() -> None:
            with httpx.Client(base_url=server.base_url, timeout=10) as other:
                statuses.append(other.post("/work").status_code)

        waiter = threading.Thread(target=fourth, daemon=True)
        waiter.start()
        wait_for(lambda: runner.admission_delayed == 1, 10, "the fourth request held")
        waiter.join(0.3)
        assert waiter.is_alive()  # held at the bound
        for _ in range(4):
            gate.release()
        waiter.join(10)
        wait_for(lambda: runner.unfinished == 0, 10, "every task to finish")
    assert statuses == [200]
    got = _points(reader)
    assert [p.value for p in got[c.ADMISSION_DELAYED.name][1]] == [1]
    (waited,) = [p.value for p in got[c.ADMISSION_WAIT_SECONDS.name][1]]
    assert 0 < waited < 10  # from when it reached the bound to the release
    assert got[c.ADMISSION_WAIT_SECONDS.name][0].unit == "s"
