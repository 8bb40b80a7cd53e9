"""Task names (the ``task`` label): stable, readable, bounded (``runtime/naming.py``)."""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tasklens.runtime.naming import TaskNamer
from tasklens.runtime.options import RuntimeOptions
from tasklens.runtime.runner import TaskRunner
from tasklens.telemetry.metrics import MetricsObserver, TaskMetrics

M = __name__


def send_email(to: str, subject: str = "") -> None: ...


async def send_push(user_id: int) -> None: ...


class Mailer:
    def send(self, to: str) -> None: ...

    async def send_async(self, to: str) -> None: ...

    @classmethod
    def build(cls) -> None: ...

    @staticmethod
    def helper() -> None: ...


class Job:
    def __call__(self, n: int) -> None: ...


class AsyncJob:
    async def __call__(self, n: int) -> None: ...


def retry(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper


def async_retry(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await func(*args, **kwargs)

    return wrapper


@retry
def charge_card(order_id: int) -> None: ...


@retry
def refund_card(order_id: int) -> None: ...


@async_retry
async def sync_inventory(order_id: int) -> None: ...


@async_retry
async def sync_prices(order_id: int) -> None: ...


LAMBDA_A = lambda: None  # noqa: E731
LAMBDA_B = lambda: None  # noqa: E731
LAMBDA_A_LINE = LAMBDA_A.__code__.co_firstlineno
LAMBDA_B_LINE = LAMBDA_B.__code__.co_firstlineno


def make_closure(n: int) -> Callable[[], None]:
    def closure() -> None:
        return None

    return closure


CASES: list[tuple[str, Callable[..., Any], str, bool, str]] = [
    # id, callable, name, is_async, executor
    ("function", send_email, f"{M}.send_email", False, "thread_pool"),
    ("async function", send_push, f"{M}.send_push", True, "event_loop"),
    ("partial", functools.partial(send_email, "a@b.c"), f"{M}.send_email", False, "thread_pool"),
    ("nested partial", functools.partial(functools.partial(send_push, 1)), f"{M}.send_push",
     True, "event_loop"),
    ("bound method", Mailer().send, f"{M}.Mailer.send", False, "thread_pool"),
    ("async bound method", Mailer().send_async, f"{M}.Mailer.send_async", True, "event_loop"),
    ("classmethod", Mailer.build, f"{M}.Mailer.build", False, "thread_pool"),
    ("staticmethod", Mailer.helper, f"{M}.Mailer.helper", False, "thread_pool"),
    ("partial of a method", functools.partial(Mailer().send, "x"), f"{M}.Mailer.send", False,
     "thread_pool"),
    ("callable object", Job(), f"{M}.Job", False, "thread_pool"),
    ("async callable object", AsyncJob(), f"{M}.AsyncJob", True, "event_loop"),
    ("partial of an async callable object", functools.partial(AsyncJob(), 1), f"{M}.AsyncJob",
     True, "event_loop"),
    ("lambda", LAMBDA_A, f"{M}.<lambda>:{LAMBDA_A_LINE}", False, "thread_pool"),
    ("other lambda", LAMBDA_B, f"{M}.<lambda>:{LAMBDA_B_LINE}", False, "thread_pool"),
    ("closure", make_closure(1), f"{M}.make_closure.<locals>.closure", False, "thread_pool"),
    ("decorated", charge_card, f"{M}.charge_card", False, "thread_pool"),
    ("decorated, same decorator", refund_card, f"{M}.refund_card", False, "thread_pool"),
    ("async decorated", sync_inventory, f"{M}.sync_inventory", True, "event_loop"),
    ("async decorated, same decorator", sync_prices, f"{M}.sync_prices", True, "event_loop"),
    ("builtin", print, "builtins.print", False, "thread_pool"),
    ("builtin method", [].clear, "builtins.list.clear", False, "thread_pool"),
    ("builtin method of a C class", sqlite3.connect(":memory:").close,
     "sqlite3.Connection.close", False, "thread_pool"),
    ("class", Mailer, f"{M}.Mailer", False, "thread_pool"),
    ("partial of a class", functools.partial(Job), f"{M}.Job", False, "thread_pool"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("func", "name", "is_async", "executor"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_readable_names(func: Callable[..., Any], name: str, is_async: bool, executor: str) -> None:
    identity = TaskNamer().identify(func)
    assert identity.name == name
    assert identity.is_async is is_async
    assert identity.executor == executor


def test_names_are_stable_and_distinct_in_one_namer() -> None:
    """One namer sees every case (the cache must not mix callables up), twice."""
    namer = TaskNamer()
    first = [namer.identify(case[1]) for case in CASES]
    again = [namer.identify(case[1]) for case in CASES]
    assert [i.name for i in first] == [case[2] for case in CASES]
    assert [i is j for i, j in zip(first, again, strict=True)] == [True] * len(CASES)
    # Fresh objects of the same callable share the identity (closures made in a loop,
    # new bound methods, new partials, new instances of a callable class).
    assert namer.identify(make_closure(2)) is namer.identify(make_closure(3))
    assert namer.identify(Mailer().send) is namer.identify(Mailer().send)
    assert namer.identify(functools.partial(send_email, "x")) is namer.identify(send_email)
    assert namer.identify(Job()) is namer.identify(Job())
    assert namer.identify(AsyncJob()) is namer.identify(functools.partial(AsyncJob(), 2))
    # One name per distinct callable: the four partials share their callable's name.
    assert len(namer.names()) == len({case[2] for case in CASES})


def test_fold_into_other_beyond_the_limit(caplog: pytest.LogCaptureFixture) -> None:
    namer = TaskNamer(limit=3)
    funcs = [send_email, send_push, Job(), AsyncJob(), charge_card, LAMBDA_A]
    with caplog.at_level(logging.WARNING, logger="tasklens.runtime"):
        names = [namer.identify(f).name for f in funcs]
        names += [namer.identify(f).name for f in funcs]  # the same again: no new warning
    assert names == [f"{M}.send_email", f"{M}.send_push", f"{M}.Job", "other", "other",
                     "other"] * 2  # fmt: skip
    # Async-ness is kept apart inside "other": the runtime must still await async tasks.
    assert namer.identify(AsyncJob()).is_async is True
    assert namer.identify(charge_card).is_async is False
    warnings = [r for r in caplog.records if r.name == "tasklens.runtime"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert warnings[0].getMessage() == (
        f"tasklens: more than 3 distinct task names (max_task_names); {M}.AsyncJob and later "
        "new ones are recorded as task='other'"
    )


def test_runner_records_folded_tasks_as_other(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    runner = TaskRunner(RuntimeOptions(max_task_names=2), [MetricsObserver(TaskMetrics(registry))])
    with caplog.at_level(logging.WARNING, logger="tasklens.runtime"):
        for func in (send_email, send_push, Job(), AsyncJob(), send_email, AsyncJob()):
            runner.enqueue(func, (), {})
    enqueued = {
        s.labels["task"]: s.value
        for f in registry.collect()
        for s in f.samples
        if s.name == "bgtask_enqueued_total"
    }
    assert enqueued == {f"{M}.send_email": 2, f"{M}.send_push": 1, "other": 3}
    assert len([r for r in caplog.records if r.name == "tasklens.runtime"]) == 1
