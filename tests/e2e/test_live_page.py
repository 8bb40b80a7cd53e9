"""The live page (``ui_path="/tasks"``) on a real uvicorn, looked at by a real headless
Chromium (Debian's, driven by Playwright), with spans exported to a real OTLP receiver so
the page's trace view is checked against the spans that were actually sent.

Screenshots are written as test artefacts (``tmp_path``; set ``TASKLENS_LIVE_SCREENSHOTS``
to a directory to keep copies, e.g. ``docs/img``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, sync_playwright

from tests.support.metrics import scrape
from tests.support.net import free_port
from tests.support.otlp_receiver import OTLPReceiver, ReceivedSpan
from tests.support.polling import wait_for
from tests.support.server import ServerProcess, clean_env

APP = "tests.e2e.apps.live_app:app"
MODULE = "tests.e2e.apps.live_app"
CHROMIUM = "/usr/bin/chromium"
ORDERS = range(1, 7)  # notify() fails for orders 3 and 6
PER_ORDER = ("charge", "notify", "report")


_TRACES: dict[int, str] = {}


def trace_of(order: int) -> str:
    """The (random) trace id each order's request is sent with (W3C traceparent)."""
    return _TRACES.setdefault(order, secrets.token_hex(16))


def traceparent(order: int) -> dict[str, str]:
    return {"traceparent": f"00-{trace_of(order)}-{secrets.token_hex(8)}-01"}


