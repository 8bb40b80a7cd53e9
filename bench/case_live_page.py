"""``python -m bench.case_live_page``: what the live page (``ui_path``) costs per task, against
a baseline measured in the same run (``make bench`` runs it after the main cases).

One process, four apps on one sampled SDK tracer provider (``BatchSpanProcessor`` to an
exporter that drops spans), no-op tasks through the ASGI interface as in ``case_tasks``;
µs per task is the slope over tasks per response (the request's own cost left out), best of
rounds that alternate the apps, so machine noise hits all alike:

- ``tasklens``: ``instrument(app)``, the defaults (spans, metrics, logs) — the baseline;
- ``tasklens+page``: the same with ``ui_path="/tasks"``;
- ``bare``: ``observers=[]`` (the runtime alone, request spans still made);
- ``bare+buffer``: ``observers=[LiveBuffer()]``: the page's recording alone.

Nobody opens the page meanwhile: this is the cost when nobody looks. Then what one look
costs: answering ``api/live`` with the buffer full (1,000 tasks) and with nothing new; and
the same with 500 task names of 100 characters (``max_task_names``' default), where the
per-name summary dominates: the answer's time and size, and how long a read holds the
buffer's lock (the ``finished`` hook's pass waits on it).
Writes ``bench/results/live_page.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from opentelemetry import trace
from starlette.applications import Starlette
from starlette.background import BackgroundTasks
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench import apps

RESULTS = Path(__file__).resolve().parent / "results"
APPS = ("tasklens", "tasklens+page", "bare", "bare+buffer")
KINDS = ("async", "sync")


def _build() -> dict[str, Starlette]:
    import tasklens
    from tasklens.telemetry.live_buffer import LiveBuffer

    exporter = apps.CountingExporter()
    trace.set_tracer_provider(apps._provider(True, exporter))
    tasklens.setup(service_name="bench", span_logs=False)
    built: dict[str, Starlette] = {}
    for name in APPS:
        app = Starlette(routes=list(apps.ROUTES))
        if name == "tasklens":
            tasklens.instrument(app)
        elif name == "tasklens+page":
            tasklens.instrument(app, ui_path="/tasks")
        elif name == "bare":
            tasklens.instrument(app, observers=[])
        else:
            tasklens.instrument(app, observers=[LiveBuffer()], ui_path="/tasks")
        built[name] = app
    return built


async def _timed(app: Any, state: dict[str, Any], path: str, requests: int) -> float:
    start = time.perf_counter()
    for _ in range(requests):
        await apps.request(app, path, state)
    return time.perf_counter() - start


async def _answer_ms(app: Any, state: dict[str, Any], target: str, times: int) -> float:
    """Best time of one page API answer through the app, ms."""
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        await apps.request(app, target, state)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


async def measure(rounds: int, requests: dict[str, int], tasks: int) -> dict[str, Any]:
    built = _build()
    lifespans = {name: apps.Lifespan(app) for name, app in built.items()}
    for lifespan in lifespans.values():
        await lifespan.__aenter__()
    try:
        states = {name: lifespans[name].state for name in APPS}
        for name in APPS:  # warm-up: names, label children, caches
            for kind in KINDS:
                await _timed(built[name], states[name], f"/{kind}/{tasks}", 2)
        best: dict[tuple[str, str, str], float] = {}
        for round_ in range(rounds):
            order = APPS if round_ % 2 == 0 else tuple(reversed(APPS))
            for name in order:
                for kind in KINDS:
                    for label, n in (("empty", 0), ("full", tasks)):
                        t = await _timed(built[name], states[name], f"/{kind}/{n}", requests[kind])
                        key = (name, kind, label)
                        best[key] = min(best.get(key, t), t)
        per_task = {
            name: {
                kind: (best[(name, kind, "full")] - best[(name, kind, "empty")])
                / (requests[kind] * tasks)
                * 1e6
                for kind in KINDS
            }
            for name in APPS
        }
        page_app, page_state = built["tasklens+page"], states["tasklens+page"]
        full_ms = await _answer_ms(page_app, page_state, "/tasks/api/live?after=0", 20)
        seq = _seq(built["tasklens+page"])
        idle_ms = await _answer_ms(page_app, page_state, f"/tasks/api/live?after={seq}", 20)
    finally:
        for lifespan in lifespans.values():
            await lifespan.__aexit__()
    return {
        "per_task_us": per_task,
        "api_live_full_ms": full_ms,
        "api_live_nothing_new_ms": idle_ms,
        "names_500": await names_case(),
    }


def _named(i: int, chars: int) -> Any:
    def task() -> None:
        return None

    task.__qualname__ = f"task_{i:03d}_".ljust(chars - len(__name__) - 1, "n")
    return task


class _TimedLock:
    """The buffer's lock, recording how long each hold lasts."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.held: list[float] = []
        self._at = 0.0

    def __enter__(self) -> None:
        self.lock.acquire()
        self._at = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.held.append(time.perf_counter() - self._at)
        self.lock.release()


