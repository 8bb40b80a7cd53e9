"""The app's meter provider gets the contract's metrics: ``instrument(app, meter_provider=mp)``
or ``FastAPI(telemetry={"meter_provider": mp})``. Real uvicorn serving
``tests/e2e/apps/meter_provider_app.py``; the app's provider and setup()'s global one both
export OTLP/HTTP to the test receiver, under different service names. Before, the option was
stored and unused: the app's provider received nothing."""

from __future__ import annotations

import importlib.util
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from tasklens.telemetry import contract as c
from tests.support.metrics import scrape
from tests.support.net import free_port
from tests.support.otlp_receiver import OTLPReceiver, ReceivedMetricPoint
from tests.support.server import ServerProcess, clean_env

APP = "tests.e2e.apps.meter_provider_app:app"
MODULE = "tests.e2e.apps.meter_provider_app"
OK, FAIL = f"{MODULE}.succeeding", f"{MODULE}.failing"
FASTAPI_NATIVE = importlib.util.find_spec("fastapi.telemetry") is not None
REQUESTS = 9
FAILING = {1, 4, 7}
OWN, GLOBAL = "own-meters", "global-meters"
#: Names only the OTel instruments use (the Prometheus bridge sends counters with _total).
OTEL_ONLY = {c.ENQUEUED.name, c.FINISHED.name, c.FAILURES.name}
CUMULATIVE = 2  # AggregationTemporality in OTLP


def _latest(points: list[ReceivedMetricPoint], service: str) -> dict[str, Any]:
    """name -> {sorted attribute items: the service's latest point} (cumulative totals)."""
    latest: dict[str, Any] = defaultdict(dict)
    for p in points:
        if p.resource.get("service.name") == service:
            latest[p.name][tuple(sorted(p.attributes.items()))] = p
    return latest


def _values(latest: dict[str, Any], name: str) -> dict[tuple[Any, ...], float]:
    return {tuple(v for _, v in key): p.value for key, p in latest.get(name, {}).items()}


def _run(tmp_path: Path, provider: str) -> dict[str, Any]:
    with OTLPReceiver() as rx:
        env = clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.http_endpoint,
            OTEL_METRIC_EXPORT_INTERVAL="200",
            OTEL_BSP_SCHEDULE_DELAY="50",
            METER_APP_ENDPOINT=rx.http_endpoint,
            METER_APP_PROVIDER=provider,
        )
        with ServerProcess.uvicorn(APP, env, tmp_path / "server.log", free_port()) as server:
            server.wait_ready("/health")
            with httpx.Client(base_url=server.base_url, timeout=10) as client:
                for i in range(REQUESTS):
                    fail = int(i in FAILING)
                    assert client.post("/run", params={"fail": fail}).status_code == 200

                def done(r: OTLPReceiver) -> dict[str, Any]:
                    own = _latest(r.metrics(), OWN)
                    finished = _values(own, c.FINISHED.name)
                    bridged = _values(_latest(r.metrics(), GLOBAL), c.FINISHED.sample_name)
                    complete = sum(finished.values()) == sum(bridged.values()) == REQUESTS
                    return own if complete and own.get(c.PENDING.name) else {}

                own = rx.wait_for(done, timeout=20)
                task_traces = rx.wait_for(
                    lambda r: (
                        {s.trace_id for s in r.spans() if s.name.startswith("bgtask ")}
                        if sum(s.name.startswith("bgtask ") for s in r.spans()) >= REQUESTS
                        else set()
                    ),
                    timeout=20,
                )
                samples = scrape(client)
            points = rx.metrics()
            units = {
                m.name: m.unit
                for _, request in rx.export_requests("metrics")
                for rm in request.resource_metrics  # type: ignore[attr-defined]
                for sm in rm.scope_metrics
                for m in sm.metrics
                if any(a.value.string_value == OWN for a in rm.resource.attributes)
            }
    return {
        "own": own,
        "points": points,
        "traces": task_traces,
        "samples": samples,
        "units": units,
    }


