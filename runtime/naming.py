"""Stable, readable, bounded task names (the ``task`` label).

A task is named ``module.qualname`` of its callable. ``functools.partial`` and bound methods
are named after the function they wrap, callable objects after their class, classes after
themselves, builtin methods after their owner's type (``sqlite3.Connection.close``), and
lambdas get their line number (``shop.views.<lambda>:42``) so two lambdas of a module stay
apart. The number of distinct names is bounded (:class:`LabelLimit`): past ``limit``, new
callables fold into ``other`` and one warning is logged, so a bug cannot explode the label
cardinality of every metric.

The cache holds no per-request object: it is keyed by code objects and name strings, never
by the callable (a bound method of a request's connection, an instance, a class made in the
endpoint), and it is bounded in size too.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import types
from collections.abc import Callable
from typing import Any

from starlette._utils import is_async_callable

from .outcomes import EXECUTOR_EVENT_LOOP, EXECUTOR_THREAD_POOL, OTHER_TASK, Executor

DEFAULT_NAME_LIMIT = 500
#: The folded label value of every bounded label (``task``, ``exception``).
OTHER = OTHER_TASK

_logger = logging.getLogger("tasklens.runtime")
_BUILTINS = (
    types.BuiltinFunctionType,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
)


class LabelLimit:
    """At most ``limit`` distinct values of one label; later new values fold into ``other``
    with one warning. Holds only the value strings."""

    def __init__(
        self, label: str, what: str, option: str, limit: int, logger: logging.Logger = _logger
    ) -> None:
        self.label = label
        self.what = what
        self.option = option
        self.limit = limit
        self._logger = logger
        self._seen: set[str] = set()
        self._warned = False
        self._lock = threading.Lock()

    def admit(self, value: str) -> str:
        """``value``, or ``other`` once ``limit`` other values were admitted."""
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
            if not self._warned:
                self._warned = True
                self._logger.warning(
                    "tasklens: more than %d distinct %s (%s); %s and later new ones are "
                    "recorded as %s=%r",
                    self.limit,
                    self.what,
                    self.option,
                    value,
                    self.label,
                    OTHER,
                )
            return OTHER

    def values(self) -> set[str]:
        """Distinct values admitted so far."""
        return set(self._seen)


class TaskIdentity:
    """What every task of one callable shares: its label values and cached observer data."""

    __slots__ = ("cache", "code_function", "code_namespace", "executor", "is_async", "name")

    def __init__(
        self,
        name: str,
        is_async: bool,
        code_function: str,
        code_namespace: str,
        executor: Executor | None = None,
    ) -> None:
        self.name = name
        self.is_async = is_async
        self.executor: Executor = executor or (
            EXECUTOR_EVENT_LOOP if is_async else EXECUTOR_THREAD_POOL
        )
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


def _code_key(func: object, code: object) -> object:
    """Key of a function: its code object, which closures and lambdas made in a loop share,
    plus module and qualname, which ``functools.wraps`` copies: functions decorated by the
    same decorator share the wrapper's code and must not share a name."""
    return code, getattr(func, "__module__", None), getattr(func, "__qualname__", None)


def _builtin_name(target: Any) -> tuple[str, str]:
    """(module, qualname) of a builtin; a method is named after the class defining it
    (``conn.close`` -> ``sqlite3``, ``Connection.close``, for a subclass's instance too)."""
    owner = getattr(target, "__self__", None)
    if owner is None:
        owner = getattr(target, "__objclass__", None)
    name = str(getattr(target, "__name__", ""))
    if owner is None or isinstance(owner, types.ModuleType):
        module = getattr(target, "__module__", None) or getattr(owner, "__name__", "builtins")
        return str(module), str(getattr(target, "__qualname__", name))
    cls = owner if isinstance(owner, type) else type(owner)
    defining = next((k for k in cls.__mro__ if name in k.__dict__), cls)
    return str(defining.__module__), f"{defining.__qualname__}.{name}"


def _key(target: Any) -> object:
    """Cache key of an unwrapped callable: code objects and strings, never the callable."""
    code = getattr(target, "__code__", None)
    if code is not None:
        return _code_key(target, code)
    if isinstance(target, type):
        return ("class", target.__module__, target.__qualname__)
    if isinstance(target, _BUILTINS):
        return ("builtin", *_builtin_name(target))
    cls = type(target)
    call = getattr(_call_method(cls), "__code__", None)
    return ("instance", cls.__module__, cls.__qualname__, call)