@dataclass
class Live:
    server: ServerProcess
    receiver: OTLPReceiver
    client: httpx.Client
    browser: Browser

    def page(self) -> tuple[Page, list[str]]:
        """A fresh page and the list its console errors and page errors go to."""
        page = self.browser.new_page(viewport={"width": 1500, "height": 900})
        errors: list[str] = []

        def on_console(message: ConsoleMessage) -> None:
            if message.type in ("error", "warning"):
                errors.append(f"{message.type}: {message.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
        return page, errors

    def url(self, rest: str = "") -> str:
        return f"{self.server.base_url}/tasks{rest}"


def _order_rows(page: Page, order: int) -> list[tuple[str, str, str]]:
    rows = page.locator(f'#tasks tbody tr[data-trace="{trace_of(order)}"]')
    return [
        (r["name"].rsplit(".", 1)[-1], r["outcome"], r["text"])
        for r in rows.evaluate_all(
            "rs => rs.map(r => ({name: r.dataset.name, outcome: r.dataset.outcome,"
            " text: r.innerText}))"
        )
    ]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    log = tmp_path_factory.mktemp("live") / "server.log"
    with OTLPReceiver() as rx:
        env = clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.http_endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        with (
            ServerProcess.uvicorn(APP, env, log, free_port()) as server,
            httpx.Client(base_url=server.base_url, timeout=10) as client,
            sync_playwright() as playwright,
        ):
            server.wait_ready("/health")
            for order in ORDERS:  # a few seconds apart, so that the plots have a shape
                response = client.post(f"/orders/{order}", headers=traceparent(order))
                assert response.status_code == 200
                time.sleep(0.4)
            assert client.post("/cache/rebuild", headers=traceparent(99)).status_code == 200
            expected = len(ORDERS) * len(PER_ORDER) + 1
            wait_for(
                lambda: client.get("/tasks/api/live").json()["seq"] >= expected,
                10,
                "every task of the test's requests to finish",
            )
            browser = _launch(playwright)
            try:
                yield Live(server, rx, client, browser)
            finally:
                browser.close()


def _launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


def _keep(path: Path) -> None:
    target = os.environ.get("TASKLENS_LIVE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


def test_tasks_view_shows_the_requests_tasks_and_failures(live: Live, tmp_path: Path) -> None:
    page, errors = live.page()
    page.goto(live.url())
    page.wait_for_selector(f'#tasks tbody tr[data-trace="{trace_of(6)}"]')
    for order in ORDERS:
        rows = wait_for(lambda o=order: len(_order_rows(page, o)) == 3 and _order_rows(page, o),
                        5, f"the three tasks of order {order}")  # fmt: skip
        failing = order % 3 == 0
        assert sorted((name, outcome) for name, outcome, _ in rows) == [
            ("charge", "success"),
            ("notify", "failure" if failing else "success"),
            ("report", "success"),
        ]
        for name, _, text in rows:
            # The failing task's row names its exception type; no other row names one.
            assert ("InventoryError" in text) == (failing and name == "notify"), text
    # Each row: executor, queue time, and (sync tasks) thread-pool wait, as measured.
    (charge,) = [r for r in _order_rows(page, 1) if r[0] == "charge"]
    cells = charge[2].split("\t")
    assert cells[2] == "thread_pool" and cells[4].endswith("s") and cells[5].endswith("s")

    # Filters: failures only, then one task name.
    page.select_option("#filter-outcome", "failure")
    failures = page.locator("#tasks tbody tr")
    assert failures.evaluate_all("rs => rs.map(r => r.dataset.outcome)") == ["failure"] * 2
    page.select_option("#filter-outcome", "")
    page.select_option("#filter-name", f"{MODULE}.rebuild_cache")
    assert page.locator("#tasks tbody tr").evaluate_all("rs => rs.map(r => r.dataset.name)") == [
        f"{MODULE}.rebuild_cache"
    ]
    page.select_option("#filter-name", "")

    # Per-name summary: counts and failure ratio of the last minutes.
    summary = page.locator(f'#summary tbody tr[data-name="{MODULE}.notify"] td')
    assert summary.all_inner_texts()[1:4] == ["6", "2", "33.3 %"]

    # A failure's detail: type, scrubbed message, traceback.
    page.locator(f'#tasks tbody tr[data-trace="{trace_of(6)}"][data-outcome="failure"]').click()
    page.wait_for_selector("#detail pre.traceback")
    detail = page.locator("#detail").inner_text()
    assert f"{MODULE}.InventoryError: order 6: https://stock.example/?api_key=[redacted]" in detail
    assert "sk_live" not in detail
    assert "Traceback (most recent call last)" in detail
    assert 'live_app.py", line' in detail and ", in notify" in detail
    shot = tmp_path / "live-tasks.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    _keep(shot)
    assert errors == []


def test_a_new_task_appears_within_two_seconds_without_reload(live: Live) -> None:
    page, errors = live.page()
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.goto(live.url())
    page.wait_for_selector(f'#tasks tbody tr[data-trace="{trace_of(1)}"]')
    page.evaluate("window.__still_the_same_page = true")
    loaded = list(navigations)
    assert live.client.post("/orders/100", headers=traceparent(100)).status_code == 200
    sent = time.monotonic()
    page.wait_for_selector(f'#tasks tbody tr[data-trace="{trace_of(100)}"]', timeout=2000)
    assert time.monotonic() - sent < 2.0
    assert page.evaluate("window.__still_the_same_page") is True
    assert navigations == loaded  # no reload, no navigation
    assert errors == []


def _task_spans(rx: OTLPReceiver, trace_id: str) -> list[ReceivedSpan]:
    spans = [s for s in rx.spans() if s.trace_id == trace_id and s.name.startswith("bgtask ")]
    return spans if len(spans) == 3 else []


def test_trace_view_lists_exactly_the_requests_task_spans_in_order(
    live: Live, tmp_path: Path
) -> None:
    trace_id = trace_of(6)
    spans = live.receiver.wait_for(lambda rx: _task_spans(rx, trace_id))
    (request,) = {s.parent_span_id for s in spans}
    expected = sorted(spans, key=lambda s: s.attributes["bgtask.index"])  # type: ignore[arg-type,return-value]
    page, errors = live.page()
    page.goto(live.url(f"#/trace/{trace_id}-{request}"))
    page.wait_for_selector("#trace-tasks tbody tr")
    rows = page.locator("#trace-tasks tbody tr").evaluate_all(
        "rs => rs.map(r => [r.dataset.span, r.dataset.name, r.dataset.outcome])"
    )
    assert rows == [
        [s.span_id, s.attributes["bgtask.name"], s.attributes["bgtask.outcome"]] for s in expected
    ]
    assert [r[1].rsplit(".", 1)[-1] for r in rows] == list(PER_ORDER)
    # The waterfall draws each task with its queue time apart from its run time.
    bars = page.locator("#waterfall g.span-row")
    assert bars.count() == 3
    assert page.locator("#waterfall g.span-row rect.queue").count() == 3
    assert page.locator("#waterfall g.span-row rect.run").count() == 3
    assert page.locator("#waterfall g.span-row rect.run.o-failure").count() == 1
    assert f"{MODULE}.InventoryError" in page.locator("#trace-errors").inner_text()
    link = page.locator("#trace-meta a.external").get_attribute("href")
    assert link is not None and trace_id in link and link.startswith("https://grafana.example/")
    shot = tmp_path / "live-trace.png"
    page.screenshot(path=str(shot), full_page=True)
    _keep(shot)
    assert errors == []


def test_trace_view_shows_the_loop_blocked_event(live: Live) -> None:
    page, errors = live.page()
    seq_rows = live.client.get("/tasks/api/live").json()["tasks"]
    (task,) = [t for t in seq_rows if t["trace_id"] == trace_of(99)]
    assert task["loop_blocked"] is True
    page.goto(live.url(f"#/trace/{task['request']}"))
    page.wait_for_selector("#trace-tasks tbody tr")
    assert page.locator("#waterfall .mark").count() == 1
    assert "loop blocked" in page.locator("#trace-tasks tbody tr").inner_text()
    assert errors == []


def test_page_counts_agree_with_metrics_and_page_is_not_traced(live: Live) -> None:
    for _ in range(5):  # the page's own requests
        assert live.client.get("/tasks").status_code == 200
        assert live.client.get("/tasks/api/live").status_code == 200
    metrics = scrape(live.client)
    page: dict[str, Any] = live.client.get("/tasks/api/live").json()
    for outcome, count in page["totals"].items():
        assert metrics.total("bgtask_finished_total", outcome=outcome) == count, outcome
    for row in page["names"]:
        assert metrics.total("bgtask_finished_total", task=row["name"]) == row["count"]
        assert metrics.total("bgtask_failures_total", task=row["name"]) == row["failures"]
    time.sleep(0.5)  # the batch processor's schedule delay is 0.1 s
    paths = {s.url_path for s in live.receiver.spans() if s.kind == 2}  # SERVER
    assert "/orders/1" in paths
    page_paths = ("/tasks", "/tasks/", "/tasks/app.js", "/tasks/app.css")
    assert not any(p in page_paths or p.startswith("/tasks/api/") for p in paths), paths


def test_page_is_behind_metrics_auth(tmp_path: Path) -> None:
    env = clean_env(LIVE_APP_TOKEN="s3cret")
    with (
        ServerProcess.uvicorn(APP, env, tmp_path / "server.log", free_port()) as server,
        httpx.Client(base_url=server.base_url, timeout=10) as client,
    ):
        server.wait_ready("/health")
        good = {"authorization": "Bearer s3cret"}
        for path in ("/tasks", "/tasks/app.js", "/tasks/api/live", "/metrics"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"authorization": "Bearer nope"}).status_code == 403
            assert client.get(path, headers=good).status_code == 200, path
        # Not the page's: the app's own routes answer (and its own check, none here).
        assert client.post("/tasks").json() == {"created": True}
        assert client.get("/tasks/api/nothing", headers=good).status_code == 404
        page = client.get("/tasks", headers=good)
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert 'src="/tasks/app.js"' in page.text


def test_app_routes_below_ui_path_reach_the_app(live: Live) -> None:
    """Only the page's exact paths (GET, HEAD) are the page's; the app's ``GET /tasks/{tid}``
    and ``POST /tasks`` keep working; its ``GET /tasks`` is shadowed, with one warning."""
    client = live.client
    assert client.get("/tasks/42").json() == {"task": "42"}
    assert client.get("/tasks/app.json").json() == {"task": "app.json"}
    assert client.post("/tasks").json() == {"created": True}
    page = client.get("/tasks")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    head = client.head("/tasks")
    assert head.status_code == 200 and head.content == b""
    assert (
        head.headers["content-length"] == page.headers["content-length"] == str(len(page.content))
    )
    assert client.get("/tasks/api/task/x").status_code == 404  # not the page's: the app's 404
    warnings = [line for line in live.server.log_text().splitlines() if "is shadowed" in line]
    assert len(warnings) == 1, warnings
    assert "route GET /tasks is shadowed by the live page" in warnings[0]


def test_page_after_a_restart_shows_the_new_process_tasks(live: Live, tmp_path: Path) -> None:
    """uvicorn --reload, a deploy: the new process counts from 1 again; the open page asks
    for all of its tasks instead of waiting for the old sequence number."""
    port = free_port()
    page, errors = live.page()
    with (
        ServerProcess.uvicorn(APP, clean_env(), tmp_path / "first.log", port) as first,
        httpx.Client(base_url=first.base_url, timeout=10) as client,
    ):
        first.wait_ready("/health")
        for order in (201, 202, 203):
            assert client.post(f"/orders/{order}", headers=traceparent(order)).status_code == 200
        page.goto(f"{first.base_url}/tasks")
        wait_for(lambda: page.locator("#tasks tbody tr").count() == 9, 5, "the first 9 tasks")
    with (
        ServerProcess.uvicorn(APP, clean_env(), tmp_path / "second.log", port) as second,
        httpx.Client(base_url=second.base_url, timeout=10) as client,
    ):
        second.wait_ready("/health")
        assert client.post("/orders/204", headers=traceparent(204)).status_code == 200
        rows = f'#tasks tbody tr[data-trace="{trace_of(204)}"]'
        wait_for(lambda: page.locator(rows).count() == 3, 6, "the new process's 3 tasks")
        assert page.locator("#tasks tbody tr").count() == 3  # the old process's are gone
    # Only the failed polls while no server answered; nothing else.
    assert all("Failed to load resource" in e or "fetch" in e.lower() for e in errors), errors


def test_trace_view_refreshes_while_the_requests_tasks_run(live: Live) -> None:
    trace_id = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    assert live.client.post("/slow", headers=headers).status_code == 200
    first = wait_for(
        lambda: [t for t in live.client.get("/tasks/api/live").json()["tasks"]
                 if t["trace_id"] == trace_id],
        5, "the quick task",
    )  # fmt: skip
    page, errors = live.page()
    page.goto(live.url(f"#/trace/{first[0]['request']}"))
    page.wait_for_selector("#trace-tasks tbody tr")
    names = "rs => rs.map(r => r.dataset.name.split('.').pop())"
    if page.locator("#trace-tasks tbody tr").count() == 1:  # the slow task still running
        assert page.locator("#trace-tasks tbody tr").evaluate_all(names) == ["quick"]
    wait_for(lambda: page.locator("#trace-tasks tbody tr").count() == 2, 5, "the slow task")
    assert page.locator("#trace-tasks tbody tr").evaluate_all(names) == ["quick", "slow"]
    assert errors == []


def test_without_a_tracer_provider_long_names_and_bidi_text(live: Live, tmp_path: Path) -> None:
    """No ``tasklens.setup()``: the page says why there are no trace ids. A 200-character
    name and a right-to-left override in a message stay in their cells, in order."""
    env = clean_env(LIVE_APP_NO_SETUP="1")
    with (
        ServerProcess.uvicorn(APP, env, tmp_path / "server.log", free_port()) as server,
        httpx.Client(base_url=server.base_url, timeout=10) as client,
    ):
        server.wait_ready("/health")
        assert client.post("/orders/1").status_code == 200
        assert client.post("/odd").status_code == 200
        wait_for(lambda: client.get("/tasks/api/live").json()["seq"] >= 4, 5, "4 tasks")
        page, errors = live.page()
        page.set_viewport_size({"width": 1280, "height": 900})
        page.goto(f"{server.base_url}/tasks")
        page.wait_for_selector('#tasks tbody tr[data-outcome="failure"]')
        note = page.locator("#note")
        assert note.is_visible() and "no tracer provider" in note.inner_text().lower()
        assert "tasklens.setup()" in note.inner_text()
        # Nothing wider than the window: the long name is cut with an ellipsis.
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 1280, width
        assert page.locator("#filter-name").bounding_box()["width"] < 500  # type: ignore[index]
        page.locator('#tasks tbody tr[data-outcome="failure"]').click()
        page.wait_for_selector("#detail .failure")
        message = page.locator("#detail .failure p.message")
        box = message.bounding_box()
        assert box is not None and box["x"] + box["width"] <= 1280
        bidi = page.evaluate(
            "sel => getComputedStyle(document.querySelector(sel)).unicodeBidi",
            "#detail .failure p.message .text",
        )
        assert bidi == "plaintext"
        for sel in ("#tasks td.name", "#summary td.name a"):
            assert (
                page.evaluate(
                    "sel => getComputedStyle(document.querySelector(sel)).unicodeBidi", sel
                )
                == "plaintext"
            ), sel
        assert errors == []
