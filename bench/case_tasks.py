"""Per-task cost of no-op background tasks through the ASGI app (one variant per process).

``python -m bench.case_tasks VARIANT --requests R --tasks K --reps N`` prints one JSON line:
for each kind (async, sync) the best time of R requests with K tasks each and of R requests
with no task, and the slope ``(t_K - t_0) / (R * K)``: the cost of one more task, without
the per-request cost (routing, request spans) that does not depend on the number of tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from bench import apps


async def _timed(variant: apps.Variant, state: dict[str, Any], path: str, requests: int) -> float:
    app = variant.app
    start = time.perf_counter()
    for _ in range(requests):
        await apps.request(app, path, state)
    return time.perf_counter() - start


async def measure(variant: apps.Variant, kinds: list[str], requests: int, tasks: int, reps: int):
    results: dict[str, Any] = {}
    async with apps.Lifespan(variant.app) as lifespan:
        state = lifespan.state
        for kind in kinds:
            full, empty = f"/{kind}/{tasks}", f"/{kind}/0"
            await _timed(variant, state, full, max(1, requests // 4))  # warm-up
            with_tasks: list[float] = []
            without: list[float] = []
            for _ in range(reps):
                without.append(await _timed(variant, state, empty, requests))
                with_tasks.append(await _timed(variant, state, full, requests))
            # Spans made per task: exported spans of K-task requests minus those of empty ones.
            before = variant.spans_exported()
            await _timed(variant, state, full, requests)
            middle = variant.spans_exported()
            await _timed(variant, state, empty, requests)
            after = variant.spans_exported()
            n = requests * tasks
            per_task = [(t - min(without)) / n * 1e6 for t in with_tasks]
            results[kind] = {
                "requests": requests,
                "tasks_per_request": tasks,
                "reps": reps,
                "us_per_task": (min(with_tasks) - min(without)) / n * 1e6,
                "us_per_task_median": statistics.median(per_task),
                "us_per_task_incl_request": min(with_tasks) / n * 1e6,
                "us_per_request_empty": min(without) / requests * 1e6,
                "spans_per_task": ((middle - before) - (after - middle)) / n,
            }
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.case_tasks")
    parser.add_argument("variant")
    parser.add_argument("--kinds", default="async,sync")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    variant = apps.build(args.variant)
    kinds = args.kinds.split(",")
    results = asyncio.run(measure(variant, kinds, args.requests, args.tasks, args.reps))
    print(json.dumps({"variant": args.variant, "results": results}))


if __name__ == "__main__":
    main()
