"""A periodic sampler of event-loop lag: how late a sleep of ``interval`` wakes up."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import anyio


class LoopLagSampler:
    """Sleeps ``interval`` in a loop; the oversleep is the lag every other task also suffered."""

    def __init__(self, interval: float, sinks: Sequence[Callable[[float], None]]) -> None:
        self.interval = interval
        self.sinks = tuple(sinks)
        self._running = True

    async def run(self) -> None:
        while self._running:
            before = time.perf_counter()
            await anyio.sleep(self.interval)
            lag = max(0.0, time.perf_counter() - before - self.interval)
            for sink in self.sinks:
                sink(lag)

    def stop(self) -> None:
        self._running = False
