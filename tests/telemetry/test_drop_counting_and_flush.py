"""Span drops are counted exactly (also with spans ending on several threads at once), and
the shutdown flush is bounded when the collector does not answer."""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

from tasklens.telemetry.export import CountingBatchSpanProcessor, DropLog
from tasklens.telemetry.metrics import TaskMetrics

# The module (the package re-exports its setup() function under the same name).
telemetry_setup = importlib.import_module("tasklens.telemetry.setup")


class GatedExporter(SpanExporter):
    """Blocks every export until ``gate`` is set; counts what it exported."""

    def __init__(self, fail: bool = False) -> None:
        self.gate = threading.Event()
        self.exported = 0
        self.fail = fail

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.gate.wait(30)
        if self.fail:
            return SpanExportResult.FAILURE
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.gate.set()


def _dropped(metrics: TaskMetrics) -> float:
    return metrics.spans_dropped._value.get()


@pytest.mark.parametrize("fail", [False, True], ids=["slow-collector", "failing-collector"])
def test_every_span_is_exported_or_counted_as_dropped(fail: bool) -> None:
    metrics = TaskMetrics(CollectorRegistry())
    exporter = GatedExporter(fail=fail)
    processor = CountingBatchSpanProcessor(
        exporter, metrics, max_queue_size=64, max_export_batch_size=16, schedule_delay_millis=10
    )
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    threads, per_thread = 4, 500

    def end_spans() -> None:
        for _ in range(per_thread):
            tracer.start_span("s").end()

    workers = [threading.Thread(target=end_spans) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    dropped_while_blocked = _dropped(metrics)
    exporter.gate.set()
    provider.force_flush()
    provider.shutdown()
    total = threads * per_thread
    assert dropped_while_blocked >= total - 64 - 16  # queue + one batch in the export
    assert exporter.exported + _dropped(metrics) == total
    if fail:
        assert exporter.exported == 0


def test_flush_is_bounded_when_the_collector_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = TaskMetrics(CollectorRegistry())
    exporter = GatedExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(CountingBatchSpanProcessor(exporter, metrics))
    provider.get_tracer("t").start_span("s").end()
    handle = telemetry_setup.Telemetry("t", provider)
    monkeypatch.setattr(telemetry_setup, "_handle", handle)
    try:
        started = time.monotonic()
        assert telemetry_setup.flush(timeout=0.3) is False
        assert time.monotonic() - started < 2
        exporter.gate.set()
        assert telemetry_setup.flush(timeout=10) is True
        assert exporter.exported == 1
    finally:
        exporter.gate.set()
        provider.shutdown()


def test_flush_without_setup_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry_setup, "_handle", None)
    assert telemetry_setup.flush(timeout=0.1) is True


def test_queue_full_warning_is_rate_limited_with_counts(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    log = DropLog(interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="tasklens.telemetry"):
        for _ in range(1000):
            log.dropped(512)
        now[0] += 9.9
        log.dropped(512)
        now[0] += 0.2  # 10.1 s after the first warning
        log.dropped(512)
    messages = [r.getMessage() for r in caplog.records if r.name == "tasklens.telemetry"]
    assert len(messages) == 2
    assert "OTEL_BSP_MAX_QUEUE_SIZE=512), dropped 1 span(s)" in messages[0]
    assert "dropped 1001 span(s)" in messages[1]


def test_a_full_queue_logs_one_warning_not_one_per_span(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = TaskMetrics(CollectorRegistry())
    exporter = GatedExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(
        CountingBatchSpanProcessor(exporter, metrics, max_queue_size=8, max_export_batch_size=4)
    )
    tracer = provider.get_tracer("t")
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(500):
                tracer.start_span("s").end()
    finally:
        exporter.gate.set()
        provider.shutdown()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert _dropped(metrics) >= 500 - 8 - 4
    assert [r.name for r in warnings] == ["tasklens.telemetry"]
