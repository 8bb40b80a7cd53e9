"""Memory: bytes per pending task, and bytes left behind per finished task.

``python -m bench.case_memory pending VARIANT --tasks N``: inside a request, ``tracemalloc``
measures what adding N async no-op tasks to one ``BackgroundTasks`` allocates (everything
that stays alive until the tasks run: task objects, tasklens records, the request span's
enqueue events), and ``/proc/self/statm`` the resident-set growth. Then the tasks run.

``python -m bench.case_memory retained SCENARIO --tasks N``: tasklens only. After a warm-up,
the memory still allocated after N finished tasks and after 10 × N finished tasks (spans
flushed, garbage collected); the growth between the two, per task, is what each finished
task leaves behind: ~0 when label children, names and span data are cached per callable
and nothing is kept per task. ``same-function`` adds the same function every time;
``distinct-partials`` a new ``functools.partial`` object of one function every time (a new
callable object per task, one task name).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import tracemalloc
from typing import Any

from starlette.background import BackgroundTasks
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench import apps

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


async def _argument_task(value: int) -> None:
    return None


def _pending_route(n: int, out: dict[str, Any]) -> Route:
    async def endpoint(request: Request) -> Response:
        tasks = BackgroundTasks()
        func = apps.noop_async
        gc.collect()
        rss = _rss()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(n):
            tasks.add_task(func)
        allocated = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        out["bytes_per_task"] = allocated / n
        out["rss_bytes_per_task"] = (_rss() - rss) / n
        return Response(b"", background=tasks)

    return Route("/pending", endpoint)


def _retained_route(scenario: str) -> Route:
    async def endpoint(request: Request) -> Response:
        n = int(request.query_params["n"])
        tasks = BackgroundTasks()
        if scenario == "same-function":
            for _ in range(n):
                tasks.add_task(apps.noop_async)
        else:
            for i in range(n):
                tasks.add_task(functools.partial(_argument_task, i))
        return Response(b"", background=tasks)

    return Route("/retained", endpoint)


async def _pending(variant_name: str, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"tasks": n}
    variant = apps.build(variant_name, [_pending_route(n, out)])
    async with apps.Lifespan(variant.app) as lifespan:
        await apps.request(variant.app, "/pending", lifespan.state)
    return out


async def _retained(scenario: str, n: int) -> dict[str, Any]:
    variant = apps.build("tasklens", [_retained_route(scenario)])
    per_request = 100

    async def run(total: int) -> int:
        for _ in range(total // per_request):
            await apps.request(variant.app, f"/retained?n={per_request}", lifespan.state)
        variant.spans_exported()  # flush the span queue
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    async with apps.Lifespan(variant.app) as lifespan:
        await run(2 * per_request)  # warm-up: first-time caches, label children
        tracemalloc.start()
        start = await run(0)
        after_n = await run(n)
        after_11n = await run(10 * n)
        tracemalloc.stop()
    return {
        "tasks": n,
        "after_n_bytes": after_n - start,
        "after_11n_bytes": after_11n - start,
        "growth_bytes_per_task": (after_11n - after_n) / (10 * n),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.case_memory")
    parser.add_argument("what", choices=("pending", "retained"))
    parser.add_argument("name", help="variant (pending) or scenario (retained)")
    parser.add_argument("--tasks", type=int, default=100_000)
    args = parser.parse_args()
    if args.what == "pending":
        result = asyncio.run(_pending(args.name, args.tasks))
    else:
        result = asyncio.run(_retained(args.name, args.tasks))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
