"""Telemetry's keyword options of ``tasklens.instrument``, validated once at instrument time."""

from __future__ import annotations

from dataclasses import dataclass

from tasklens.runtime.options import validate


@dataclass(frozen=True)
class TelemetryOptions:
    """What the observers and the app's telemetry endpoints do; see the README's option table."""

    #: Path that serves Prometheus metrics from the app; None: not mounted.
    metrics_path: str | None = "/metrics"
    #: Put (truncated, redacted) task arguments into spans and logs.
    record_args: bool = False
    #: Wrap the app in OpenTelemetry's ASGI middleware when nothing else traces requests.
    request_spans: bool = True

    def __post_init__(self) -> None:
        path = self.metrics_path
        validate(self, [
            ("metrics_path", path is None or (isinstance(path, str) and path.startswith("/")),
             "a path starting with '/', or None"),
            ("record_args", isinstance(self.record_args, bool), "True or False"),
            ("request_spans", isinstance(self.request_spans, bool), "True or False"),
        ])  # fmt: skip
