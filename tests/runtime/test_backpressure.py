"""``max_pending``: past the bound, new requests wait before the app sees them, and each
held request is counted (issue 10, item 2).

On a real uvicorn: five requests each add one sync task that blocks until the test
releases it; with ``max_pending=4`` the sixth request is held (its endpoint has not run)
until the unfinished tasks are down to half the bound (2), then it runs. Exactly one
request was held: ``bgtask_admission_delayed_total`` is 1 and its wait is counted.
"""

from __future__ import annotations

import threading

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI

import tasklens
from tests.runtime.helpers import Probe, scrape_until, serve
from tests.support.polling import wait_for

BOUND = 4
HELD_FOR = 0.3  # the sixth request must still be waiting after this long


def test_requests_past_max_pending_wait_and_are_counted(probe: Probe) -> None:
    app = FastAPI()
    gate = threading.Semaphore(0)
    calls: list[int] = []
    done: list[int] = []

    def blocks(n: int) -> None:
        assert gate.acquire(timeout=10), "never released"
        done.append(n)

    @app.post("/work/{n}")
    async def work(n: int, background_tasks: BackgroundTasks) -> dict[str, int]:
        calls.append(n)
        background_tasks.add_task(blocks, n)
        return {"n": n}

    probe.mount_metrics(app)
    runner = tasklens.instrument(
        app, observers=probe.observers(), metrics_path=None, max_pending=BOUND
    )
    held: list[int] = []
    try:
        with serve(app) as server, httpx.Client(base_url=server.base_url, timeout=10) as client:
            for n in range(BOUND + 1):  # each answered while its task still blocks
                assert client.post(f"/work/{n}").status_code == 200
            assert runner.unfinished == BOUND + 1

            def sixth() -> None:
                with httpx.Client(base_url=server.base_url, timeout=10) as other:
                    held.append(other.post(f"/work/{BOUND + 1}").status_code)

            waiter = threading.Thread(target=sixth, daemon=True)
            waiter.start()
            # The request reaches the server first (a new client connects), then is held.
            wait_for(lambda: runner.admission_delayed == 1, 10, "the sixth request held")
            waiter.join(HELD_FOR)
            assert waiter.is_alive() and calls == list(range(BOUND + 1))  # held
            # Counted as soon as it is held; its wait once it goes on.
            assert runner.admission_delayed == 1
            assert probe.samples().value("bgtask_admission_delayed_total") == 1
            for _ in range(2):  # 5 -> 3 unfinished: still above half the bound
                gate.release()
            wait_for(lambda: len(done) == 2, 5, "two tasks to finish")
            waiter.join(0.2)
            assert waiter.is_alive()
            gate.release()  # 3 -> 2: the held request goes on
            waiter.join(5)
            assert held == [200]
            assert calls == list(range(BOUND + 2))
            for _ in range(BOUND + 2):
                gate.release()
            drained = scrape_until(
                client,
                lambda s: s.value("bgtask_finished_total", task=f"{__name__}.{_name('blocks')}",
                                  executor="thread_pool", outcome="success") == BOUND + 2,
                5,
                "every task finished",
            )  # fmt: skip
    finally:
        for _ in range(BOUND + 2):
            gate.release()
    assert runner.unfinished == 0
    assert runner.admission_delayed == 1
    assert runner.admission_wait_seconds >= HELD_FOR
    assert drained.value("bgtask_admission_delayed_total") == 1
    waited = drained.value("bgtask_admission_wait_seconds_total")
    assert waited == pytest.approx(runner.admission_wait_seconds)
    assert drained.value("bgtask_pending") == 0


def _name(local: str) -> str:
    return f"test_requests_past_max_pending_wait_and_are_counted.<locals>.{local}"


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "64"])
def test_invalid_max_pending_is_named(value: object) -> None:
    with pytest.raises(ValueError, match=r"invalid max_pending=.*a positive int, or None"):
        tasklens.instrument(FastAPI(), max_pending=value)
