"""Stable, readable, bounded task names (the ``task`` label).

A task is named ``module.qualname`` of its callable. ``functools.partial`` and bound methods
are named after the function they wrap, callable objects after their class, and lambdas get
their line number (``shop.views.<lambda>:42``) so two lambdas of a module stay apart. The
number of distinct names is bounded: past ``limit``, new callables fold into ``other`` and
one warning is logged, so a bug cannot explode the label cardinality of every metric.
"""

from __future__ import annotations

import functools
import logging
import threading
import types
from collections.abc import Callable
from typing import Any

from starlette._utils import is_async_callable

from .outcomes import EXECUTOR_EVENT_LOOP, EXECUTOR_THREAD_POOL, OTHER_TASK, Executor

DEFAULT_NAME_LIMIT = 500

_logger = logging.getLogger("tasklens.runtime")


class TaskIdentity:
    """What every task of one callable shares: its label values and cached observer data."""

    __slots__ = ("cache", "code_function", "code_namespace", "executor", "is_async", "name")

    def __init__(self, name: str, is_async: bool, code_function: str, code_namespace: str) -> None:
        self.name = name
        self.is_async = is_async
        self.executor: Executor = EXECUTOR_EVENT_LOOP if is_async else EXECUTOR_THREAD_POOL
        self.code_function = code_function
        self.code_namespace = code_namespace
        #: Observers cache their per-task objects here (label children, span names).
        self.cache: dict[object, Any] = {}

    def __repr__(self) -> str:
        return f"<TaskIdentity {self.name} {self.executor}>"


def _target(func: Callable[..., Any]) -> Any:
    """What a task really calls: partials and bound methods stripped."""
    while isinstance(func, functools.partial):
        func = func.func
    if isinstance(func, types.MethodType):
        func = func.__func__
    return func


def _is_function(target: object) -> bool:
    return isinstance(target, (types.FunctionType, types.BuiltinFunctionType)) or hasattr(
        target, "__code__"
    )


def _cache_key(target: Any) -> object:
    """The identity cache key of an unwrapped callable (see :func:`_code_key`)."""
    code = getattr(target, "__code__", None)
    if code is not None:
        return _code_key(target, code)
    return target if _is_function(target) else type(target)


def _unwrap(func: Callable[..., Any]) -> tuple[object, str, str, str]:
    """Return (cache key, name, code.function, code.namespace) of a callable."""
    target = _target(func)
    if _is_function(target):
        module = str(getattr(target, "__module__", None) or "builtins")
        qualname = str(getattr(target, "__qualname__", None) or getattr(target, "__name__", target))
        name = f"{module}.{qualname}"
        code = getattr(target, "__code__", None)
        if code is not None and getattr(target, "__name__", "") == "<lambda>":
            name = f"{name}:{code.co_firstlineno}"
        return _cache_key(target), name, qualname, module
    cls = type(target)
    return (
        cls,
        f"{cls.__module__}.{cls.__qualname__}",
        f"{cls.__qualname__}.__call__",
        cls.__module__,
    )


class TaskNamer:
    """Maps callables to cached :class:`TaskIdentity` objects, bounded in distinct names."""

    def __init__(self, limit: int = DEFAULT_NAME_LIMIT) -> None:
        self.limit = limit
        self._by_key: dict[object, TaskIdentity] = {}
        self._by_name: dict[tuple[str, bool], TaskIdentity] = {}
        self._names: set[str] = set()
        self._warned = False
        self._lock = threading.Lock()

    def identify(self, func: Callable[..., Any]) -> TaskIdentity:
        """The identity of ``func``; for plain functions a few attribute reads and a dict hit."""
        code = getattr(func, "__code__", None)
        hit = self._by_key.get(
            _code_key(func, code) if code is not None else _cache_key(_target(func))
        )
        return hit if hit is not None else self._new_identity(func)

    def _new_identity(self, func: Callable[..., Any]) -> TaskIdentity:
        is_async = is_async_callable(func)
        key, name, function, namespace = _unwrap(func)
        with self._lock:
            if name not in self._names and len(self._names) >= self.limit:
                if not self._warned:
                    self._warned = True
                    _logger.warning(
                        "tasklens: more than %d distinct task names; %s and later new names "
                        "are recorded as task=%r",
                        self.limit,
                        name,
                        OTHER_TASK,
                    )
                name = OTHER_TASK
            identity = self._by_name.get((name, is_async))
            if identity is None:
                identity = TaskIdentity(name, is_async, function, namespace)
                self._by_name[(name, is_async)] = identity
                self._names.add(name)
            self._by_key[key] = identity
            return identity

    def names(self) -> set[str]:
        """Distinct task names seen so far."""
        return set(self._names)


def _code_key(func: object, code: object) -> object:
    """Key of a function: its code object, which closures and lambdas made in a loop share,
    plus module and qualname, which ``functools.wraps`` copies: functions decorated by the
    same decorator share the wrapper's code and must not share a name."""
    return code, getattr(func, "__module__", None), getattr(func, "__qualname__", None)