def _check(result: dict[str, Any]) -> None:
    own = result["own"]
    successes, failures = REQUESTS - len(FAILING), len(FAILING)
    # Exact counts per task and outcome; every other outcome's series at 0.
    finished = _values(own, c.FINISHED.name)
    assert finished[(c.EXECUTOR_EVENT_LOOP, c.OUTCOME_SUCCESS, OK)] == successes
    assert finished[(c.EXECUTOR_THREAD_POOL, c.OUTCOME_FAILURE, FAIL)] == failures
    assert sum(finished.values()) == REQUESTS
    assert len(finished) == 2 * len(c.OUTCOMES)
    assert _values(own, c.ENQUEUED.name) == {(OK,): successes, (FAIL,): failures}
    assert _values(own, c.FAILURES.name) == {("ValueError", FAIL): failures}
    assert _values(own, c.PENDING.name) == {(): 0}
    assert set(_values(own, c.IN_PROGRESS.name).values()) == {0}
    # Histograms: one observation per task, the contract's buckets.
    durations = own[c.DURATION_SECONDS.name].values()
    assert Counter(p.attributes["outcome"] for p in durations for _ in range(p.count or 0)) == {
        c.OUTCOME_SUCCESS: successes,
        c.OUTCOME_FAILURE: failures,
    }
    for name in (c.DURATION_SECONDS.name, c.QUEUE_SECONDS.name):
        hist = own[name].values()
        assert sum(p.count for p in hist) == REQUESTS
        for p in hist:
            assert p.kind == "histogram" and p.temporality == CUMULATIVE
            assert p.explicit_bounds == list(c.DURATION_BUCKETS)
            assert len(p.bucket_counts) == len(c.DURATION_BUCKETS) + 1
            assert sum(p.bucket_counts) == p.count
    assert sum(p.count for p in own[c.THREADPOOL_WAIT_SECONDS.name].values()) == failures
    assert sum(p.count for p in own[c.LOOP_BLOCKING_SECONDS.name].values()) == successes
    (finished_point, *_) = own[c.FINISHED.name].values()
    assert finished_point.is_monotonic is True and finished_point.temporality == CUMULATIVE
    assert own[c.PENDING.name][()].is_monotonic is False
    units = result["units"]
    assert units[c.DURATION_SECONDS.name] == "s" and units[c.FINISHED.name] == "{task}"
    assert units[c.THREADPOOL_TOKENS.name] == "{token}"
    # Exemplars (the SDK's trace-based filter): from the task spans.
    exemplars = {
        e["trace_id"]
        for p in result["points"]
        if p.name == c.DURATION_SECONDS.name and p.resource.get("service.name") == OWN
        for e in p.exemplars
    }
    assert exemplars and exemplars <= result["traces"]
    # The global provider received none of the OTel instruments; the app's provider none
    # of the Prometheus bridge's series.
    names = {(p.resource.get("service.name"), p.name) for p in result["points"]}
    assert {name for service, name in names if service == GLOBAL} & OTEL_ONLY == set()
    assert [name for service, name in names if service == OWN and name.endswith("_total")] == []
    # /metrics (and its OTLP bridge) unchanged.
    samples = result["samples"]
    assert samples.total(c.FINISHED.sample_name, task=OK, outcome="success") == successes
    assert samples.total(c.FINISHED.sample_name, task=FAIL, outcome="failure") == failures


def test_instrument_meter_provider_gets_the_contract(tmp_path: Path) -> None:
    _check(_run(tmp_path, "option"))


@pytest.mark.skipif(not FASTAPI_NATIVE, reason="FastAPI < 0.164 has no telemetry config")
def test_fastapi_app_meter_provider_gets_the_contract(tmp_path: Path) -> None:
    _check(_run(tmp_path, "app"))


def test_global_provider_that_setup_exports_is_not_recorded_twice(tmp_path: Path) -> None:
    """``meter_provider=`` the global provider setup() already exports to: one warning, and
    the metrics go out once (the bridge's), not also as OTel instruments."""
    with OTLPReceiver() as rx:
        env = clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.http_endpoint,
            OTEL_METRIC_EXPORT_INTERVAL="200",
            METER_APP_ENDPOINT=rx.http_endpoint,
            METER_APP_PROVIDER="global",
        )
        with ServerProcess.uvicorn(APP, env, tmp_path / "server.log", free_port()) as server:
            server.wait_ready("/health")
            with httpx.Client(base_url=server.base_url, timeout=10) as client:
                for i in range(REQUESTS):
                    assert (
                        client.post("/run", params={"fail": int(i in FAILING)}).status_code == 200
                    )

            def bridged_all(r: OTLPReceiver) -> dict[tuple[Any, ...], float]:
                finished = _values(_latest(r.metrics(), GLOBAL), c.FINISHED.sample_name)
                return finished if sum(finished.values()) == REQUESTS else {}

            bridged = rx.wait_for(bridged_all, timeout=20)
            # Two more export intervals: anything recorded twice would have arrived by now.
            exports = rx.requests["http"]["metrics"]
            rx.wait_for(lambda r: r.requests["http"]["metrics"] >= exports + 2, timeout=10)
            names = {p.name for p in rx.metrics()}
            log = server.log_text()
    assert bridged[(c.EXECUTOR_EVENT_LOOP, c.OUTCOME_SUCCESS, OK)] == REQUESTS - len(FAILING)
    assert names & OTEL_ONLY == set()
    assert log.count("not recording them through it a second time") == 1
