"""Profile one task-cost case: ``python -m bench.profile VARIANT {async,sync|mixed}``.

Runs the same requests as ``bench.case_tasks`` (``mixed``: the end-to-end endpoint, two
tasks per request) under pyinstrument (``pip install pyinstrument``), or cProfile with
``--cprofile``, and prints the profile. Not part of ``python -m bench``: a tool to find
where the time goes before changing the hot path.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys

from bench import apps
from bench.case_tasks import _timed


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("variant")
    parser.add_argument("kind", choices=("async", "sync", "mixed"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--interval", type=float, default=0.001)
    args = parser.parse_args()
    variant = apps.build(args.variant)
    path = "/" if args.kind == "mixed" else f"/{args.kind}/{args.tasks}"

    async def run() -> None:
        async with apps.Lifespan(variant.app) as lifespan:
            await _timed(variant, lifespan.state, path, max(1, args.requests // 4))  # warm-up
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
            tasks = args.requests * (2 if args.kind == "mixed" else args.tasks)
            print(f"{seconds / tasks * 1e6:.2f} µs per task (profiled)")

    asyncio.run(run())


if __name__ == "__main__":
    main()
