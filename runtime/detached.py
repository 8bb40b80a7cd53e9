"""Detached mode: tasks run in the app's lifespan, not in the request.

The request's ASGI cycle ends once the response is sent. At shutdown the executor stops
taking work and waits up to ``shutdown_timeout`` for running batches, then cancels them;
a task still running ``CANCEL_GRACE`` seconds later (one that catches ``CancelledError``
and keeps awaiting, a sync task blocked in its thread) is abandoned: finished as
``abandoned`` and left behind, so the shutdown ends. Tasks still waiting for a slot end
``abandoned``, cancelled ones ``cancelled``. A second SIGINT/SIGTERM during the shutdown
(:class:`ShutdownSignals`) cuts the waits short.

Each batch is its own asyncio task, not a child of a task group: a task group's exit waits
for every child, which is exactly what a task that ignores cancellation never lets happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from types import FrameType, TracebackType
from typing import Any

import anyio
import anyio.lowlevel

from .options import RuntimeOptions
from .outcomes import OUTCOME_ABANDONED
from .record import TaskRecord

#: Runs a response's tasks in order (the runner's ``run_batch``).
RunBatch = Callable[[Sequence[TaskRecord]], Awaitable[None]]
#: Finishes never-started tasks as abandoned (the runner's ``abandon``).
Abandon = Callable[[Sequence[TaskRecord]], None]

#: Seconds a cancelled batch gets to end before its running task is abandoned.
CANCEL_GRACE = 0.5
#: The same after a second signal: enough for tasks that honour cancellation to end so.
FORCED_GRACE = 0.2
#: Seconds the server gets to exit by itself once the lifespan has ended with abandoned
#: tasks still running, before :func:`exit_if_stuck` ends the process.
EXIT_DELAY = 0.5
#: Exit status of that forced exit.
EXIT_STATUS = 1

_logger = logging.getLogger("tasklens.runtime")


class _Batch:
    """One response's tasks, run in their own asyncio task under their own cancel scope."""

    __slots__ = ("abandoned", "records", "running", "scope", "task")

    def __init__(self, records: list[TaskRecord]) -> None:
        self.records = records
        self.scope = anyio.CancelScope()
        self.running = False
        self.abandoned = False
        self.task: asyncio.Task[None] | None = None


class DetachedExecutor:
    """A bounded set of concurrently running batches of detached responses."""

    def __init__(self, run_batch: RunBatch, abandon: Abandon, options: RuntimeOptions) -> None:
        self._run_batch = run_batch
        self._abandon = abandon
        self.shutdown_timeout = options.shutdown_timeout
        self._slots = anyio.Semaphore(options.max_concurrency)
        self._batches: set[_Batch] = set()
        self._idle = anyio.Event()
        self._wait_scope: anyio.CancelScope | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.accepting = False
        self.forced = False
        self.outcomes: Counter[str] = Counter()
        #: Tasks abandoned while still running (their code may still be executing).
        self.stragglers = 0

    async def __aenter__(self) -> DetachedExecutor:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "tasklens: mode='detached' needs an asyncio event loop (uvicorn, hypercorn "
                "and gunicorn's uvicorn workers use one); use mode='inline' on other loops"
            ) from None
        self.accepting = True
        return self

    @property
    def _running(self) -> int:
        return sum(1 for batch in self._batches if batch.running)

    def submit(self, records: list[TaskRecord]) -> None:
        """Schedule a response's tasks; returns at once."""
        assert self._loop is not None
        batch = _Batch(records)
        self._batches.add(batch)
        batch.task = self._loop.create_task(self._run(batch))

    async def _run(self, batch: _Batch) -> None:
        records = batch.records
        try:
            with batch.scope:
                try:
                    async with self._slots:
                        # A slot freed by the shutdown cancellation can be handed to a waiter
                        # before its own cancellation arrives: it must not start a task then.
                        await anyio.lowlevel.checkpoint_if_cancelled()
                        batch.running = True
                        try:
                            await self._run_batch(records)
                        finally:
                            batch.running = False
                except anyio.get_cancelled_exc_class() as exc:
                    self._abandon(records)
                    if batch.scope.cancel_called or batch.abandoned:
                        raise  # the shutdown's: ends here, at the batch's scope
                    # A task raised CancelledError itself: recorded as cancelled; the batch
                    # ends there, the other batches go on.
                    _contained(exc)
        except Exception:
            pass  # on_error="stop": already recorded and logged by the observers
        except BaseException as exc:
            if batch.abandoned:
                raise  # left behind at shutdown: whatever ends it now is not the task's
            # KeyboardInterrupt/SystemExit raised by a task: recorded as a failure. Out of
            # this task it would stop the event loop, so it ends with its batch instead.
            _contained(exc)
        finally:
            self._done(batch)

    def _done(self, batch: _Batch) -> None:
        if batch.abandoned:
            return  # counted when it was abandoned
        for record in batch.records:
            self.outcomes[record.outcome or OUTCOME_ABANDONED] += 1
        self._batches.discard(batch)
        if not self._batches and not self.accepting:
            self._idle.set()

    def force(self) -> None:
        """Cut the shutdown's waits short (a second signal): cancel now, abandon at once."""
        self.forced = True
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    async def _wait_idle(self, seconds: float, *, forcible: bool = True) -> None:
        if forcible and self.forced:
            return
        with anyio.move_on_after(seconds) as scope:
            self._wait_scope = scope
            try:
                await self._idle.wait()
            finally:
                self._wait_scope = None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.accepting = False
        if self._batches:
            running = self._running
            _logger.info(
                "tasklens: shutdown, waiting up to %.1fs for %d running and %d queued task "
                "batch(es)",
                self.shutdown_timeout,
                running,
                len(self._batches) - running,
            )
            await self._wait_idle(self.shutdown_timeout)
        if self._batches:
            running = self._running
            for batch in self._batches:
                batch.scope.cancel()
            _logger.warning(
                "tasklens: %s, cancelling %d running and abandoning %d queued task batch(es)",
                "second signal" if self.forced else "shutdown timeout reached",
                running,
                len(self._batches) - running,
            )
            if self.forced:
                await self._wait_idle(FORCED_GRACE, forcible=False)
            else:
                await self._wait_idle(CANCEL_GRACE)
                if self.forced and self._batches:  # a second signal cut the grace short
                    await self._wait_idle(FORCED_GRACE, forcible=False)
        if self._batches:
            self._abandon_stragglers()
        if self.outcomes:
            _logger.info(
                "tasklens: detached tasks at shutdown: %s",
                ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items())),
            )

    def _abandon_stragglers(self) -> None:
        """Finish the batches that outlived their cancellation: their running task (its
        code may go on) and the rest as ``abandoned``, so the shutdown can end."""
        names: Counter[str] = Counter()
        for batch in self._batches:
            batch.abandoned = True
            names.update(
                r.name for r in batch.records if r.started_at is not None and r.outcome is None
            )
            self._abandon(batch.records)
            for record in batch.records:
                self.outcomes[record.outcome or OUTCOME_ABANDONED] += 1
        self._batches.clear()
        self.stragglers = names.total()
        _logger.error(
            "tasklens: %d task(s) still running %.2fs after cancellation (a task that catches "
            "CancelledError, or a sync task blocked in its thread), abandoned: %s",
            self.stragglers,
            FORCED_GRACE if self.forced else CANCEL_GRACE,
            ", ".join(f"{name} x{n}" for name, n in names.most_common(10)),
        )


