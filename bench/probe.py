"""What the sustained case reads from inside the server under test.

The load endpoint ``GET /load`` adds one async and one sync no-op task, counting what was
enqueued and what finished, and passing each task its enqueue time so the queue time (add_task
to function start) is measured the same way in every variant, plain Starlette included.
``GET /_bench/stats`` answers one JSON object: those counts, the queue times of the tasks
started since the previous read (p50/p99), resident set, gen-2 garbage-collection pauses
(``gc.callbacks``), event-loop tasks alive (each suspended request cycle is one) and, in
tasklens variants, ``bgtask_pending`` from the Prometheus registry. ``?objects=1`` adds
``len(gc.get_objects())`` (a few ms with a large heap: only at the start and the end).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from typing import Any

from starlette.background import BackgroundTasks
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_perf = time.perf_counter
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

#: The BackgroundTasks class the endpoint uses: FastAPI variants set FastAPI's (its native
#: telemetry wraps each task of that class in a span).
TASKS_CLASS: list[type[BackgroundTasks]] = [BackgroundTasks]
COUNTS = {"loads": 0, "stats": 0, "enqueued": 0, "async": 0, "sync": 0}
_queue: dict[str, list[float]] = {"async": [], "sync": []}


class GcPauses:
    """Gen-2 collection pauses, from ``gc.callbacks`` (start/stop of each collection)."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.all_total = 0.0  # every generation
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = _perf()
            return
        pause = _perf() - self._started
        self.all_total += pause
        if info.get("generation") == 2:
            self.count += 1
            self.total += pause
            self.max = max(self.max, pause)

    def reset(self) -> None:
        self.count, self.total, self.max, self.all_total = 0, 0.0, 0.0, 0.0


GC = GcPauses()


def install() -> None:
    """Start counting gc pauses (once, when the server starts)."""
    if GC not in gc.callbacks:
        gc.callbacks.append(GC)


async def load_async(enqueued_at: float) -> None:
    _queue["async"].append(_perf() - enqueued_at)
    COUNTS["async"] += 1


def load_sync(enqueued_at: float) -> None:
    _queue["sync"].append(_perf() - enqueued_at)  # list.append is atomic under the GIL
    COUNTS["sync"] += 1


async def load(request: Request) -> Response:
    """The sustained case's endpoint: one async and one sync no-op task."""
    tasks = TASKS_CLASS[0]()
    now = _perf()
    tasks.add_task(load_async, now)
    tasks.add_task(load_sync, now)
    COUNTS["enqueued"] += 2
    COUNTS["loads"] += 1
    return Response(b"ok", media_type="text/plain", background=tasks)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _percentiles(values: list[float]) -> dict[str, float | int | None]:
    values.sort()
    n = len(values)
    if not n:
        return {"n": 0, "p50_ms": None, "p99_ms": None}
    return {
        "n": n,
        "p50_ms": values[n // 2] * 1e3,
        "p99_ms": values[min(n - 1, int(0.99 * n))] * 1e3,
    }


def _pending_metric() -> float | None:
    try:
        from prometheus_client import REGISTRY
    except ImportError:
        return None
    return REGISTRY.get_sample_value("bgtask_pending")


def snapshot(objects: bool = False) -> dict[str, Any]:
    """Counts since start, queue times since the last snapshot, process state now."""
    queues = {kind: _queue[kind] for kind in ("async", "sync")}
    _queue["async"], _queue["sync"] = [], []
    finished = COUNTS["async"] + COUNTS["sync"]
    out: dict[str, Any] = {
        "t": _perf(),
        "loads": COUNTS["loads"],
        "enqueued": COUNTS["enqueued"],
        "finished": finished,
        "finished_async": COUNTS["async"],
        "finished_sync": COUNTS["sync"],
        "behind": COUNTS["enqueued"] - finished,
        "queue_async": _percentiles(queues["async"]),
        "queue_sync": _percentiles(queues["sync"]),
        "rss_bytes": rss_bytes(),
        "gc2_count": GC.count,
        "gc2_total_ms": GC.total * 1e3,
        "gc2_max_ms": GC.max * 1e3,
        "gc_all_total_ms": GC.all_total * 1e3,
        "loop_tasks": len(asyncio.all_tasks()),
        "bgtask_pending": _pending_metric() if _VARIANT["name"].startswith("tasklens") else None,
    }
    if objects:
        out["objects"] = len(gc.get_objects())
    return out


async def stats(request: Request) -> Response:
    COUNTS["stats"] += 1
    if request.query_params.get("reset"):
        GC.reset()
    body = snapshot(objects=bool(request.query_params.get("objects")))
    return Response(json.dumps(body), media_type="application/json")


_VARIANT = {"name": ""}


def routes(variant: str) -> list[Route]:
    """The probe's routes, for the app of ``variant``."""
    _VARIANT["name"] = variant
    return [Route("/load", load), Route("/_bench/stats", stats)]
