"""Log records over OTLP (``OTEL_LOGS_EXPORTER``): a LoggerProvider and the OpenTelemetry
logging handler on the root logger, so every stdlib and structlog line — the task failure
line with its exception, lines logged inside tasks — goes out with its trace and span ids."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

from opentelemetry import _logs
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from .export import log_exporter


def _handler(provider: LoggerProvider) -> logging.Handler:
    """opentelemetry-instrumentation-logging's handler where installed, else the SDK's
    (deprecated since SDK 1.40 in favour of the former, same behaviour)."""
    try:
        from opentelemetry.instrumentation.logging.handler import (  # type: ignore[import-not-found]
            LoggingHandler,
        )
    except ImportError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from opentelemetry.sdk._logs import LoggingHandler

            handler: logging.Handler = LoggingHandler(logger_provider=provider)
    else:
        handler = LoggingHandler(logger_provider=provider)
    # The exporters' own warnings ("Failed to export logs batch") must not feed the queue
    # they failed to empty.
    handler.addFilter(lambda record: not record.name.startswith("opentelemetry"))
    return _StructlogRecords(handler)


#: Keys of a structlog event dict that the log record carries already (severity, logger,
#: time, trace and span ids) or that only structlog's formatter uses.
_SKIPPED = frozenset(
    {"event", "level", "logger", "timestamp", "exception", "exc_info", "trace_id", "span_id"}
)
#: LogRecord attributes structlog's ``wrap_for_formatter`` adds for its formatter.
_STRUCTLOG_EXTRA = ("_logger", "_name", "_record", "_from_structlog")


class _StructlogRecords(logging.Handler):
    """Hands records to the OpenTelemetry handler, a structlog event dict (what structlog's
    stdlib integration puts in ``record.msg``) flattened first, on a copy (the application's
    own handlers get the record untouched): body = the event, its scalar fields as
    attributes, a rendered traceback as ``exception.type`` / ``exception.message`` /
    ``exception.stacktrace``."""

    def __init__(self, inner: logging.Handler) -> None:
        super().__init__()
        self.inner = inner

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, dict):
            record = _flatten(record, record.msg)
        self.inner.handle(record)

    def flush(self) -> None:
        self.inner.flush()


def _flatten(record: logging.LogRecord, event: dict[str, Any]) -> logging.LogRecord:
    fields = {k: v for k, v in record.__dict__.items() if k not in _STRUCTLOG_EXTRA}
    copy = logging.makeLogRecord(fields)
    copy.msg, copy.args = str(event.get("event", "")), None
    for key, value in event.items():
        if key not in _SKIPPED and isinstance(value, (str, int, float, bool)):
            setattr(copy, key, value)
    exc_info = event.get("exc_info")
    if isinstance(exc_info, BaseException):
        copy.exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    elif isinstance(event.get("exception"), str):  # already rendered by the chain
        stacktrace: str = event["exception"]
        last = stacktrace.rstrip().rsplit("\n", 1)[-1]
        kind, _, message = last.partition(": ")
        setattr(copy, "exception.type", str(event.get("error_type", kind)))
        setattr(copy, "exception.message", message)
        setattr(copy, "exception.stacktrace", stacktrace)
    return copy


def global_logger_provider() -> Any:
    """The LoggerProvider the application (or ``opentelemetry-instrument``) set, or None."""
    provider = _logs.get_logger_provider()
    return None if type(provider).__name__ == "ProxyLoggerProvider" else provider


class LogExport:
    """The provider and root-logger handler :func:`start` installed; ``shutdown`` undoes."""

    def __init__(self, provider: LoggerProvider, handler: logging.Handler) -> None:
        self.provider = provider
        self.handler = handler

    def force_flush(self) -> None:
        self.provider.force_flush()

    def shutdown(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        self.provider.shutdown()


def start(
    names: Sequence[str], resource: Resource, endpoint: str | None, protocol: str | None
) -> LogExport | None:
    """Export log records through the exporters ``names``; None when a LoggerProvider was
    set earlier (it is used as it is, with whatever handler its owner attached)."""
    if not names or global_logger_provider() is not None:
        return None
    provider = LoggerProvider(resource=resource)
    for name in names:
        provider.add_log_record_processor(
            BatchLogRecordProcessor(log_exporter(endpoint, protocol, name))
        )
    _logs.set_logger_provider(provider)
    handler = _handler(provider)
    logging.getLogger().addHandler(handler)
    return LogExport(provider, handler)
