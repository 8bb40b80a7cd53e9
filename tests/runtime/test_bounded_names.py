"""The ``exception`` label is bounded like ``task`` (issue 11, item 1).

2,000 failing tasks whose exception classes are made at run time used to make 2,000
``bgtask_failures_total`` series. Past ``max_exception_types`` distinct classes (default
50), new ones are counted as ``exception="other"`` with one warning; the label is
``module.qualname``, so same-named classes of two modules stay apart; spans and logs keep
the real class.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI

import tasklens
from tasklens.telemetry.metrics import DEFAULT_EXCEPTION_LIMIT
from tests.runtime.helpers import captured, scrape_until, serve

M = __name__
REQUESTS = 100
TASKS_PER_REQUEST = 20
FAILURES = REQUESTS * TASKS_PER_REQUEST

#: Two classes of one name in two modules: two label values.
PaymentsError = type("UpstreamError", (Exception,), {"__module__": "shop.payments"})
ShippingError = type("UpstreamError", (Exception,), {"__module__": "shop.shipping"})


def call_upstream(code: int) -> None:
    """Raises a class made at run time, one per code (``UpstreamError503``, ...)."""
    raise type(f"UpstreamError{code}", (Exception,), {})(f"upstream answered {code}")


def call_billing(code: int) -> None:
    raise type(f"BillingError{code}", (Exception,), {})(f"billing answered {code}")


def call_named(which: str) -> None:
    raise (PaymentsError if which == "payments" else ShippingError)(which)


def test_exception_label_is_bounded_on_a_real_server(task_logs: list[dict[str, Any]]) -> None:
    app = FastAPI()

    @app.post("/named")
    async def named(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(call_named, "payments")
        background_tasks.add_task(call_named, "shipping")

    @app.post("/batch/{start}")
    async def batch(start: int, background_tasks: BackgroundTasks) -> None:
        for code in range(start, start + TASKS_PER_REQUEST):
            background_tasks.add_task(call_upstream, code)

    # The default observers and /metrics, as a user gets them.
    tasklens.instrument(app, max_task_names=10, loop_lag_interval=None)
    upstream, named_task = f"{M}.call_upstream", f"{M}.call_named"

    def failures(samples: Any) -> dict[str, float]:
        return {
            dict(labels)["exception"]: value
            for labels, value in samples.series("bgtask_failures_total").items()
            if dict(labels)["task"] in (upstream, named_task)
        }

    with (
        captured("tasklens.telemetry") as telemetry_log,
        serve(app) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as client,
    ):
        assert client.post("/named").status_code == 200
        # Counted first (tasks of consecutive requests may overlap; these must come first).
        scrape_until(client, lambda s: sum(failures(s).values()) == 2, 10, "the named ones")
        for request in range(REQUESTS):
            assert client.post(f"/batch/{request * TASKS_PER_REQUEST}").status_code == 200
        samples = scrape_until(
            client,
            lambda s: sum(failures(s).values()) == FAILURES + 2,
            30,
            "every failure counted",
        )

    counted = failures(samples)
    assert DEFAULT_EXCEPTION_LIMIT == 50
    # The two same-named classes, 48 run-time classes, then "other": cap + 1 series.
    assert len(counted) == DEFAULT_EXCEPTION_LIMIT + 1
    assert counted["shop.payments.UpstreamError"] == counted["shop.shipping.UpstreamError"] == 1
    # Which 48 run-time classes came first depends on how the requests' tasks overlapped.
    run_time = {k: v for k, v in counted.items() if k.startswith(f"{M}.UpstreamError")}
    assert len(run_time) == 48
    assert set(run_time.values()) == {1.0}
    assert counted["other"] == FAILURES - 48
    warnings = [m for m in telemetry_log.messages(logging.WARNING) if "distinct" in m]
    assert len(warnings) == 1
    assert re.fullmatch(
        r"tasklens: more than 50 distinct exception classes \(max_exception_types\); "
        rf"{re.escape(M)}\.UpstreamError\d+ and later new ones are recorded as "
        r"exception='other'",
        warnings[0],
    )
    # Logs keep the real class of a folded failure.
    failed = [e for e in task_logs if e["event"] == "background task failed"]
    assert len(failed) == FAILURES + 2
    assert len({e["error_type"] for e in failed}) == FAILURES + 2


def test_max_exception_types_option(task_logs: list[dict[str, Any]]) -> None:
    """The cap is an ``instrument`` option, validated there with a message naming it."""
    with pytest.raises(ValueError, match=r"invalid max_exception_types=0; expected a positive"):
        tasklens.instrument(FastAPI(), max_exception_types=0)
    app = FastAPI()

    @app.post("/fail")
    async def fail(background_tasks: BackgroundTasks) -> None:
        for code in range(5):
            background_tasks.add_task(call_billing, code)

    tasklens.instrument(app, max_exception_types=2, loop_lag_interval=None)
    task = f"{M}.call_billing"

    def mine(s: Any) -> dict[str, float]:
        return {
            dict(labels)["exception"]: value
            for labels, value in s.series("bgtask_failures_total").items()
            if dict(labels)["task"] == task
        }

    with serve(app) as server, httpx.Client(base_url=server.base_url) as client:
        assert client.post("/fail").status_code == 200
        samples = scrape_until(client, lambda s: sum(mine(s).values()) == 5, 10, "failures")
    assert mine(samples) == {f"{M}.BillingError0": 1, f"{M}.BillingError1": 1, "other": 3}
