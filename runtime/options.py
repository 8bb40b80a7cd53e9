"""The runtime's keyword options of ``tasklens.instrument``, validated once at instrument time."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, Literal

from .naming import DEFAULT_NAME_LIMIT

OnError = Literal["continue", "stop"]
Mode = Literal["inline", "detached"]
ON_ERROR_CHOICES: tuple[OnError, ...] = ("continue", "stop")
MODE_CHOICES: tuple[Mode, ...] = ("inline", "detached")

#: (option name, is the value valid, what a valid value is)
Check = tuple[str, bool, str]


@dataclass(frozen=True)
class RuntimeOptions:
    """How tasks run; see the README's option table for each."""

    #: "continue": a failing task is recorded and the later tasks of the response still run.
    #: "stop": Starlette's behaviour (the exception propagates, later tasks are skipped).
    on_error: OnError = "continue"
    #: "inline": tasks run inside the request's ASGI cycle, as in Starlette.
    #: "detached": the cycle ends when the response is sent; tasks run in the lifespan's group.
    mode: Mode = "inline"
    #: Detached mode: response batches running at once (a response's tasks run in order, in one).
    max_concurrency: int = 100
    #: Detached mode: seconds lifespan shutdown lets submitted batches run before cancelling them.
    shutdown_timeout: float = 30.0
    #: Threads for sync tasks (a limiter of their own, apart from sync endpoints).
    threadpool_size: int = 16
    #: Backpressure: while more than this many tasks are enqueued and not finished, a new
    #: request waits before the app sees it (until half the bound); None: no bound.
    max_pending: int | None = None
    #: Distinct task names before new ones fold into task="other".
    max_task_names: int = DEFAULT_NAME_LIMIT
    #: An async task step (between two awaits) longer than this marks the task
    #: ``loop_blocked``; None: steps are not measured.
    loop_block_threshold: float | None = 0.1
    #: Seconds between event-loop lag samples; None: no sampler.
    loop_lag_interval: float | None = 0.5
    #: A ``celery.Celery`` app: tasks of it given to ``add_task`` are sent to its broker
    #: (executor ``broker``) instead of running here; None: called inline, as Starlette does.
    celery: Any = None

    def __post_init__(self) -> None:
        validate(self, [
            ("on_error", self.on_error in ON_ERROR_CHOICES, "'continue' or 'stop'"),
            ("mode", self.mode in MODE_CHOICES, "'inline' or 'detached'"),
            ("max_concurrency", positive_int(self.max_concurrency), "a positive int"),
            ("shutdown_timeout", non_negative(self.shutdown_timeout), "seconds >= 0"),
            ("threadpool_size", positive_int(self.threadpool_size), "a positive int"),
            ("max_pending", self.max_pending is None or positive_int(self.max_pending),
             "a positive int, or None"),
            ("max_task_names", positive_int(self.max_task_names), "a positive int"),
            ("loop_block_threshold", positive_or_none(self.loop_block_threshold),
             "seconds > 0, or None"),
            ("loop_lag_interval", positive_or_none(self.loop_lag_interval),
             "seconds > 0, or None"),
        ])  # fmt: skip
        if self.celery is not None:
            from .celery_send import require_celery_app

            require_celery_app(self.celery)

    @property
    def detached(self) -> bool:
        """Tasks run in the lifespan's task group, after the response's cycle ended."""
        return self.mode == "detached"


def validate(options: object, checks: Iterable[Check]) -> None:
    """Raise ``ValueError`` naming the first invalid option and what it expects."""
    for name, ok, expected in checks:
        if not ok:
            raise ValueError(
                f"instrument(): invalid {name}={getattr(options, name)!r}; expected {expected}"
            )


def split_options(kwargs: dict[str, Any], *classes: type) -> list[dict[str, Any]]:
    """Split keyword options among options dataclasses (by field name), naming any unknown."""
    groups = [frozenset(f.name for f in fields(cls)) for cls in classes]
    known = frozenset().union(*groups)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(
            f"instrument() got unknown option(s) {', '.join(unknown)}; "
            f"known options: {', '.join(sorted(known))}"
        )
    return [{k: v for k, v in kwargs.items() if k in group} for group in groups]


def positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def positive_or_none(value: object) -> bool:
    return value is None or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    )


def non_negative(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
