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
    #: Detached mode: tasks running at once.
    max_concurrency: int = 100
    #: Detached mode: seconds lifespan shutdown waits for running tasks before cancelling them.
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
        _check(
            self.metrics_path is None
            or (isinstance(self.metrics_path, str) and self.metrics_path.startswith("/")),
            "metrics_path",
            self.metrics_path,
            "a path starting with '/', or None",
        )
        _check(self.on_error in ON_ERROR_CHOICES, "on_error", self.on_error, "'continue' or 'stop'")
        _check(isinstance(self.record_args, bool), "record_args", self.record_args, "True or False")
        _check(self.mode in MODE_CHOICES, "mode", self.mode, "'inline' or 'detached'")
        _check(_positive_int(self.max_concurrency), "max_concurrency", self.max_concurrency,
               "a positive int")  # fmt: skip
        _check(_non_negative(self.shutdown_timeout), "shutdown_timeout", self.shutdown_timeout,
               "a number of seconds >= 0")  # fmt: skip
        _check(_positive_int(self.threadpool_size), "threadpool_size", self.threadpool_size,
               "a positive int")  # fmt: skip
        _check(_positive_int(self.max_task_names), "max_task_names", self.max_task_names,
               "a positive int")  # fmt: skip
        _check(self.loop_block_threshold is None or _positive(self.loop_block_threshold),
               "loop_block_threshold", self.loop_block_threshold, "seconds > 0, or None")  # fmt: skip
        _check(self.loop_lag_interval is None or _positive(self.loop_lag_interval),
               "loop_lag_interval", self.loop_lag_interval, "seconds > 0, or None")  # fmt: skip
        _check(isinstance(self.request_spans, bool), "request_spans", self.request_spans,
               "True or False")  # fmt: skip

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


def _check(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ValueError(f"instrument(): invalid {name}={value!r}; expected {expected}")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _non_negative(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
