"""The observers' last resorts: when building a failure's span annotations or log line
raises anyway, the span still ends ERROR with ``error.type`` and one failure line still
goes out (JSON on stderr, ``log_fallback`` naming what failed)."""

from __future__ import annotations

import json
from typing import Any, NoReturn

import pytest
import structlog.testing
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tasklens.runtime.naming import TaskIdentity
from tasklens.runtime.record import TaskRecord
from tasklens.telemetry import logs, spans
from tasklens.telemetry.logs import LogObserver
from tasklens.telemetry.spans import SpanObserver


def _failed_task() -> TaskRecord:
    def charge(order: int) -> None:
        return None

    record = TaskRecord(TaskIdentity("shop.charge", False, "charge", "shop"), charge, (7,), {},
                        False, None)  # fmt: skip
    record.outcome = "failure"
    record.error = ValueError("card declined")
    return record


def _broken(*_: Any) -> NoReturn:
    raise RuntimeError("observer bug")


def test_span_still_ends_error_when_annotating_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observer = SpanObserver(provider)
    task = _failed_task()
    observer.started(task)
    monkeypatch.setattr(spans, "task_failure", _broken)
    observer.finished(task)
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError"
    assert span.attributes is not None
    assert span.attributes["error.type"] == "ValueError"
    assert span.attributes["bgtask.outcome"] == "failure"


def test_one_failure_line_when_building_it_raises(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(logs, "describe_args", _broken)
    with structlog.testing.capture_logs() as events:
        LogObserver(record_args=True).finished(_failed_task())
    assert events == []
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line) == {
        "event": "background task failed", "level": "error", "task": "shop.charge",
        "outcome": "failure", "error_type": "ValueError", "log_fallback": "RuntimeError",
    }  # fmt: skip
