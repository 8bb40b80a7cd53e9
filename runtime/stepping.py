"""Drive a coroutine step by step, inside the task's own context, timing its longest
uninterrupted event-loop step."""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from contextvars import Context
from time import perf_counter
from typing import Any


@types.coroutine
def resume_steps(
    coro: Coroutine[Any, Any, Any], yielded: Any, longest: list[float], context: Context
) -> Generator[Any, Any, Any]:
    """Await the rest of ``coro``, whose first step the caller ran (it yielded ``yielded``
    after ``longest[0]`` seconds); ``longest[0]`` ends up as its longest step.

    Each ``send``/``throw`` into the coroutine runs it, inside ``context``, until its next
    suspension, which is exactly the time it held the event loop; what it yields is passed
    through unchanged. (The runner runs the first step itself, so a task that never
    suspends costs nothing.) Running each step in ``context`` is what isolates a task's
    context variables without an asyncio task per background task."""
    run = context.run
    send, throw = coro.send, coro.throw
    peak = longest[0]
    try:
        while True:
            try:
                value = yield yielded
                error = None
            except GeneratorExit:
                run(coro.close)
                raise
            except BaseException as exc:  # delivered by the event loop (e.g. cancellation)
                value = None
                error = exc
            start = perf_counter()
            try:
                yielded = run(send, value) if error is None else run(throw, error)
            except StopIteration as stop:
                step = perf_counter() - start
                if step > peak:
                    peak = step
                return stop.value
            except BaseException:
                step = perf_counter() - start
                if step > peak:
                    peak = step
                raise
            step = perf_counter() - start
            if step > peak:
                peak = step
    finally:
        longest[0] = peak
