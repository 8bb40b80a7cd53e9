"""Tasks raising KeyboardInterrupt, SystemExit or CancelledError.

Semantics:

* ``KeyboardInterrupt``/``SystemExit`` raised by a task (sync or async) is recorded: outcome
  ``failure``, ``bgtask_failures_total{exception="KeyboardInterrupt"}``, the failure log line
  and an error span. It is not swallowed by ``on_error="continue"`` (that is for
  ``Exception``): the tasks after it in the same response are not run and end ``abandoned``,
  and the exception is re-raised out of ``TaskRunner.run_batch``.
* ``CancelledError`` out of a task (the task was cancelled, or raised it) is recorded as
  ``cancelled``; later tasks of the response are ``abandoned``; it is re-raised too.
* Inline, the re-raised exception reaches the server like Starlette's would; uvicorn logs
  "Exception in ASGI application", closes that one connection (the response was already
  sent) and keeps serving.
* Detached, there is no request to re-raise into, and letting it out would end the event
  loop (KeyboardInterrupt/SystemExit) or the executor's task group (CancelledError, which
  would cancel every other detached task). The executor ends that batch, logs one error, and
  every other task and the server go on. Real shutdown cancellation still propagates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI
from prometheus_client import CollectorRegistry

import tasklens
from tasklens.runtime.options import RuntimeOptions
from tasklens.runtime.record import TaskRecord
from tasklens.runtime.runner import TaskRunner
from tasklens.telemetry.metrics import MetricsObserver, TaskMetrics
from tests.runtime.helpers import Probe, captured, scrape_until, serve

M = __name__


def interrupt_sync() -> None:
    raise KeyboardInterrupt


async def exit_async() -> None:
    await asyncio.sleep(0)
    raise SystemExit(3)


async def cancel_itself() -> None:
    await asyncio.sleep(0)
    raise asyncio.CancelledError


def after_sync() -> None:
    raise AssertionError("must never run")


async def after_async() -> None:
    raise AssertionError("must never run")


async def slow_neighbour() -> None:
    await asyncio.sleep(0.5)


def _outcomes(records: list[TaskRecord]) -> list[str | None]:
    return [r.outcome for r in records]


@pytest.mark.parametrize(
    ("first", "error", "first_outcome"),
    [
        (interrupt_sync, KeyboardInterrupt, "failure"),
        (exit_async, SystemExit, "failure"),
        (cancel_itself, asyncio.CancelledError, "cancelled"),
    ],
    ids=["KeyboardInterrupt-sync", "SystemExit-async", "CancelledError-async"],
)
@pytest.mark.parametrize("on_error", ["continue", "stop"])
def test_run_batch_records_then_reraises(
    first: Callable[[], Any], error: type[BaseException], first_outcome: str, on_error: str
) -> None:
    registry = CollectorRegistry()
    runner = TaskRunner(RuntimeOptions(on_error=on_error), [MetricsObserver(TaskMetrics(registry))])
    records = [runner.enqueue(f, (), {}) for f in (first, after_sync, after_async)]

    async def main() -> None:
        with pytest.raises(error):
            await runner.run_batch(records)

    anyio.run(main)
    assert _outcomes(records) == [first_outcome, "abandoned", "abandoned"]
    assert isinstance(records[0].error, error)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    name = f"{M}.{first.__name__}"
    executor = records[0].executor
    assert sample("bgtask_finished_total", task=name, executor=executor,
                  outcome=first_outcome) == 1  # fmt: skip
    assert sample("bgtask_finished_total", task=f"{M}.after_sync", executor="thread_pool",
                  outcome="abandoned") == 1  # fmt: skip
    assert sample("bgtask_finished_total", task=f"{M}.after_async", executor="event_loop",
                  outcome="abandoned") == 1  # fmt: skip
    failures = sample("bgtask_failures_total", task=name, exception=error.__qualname__)
    assert failures == (1 if first_outcome == "failure" else None)
    assert sample("bgtask_pending") == 0
    assert sample("bgtask_in_progress", task=name, executor=executor) == 0


@pytest.mark.parametrize("mode", ["inline", "detached"])
def test_server_keeps_answering(mode: str, probe: Probe, task_logs: list[dict[str, Any]]) -> None:
    app = FastAPI()
    batches: dict[str, list[Callable[[], Any]]] = {
        "slow": [slow_neighbour],
        "interrupt": [interrupt_sync, after_sync, after_async],
        "exit": [exit_async, after_sync],
        "cancel": [cancel_itself, after_async],
    }

    @app.post("/tasks/{name}")
    async def add(name: str, background_tasks: BackgroundTasks) -> dict[str, str]:
        for func in batches[name]:
            background_tasks.add_task(func)
        return {"added": name}

    @app.get("/ok")
    def ok() -> dict[str, str]:
        return {"status": "ok"}

    probe.mount_metrics(app)
    tasklens.instrument(app, mode=mode, observers=probe.observers(), metrics_path=None)
    with (
        captured("uvicorn.error") as server_log,
        captured("tasklens.runtime") as runtime_log,
        serve(app) as server,
        httpx.Client(base_url=server.base_url, timeout=10) as client,
    ):
        for name in batches:  # a connection each: inline, uvicorn drops the connection
            # whose ASGI call raised (after its response was sent)
            response = httpx.post(f"{server.base_url}/tasks/{name}", timeout=10)
            assert response.status_code == 200
        samples = scrape_until(
            client,
            lambda s: s.total("bgtask_finished_total") == 8,
            5,
            "every task to reach an outcome",
        )
        for _ in range(3):
            assert client.get("/ok").json() == {"status": "ok"}
        assert server.thread.is_alive()

    def finished(func: Callable[[], Any], executor: str, outcome: str) -> float:
        return samples.value("bgtask_finished_total", task=f"{M}.{func.__name__}",
                     executor=executor, outcome=outcome)  # fmt: skip

    # The neighbour task (detached: same executor, running at the same time) is unaffected.
    assert finished(slow_neighbour, "event_loop", "success") == 1
    assert finished(interrupt_sync, "thread_pool", "failure") == 1
    assert finished(exit_async, "event_loop", "failure") == 1
    assert finished(cancel_itself, "event_loop", "cancelled") == 1
    assert finished(after_sync, "thread_pool", "abandoned") == 2
    assert finished(after_async, "event_loop", "abandoned") == 2
    assert samples.total("bgtask_finished_total") == samples.total("bgtask_enqueued_total") == 8
    for exception in ("KeyboardInterrupt", "SystemExit"):
        assert samples.total("bgtask_failures_total", exception=exception) == 1

    failed = sorted(e["error_type"] for e in task_logs if e["event"] == "background task failed")
    assert failed == ["KeyboardInterrupt", "SystemExit"]
    asgi_errors = [
        r for r in server_log.records if r.getMessage().startswith("Exception in ASGI application")
    ]
    contained = [m for m in runtime_log.messages(logging.ERROR) if "detached background task" in m]
    if mode == "inline":  # re-raised to the server, which logged it
        assert sorted(type(r.exc_info[1]).__name__ for r in asgi_errors if r.exc_info) == [
            "CancelledError", "KeyboardInterrupt", "SystemExit"
        ]  # fmt: skip
        assert contained == []
    else:  # contained by the executor, which keeps running
        assert asgi_errors == []
        assert sorted(m.split(" raised ")[1].split(";")[0] for m in contained) == [
            "CancelledError", "KeyboardInterrupt", "SystemExit"
        ]  # fmt: skip
        assert not any("this response's tasks inline" in m for m in runtime_log.messages())
        assert (
            "tasklens: detached tasks at shutdown: abandoned=4, cancelled=1, failure=2, "
            "success=1" in runtime_log.messages()
        )
