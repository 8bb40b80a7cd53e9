"""The live page's buffer: bounded under 100,000 tasks, exact counts from worker threads,
Prometheus's quantile interpolation, arguments only with ``record_args``."""

from __future__ import annotations

import gc
import json
import time
import tracemalloc
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette
from starlette.background import BackgroundTasks
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

import tasklens
from tasklens.telemetry import TelemetryOptions, default_observers
from tasklens.telemetry import live_buffer as lb
from tasklens.telemetry.live_buffer import LiveBuffer, quantile

BIG = "x" * 10_000  # a 10 KB exception message: cut to MAX_MESSAGE_CHARS / MAX_TRACEBACK_CHARS


class BigError(Exception):
    pass


async def ok_async(i: int) -> None:
    return None


def ok_sync(i: int) -> None:
    return None


def fail_sync(i: int) -> None:
    raise BigError(f"{i} {BIG}")


def _app(buffer: LiveBuffer, per_request: int, **options: Any) -> Starlette:
    async def endpoint(request: Request) -> Response:
        tasks = BackgroundTasks()
        for i in range(per_request):
            func = fail_sync if i % 10 == 0 else ok_sync if i % 2 else ok_async
            tasks.add_task(func, i)
        return Response(b"", background=tasks)

    app = Starlette(routes=[Route("/work", endpoint, methods=["POST"])])
    # A recording provider: every request gets a real server span, so traces fill up too.
    tasklens.instrument(
        app, observers=[buffer], metrics_path=None, tracer_provider=TracerProvider(), **options
    )
    return app


def _run(client: TestClient, requests: int) -> None:
    for _ in range(requests):
        assert client.post("/work").status_code == 200


def test_memory_is_bounded_under_100k_tasks() -> None:
    buffer = LiveBuffer()
    per_request = 100
    with TestClient(_app(buffer, per_request)) as client:
        _run(client, 500)  # 50,000 tasks: every ring is full (200 traces, 1,000 tasks)
        gc.collect()
        tracemalloc.start()
        try:
            # 25,000 tasks replace every kept entry: what is allocated since and still alive
            # is (at least) the whole of what the buffer holds.
            _run(client, 250)
            gc.collect()
            full = tracemalloc.get_traced_memory()[0]
            _run(client, 250)  # 100,000 tasks in all
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    assert len(buffer.pending) < lb.DRAIN_AT  # recorded in passes of DRAIN_AT tasks
    buffer.drain()
    assert buffer.seq == 100_000
    assert buffer.totals == {
        "success": 90_000, "failure": 10_000, "skipped": 0, "cancelled": 0, "abandoned": 0,
    }  # fmt: skip
    assert len(buffer.tasks) == lb.MAX_TASKS
    assert len(buffer.traces) == lb.MAX_TRACES
    assert all(len(t.tasks) == lb.MAX_TASKS_PER_TRACE for t in buffer.traces.values())
    assert all(t.dropped == per_request - lb.MAX_TASKS_PER_TRACE for t in buffer.traces.values())
    assert len(buffer.tracebacks) == lb.MAX_FAILURES
    assert all(len(tb) <= lb.MAX_TRACEBACK_CHARS + 20 for tb in buffer.tracebacks.values())
    assert all(
        e.error_message is None or len(e.error_message) <= lb.MAX_MESSAGE_CHARS + 20
        for e in buffer.tasks
    )
    # Flat once full (25,000 more tasks), and within the documented bound (docs/live-page.md).
    growth = after - full
    assert abs(growth) < 500_000, f"grew {growth} bytes over 25,000 tasks once full"
    assert after < 8_000_000, f"{after / 1e6:.1f} MB"
    summary = buffer.summary()
    assert sum(row["count"] for row in summary["names"]) == 100_000  # one test, a few minutes


