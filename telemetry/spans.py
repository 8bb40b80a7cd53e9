"""The span observer: one span per task, child of the request that added it
(``task_trace="child"``) or the root of a trace of its own linked to it (``"link"``).

INTERNAL for tasks run in the process; a Celery task's send is a PRODUCER span
(``bgtask send <task>``) and its run on a worker a CONSUMER span, child of the send."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import types
from collections.abc import Callable
from typing import Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, Tracer, TracerProvider

from tasklens.runtime import TaskObserver, TaskRecord

from . import contract as c
from .redact import describe_args, task_failure
from .requests import PROVIDER_KEY
from .setup import span_limits

_INTERNAL = SpanKind.INTERNAL
#: Span kind and name prefix per executor (messaging: the send and the worker's run).
_KINDS = {c.EXECUTOR_BROKER: SpanKind.PRODUCER, c.EXECUTOR_CELERY: SpanKind.CONSUMER}
_PREFIXES = {c.EXECUTOR_BROKER: c.SEND_SPAN_NAME_PREFIX}
_logger = logging.getLogger("tasklens")


class SpanObserver(TaskObserver):
    """Starts the task span when the function starts and makes it current for the task's
    duration (so logs and user spans nest under it); ends it with outcome and timings.

    The provider: the one the request's context carries (the app's, put there by the
    request middleware), else ``tracer_provider``, else the global one."""

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        record_args: bool = False,
        task_trace: Literal["child", "link"] = "child",
    ) -> None:
        self._provider = tracer_provider
        self._record_args = record_args
        self._link = task_trace == "link"
        self._policy_of: tuple[object, str | None] = (None, None)
        self._tracers: dict[int, tuple[TracerProvider, Tracer]] = {}
        # The SDK bounds attribute values but not the status description: the same bound
        # applies to it, whoever made the provider (setup(), the app, opentelemetry-instrument).
        self._status_limit = span_limits().max_span_attribute_length

    def _provider_of(self, parent: Context | None) -> TracerProvider:
        provider = otel_context.get_value(PROVIDER_KEY, parent) if parent is not None else None
        if isinstance(provider, TracerProvider):
            return provider
        return self._provider or trace.get_tracer_provider()

    def _tracer(self, provider: TracerProvider) -> Tracer:
        cached = self._tracers.get(id(provider))
        if cached is None or cached[0] is not provider:
            cached = (provider, trace.get_tracer("tasklens", tracer_provider=provider))
            self._tracers[id(provider)] = cached
        return cached[1]

    def _dropped(self, parent: Context | None) -> bool:
        """True when the provider's sampler is known to drop this task's span: an unsampled
        trace is never exported, so its task needs no span object at all (the request's
        span stays current for log correlation). A linked task starts a trace of its own:
        only an AlwaysOff sampler is known to drop it."""
        provider = self._provider_of(parent)
        owner, policy = self._policy_of
        if owner is not provider:
            policy = _drop_policy(getattr(provider, "sampler", None))
            self._policy_of = (provider, policy)
        if policy is None:
            return False
        if policy == "always":
            return True
        if self._link:
            return False
        ctx = trace.get_current_span(parent).get_span_context()
        return ctx.is_valid and not ctx.trace_flags.sampled

    def _static(self, task: TaskRecord) -> tuple[str, SpanKind, dict[str, Any]]:
        """Span name, kind and start attributes of the task's callable, built once per task
        name (cached on its identity)."""
        cached = task.identity.cache.get(self)
        if cached is None:
            identity = task.identity
            start: dict[str, Any] = {
                c.ATTR_NAME: identity.name,
                c.ATTR_EXECUTOR: identity.executor,
                c.ATTR_CODE_FUNCTION_NAME: f"{identity.code_namespace}.{identity.code_function}",
            }
            if identity.name != c.OTHER_TASK:  # folded names share one identity
                start.update(_code_location(task.func))
            prefix = _PREFIXES.get(identity.executor, c.SPAN_NAME_PREFIX)
            kind = _KINDS.get(identity.executor, _INTERNAL)
            cached = task.identity.cache[self] = (prefix + identity.name, kind, start)
        return cached

    def _start(self, task: TaskRecord, start_time: int | None = None) -> tuple[trace.Span, int]:
        """The task's span, and how many arguments fell back to ``<unrepresentable T>``."""
        name, kind, static = self._static(task)
        attributes = {**static, c.ATTR_INDEX: task.index, c.ATTR_BATCH_SIZE: task.batch_size}
        message = task.message
        if message is not None:
            attributes[c.ATTR_MESSAGING_SYSTEM] = message.system
            attributes[c.ATTR_MESSAGING_OPERATION_TYPE] = message.operation
            attributes[c.ATTR_MESSAGING_MESSAGE_ID] = message.message_id
            if message.destination is not None:
                attributes[c.ATTR_MESSAGING_DESTINATION_NAME] = message.destination
        fallbacks = 0
        if self._record_args:
            described = describe_args(task.args, task.kwargs, task.func)
            attributes[c.ATTR_ARGS] = json.dumps(described.args)
            attributes[c.ATTR_KWARGS] = json.dumps(described.kwargs)
            fallbacks = described.fallbacks
        parent = task.parent_context
        tracer = self._tracer(self._provider_of(parent))
        if self._link:
            request = trace.get_current_span(parent).get_span_context()
            links = [Link(request)] if request.is_valid else None
            # A root span; the parent's other context values (baggage) are kept.
            root = trace.set_span_in_context(trace.INVALID_SPAN, parent)
            span = tracer.start_span(name, root, kind, attributes, links, start_time=start_time)
        else:
            span = tracer.start_span(name, parent, kind, attributes, start_time=start_time)
        return span, fallbacks

    def started(self, task: TaskRecord) -> None:
        if self._dropped(task.parent_context):
            return
        span, fallbacks = self._start(task)
        token = otel_context.attach(trace.set_span_in_context(span, task.parent_context))
        task.observer_state[self] = (span, token, fallbacks)

    def finished(self, task: TaskRecord) -> None:
        state = task.observer_state.pop(self, None)
        if state is None:
            if self._dropped(task.parent_context):
                return
            # Never started (skipped, abandoned): a span from enqueue to now says so.
            (span, fallbacks), token = self._start(task, start_time=task.enqueued_ns), None
        else:
            span, token, fallbacks = state
        try:
            if span.is_recording():
                try:
                    self._annotate(span, task, fallbacks)
                except Exception:
                    # The span still ends, with the outcome and status known without it.
                    _logger.exception("tasklens: annotating the span of %s failed", task.name)
                    self._annotate_minimal(span, task)
            span.end()
        finally:
            # An abandoned task is finished by the shutdown, outside the context it left.
            if token is not None and task.outcome != c.OUTCOME_ABANDONED:
                otel_context.detach(token)

    def _annotate(self, span: trace.Span, task: TaskRecord, fallbacks: int) -> None:
        attributes: dict[str, Any] = {c.ATTR_OUTCOME: task.outcome}
        if task.queue_known:
            attributes[c.ATTR_QUEUE_SECONDS] = task.queue_seconds
        if task.threadpool_wait is not None:
            attributes[c.ATTR_THREADPOOL_WAIT_SECONDS] = task.threadpool_wait
        failure = task_failure(task)
        if failure is not None:
            # Not span.record_exception: it calls str() unguarded, formats the traceback
            # with source lines (file reads on the loop) and records the message unscrubbed.
            attributes[c.ATTR_ERROR_TYPE] = failure.type
            span.add_event(
                "exception",
                {
                    "exception.type": failure.type,
                    "exception.message": failure.message,
                    "exception.stacktrace": failure.stacktrace,
                    "exception.escaped": "False",
                },
            )
            description = f"{failure.type}: {failure.message}"
            if self._status_limit is not None:
                description = description[: self._status_limit]
            span.set_status(Status(StatusCode.ERROR, description))
            fallbacks += failure.fallbacks
        if fallbacks:
            attributes[c.ATTR_UNREPRESENTABLE] = fallbacks
        span.set_attributes(attributes)
        if task.loop_blocked:
            span.add_event(c.LOOP_BLOCKED_EVENT, {"bgtask.step_seconds": task.loop_blocking or 0.0})

    @staticmethod
    def _annotate_minimal(span: trace.Span, task: TaskRecord) -> None:
        """Outcome, and on failure ERROR with the exception class only: nothing that can raise."""
        span.set_attribute(c.ATTR_OUTCOME, str(task.outcome))
        if task.error is not None:
            span.set_attribute(c.ATTR_ERROR_TYPE, c.error_type(task.error))
            span.set_status(Status(StatusCode.ERROR, c.error_type(task.error)))


