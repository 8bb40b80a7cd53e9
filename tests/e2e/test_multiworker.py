"""Several workers: gunicorn + uvicorn workers with tasklens/gunicorn_conf.py and
PROMETHEUS_MULTIPROC_DIR. /metrics (any worker) sums all workers exactly; a worker killed
with SIGKILL leaves the live gauges and keeps its counters; each worker exports its own
values over OTLP."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from tests.e2e.apps.failure_rule import fails
from tests.e2e.reliability_support import APP, send_load
from tests.support.metrics import Samples, scrape, try_scrape
from tests.support.net import free_port
from tests.support.otlp_receiver import OTLPReceiver, ReceivedMetricPoint
from tests.support.polling import wait_for
from tests.support.server import PYTHON, ServerProcess, clean_env

WORKERS = 4
POOL = 3  # threadpool_size of each worker
REQUESTS = 400
TASKS = 2  # per request: sync_step (thread pool), async_step (event loop)
FAIL_EVERY = 5  # see tests/e2e/apps/failure_rule.py
MODULE = "tests.e2e.apps.reliability_app"
SYNC, ASYNC, HANG = f"{MODULE}.sync_step", f"{MODULE}.async_step", f"{MODULE}.hang"
ERROR = f"{MODULE}.InventoryError"


def _expected() -> dict[tuple[str, str], int]:
    """(task, outcome) -> count for the load sent."""
    counts = dict.fromkeys(((t, o) for t in (SYNC, ASYNC) for o in ("success", "failure")), 0)
    for order in range(REQUESTS):
        for index in range(TASKS):
            task = SYNC if index % 2 == 0 else ASYNC
            failed = fails(order, index, FAIL_EVERY)
            counts[task, "failure" if failed else "success"] += 1
    return counts


def _plant_stale_file(directory: Path) -> None:
    """A counter file of a "previous run": its 1000 would be added to the sums if kept."""
    stale = MmapedDict(str(directory / "counter_999999.db"))
    stale.write_value(
        mmap_key("bgtask_enqueued", "bgtask_enqueued_total", ("task",), (SYNC,), "stale"),
        1000.0,
        0.0,
    )
    stale.close()


def _assert_exact(samples: Samples, expected: dict[tuple[str, str], int]) -> None:
    for task in (SYNC, ASYNC):
        assert samples.total("bgtask_enqueued_total", task=task) == REQUESTS
        for outcome in ("success", "failure"):
            assert (
                samples.total("bgtask_finished_total", task=task, outcome=outcome)
                == expected[task, outcome]
            ), (task, outcome)
        assert (
            samples.total("bgtask_failures_total", task=task, exception=ERROR)
            == expected[task, "failure"]
        )
        assert samples.total("bgtask_duration_seconds_count", task=task) == REQUESTS
    for outcome in ("skipped", "cancelled", "abandoned"):
        assert samples.total("bgtask_finished_total", outcome=outcome) == 0


def _latest_by_worker(points: list[ReceivedMetricPoint], name: str) -> dict[str, float]:
    """Sum of the last exported value of ``name`` per worker (service.instance.id)."""
    latest: dict[tuple, float] = {}
    for p in points:
        if p.name == name:
            key = (p.resource["service.instance.id"], tuple(sorted(p.attributes.items())))
            latest[key] = p.value or 0.0
    by_worker: dict[str, float] = {}
    for (instance, _), value in latest.items():
        by_worker[instance] = by_worker.get(instance, 0.0) + value
    return by_worker


def test_gunicorn_workers_sum_exactly_and_dead_workers_leave(tmp_path: Path) -> None:
    directory = tmp_path / "prometheus-multiproc"
    directory.mkdir(mode=0o700)
    _plant_stale_file(directory)
    expected = _expected()
    total = REQUESTS * TASKS
    port = free_port()
    with OTLPReceiver() as rx:
        env = clean_env(
            PROMETHEUS_MULTIPROC_DIR=str(directory),
            RELIABILITY_THREADPOOL_SIZE=str(POOL),
            RELIABILITY_FAIL_EVERY=str(FAIL_EVERY),
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.http_endpoint,
            OTEL_METRIC_EXPORT_INTERVAL="500",
            # gunicorn >= 25 opens a control socket under $HOME/.gunicorn: one per test run.
            HOME=str(tmp_path),
        )
        # The shipped config, as a pip user names it (tasklens export writes the same file).
        args = [PYTHON, "-m", "gunicorn", "-c", "python:tasklens.gunicorn_conf",
                "--workers", str(WORKERS), "--bind", f"127.0.0.1:{port}",
                "--keep-alive", "3600", APP]  # fmt: skip
        with ServerProcess(args, env, tmp_path / "gunicorn.log", port) as server:
            server.wait_ready()
            with httpx.Client(base_url=server.base_url, timeout=10) as client:
                # All workers up: each lifespan reported its pool to its live gauge file.
                wait_for(
                    lambda: (
                        scrape(client).total("bgtask_threadpool_tokens", state="total")
                        == WORKERS * POOL
                    ),
                    60,
                    "all workers' thread pools in /metrics",
                )
                assert not (directory / "counter_999999.db").exists()  # stale run wiped

                # --- load: a fresh connection per request, spread over the workers.
                paths = [f"/orders/{n}?tasks={TASKS}" for n in range(REQUESTS)]
                load = send_load(server.base_url, paths, concurrency=16, keepalive=False)
                assert load.errors == []
                pids = {body["pid"] for body in load.bodies}
                assert len(pids) >= 2, pids
                # A scrape reads each worker's counter, gauge and histogram files one after
                # another (and /metrics reuses a render as long as it took), so one taken while
                # the last tasks ran can mix before and after: wait for one settled scrape.
                failures = sum(v for (_, outcome), v in expected.items() if outcome == "failure")
                samples = wait_for(
                    lambda: (
                        (s := scrape(client)).total("bgtask_finished_total") == total
                        and s.total("bgtask_failures_total") == failures
                        and s.total("bgtask_duration_seconds_count") == total
                        and s.total("bgtask_pending") == 0
                        and s.total("bgtask_in_progress") == 0
                        and s.total("bgtask_threadpool_tokens", state="borrowed") == 0
                        and s
                    ),
                    30,
                    "all tasks finished, settled",
                )
                _assert_exact(samples, expected)
                assert samples.total("bgtask_pending") == 0
                assert samples.total("bgtask_in_progress") == 0
                assert samples.total("bgtask_threadpool_tokens", state="borrowed") == 0
                assert samples.total("bgtask_threadpool_tokens", state="total") == WORKERS * POOL
                # No pid label left on live gauges: summed, not listed per worker.
                assert all("pid" not in dict(k) for k in samples.series("bgtask_pending"))
                # Exemplars are unavailable in multiprocess mode: OpenMetrics still works.
                om = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
                assert om.status_code == 200
                assert "bgtask_finished_total" in om.text and " # {" not in om.text

                # --- OTLP: each worker exports its own values; their sum is exact.
                def otlp_sum(r: OTLPReceiver) -> dict[str, float] | None:
                    by_worker = _latest_by_worker(r.metrics(), "bgtask_finished_total")
                    return by_worker if sum(by_worker.values()) == total else None

                by_worker = rx.wait_for(otlp_sum, timeout=20)
                assert len(by_worker) == len(pids)  # one stream per worker that ran tasks

                # --- kill a worker while it runs a task: its gauges must leave the sums.
                victim = int(client.post("/hang").json()["pid"])
                busy = wait_for(
                    lambda: (s := scrape(client)).total("bgtask_in_progress", task=HANG) == 1 and s,
                    10,
                    "the hanging task running",
                )
                assert busy.total("bgtask_threadpool_tokens", state="borrowed") == 1
                assert busy.total("bgtask_enqueued_total", task=HANG) == 1
                os.kill(victim, signal.SIGKILL)
                dead_gauges = directory / f"gauge_livesum_{victim}.db"
                # The file first: a scrape rendered before the master reaped the victim still
                # sums its gauges, and its total tokens read the same as the goal's.
                after = wait_for(
                    lambda: (
                        not dead_gauges.exists()
                        and (s := try_scrape(client)).total(
                            "bgtask_threadpool_tokens", state="total"
                        )
                        == WORKERS * POOL
                        and s.total("bgtask_in_progress") == 0
                        and s.total("bgtask_threadpool_tokens", state="borrowed") == 0
                        and s
                    ),
                    60,
                    "the replacement worker up and the dead worker's live gauges gone",
                )
                assert after.total("bgtask_in_progress") == 0
                assert after.total("bgtask_threadpool_tokens", state="borrowed") == 0
                assert after.total("bgtask_pending") == 0
                # Counters of the dead worker are kept: totals never go down.
                _assert_exact(after, expected)
                assert after.total("bgtask_enqueued_total", task=HANG) == 1
                assert (directory / f"counter_{victim}.db").exists()
    log = server.log_text()
    assert f"(pid:{victim})" in log  # gunicorn saw the worker die and replaced it
    failure_lines = [line for line in log.splitlines() if "background task failed" in line]
    assert len(failure_lines) == sum(v for (_, o), v in expected.items() if o == "failure")
    unexpected = [
        line for line in log.splitlines() if "Traceback" in line and line not in failure_lines
    ]
    assert unexpected == []
