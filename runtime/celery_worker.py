"""The worker side of Celery: Celery's task signals, turned into the runtime's lifecycle.

On a worker Celery calls the task function; tasklens listens to ``task_prerun`` (enqueued
and started, in the thread that runs the task), ``task_failure`` and ``task_postrun``
(finished) and announces them to the same observers as in the web process, with executor
``celery``. The queue time runs from ``add_task`` in the web process (the message's
``tasklens_enqueued_ns`` header; without it, from the start) and the task's parent is the
trace context the message carries (the web process's send span).

A pool process killed mid-task never finishes its task: the worker's ``/metrics`` keeps its
counters and drops its live gauges, so the task shows as lost (``job_instance:bgtask_lost:sum``),
as for a killed gunicorn worker; the main process's ``task_failure`` for it
(``WorkerLostError``) is not counted again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter

from .celery_send import (
    HEADER_ENQUEUED_NS,
    MESSAGING_SYSTEM,
    celery_identity,
    require_celery_app,
)
from .outcomes import (
    EXECUTOR_CELERY,
    OUTCOME_CANCELLED,
    OUTCOME_FAILURE,
    OUTCOME_SUCCESS,
    Outcome,
)
from .record import Message, TaskRecord
from .runner import TaskRunner

_logger = logging.getLogger("tasklens.runtime")
#: Celery states -> outcomes; a state not listed (RETRY, a custom one) is a failure.
_OUTCOMES: dict[str, Outcome] = {
    "SUCCESS": OUTCOME_SUCCESS,
    "IGNORED": OUTCOME_SUCCESS,
    "FAILURE": OUTCOME_FAILURE,
    "REVOKED": OUTCOME_CANCELLED,
}


class _RequestGetter(Getter[Any]):
    """Reads W3C headers from a Celery request: custom message headers appear as request
    attributes (and, depending on the Celery version, in ``request.headers``)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = _header(carrier, key)
        return None if value is None else [value]

    def keys(self, carrier: Any) -> list[str]:
        return []


def _header(request: Any, key: str) -> str | None:
    value = getattr(request, key, None)
    if value is None:
        headers = getattr(request, "headers", None)
        if isinstance(headers, dict):
            value = headers.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Iterable) and not isinstance(value, bytes):
        return ",".join(str(v) for v in value)
    return str(value)


_GETTER = _RequestGetter()


class CeleryWorkerRuntime:
    """Connects to Celery's signals and records every task of ``app`` through ``runner``."""

    def __init__(self, app: Any, runner: TaskRunner) -> None:
        require_celery_app(app, "instrument_worker()")
        self.app = app
        self.runner = runner
        #: (task id, thread) -> the running record and what finishing it restores: the same
        #: message may run twice at once in a threads pool (a redelivery).
        self._records: dict[tuple[str, int], tuple[TaskRecord, Any]] = {}
        self._errors: dict[tuple[str, int], BaseException] = {}
        self._lock = threading.Lock()
        self._connected = False

    def connect(self) -> None:
        """Listen to the task signals (once)."""
        if self._connected:
            return
        from celery import signals

        signals.task_prerun.connect(self._prerun, weak=False)
        signals.task_failure.connect(self._failure, weak=False)
        signals.task_postrun.connect(self._postrun, weak=False)
        self._connected = True

    def disconnect(self) -> None:
        from celery import signals

        signals.task_prerun.disconnect(self._prerun)
        signals.task_failure.disconnect(self._failure)
        signals.task_postrun.disconnect(self._postrun)
        self._connected = False

    def running(self) -> int:
        """Tasks started and not finished in this process."""
        return len(self._records)

    # --- signals ------------------------------------------------------------------------
    def _ours(self, task: Any) -> bool:
        return task is not None and getattr(task, "name", None) in self.app.tasks

    def _prerun(
        self, sender: Any = None, task_id: str | None = None, task: Any = None, **kwargs: Any
    ) -> None:
        task = task or sender
        if task_id is None or not self._ours(task):
            return
        try:
            request = task.request
            parent: Context = propagate.extract(request, getter=_GETTER)
            enqueued = _header(request, HEADER_ENQUEUED_NS)
            delivery = getattr(request, "delivery_info", None) or {}
            queue = delivery.get("routing_key") if isinstance(delivery, dict) else None
            record = self.runner.receive(
                celery_identity(self.runner.namer, task, EXECUTOR_CELERY),
                task,
                tuple(kwargs.get("args") or ()),
                dict(kwargs.get("kwargs") or {}),
                parent,
                _int_or_none(enqueued),
            )
            record.message = Message(MESSAGING_SYSTEM, "process", task_id, queue)
            token = self.runner.start_external(record)
            with self._lock:
                self._records[(task_id, threading.get_ident())] = (record, token)
        except Exception:  # never in the way of the task itself
            _logger.exception("tasklens: recording the start of %s failed", task_id)

    def _failure(
        self,
        sender: Any = None,
        task_id: str | None = None,
        exception: BaseException | None = None,
        **_: Any,
    ) -> None:
        if task_id is None or not self._ours(sender):
            return
        key = (task_id, threading.get_ident())
        with self._lock:
            if key in self._records and exception is not None:
                self._errors[key] = exception

    def _postrun(
        self,
        sender: Any = None,
        task_id: str | None = None,
        state: str | None = None,
        retval: Any = None,
        **_: Any,
    ) -> None:
        if task_id is None:
            return
        key = (task_id, threading.get_ident())
        with self._lock:
            entry = self._records.pop(key, None)
            error = self._errors.pop(key, None)
        if entry is None:
            return
        record, token = entry
        outcome = _OUTCOMES.get(str(state), OUTCOME_FAILURE)
        if outcome == OUTCOME_FAILURE and error is None and isinstance(retval, BaseException):
            error = retval
        if outcome != OUTCOME_FAILURE:
            error = None
        self.runner.finish_external(record, outcome, error, token)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