async def names_case(names: int = 500, chars: int = 100, times: int = 30) -> dict[str, float]:
    """One ``api/live`` poll with ``names`` task names of ``chars`` characters, the buffer
    full: ms (median) and KB, with nothing new (as the page asks: its summary's token) and
    with the summary sent; the lock's hold per read (median, max ms)."""
    import tasklens
    from tasklens.telemetry.live_page import LivePage, live_buffer_of

    funcs = [_named(i, chars) for i in range(names)]

    async def endpoint(request: Request) -> Response:
        tasks = BackgroundTasks()
        for func in funcs * (1000 // names + 1):
            tasks.add_task(func)
        return Response(b"", background=tasks)

    app = Starlette(routes=[Route("/names", endpoint)])
    tasklens.instrument(app, ui_path="/tasks", metrics_path=None)
    async with apps.Lifespan(app) as lifespan:
        for _ in range(2):
            await apps.request(app, "/names", lifespan.state)
    buffer = live_buffer_of(app)
    assert buffer is not None
    buffer.drain()
    page = LivePage(lambda: buffer)

    def answer(query: str) -> tuple[float, bytes]:
        scope = {"query_string": query.encode(), "tasklens.ui_path": "/tasks"}
        start = time.perf_counter()
        status, _, body = page._answer(scope, "/api/live")
        assert status == 200
        return time.perf_counter() - start, body

    first = json.loads(answer("after=0")[1])
    idle_query = f"after={first['seq']}&names={first.get('names_token', '')}"
    result: dict[str, float] = {}
    for label, query in (("idle", idle_query), ("summary", f"after={first['seq']}")):
        runs = sorted(answer(query)[0] for _ in range(times))
        result[f"{label}_ms"] = runs[times // 2] * 1e3
        result[f"{label}_kb"] = len(answer(query)[1]) / 1000
    timed = _TimedLock(buffer.lock)
    buffer.lock = timed  # type: ignore[assignment]
    for _ in range(times):
        buffer.summary()
    buffer.lock = timed.lock
    held = sorted(timed.held)
    result["lock_median_ms"] = held[len(held) // 2] * 1e3
    result["lock_max_ms"] = held[-1] * 1e3
    return result


def _seq(app: Starlette) -> int:
    from tasklens.telemetry.live_page import live_buffer_of

    buffer = live_buffer_of(app)
    assert buffer is not None
    buffer.drain()
    assert len(buffer.tasks) == 1000, "the buffer should be full"
    return buffer.seq


def report(result: dict[str, Any], rounds: int, requests: dict[str, int], tasks: int) -> str:
    us = result["per_task_us"]
    lines = [
        "# Live page: cost per task when nobody looks",
        "",
        f"{rounds} rounds alternating the apps, {tasks} tasks per request, "
        f"{requests['async']} (async) / {requests['sync']} (sync) requests; best round. "
        "µs per task (slope: the request's own cost left out).",
        "",
        "| app | async µs/task | sync µs/task |",
        "|---|---|---|",
    ]
    for name in APPS:
        lines.append(f"| {name} | {us[name]['async']:.2f} | {us[name]['sync']:.2f} |")
    lines.append("")
    for kind in KINDS:
        page = us["tasklens+page"][kind] - us["tasklens"][kind]
        ratio = us["tasklens+page"][kind] / us["tasklens"][kind]
        alone = us["bare+buffer"][kind] - us["bare"][kind]
        lines.append(
            f"- {kind}: the page adds {page:+.2f} µs per task to the defaults "
            f"(tasklens+page / tasklens = {ratio:.3f}x); its recording alone "
            f"(bare+buffer - bare) {alone:+.2f} µs."
        )
    lines += [
        f"- One look: `api/live` answers in {result['api_live_full_ms']:.2f} ms with the buffer "
        f"full (1,000 tasks serialised), {result['api_live_nothing_new_ms']:.2f} ms when "
        "nothing is new (the page asks once a second while visible).",
    ]
    n = result["names_500"]
    lines += [
        f"- 500 task names of 100 characters, buffer full: a poll with nothing new (the page "
        f"sends its summary's token) {n['idle_ms']:.2f} ms, {n['idle_kb']:.1f} KB; with the "
        f"summary (top 50 names) {n['summary_ms']:.2f} ms, {n['summary_kb']:.1f} KB; a read "
        f"holds the buffer's lock {n['lock_median_ms']:.2f} ms (median, max "
        f"{n['lock_max_ms']:.2f} ms).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.case_live_page", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks, not numbers")
    args = parser.parse_args(argv)
    rounds, tasks = (1, 20) if args.smoke else (9, 100)
    # The smoke run still fills the buffer (the page API's figure needs 1,000 tasks).
    requests = {"async": 60, "sync": 30} if args.smoke else {"async": 200, "sync": 50}
    result = asyncio.run(measure(rounds, requests, tasks))
    text = report(result, rounds, requests, tasks)
    print(text)
    print(json.dumps(result))
    if not args.smoke:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "live_page.md").write_text(text)
        print(f"wrote {RESULTS / 'live_page.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
