"""Detached mode: tasks run in a task group owned by the app's lifespan, not the request.

The request's ASGI cycle ends once the response is sent. At shutdown the executor stops
taking work, waits up to ``shutdown_timeout`` for running tasks, then cancels them; tasks
still waiting for a slot are finished as ``abandoned``, cancelled ones as ``cancelled``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

import anyio
import anyio.lowlevel

from .options import RuntimeOptions
from .outcomes import OUTCOME_ABANDONED
from .record import TaskRecord

#: Runs a response's tasks in order (the runner's ``run_batch``).
RunBatch = Callable[[Sequence[TaskRecord]], Awaitable[None]]
#: Finishes never-started tasks as abandoned (the runner's ``abandon``).
Abandon = Callable[[Sequence[TaskRecord]], None]

_logger = logging.getLogger("tasklens.runtime")


class DetachedExecutor:
    """A bounded task group for the batches of detached responses."""

    def __init__(self, run_batch: RunBatch, abandon: Abandon, options: RuntimeOptions) -> None:
        self._run_batch = run_batch
        self._abandon = abandon
        self.shutdown_timeout = options.shutdown_timeout
        self._slots = anyio.Semaphore(options.max_concurrency)
        self._group = anyio.create_task_group()
        self._idle = anyio.Event()
        self._batches = 0
        self._running = 0
        self.accepting = False
        self.outcomes: Counter[str] = Counter()

    async def __aenter__(self) -> DetachedExecutor:
        await self._group.__aenter__()
        self.accepting = True
        return self

    def submit(self, records: list[TaskRecord]) -> None:
        """Schedule a response's tasks; returns at once."""
        self._batches += 1
        self._group.start_soon(self._run, records)

    async def _run(self, records: list[TaskRecord]) -> None:
        try:
            async with self._slots:
                # A slot freed by the shutdown cancellation can be handed to a waiter before
                # its own cancellation arrives: it must not start a task then.
                await anyio.lowlevel.checkpoint_if_cancelled()
                self._running += 1
                try:
                    await self._run_batch(records)
                finally:
                    self._running -= 1
        except anyio.get_cancelled_exc_class() as exc:
            self._abandon(records)
            if self._group.cancel_scope.cancel_called:
                raise
            # A task raised CancelledError itself: recorded as cancelled; re-raising it here
            # would tear down the task group, i.e. every other detached task.
            _contained(exc)
        except Exception:
            pass  # on_error="stop": already recorded and logged by the observers
        except BaseException as exc:
            # KeyboardInterrupt/SystemExit raised by a task: recorded as a failure. Inline, it
            # propagates to the server, which logs it and keeps serving; here it would escape
            # the event loop and stop the whole server, so it ends with its batch instead.
            _contained(exc)
        finally:
            for record in records:
                self.outcomes[record.outcome or OUTCOME_ABANDONED] += 1
            self._batches -= 1
            if self._batches == 0 and not self.accepting:
                self._idle.set()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self.accepting = False
        if self._batches:
            _logger.info(
                "tasklens: shutdown, waiting up to %.1fs for %d running and %d queued task "
                "batch(es)",
                self.shutdown_timeout,
                self._running,
                self._batches - self._running,
            )
            with anyio.move_on_after(self.shutdown_timeout):
                await self._idle.wait()
            if self._batches:
                running, queued = self._running, self._batches - self._running
                self._group.cancel_scope.cancel()
                _logger.warning(
                    "tasklens: shutdown timeout reached, cancelling %d running and "
                    "abandoning %d queued task batch(es)",
                    running,
                    queued,
                )
        result = await self._group.__aexit__(exc_type, exc, tb)
        if self.outcomes:
            _logger.info(
                "tasklens: detached tasks at shutdown: %s",
                ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items())),
            )
        return result


def _contained(exc: BaseException) -> None:
    _logger.error(
        "tasklens: a detached background task raised %s; its batch ended there (the task is "
        "recorded, later tasks of its response are abandoned) and the server keeps running",
        type(exc).__name__,
    )
