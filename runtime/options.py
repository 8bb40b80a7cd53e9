"""The keyword options of :func:`runtime.instrument`, validated once at instrument time."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from runtime.naming import DEFAULT_NAME_LIMIT

ON_ERROR_CHOICES = ("continue", "stop")
MODE_CHOICES = ("inline", "detached")


@dataclass(frozen=True)
class RuntimeOptions:
    """What ``instrument(app, ...)`` accepts; see the README table for each option."""

    #: Path that serves Prometheus metrics from the app; None: not mounted.
    metrics_path: str | None = "/metrics"
    #: "continue": a failing task is recorded and the later tasks of the response still run.
    #: "stop": Starlette's behaviour (the exception propagates, later tasks are skipped).
    on_error: str = "continue"
    #: Put (truncated, redacted) task arguments into spans and logs.
    record_args: bool = False
    #: "inline": tasks run inside the request's ASGI cycle, as in Starlette.
    #: "detached": the cycle ends when the response is sent; tasks run in the lifespan's group.
    mode: str = "inline"
    #: Detached mode: response batches running at once (a response's tasks run in order, in one).
    max_concurrency: int = 100
    #: Detached mode: seconds lifespan shutdown lets submitted batches run before cancelling them.
    shutdown_timeout: float = 30.0
    #: Threads for sync tasks (a limiter of their own, apart from sync endpoints).
    threadpool_size: int = 16
    #: Distinct task names before new ones fold into task="other".
    max_task_names: int = DEFAULT_NAME_LIMIT
    #: An async task step (between two awaits) longer than this is reported; None: off.
    loop_block_threshold: float | None = 0.1
    #: Seconds between event-loop lag samples; None: no sampler.
    loop_lag_interval: float | None = 0.5
    #: Wrap the app in OpenTelemetry's ASGI middleware when nothing else traces requests.
    request_spans: bool = True

    def __post_init__(self) -> None:
        path = self.metrics_path
        checks = [
            ("metrics_path", path is None or (isinstance(path, str) and path.startswith("/")),
             "a path starting with '/', or None"),
            ("on_error", self.on_error in ON_ERROR_CHOICES, "'continue' or 'stop'"),
            ("record_args", isinstance(self.record_args, bool), "True or False"),
            ("mode", self.mode in MODE_CHOICES, "'inline' or 'detached'"),
            ("max_concurrency", _positive_int(self.max_concurrency), "a positive int"),
            ("shutdown_timeout", _non_negative(self.shutdown_timeout), "seconds >= 0"),
            ("threadpool_size", _positive_int(self.threadpool_size), "a positive int"),
            ("max_task_names", _positive_int(self.max_task_names), "a positive int"),
            ("loop_block_threshold", _positive_or_none(self.loop_block_threshold),
             "seconds > 0, or None"),
            ("loop_lag_interval", _positive_or_none(self.loop_lag_interval),
             "seconds > 0, or None"),
            ("request_spans", isinstance(self.request_spans, bool), "True or False"),
        ]  # fmt: skip
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(
                    f"instrument(): invalid {name}={getattr(self, name)!r}; expected {expected}"
                )

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> RuntimeOptions:
        """Build options, naming any unknown keyword."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"instrument() got unknown option(s) {', '.join(unknown)}; "
                f"known options: {', '.join(sorted(known))}"
            )
        return cls(**kwargs)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _positive_or_none(value: object) -> bool:
    return value is None or _positive(value)


def _non_negative(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
