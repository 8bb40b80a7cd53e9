"""Structured logs: trace and task fields on every line, and the log observer.

Every line logged inside a task, through structlog or stdlib logging, carries ``trace_id``,
``span_id`` and ``task``. ``configure_logging`` sets structlog up (JSON lines off a TTY,
the console renderer on one) only if the user has not; otherwise it adds the task-context
processor to the user's chain and changes nothing else.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from opentelemetry import trace

from tasklens.runtime import TaskObserver, TaskRecord, current_task

from . import contract as c
from .redact import describe_args

EventDict = MutableMapping[str, Any]
_factory_installed = False


def _task_fields() -> dict[str, str]:
    fields: dict[str, str] = {}
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        fields["trace_id"] = format(ctx.trace_id, "032x")
        fields["span_id"] = format(ctx.span_id, "016x")
    task = current_task()
    if task is not None:
        fields["task"] = task.name
    return fields


def add_task_context(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: add ``trace_id``, ``span_id`` and ``task`` where known."""
    for key, value in _task_fields().items():
        event_dict.setdefault(key, value)
    return event_dict


def _add_record_context(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """For stdlib records rendered by structlog: copy the fields the record factory set."""
    record = event_dict.get("_record")
    for key in ("trace_id", "span_id", "task"):
        value = getattr(record, key, "")
        if value:
            event_dict.setdefault(key, value)
    return event_dict


def install_record_factory() -> None:
    """Give every stdlib ``LogRecord`` ``trace_id``, ``span_id`` and ``task`` attributes
    (empty strings outside a trace or task), usable as ``%(trace_id)s`` in any formatter."""
    global _factory_installed
    if _factory_installed:
        return
    _factory_installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        fields = _task_fields()
        record.trace_id = fields.get("trace_id", "")
        record.span_id = fields.get("span_id", "")
        record.task = fields.get("task", "")
        return record

    logging.setLogRecordFactory(factory)


def configure_logging(level: int = logging.INFO, json_lines: bool | None = None) -> None:
    """Configure structlog and the root logger unless the user already did."""
    install_record_factory()
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    if structlog.is_configured():
        processors = list(structlog.get_config()["processors"])
        if add_task_context not in processors:
            processors.insert(max(len(processors) - 1, 0), add_task_context)
            structlog.configure(processors=processors)
    else:
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                add_task_context,
                timestamper,
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )
    root = logging.getLogger()
    if root.handlers:
        return  # the user's handlers stay; the record factory gives them the fields
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer() if json_lines else structlog.dev.ConsoleRenderer()
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                _add_record_context,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if json_lines else _identity,
                renderer,
            ],
        )
    )
    root.addHandler(handler)
    root.setLevel(level)


def _identity(_: Any, __: str, event_dict: EventDict) -> EventDict:
    return event_dict


class LogObserver(TaskObserver):
    """Logs each failure once (error level, traceback, task fields), and every cancelled,
    abandoned or loop-blocking task by name."""

    def __init__(self, record_args: bool = False) -> None:
        self._log = structlog.get_logger("tasklens")
        self._record_args = record_args

    def finished(self, task: TaskRecord) -> None:
        outcome = task.outcome
        if task.loop_blocked:
            self._log.warning(
                "background task blocked the event loop",
                task=task.name,
                step_seconds=round(task.loop_blocking or 0.0, 6),
            )
        if outcome == c.OUTCOME_SUCCESS:
            return
        fields: dict[str, Any] = {"task": task.name, "outcome": outcome}
        if self._record_args:
            fields["task_args"], fields["task_kwargs"] = describe_args(
                task.args, task.kwargs, task.func
            )
        if outcome == c.OUTCOME_FAILURE and task.error is not None:
            self._log.error(
                "background task failed",
                error_type=c.error_type(task.error),
                duration_seconds=round(task.duration_seconds, 6),
                exc_info=task.error,
                **fields,
            )
        elif outcome in (c.OUTCOME_CANCELLED, c.OUTCOME_ABANDONED, c.OUTCOME_SKIPPED):
            self._log.warning(f"background task {outcome}", **fields)
