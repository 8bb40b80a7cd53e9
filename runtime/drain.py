"""One queue that worker threads drain: the sync tasks of every response, on asyncio.

With a token limiter and one thread hand-off per batch (``anyio.to_thread.run_sync``), a
worker gets the GIL from a busy loop only at a switch interval (~5 ms) and the result waits
behind the loop's ready queue (~6 ms): a 1 µs task held its token ~11 ms, 16 tokens carried
~1,400 sync tasks/s, and past that request cycles piled up (docs/performance.md, "Sustained
load"). Here ``size`` long-lived threads take the next job themselves (no return to the
loop per job) and completions reach the loop in bursts: one ``call_soon_threadsafe`` per
burst. The concurrency bound is the number of threads, held only while a job runs.

A drain belongs to one event loop (a TestClient without ``with`` makes a loop per request:
the runner makes a drain per loop and closes the previous one).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

import anyio

#: Called with (busy threads, threads allowed) whenever the number of busy threads changes.
BusyReport = Callable[[int, int], None]


class Job:
    """One hand-off: a function the thread calls with the job itself (so it can read
    ``cancelled`` between the tasks of a batch), and where its result goes."""

    __slots__ = ("args", "cancelled", "error", "fn", "future", "result", "scope")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], future: asyncio.Future[Any]):
        self.fn = fn
        self.args = args
        self.future = future
        #: Set on the loop when a native cancellation reached the awaiting task.
        self.cancelled = False
        #: The awaiting task's cancel scope outside the shield (anyio's asyncio backend).
        self.scope: Any = None
        self.result: Any = None
        self.error: BaseException | None = None

    def cancel_called(self) -> bool:
        """The awaiting task was cancelled (read from the thread, as anyio's
        ``from_thread.check_cancelled`` reads the host task's scopes)."""
        if self.cancelled:
            return True
        scope = self.scope
        while scope is not None:
            if scope.cancel_called:
                return True
            if scope.shield:
                return False
            scope = getattr(scope, "_parent_scope", None)
        return False


class SyncDrain:
    """Worker threads taking jobs from one queue, delivering results to one loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, report: BusyReport) -> None:
        self.loop = loop
        self.size = size
        self._report = report
        self._queue: SimpleQueue[Job | None] = SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads blocked on the queue
        self._queued = 0  # jobs put and not taken yet
        self._busy = 0
        self._done: list[Job] = []
        self._delivery_scheduled = False

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(job, *args)`` in a worker thread and return its result; ``fn`` calls
        ``job.cancel_called()`` between two tasks."""
        job = Job(fn, args, self.loop.create_future())
        with self._lock:
            self._queued += 1
            spawn = self._queued > self._idle and self._threads < self.size
            if spawn:
                self._threads += 1
        self._queue.put(job)
        if spawn:
            threading.Thread(target=self._work, name="tasklens-sync", daemon=True).start()
        try:
            # As to_thread.run_sync without abandon_on_cancel: the wait is shielded from
            # cancel scopes (the thread reads them between two tasks, as check_cancelled
            # does); a native task.cancel() goes through, and the thread starts no more.
            with anyio.CancelScope(shield=True) as shield:
                job.scope = getattr(shield, "_parent_scope", None)
                await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            raise
        if job.error is not None:
            raise job.error
        return job.result

    def close(self) -> None:
        """Let every thread end once the queue is empty (the loop is gone or going)."""
        with self._lock:
            threads = self._threads
        for _ in range(threads):
            self._queue.put(None)

    def _work(self) -> None:
        lock, get = self._lock, self._queue.get
        job: Job | None = None
        while True:
            job = None  # an idle thread keeps no finished job (its records, their context)
            with lock:
                self._idle += 1
            job = get()
            with lock:
                self._idle -= 1
                if job is None:
                    self._threads -= 1
                    return
                self._queued -= 1
                self._busy += 1
                self._report(self._busy, self.size)
            try:
                job.result = job.fn(job, *job.args)
            except BaseException as exc:  # re-raised on the loop
                job.error = exc
            with lock:
                self._busy -= 1
                self._report(self._busy, self.size)
                self._done.append(job)
                if self._delivery_scheduled:
                    continue
                self._delivery_scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop is closed: nothing awaits the job any more
                with lock:
                    self._done.clear()
                    self._delivery_scheduled = False

    def _deliver(self) -> None:
        with self._lock:
            done, self._done, self._delivery_scheduled = self._done, [], False
        for job in done:
            if not job.future.done():
                job.future.set_result(None)
