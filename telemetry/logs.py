"""Structured logs: trace and task fields on every line, and the log observer.

Every line logged inside a task, through structlog or stdlib logging, carries ``trace_id``,
``span_id`` and ``task``. ``configure_logging`` sets structlog up (JSON lines off a TTY,
the console renderer on one) only if the user has not; otherwise it adds the task-context
processor to the user's chain and changes nothing else.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from opentelemetry import trace

from tasklens.runtime import TaskObserver, TaskRecord, current_task

from . import contract as c
from .redact import REDACTED, describe_args, is_sensitive, scrub, task_failure

EventDict = MutableMapping[str, Any]
_factory_installed = False
FAILED = "background task failed"


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


_NOT_SCRUBBED = frozenset({"level", "logger", "timestamp", "trace_id", "span_id", "task"})


def scrub_secrets(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact URL passwords and sensitive key values in every string
    field (``HTTP Request: GET ...?api_key=[redacted]``), and whole fields whose key is
    sensitive (``password=...``); see :mod:`tasklens.telemetry.redact`."""
    for key, value in event_dict.items():
        if key in _NOT_SCRUBBED or key.startswith("_") or value is None:
            continue
        if is_sensitive(key):
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            event_dict[key] = scrub(value)
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
    """Configure structlog and the root logger unless the user already did.

    Root handlers of the app's own (``logging.basicConfig()``, a ``dictConfig``) stay; their
    formatter's ``%(message)s`` of a structlog line is text (:class:`StructlogMessage`),
    not a dict repr."""
    install_record_factory()
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    if structlog.is_configured():
        processors = list(structlog.get_config()["processors"])
        missing = [p for p in (add_task_context, scrub_secrets) if p not in processors]
        if missing:
            # Before the renderer (or wrap_for_formatter), the chain's last step.
            at = max(len(processors) - 1, 0)
            processors[at:at] = missing
            structlog.configure(processors=processors)
    else:
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                add_task_context,
                timestamper,
                wrap_for_formatter,
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
                scrub_secrets,
                renderer,
            ],
        )
    )
    root.addHandler(handler)
    root.setLevel(level)


class StructlogMessage(dict[str, Any]):
    """The event dict structlog hands to stdlib ``logging`` (``record.msg``): still a dict
    for structlog's ``ProcessorFormatter`` and the OTel logging handler, and text for any
    other formatter (``str()``, what ``%(message)s`` reads): :func:`render_plain` after
    ``format_exc_info`` and :func:`scrub_secrets`, on a copy."""

    __slots__ = ()

    def __str__(self) -> str:
        fields = structlog.processors.format_exc_info(None, "", dict(self))
        return render_plain(None, "", scrub_secrets(None, "", fields))


def wrap_for_formatter(logger: Any, name: str, event_dict: EventDict) -> Any:
    """structlog's ``ProcessorFormatter.wrap_for_formatter``, the dict as a
    :class:`StructlogMessage`."""
    args, kwargs = structlog.stdlib.ProcessorFormatter.wrap_for_formatter(logger, name, event_dict)
    return (StructlogMessage(args[0]),), kwargs


def render_plain(_: Any, __: str, event_dict: EventDict) -> str:
    """structlog renderer for stdlib handlers with their own formatter: ``event key=value
    ...``, then the formatted traceback (``exception``) on the following lines, as
    ``logging`` prints ``logger.exception(...)``; level, logger and time are the formatter's."""
    event = str(event_dict.pop("event", ""))
    exception = event_dict.pop("exception", None)
    for key in ("level", "logger", "timestamp"):
        event_dict.pop(key, None)
    fields = " ".join(f"{key}={_plain_value(value)}" for key, value in event_dict.items())
    line = f"{event} {fields}" if fields else event
    return f"{line}\n{exception}" if exception else line


def _plain_value(value: object) -> str:
    text = str(value)
    return (
        text
        if isinstance(value, str) and text and not any(c.isspace() for c in text)
        else repr(value)
    )


def _identity(_: Any, __: str, event_dict: EventDict) -> EventDict:
    return event_dict


class LogObserver(TaskObserver):
    """Logs each failure once (error level, scrubbed traceback, task fields), and every
    cancelled, abandoned or loop-blocking task by name.

    The traceback goes in the ``exception`` field already formatted (by
    :func:`~tasklens.telemetry.redact.describe_failure`, without file reads on the event
    loop), not as ``exc_info``: a renderer cannot then print an unscrubbed message or read
    source files on the loop. If the structlog chain raises anyway, the line is written as
    JSON to stderr with ``log_fallback`` naming what failed: a failure is never unlogged."""

    def __init__(self, record_args: bool = False) -> None:
        self._log = structlog.get_logger("tasklens")
        self._record_args = record_args

    def finished(self, task: TaskRecord) -> None:
        try:
            self._log_outcome(task)
        except Exception as exc:  # building the line failed: a minimal one still goes out
            if task.outcome != c.OUTCOME_SUCCESS:
                event = (
                    FAILED
                    if task.outcome == c.OUTCOME_FAILURE
                    else f"background task {task.outcome}"
                )
                error = "" if task.error is None else c.error_type(task.error)
                fields = {"task": task.name, "outcome": task.outcome, "error_type": error}
                _write_fallback("error", event, fields, exc)

    def _log_outcome(self, task: TaskRecord) -> None:
        if task.loop_blocked:
            self._emit(
                "warning",
                "background task blocked the event loop",
                {"task": task.name, "step_seconds": round(task.loop_blocking or 0.0, 6)},
            )
        outcome = task.outcome
        if outcome == c.OUTCOME_SUCCESS:
            return
        fields: dict[str, Any] = {"task": task.name, "outcome": outcome}
        fallbacks = 0
        if self._record_args:
            described = describe_args(task.args, task.kwargs, task.func)
            fields["task_args"], fields["task_kwargs"] = described.args, described.kwargs
            fallbacks = described.fallbacks
        failure = task_failure(task)
        if outcome == c.OUTCOME_FAILURE and failure is not None:
            fallbacks += failure.fallbacks
            if fallbacks:
                fields["unrepresentable"] = fallbacks
            fields.update(
                error_type=failure.type,
                duration_seconds=round(task.duration_seconds, 6),
                exception=failure.stacktrace.rstrip("\n"),
            )
            self._emit("error", FAILED, fields)
        elif outcome in (c.OUTCOME_CANCELLED, c.OUTCOME_ABANDONED, c.OUTCOME_SKIPPED):
            if fallbacks:
                fields["unrepresentable"] = fallbacks
            self._emit("warning", f"background task {outcome}", fields)

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        try:
            getattr(self._log, level)(event, **fields)
        except Exception as exc:
            _write_fallback(level, event, fields, exc)


def _write_fallback(level: str, event: str, fields: dict[str, Any], exc: Exception) -> None:
    """The line the structlog chain could not render, as plain JSON on stderr."""
    line = {"event": event, "level": level, **fields, **_task_fields()}
    line["log_fallback"] = c.error_type(exc)
    try:
        text = json.dumps(line, default=str)
    except Exception:  # a field that cannot even be str()-ed
        text = json.dumps({k: v for k, v in line.items() if isinstance(v, str | int | float)})
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except Exception:  # stderr closed: nowhere left to write
        pass