def _code_location(func: Callable[..., Any]) -> dict[str, Any]:
    """``code.file.path`` and ``code.line.number`` of the function a task runs (through
    partials, bound methods and ``functools.wraps``; a callable object's ``__call__``);
    nothing for builtins and classes."""
    target: Any = func
    while isinstance(target, functools.partial):
        target = target.func
    if isinstance(target, types.MethodType):
        target = target.__func__
    with contextlib.suppress(ValueError):  # a __wrapped__ cycle
        target = inspect.unwrap(target)
    code = getattr(target, "__code__", None)
    if code is None and not isinstance(target, type):
        call = next(
            (k.__dict__["__call__"] for k in type(target).__mro__ if "__call__" in k.__dict__), None
        )
        code = getattr(call, "__code__", None)
    if code is None:
        return {}
    return {c.ATTR_CODE_FILE_PATH: code.co_filename, c.ATTR_CODE_LINE_NUMBER: code.co_firstlineno}


def _drop_policy(sampler: object) -> str | None:
    """ "always" (AlwaysOff), "unsampled-parent" (ParentBased dropping children of unsampled
    parents, the SDK default), or None: ask the sampler."""
    describe = getattr(sampler, "get_description", None)
    if describe is None:
        return None
    description = describe()
    if description == "AlwaysOffSampler":
        return "always"
    if (
        description.startswith("ParentBased{")
        and "remoteParentNotSampled:AlwaysOffSampler" in description
        and "localParentNotSampled:AlwaysOffSampler" in description
    ):
        return "unsampled-parent"
    return None


class EnqueueEventObserver(TaskObserver):
    """A ``bgtask.enqueued`` event on the request's span for each task it schedules
    (``enqueue_events=True``): where in the request ``add_task`` ran. Off by default: an
    event costs a request span ~3-16 µs per task (docs/performance.md), and the task span
    already carries its queue time."""

    def enqueued(self, task: TaskRecord) -> None:
        span = trace.get_current_span(task.parent_context)
        if span.is_recording():
            attributes = task.identity.cache.get(self)
            if attributes is None:  # the SDK copies event attributes: one dict per name
                attributes = task.identity.cache[self] = {c.ATTR_NAME: task.identity.name}
            span.add_event(c.ENQUEUED_EVENT, attributes)