def test_counts_are_exact_from_worker_threads() -> None:
    buffer = LiveBuffer()
    with TestClient(_app(buffer, 200, threadpool_size=8)) as client:
        _run(client, 50)
    summary = buffer.summary()
    counts = {row["name"].rsplit(".", 1)[-1]: row["count"] for row in summary["names"]}
    assert counts == {"fail_sync": 1_000, "ok_sync": 5_000, "ok_async": 4_000}
    failures = {row["name"].rsplit(".", 1)[-1]: row["failures"] for row in summary["names"]}
    assert failures == {"fail_sync": 1_000, "ok_sync": 0, "ok_async": 0}
    assert sum(sum(v) for v in summary["series"]["outcomes"].values()) == 10_000


def test_quantile_interpolates_like_histogram_quantile() -> None:
    buckets = [0] * (len(lb.DURATION_BUCKETS) + 1)
    i = lb.DURATION_BUCKETS.index(0.0025)  # le=0.0025, the bucket above le=0.001
    buckets[i] = 10
    assert quantile(0.5, buckets) == pytest.approx(0.001 + 0.0015 * 0.5)
    assert quantile(0.95, buckets) == pytest.approx(0.001 + 0.0015 * 0.95)
    buckets[-1] = 90  # +Inf: the highest finite bound, as Prometheus answers
    assert quantile(0.95, buckets) == lb.DURATION_BUCKETS[-1]
    assert quantile(0.05, buckets) == pytest.approx(0.001 + 0.0015 * 0.5)
    assert quantile(0.5, [0] * len(buckets)) is None


def _one_task_app(record_args: bool) -> tuple[Starlette, LiveBuffer]:
    async def endpoint(request: Request) -> Response:
        tasks = BackgroundTasks()
        tasks.add_task(ok_sync, 7)
        tasks.add_task(fail_kw, order=3, password="hunter2")
        return Response(b"", background=tasks)

    app = Starlette(routes=[Route("/", endpoint)])
    tasklens.instrument(app, ui_path="/tasks", metrics_path=None, record_args=record_args)
    return app, app.state.tasklens[0].observers[-1]


def fail_kw(order: int, password: str) -> None:
    raise ValueError(f"order {order} refused for postgresql://app:{password}@db")


@pytest.mark.parametrize("record_args", [False, True])
def test_failure_is_scrubbed_and_args_only_with_record_args(record_args: bool) -> None:
    app, buffer = _one_task_app(record_args)
    assert isinstance(buffer, LiveBuffer)
    with TestClient(app) as client:
        assert client.get("/").status_code == 200
        tasks = client.get("/tasks/api/live").json()["tasks"]
        assert [t["outcome"] for t in tasks] == ["success", "failure"]
        detail = client.get(f"/tasks/api/task/{tasks[1]['seq']}").json()
    assert detail["error_type"] == "ValueError"
    assert detail["error_message"] == "order 3 refused for postgresql://app:[redacted]@db"
    assert "hunter2" not in detail["traceback"] and "ValueError: order 3" in detail["traceback"]
    if record_args:
        assert tasks[0]["args"] == {"args": ["7"], "kwargs": {}}
        assert detail["args"] == {"args": [], "kwargs": {"order": "3", "password": "[redacted]"}}
    else:
        assert tasks[0]["args"] is None and detail["args"] is None


