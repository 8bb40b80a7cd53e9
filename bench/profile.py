"""Profile one task-cost case: ``python -m bench.profile VARIANT {async,sync,mixed}``.

Runs the same requests as ``bench.case_tasks`` (``mixed``: the end-to-end endpoint, two
tasks per request) under pyinstrument (``pip install pyinstrument``), or cProfile with
``--cprofile``, and prints the profile. ``--hooks`` (tasklens variants) instead times each
observer hook in place, unprofiled: µs per task spent in each of them. ``--observers
spans,metrics,logs`` (or ``none``) runs tasklens with only those observers, and ``--slope``
prints the unprofiled µs per task as ``bench.case_tasks`` measures it. Not part of
``python -m bench``: a tool to find where the time goes before changing the hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import pstats
import sys
import time
from collections.abc import Callable
from typing import Any

from bench import apps
from bench.case_tasks import _timed


def _time_hooks(variant: apps.Variant) -> collections.Counter[str]:
    """Wrap every observer hook of the variant's runner with a timer; returns the totals."""
    runner = variant.app.state.tasklens[0]
    spent: collections.Counter[str] = collections.Counter()
    clock = time.perf_counter

    def timed(label: str, hook: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> None:
            start = clock()
            hook(*args)
            spent[label] += clock() - start

        return call

    for attr in ("_on_enqueued", "_on_started", "_on_finished"):
        hooks = getattr(runner, attr)
        labels = [f"{type(h.__self__).__name__}.{h.__name__}" for h in hooks]
        setattr(runner, attr, tuple(timed(lb, h) for lb, h in zip(labels, hooks, strict=True)))
    return spent


def _observers(spec: str | None) -> list[Any] | None:
    if spec is None:
        return None
    from tasklens.telemetry.logs import LogObserver
    from tasklens.telemetry.metrics import MetricsObserver
    from tasklens.telemetry.spans import SpanObserver

    make = {
        "spans": lambda: SpanObserver(),
        "metrics": MetricsObserver,
        "logs": lambda: LogObserver(),
    }
    return [make[name]() for name in spec.split(",") if name != "none"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("variant")
    parser.add_argument("kind", choices=("async", "sync", "mixed"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--hooks", action="store_true", help="time observer hooks in place")
    parser.add_argument("--interval", type=float, default=0.001)
    parser.add_argument("--observers", help="tasklens variants: e.g. spans,metrics or none")
    parser.add_argument("--slope", action="store_true", help="µs per task, unprofiled")
    args = parser.parse_args()
    variant = apps.build(args.variant, observers=_observers(args.observers))
    path = "/" if args.kind == "mixed" else f"/{args.kind}/{args.tasks}"

    async def run() -> None:
        async with apps.Lifespan(variant.app) as lifespan:
            await _timed(variant, lifespan.state, path, max(1, args.requests // 4))  # warm-up
            tasks = args.requests * (2 if args.kind == "mixed" else args.tasks)
            if args.slope:
                if args.kind == "mixed":
                    raise SystemExit("--slope needs async or sync")
                empty = f"/{args.kind}/0"
                full = min([await _timed(variant, lifespan.state, path, args.requests)
                            for _ in range(5)])  # fmt: skip
                base = min([await _timed(variant, lifespan.state, empty, args.requests)
                            for _ in range(5)])  # fmt: skip
                print(f"{(full - base) / tasks * 1e6:8.2f} µs per task (slope, best of 5)")
                return
            if args.hooks:
                spent = _time_hooks(variant)
                seconds = await _timed(variant, lifespan.state, path, args.requests)
                print(f"{seconds / tasks * 1e6:8.2f} µs per task in all (hooks timed)")
                for label, total in sorted(spent.items(), key=lambda kv: -kv[1]):
                    print(f"{total / tasks * 1e6:8.2f} µs per task in {label}")
                print(f"{sum(spent.values()) / tasks * 1e6:8.2f} µs per task in observers")
                return
            if args.cprofile:
                profile = cProfile.Profile()
                profile.enable()
                await _timed(variant, lifespan.state, path, args.requests)
                profile.disable()
                pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(40)
                return
            from pyinstrument import Profiler

            profiler = Profiler(interval=args.interval, async_mode="disabled")
            profiler.start()
            seconds = await _timed(variant, lifespan.state, path, args.requests)
            profiler.stop()
            print(profiler.output_text(unicode=False, color=False, show_all=False))
            print(f"{seconds / tasks * 1e6:.2f} µs per task (profiled)")

    asyncio.run(run())


if __name__ == "__main__":
    main()
