"""Telemetry's keyword options of ``tasklens.instrument``, validated once at instrument time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request

from tasklens.runtime.options import positive_int, validate

from .metrics import DEFAULT_EXCEPTION_LIMIT


@dataclass(frozen=True)
class TelemetryOptions:
    """What the observers and the app's telemetry endpoints do; see the README's option table."""

    #: Path that serves Prometheus metrics from the app; None: not mounted.
    metrics_path: str | None = "/metrics"
    #: Who may read ``metrics_path``: called with the request (sync or async) before any
    #: rendering; false -> 401 (403 when the request carried an Authorization header).
    #: None: the path is public.
    metrics_auth: Callable[[Request], bool | Awaitable[bool]] | None = None
    #: Distinct ``exception`` label values (classes) before new ones fold into "other".
    max_exception_types: int = DEFAULT_EXCEPTION_LIMIT
    #: Put (truncated, redacted) task arguments into spans and logs.
    record_args: bool = False
    #: Wrap the app in OpenTelemetry's ASGI middleware when nothing else traces requests.
    request_spans: bool = True

    def __post_init__(self) -> None:
        path = self.metrics_path
        validate(self, [
            ("metrics_path", path is None or (isinstance(path, str) and path.startswith("/")),
             "a path starting with '/', or None"),
            ("metrics_auth", self.metrics_auth is None or callable(self.metrics_auth),
             "a callable taking the Request and returning a bool (or an awaitable of one), "
             "or None"),
            ("metrics_auth", self.metrics_auth is None or path is not None,
             "None when metrics_path=None (no path is served to protect)"),
            ("max_exception_types", positive_int(self.max_exception_types), "a positive int"),
            ("record_args", isinstance(self.record_args, bool), "True or False"),
            ("request_spans", isinstance(self.request_spans, bool), "True or False"),
        ])  # fmt: skip