def test_observer_only_with_ui_path_and_last() -> None:
    assert not any(isinstance(o, LiveBuffer) for o in default_observers(TelemetryOptions()))
    observers = default_observers(TelemetryOptions(ui_path="/tasks"))
    assert isinstance(observers[-1], LiveBuffer)
    assert sum(isinstance(o, LiveBuffer) for o in observers) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ui_path": "tasks"}, "invalid ui_path='tasks'"),
        ({"ui_path": "/tasks/"}, "invalid ui_path='/tasks/'"),
        ({"ui_path": "/"}, "invalid ui_path='/'"),
        ({"ui_path": "/metrics"}, "neither at, below nor above metrics_path='/metrics'"),
        ({"ui_path": "/tasks", "metrics_path": "/tasks/metrics"},
         "invalid ui_path='/tasks'; expected a path neither at, below nor above "
         "metrics_path='/tasks/metrics'"),
        ({"ui_path": "/ops/tasks", "metrics_path": "/ops"}, "metrics_path='/ops'"),
        ({"ui_path": "/tasks?x"}, "invalid ui_path='/tasks?x'"),
        ({"ui_path": "/ta sks"}, "invalid ui_path='/ta sks'"),
        ({"ui_path": "/tasks#"}, "invalid ui_path='/tasks#'"),
        ({"ui_path": "//tasks"}, "invalid ui_path='//tasks'"),
        ({"ui_path": "/tasks/../x"}, "invalid ui_path='/tasks/../x'"),
        ({"ui_path": "/t", "ui_trace_url": "//evil.example/{trace_id}"}, "invalid ui_trace_url"),
        ({"ui_path": "/t", "ui_trace_url": "/\\evil.example/{trace_id}"}, "invalid ui_trace_url"),
        ({"ui_path": "/t", "ui_trace_url": "https://g.example/{trace_id}\nx"},
         "invalid ui_trace_url"),
        ({"ui_path": "/t", "ui_trace_url": 'https://g.example/"><script>{trace_id}'},
         "invalid ui_trace_url"),
        ({"ui_path": "/t", "ui_trace_url": "https://u@evil.example/{trace_id}"},
         "invalid ui_trace_url"),
        ({"ui_path": 5}, "invalid ui_path=5"),
        ({"ui_path": "/t", "ui_trace_url": "https://g.example/explore"}, "containing '{trace_id}'"),
        ({"ui_path": "/t", "ui_trace_url": "javascript:x('{trace_id}')"}, "invalid ui_trace_url"),
        ({"ui_trace_url": "https://g.example/{trace_id}"}, "None when ui_path=None"),
    ],
)  # fmt: skip
def test_invalid_options_name_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="instrument\\(\\): invalid ui_") as caught:
        tasklens.instrument(Starlette(), **options)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://grafana.example/explore?left={%22queries%22:[{%22query%22:%22{trace_id}%22}]}",
        "http://localhost:3000/trace/{trace_id}",
        "https://[::1]:16686/trace/{trace_id}",
        "/jaeger/trace/{trace_id}",
    ],
)
def test_trace_url_templates_that_are_accepted(url: str) -> None:
    assert TelemetryOptions(ui_path="/tasks", ui_trace_url=url).ui_trace_url == url


def test_metrics_auth_may_protect_the_page_alone() -> None:
    app = Starlette()
    tasklens.instrument(app, metrics_path=None, ui_path="/tasks", metrics_auth=lambda r: False)
    with TestClient(app) as client:
        assert client.get("/tasks").status_code == 401
        assert client.get("/tasks/api/live").status_code == 401


def test_page_under_a_mount_point_links_its_own_files() -> None:
    async def endpoint(request: Request) -> Response:
        tasks = BackgroundTasks()
        tasks.add_task(ok_sync, 1)
        return Response(b"", background=tasks)

    sub = Starlette(routes=[Route("/work", endpoint)])
    tasklens.instrument(sub, ui_path="/tasks", metrics_path=None)
    app = Starlette(routes=[Mount("/sub", app=sub)])
    with TestClient(app) as client:
        assert client.get("/sub/work").status_code == 200
        page = client.get("/sub/tasks")
        assert page.status_code == 200
        assert 'src="/sub/tasks/app.js"' in page.text and 'content="/sub/tasks"' in page.text
        assert client.get("/sub/tasks/app.js").headers["content-type"].startswith("text/javascript")
        assert [t["name"] for t in client.get("/sub/tasks/api/live").json()["tasks"]] == [
            f"{__name__}.ok_sync"
        ]
        assert client.get("/tasks").status_code == 404  # relative to the mount point


def _named(i: int) -> Any:
    def task() -> None:
        return None

    task.__qualname__ = f"task_{i:03d}_".ljust(100 - len(__name__) - 1, "n")
    return task