def _describe(target: Any) -> tuple[str, str, str]:
    """(name, code.function, code.namespace) of an unwrapped callable."""
    if isinstance(target, type):
        return f"{target.__module__}.{target.__qualname__}", target.__qualname__, target.__module__
    if isinstance(target, _BUILTINS):
        module, qualname = _builtin_name(target)
        return f"{module}.{qualname}", qualname, module
    code = getattr(target, "__code__", None)
    if code is not None:
        module = str(getattr(target, "__module__", None) or "builtins")
        qualname = str(getattr(target, "__qualname__", None) or getattr(target, "__name__", ""))
        name = f"{module}.{qualname}"
        if getattr(target, "__name__", "") == "<lambda>":
            name = f"{name}:{code.co_firstlineno}"
        return name, qualname, module
    cls = type(target)
    return f"{cls.__module__}.{cls.__qualname__}", f"{cls.__qualname__}.__call__", cls.__module__


def display_name(func: Callable[..., Any]) -> str:
    """``module.qualname`` of a callable, unbounded: for error messages."""
    return _describe(_target(func))[0]


def _never_runs(target: Any) -> str | None:
    """What a callable is when Starlette would count it run without running its body:
    calling a (async) generator function only makes a generator."""
    call = target if _is_function(target) else _call_method(type(target))
    if inspect.isasyncgenfunction(call):
        return "an async generator function"
    if inspect.isgeneratorfunction(call):
        return "a generator function"
    return None


def _call_method(cls: type) -> object:
    """The ``__call__`` of a class, inherited ones included."""
    return next((k.__dict__["__call__"] for k in cls.__mro__ if "__call__" in k.__dict__), None)


def _is_function(target: object) -> bool:
    return isinstance(target, (type, *_BUILTINS)) or hasattr(target, "__code__")


class TaskNamer:
    """Maps callables to cached :class:`TaskIdentity` objects, bounded in distinct names."""

    def __init__(self, limit: int = DEFAULT_NAME_LIMIT) -> None:
        self.limit = limit
        self._labels = LabelLimit("task", "task names", "max_task_names", limit)
        self._by_key: dict[object, TaskIdentity] = {}
        self._by_name: dict[tuple[str, bool], TaskIdentity] = {}
        #: Keys beyond this are not cached (dynamic code objects, unbounded class names).
        self.max_keys = max(1024, 4 * limit)
        self._lock = threading.Lock()

    def identify(self, func: Callable[..., Any]) -> TaskIdentity:
        """The identity of ``func``; for plain functions a few attribute reads and a dict hit.

        Raises ``TypeError`` for a callable whose body would never run (a generator
        function), naming it."""
        code = getattr(func, "__code__", None)
        hit = self._by_key.get(_code_key(func, code) if code is not None else _key(_target(func)))
        return hit if hit is not None else self._new_identity(func)

    def _new_identity(self, func: Callable[..., Any]) -> TaskIdentity:
        target = _target(func)
        name, function, namespace = _describe(target)
        never = _never_runs(target)
        if never is not None:
            raise TypeError(
                f"add_task() got {never}, {name}: calling it only creates a generator, its "
                "body would never run; iterate it inside a regular (async) def task"
            )
        is_async = is_async_callable(func)
        name = self._labels.admit(name)
        with self._lock:
            identity = self._by_name.get((name, is_async))
            if identity is None:
                identity = TaskIdentity(name, is_async, function, namespace)
                self._by_name[(name, is_async)] = identity
            if len(self._by_key) < self.max_keys:
                self._by_key[_key(target)] = identity
            return identity

    def identify_named(
        self, name: str, executor: Executor, code_function: str, code_namespace: str
    ) -> TaskIdentity:
        """The identity of a task known by name rather than by a local callable (a Celery
        task: ``name`` is its registered name, the same in the web process and on workers);
        bounded by the same ``max_task_names``. Runs in the thread pool (not async)."""
        key = ("named", name, executor)
        hit = self._by_key.get(key)
        if hit is not None:
            return hit
        label = self._labels.admit(name)
        with self._lock:
            identity = self._by_name.get((f"{executor}:{label}", False))
            if identity is None:
                identity = TaskIdentity(label, False, code_function, code_namespace, executor)
                self._by_name[(f"{executor}:{label}", False)] = identity
            if len(self._by_key) < self.max_keys:
                self._by_key[key] = identity
            return identity

    def names(self) -> set[str]:
        """Distinct task names seen so far (``other`` not included)."""
        return self._labels.values()

    def cache_size(self) -> int:
        """Entries of the callable cache (bounded by :attr:`max_keys`)."""
        return len(self._by_key)
