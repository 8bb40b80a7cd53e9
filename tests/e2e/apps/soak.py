"""The bounded soak: many no-op tasks through an instrumented app, resident memory sampled.

    python -m tests.e2e.apps.soak --requests 2000 --tasks 100 --warmup 200

Runs in a process of its own (clean memory figures, its own telemetry globals). Requests
go through the ASGI app in-process (httpx ``ASGITransport``, which returns once the
response's tasks ran); each schedules ``--tasks`` no-op tasks, the first half sync (one
thread hand-off) and the second half async. Spans go through tasklens' counting batch
processor to an exporter that counts and discards them. Prints one JSON line: task
counts from /metrics, spans ended, exported and dropped, and RSS (bytes) after warm-up and
at every checkpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence

import httpx
from fastapi import BackgroundTasks, FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from prometheus_client.parser import text_string_to_metric_families

import tasklens
from tasklens.telemetry.export import CountingBatchSpanProcessor
from tasklens.telemetry.metrics import TaskMetrics

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class EndedSpans(SpanProcessor):
    """Counts every span that ended (what the batch processor was handed)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            self.count += 1


class DiscardingExporter(SpanExporter):
    """Counts exported spans and keeps none."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self.count += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def noop_sync() -> None:
    return None


async def noop_async() -> None:
    return None


def build(tasks: int) -> FastAPI:
    app = FastAPI()

    @app.post("/work")
    async def work(background_tasks: BackgroundTasks) -> dict[str, int]:
        for index in range(tasks):
            background_tasks.add_task(noop_sync if index < tasks // 2 else noop_async)
        return {"tasks": tasks}

    tasklens.instrument(app)
    return app


async def drive(app: FastAPI, requests: int, warmup: int, checkpoints: int) -> dict:
    samples: list[tuple[int, int]] = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://soak") as client:
        started = time.monotonic()
        for n in range(1, requests + 1):
            response = await client.post("/work")
            if response.status_code != 200:
                raise SystemExit(f"request {n}: HTTP {response.status_code}")
            if n == warmup or (n > warmup and (n - warmup) % checkpoints == 0):
                gc.collect()
                samples.append((n, rss()))
        seconds = time.monotonic() - started
        metrics = (await client.get("/metrics")).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if s.name == "bgtask_finished_total":
                key = f"{s.name}:{s.labels['outcome']}"
            elif s.name in ("bgtask_enqueued_total", "bgtask_pending"):
                key = s.name
            else:
                continue
            totals[key] = totals.get(key, 0.0) + s.value
    return {"seconds": seconds, "rss": samples, "totals": totals}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--checkpoints", type=int, default=200)
    args = parser.parse_args(argv)

    exporter = DiscardingExporter()
    provider = TracerProvider()
    provider.add_span_processor(
        CountingBatchSpanProcessor(exporter, TaskMetrics.for_registry(), max_queue_size=8192)
    )
    ended = EndedSpans()
    provider.add_span_processor(ended)
    trace.set_tracer_provider(provider)
    tasklens.setup(service_name="soak", span_logs=False)  # keeps the provider above
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    app = build(args.tasks)
    result = asyncio.run(drive(app, args.requests, args.warmup, args.checkpoints))
    provider.force_flush()
    dropped = TaskMetrics.for_registry().spans_dropped._value.get()
    result.update(spans_ended=ended.count, spans_exported=exporter.count, spans_dropped=dropped)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