def test_summary_of_500_long_names_is_capped_cheap_and_sent_when_changed() -> None:
    """500 task names of 100 characters (``max_task_names``' default): the page gets the
    top :data:`SUMMARY_NAMES` by count, no merge under the lock, and nothing while unchanged."""
    funcs = [_named(i) for i in range(500)]

    async def endpoint(request: Request) -> Response:
        tasks = BackgroundTasks()
        for i, func in enumerate(funcs):
            for _ in range(1 + (i % 7 == 0)):  # every 7th name twice: the top 72
                tasks.add_task(func)
        return Response(b"", background=tasks)

    app = Starlette(routes=[Route("/work", endpoint)])
    tasklens.instrument(app, ui_path="/tasks", metrics_path=None)
    buffer = app.state.tasklens[0].observers[-1]
    with TestClient(app) as client:
        for _ in range(3):
            assert client.get("/work").status_code == 200
        first = client.get("/tasks/api/live").json()
        assert len(first["names"][0]["name"]) == 100
        assert first["names_total"] == 500
        assert len(first["names"]) == lb.SUMMARY_NAMES == 50
        assert {r["count"] for r in first["names"]} == {6}  # the top names by count
        assert sum(r["count"] for r in first["names"]) == 300
        token = first["names_token"]
        # Nothing new: no names, and a small answer.
        idle = client.get(f"/tasks/api/live?after={first['seq']}&names={token}")
        assert idle.json()["names"] is None and idle.json()["tasks"] == []
        assert len(idle.content) < 8_000, len(idle.content)
        assert (
            client.get(f"/tasks/api/live?names=keep&after={first['seq']}").json()["names"] is None
        )
        assert client.get("/work").status_code == 200
        changed = client.get(f"/tasks/api/live?after={first['seq']}&names={token}").json()
        assert changed["names"] is not None and changed["names"][0]["count"] == 8
    # The read holds the lock for a copy of 50 names (was: a merge of 500 x 5 minutes,
    # 14-30 ms); a generous bound for a shared CPU.
    held = []
    lock = buffer.lock

    class Timed:
        def __enter__(self) -> None:
            lock.acquire()
            self.t = time.perf_counter()

        def __exit__(self, *exc: object) -> None:
            held.append(time.perf_counter() - self.t)
            lock.release()

    buffer.lock = Timed()
    for _ in range(20):
        assert len(buffer.summary()["names"]) == 50
    buffer.lock = lock
    held.sort()
    assert held[10] < 0.005, f"lock held {held[10] * 1e3:.2f} ms (median)"


def test_summary_window_forgets_minutes_that_left_it() -> None:
    app, buffer = _one_task_app(False)
    with TestClient(app) as client:
        assert client.get("/").status_code == 200
    now = time.time()
    assert [(r["count"], r["failures"]) for r in buffer.summary(now)["names"]] == [(1, 1), (1, 0)]
    later = buffer.summary(now + (lb.SUMMARY_MINUTES + 1) * 60)
    assert later["names"] == [] and later["names_total"] == 0 and buffer.window == {}
    assert buffer.totals["success"] == 1 and buffer.totals["failure"] == 1


def many_args(*args: Any, **kwargs: Any) -> None:
    return None


def test_record_args_keeps_a_bounded_number_of_arguments_and_characters() -> None:
    async def endpoint(request: Request) -> Response:
        tasks = BackgroundTasks()
        tasks.add_task(many_args, *range(5000), **{f"k{i}": "v" * 200 for i in range(5000)})
        tasks.add_task(many_args, "a" * 150, "b" * 150, x="c" * 150)
        return Response(b"", background=tasks)

    app = Starlette(routes=[Route("/", endpoint)])
    tasklens.instrument(app, ui_path="/tasks", metrics_path=None, record_args=True)
    with TestClient(app) as client:
        assert client.get("/").status_code == 200
        big, small = client.get("/tasks/api/live").json()["tasks"]
    args = big["args"]
    assert len(args["args"]) == lb.MAX_ARGS == 20  # 20 short ints fit in the budget
    kept = args["args"] + list(args["kwargs"]) + list(args["kwargs"].values())
    assert sum(map(len, kept)) <= lb.MAX_ARGS_CHARS + 30
    assert len(args["args"]) + len(args["kwargs"]) + args["omitted"] == 10_000
    assert len(json.dumps(args)) < 2 * lb.MAX_ARGS_CHARS
    assert small["args"] == {
        "args": [repr("a" * 150), repr("b" * 150)],
        "kwargs": {"x": repr("c" * 150)},
    }
