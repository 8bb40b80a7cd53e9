"""The app of the multi-worker and reliability end-to-end tests, configured by environment.

``POST /orders/{order}?tasks=K`` schedules K tasks, alternately sync (thread pool) and async
(event loop). A task fails with :class:`InventoryError` when
``failure_rule.fails(order, index, RELIABILITY_FAIL_EVERY)`` (so the tests know exactly
which tasks fail); every other task increments a side-effect counter.

``POST /hang`` schedules one sync task that blocks (up to 120 s) so a worker can be killed
while its gauges are non-zero. ``GET /stats`` reports the process: pid, side effects,
resident memory, spans ended, and the span export queue (current, peak, capacity).

Run with ``uvicorn tests.e2e.apps.reliability_app:app`` or under gunicorn.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections import deque
from typing import Any

from fastapi import BackgroundTasks, FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

import tasklens
from tests.e2e.apps.failure_rule import fails

tasklens.setup(service_name=os.environ.get("OTEL_SERVICE_NAME", "reliability-e2e"))

FAIL_EVERY = int(os.environ.get("RELIABILITY_FAIL_EVERY", "0"))
THREADPOOL_SIZE = int(os.environ.get("RELIABILITY_THREADPOOL_SIZE", "16"))
PAGE = resource.getpagesize()

_lock = threading.Lock()
_side_effects = 0
_release = threading.Event()


class InventoryError(Exception):
    """The deterministic failure of the tasks the tests choose."""


def _step(order: int, index: int, tasks: int) -> None:
    global _side_effects
    if fails(order, index, FAIL_EVERY):
        raise InventoryError(f"order {order} task {index}")
    with _lock:
        _side_effects += 1


def sync_step(order: int, index: int, tasks: int) -> None:
    _step(order, index, tasks)


async def async_step(order: int, index: int, tasks: int) -> None:
    _step(order, index, tasks)


def hang() -> None:
    _release.wait(120)


def _span_queue() -> deque[Any] | None:
    """The export queue of the first batch span processor (None without one)."""
    provider = trace.get_tracer_provider()
    active = getattr(provider, "_active_span_processor", None)
    for processor in getattr(active, "_span_processors", ()):
        queue = getattr(getattr(processor, "_batch_processor", None), "_queue", None)
        if queue is not None:
            return queue  # type: ignore[no-any-return]
    return None


class _QueueSampler:
    """Samples the span queue length every 5 ms to report its peak."""

    def __init__(self) -> None:
        self.peak = 0
        self.queue = _span_queue()
        if self.queue is not None:
            threading.Thread(target=self._run, name="queue-sampler", daemon=True).start()

    def _run(self) -> None:
        queue = self.queue
        assert queue is not None
        while True:
            self.peak = max(self.peak, len(queue))
            time.sleep(0.005)


class _EndedSpans(SpanProcessor):
    """Counts the sampled spans that ended (what the exporters had to deliver)."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None and span.context.trace_flags.sampled:
            with self._lock:
                self.count += 1


_sampler = _QueueSampler()
_ended = _EndedSpans()
_provider = trace.get_tracer_provider()
if isinstance(_provider, TracerProvider):
    _provider.add_span_processor(_ended)
app = FastAPI()


@app.post("/orders/{order}")
async def create_order(order: int, background_tasks: BackgroundTasks, tasks: int = 2) -> dict:
    for index in range(tasks):
        step = sync_step if index % 2 == 0 else async_step
        background_tasks.add_task(step, order, index, tasks)
    return {"order": order, "pid": os.getpid()}


@app.post("/hang")
async def start_hang(background_tasks: BackgroundTasks) -> dict:
    background_tasks.add_task(hang)
    return {"pid": os.getpid()}


@app.get("/stats")
def stats() -> dict:
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    queue = _sampler.queue
    return {
        "pid": os.getpid(),
        "side_effects": _side_effects,
        "rss_bytes": rss_pages * PAGE,
        "spans_ended": _ended.count,
        "span_queue": len(queue) if queue is not None else None,
        "span_queue_peak": _sampler.peak,
        "span_queue_capacity": queue.maxlen if queue is not None else None,
    }


tasklens.instrument(app, threadpool_size=THREADPOOL_SIZE)