def _contained(exc: BaseException) -> None:
    _logger.error(
        "tasklens: a detached background task raised %s; its batch ended there (the task is "
        "recorded, later tasks of its response are abandoned) and the server keeps running",
        type(exc).__name__,
    )


class ShutdownSignals:
    """During the shutdown, a further SIGINT/SIGTERM (the server handled the first one)
    runs the registered callbacks on the event loop; the server's own handler still gets
    the signal. uvicorn's second Ctrl+C only stops its wait for connections, not a lifespan
    shutdown in progress. Main thread only (where signal handlers live); else a no-op."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received = False
        self._callbacks: list[Callable[[], None]] = []
        self._previous: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in self._SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except (ValueError, OSError):  # pragma: no cover - not a signal we may handle
                continue
        self._loop = loop

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._fire, sig)
        previous = self._previous.get(sig)
        # Python's default SIGINT handler would raise KeyboardInterrupt into whatever runs:
        # the forced shutdown is what a second Ctrl+C asks for, so it is not chained.
        if callable(previous) and previous is not signal.default_int_handler:
            previous(sig, frame)

    def _fire(self, sig: int) -> None:
        if not self.received:
            _logger.warning(
                "tasklens: %s during shutdown: not waiting any longer",
                signal.Signals(sig).name,
            )
        self.received = True
        for callback in tuple(self._callbacks):
            callback()

    def on_signal(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def remove(self, callback: Callable[[], None]) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, previous)
        self._previous.clear()


def exit_if_stuck(stragglers: int) -> None:
    """Abandoned tasks still running keep a process alive after its server is done
    (asyncio's final cancellation of every task, the interpreter joining worker threads):
    end it ``EXIT_DELAY`` s from now unless it has exited by itself. Main thread only: an
    app served in a thread of a larger program (a test) is left alone."""
    if not stragglers or threading.current_thread() is not threading.main_thread():
        return

    def end() -> None:
        time.sleep(EXIT_DELAY)
        _logger.error(
            "tasklens: %d abandoned task(s) still running after the shutdown; exiting the "
            "process (status %d)",
            stragglers,
            EXIT_STATUS,
        )
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed stream
                stream.flush()
        os._exit(EXIT_STATUS)

    threading.Thread(target=end, name="tasklens-exit", daemon=True).start()
