"""Every failure is recorded, on a real uvicorn with the real OTLP exporter: when an
argument's ``repr`` raises (``record_args=True``), when the exception's ``__str__`` raises, and
when the app's structlog chain raises on the failure line. Each failing task still gets its
span, ended with status ERROR and ``error.type``, and exactly one "background task failed"
line with a traceback; the fallback is counted (``bgtask.unrepresentable`` / ``unrepresentable``
/ ``log_fallback``). No traceback formatting reads a source file on the event loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.support.net import free_port
from tests.support.otlp_receiver import OTLPReceiver, ReceivedSpan
from tests.support.polling import wait_for
from tests.support.server import ServerProcess, clean_env

APP = "tests.e2e.apps.failures_app:app"
MODULE = "tests.e2e.apps.failures_tasks"
ROUNDS = 2
CASES = {  # endpoint -> task function; async ones first: nothing read the tasks' file yet
    "/bad-str": "fail_unprintably",
    "/bad-renderer": "fail_in_the_renderer",
    "/bad-repr": "fail_with_ghost",
}
FAILED = "background task failed"


def _status_messages(rx: OTLPReceiver) -> dict[str, str]:
    messages = {}
    for _, request in rx.export_requests("traces"):
        for resource_spans in request.resource_spans:  # type: ignore[attr-defined]
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    messages[span.span_id.hex()] = span.status.message
    return messages


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_every_failure_gets_an_ended_error_span_and_one_log_line(tmp_path: Path) -> None:
    with OTLPReceiver() as rx:
        env = clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.http_endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        with ServerProcess.uvicorn(APP, env, tmp_path / "server.log", free_port()) as server:
            server.wait_ready("/health")
            with httpx.Client(base_url=server.base_url, timeout=10) as client:
                for _ in range(ROUNDS):
                    for path in CASES:
                        assert client.post(path).status_code == 200

                def task_spans(r: OTLPReceiver) -> list[ReceivedSpan]:
                    spans = [s for s in r.spans() if s.name.startswith("bgtask ")]
                    return spans if len(spans) >= ROUNDS * len(CASES) else []

                spans = rx.wait_for(task_spans, timeout=20)
                wait_for(
                    lambda: server.log_text().count(FAILED) >= ROUNDS * len(CASES),
                    10,
                    "the failure lines",
                )
                loop_source_reads = client.get("/loop-source-reads").json()["count"]
            log = server.log_text()
        status = _status_messages(rx)

    lines = [line for line in _json_lines(log) if line.get("event") == FAILED]
    print(
        f"RELIABILITY failures: task spans {len(spans)}/{ROUNDS * len(CASES)}, ERROR "
        f"{sum(s.status_code == 2 for s in spans)}, failure lines {len(lines)}, 'observer "
        f"failed' lines {log.count('observer')}, source-file opens on the loop {loop_source_reads}"
    )
    assert "observer" not in log, log  # no "tasklens: observer ... failed" line
    assert loop_source_reads == 0
    assert len(spans) == ROUNDS * len(CASES)
    assert len(lines) == ROUNDS * len(CASES)
    by_task: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        by_task.setdefault(span.name.removeprefix(f"bgtask {MODULE}."), []).append(span)
    assert {task: len(found) for task, found in by_task.items()} == {
        task: ROUNDS for task in CASES.values()
    }
    for task, found in by_task.items():
        task_lines = [line for line in lines if line["task"] == f"{MODULE}.{task}"]
        assert len(task_lines) == ROUNDS, task
        for span in found:
            assert span.status_code == 2, task  # ERROR, and received: the span was ended
            assert span.attributes["bgtask.outcome"] == "failure"
        for line in task_lines:
            assert line["level"] == "error"
            assert line["exception"].startswith("Traceback (most recent call last):\n  File ")
            assert f"in {task}\n" in line["exception"]

    unprintable = f"{MODULE}.Unprintable"
    for span in by_task["fail_unprintably"]:
        assert span.attributes["error.type"] == unprintable
        assert span.attributes["bgtask.unrepresentable"] == 1
        assert status[span.span_id] == f"{unprintable}: <unrepresentable {unprintable}>"
        ((_, event),) = [e for e in span.events if e[0] == "exception"]
        assert event["exception.message"] == f"<unrepresentable {unprintable}>"
        assert str(event["exception.stacktrace"]).endswith(
            f"{unprintable}: <unrepresentable {unprintable}>\n"
        )
    for line in lines:
        if line["task"].endswith("fail_unprintably"):
            assert line["error_type"] == unprintable and line["unrepresentable"] == 1
            assert line["exception"].endswith(f"{unprintable}: <unrepresentable {unprintable}>")

    for span in by_task["fail_with_ghost"]:
        assert span.attributes["error.type"] == "ValueError"
        assert span.attributes["bgtask.executor"] == "thread_pool"
        assert json.loads(str(span.attributes["bgtask.args"])) == ["<unrepresentable Ghost>"]
        assert span.attributes["bgtask.unrepresentable"] == 1
        assert status[span.span_id] == "ValueError: row update failed"
    for line in lines:
        if line["task"].endswith("fail_with_ghost"):
            assert line["task_args"] == ["<unrepresentable Ghost>"]
            assert line["unrepresentable"] == 1
            assert line["exception"].endswith("ValueError: row update failed")

    for span in by_task["fail_in_the_renderer"]:
        assert span.attributes["error.type"] == "ValueError"
        assert status[span.span_id] == "ValueError: renderer victim"
    for line in lines:
        if line["task"].endswith("fail_in_the_renderer"):
            assert line["log_fallback"] == "RuntimeError"
            assert line["error_type"] == "ValueError"
            assert line["exception"].endswith("ValueError: renderer victim")
        else:
            assert "log_fallback" not in line
