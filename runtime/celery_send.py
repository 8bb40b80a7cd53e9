"""The web side of Celery (``instrument(app, celery=celery_app)``): a background task whose
function is a task of that Celery app is sent to its broker where Starlette would have
called it, instead of running in the web process.

The send is a task of its own in the runtime (executor ``broker``): it runs in the thread
pool (a publish is blocking network I/O), in order with the response's other tasks, and its
outcome is the publish's: a broker that is down fails it like any task failure (counted,
logged, the later tasks still run). The message carries the trace context current at the
send (the send's span) and the wall-clock time of ``add_task``, for the worker's side
(:mod:`.celery_worker`).
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from opentelemetry import propagate

from .context import current_task_var
from .naming import TaskIdentity, TaskNamer
from .outcomes import EXECUTOR_BROKER, Executor
from .record import Message

#: Message header: ``time.time_ns()`` at ``add_task``, in the web process.
HEADER_ENQUEUED_NS = "tasklens_enqueued_ns"
_logger = logging.getLogger("tasklens.runtime")
MESSAGING_SYSTEM = "celery"


def require_celery_app(app: object, where: str = "instrument()") -> None:
    """Raise ``TypeError`` unless ``app`` is a ``celery.Celery`` application (``ImportError``
    naming the extra when Celery is not installed). The message names the type only: the
    repr of a Celery config would show the broker URL, password included."""
    try:
        from celery import Celery
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        raise ImportError(
            f"{where}: Celery tasks need Celery: pip install 'tasklens[celery]'"
        ) from exc
    if not isinstance(app, Celery):
        raise TypeError(
            f"{where}: invalid celery app, a {type(app).__module__}.{type(app).__qualname__}; "
            "expected a celery.Celery application"
        )


class CeleryDispatch:
    """Decides which ``add_task`` functions go to the broker and prepares their sends."""

    def __init__(self, app: Any) -> None:
        require_celery_app(app)
        from celery.app.task import Task

        self.app = app
        self._task_type = Task
        #: Registered task name -> (the app's task, its serializer, its queue; None when
        #: task_routes decide it per call): Celery's settings lookups (~6 us each) cost more
        #: than the rest of add_task, and are set at start-up.
        self._known: dict[str, tuple[Any, str, str | None]] = {}
        warn_unbounded_publish(app)

    def claim(
        self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> CelerySend | None:
        """The send of ``func`` when it is a task registered in this Celery app, else None
        (an eager app, ``task_always_eager``, runs its tasks here: None too).

        The send goes through the app's own registered task, so a ``@shared_task`` proxy
        (which would resolve Celery's per-thread current app in the sending thread) and a
        task shared from another app both go to this app's broker. Raises ``TypeError`` at
        ``add_task`` for arguments the task's signature refuses (Celery's own check, as
        ``.delay()`` does) or its serializer cannot serialize, naming the argument and
        nothing of its value."""
        if not isinstance(func, self._task_type):
            return None
        name = func.name
        known = self._known.get(name) if isinstance(name, str) else None
        if known is None:
            if not isinstance(name, str) or name not in self.app.tasks:
                return None
            task = self.app.tasks[name]
            serializer = task.serializer or self.app.conf.task_serializer
            queue = None if self.app.conf.task_routes else self._queue(task, name, (), {})
            # Bounded by the app's registry: one entry per registered task name.
            known = self._known[name] = (task, str(serializer), queue)
        if self.app.conf.task_always_eager:  # live: test suites switch it on and off
            return None
        task, serializer, queue = known
        if getattr(task, "typing", True):
            check = getattr(task, "__header__", None)
            if check is not None:
                try:
                    check(*args, **kwargs)
                except TypeError as exc:
                    raise TypeError(f"add_task({name}): {exc}") from None
        _check_serializable(task, name, serializer, args, kwargs)
        if queue is None:
            queue = self._queue(task, name, args, kwargs)
        return CelerySend(task, name, queue)

    def _queue(self, task: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The queue Celery's router picks (``task_routes``, the task's ``queue``, the
        default), for the span's ``messaging.destination.name``; "" when it cannot say."""
        try:
            options = {"queue": task.queue} if getattr(task, "queue", None) else {}
            queue = self.app.amqp.router.route(options, name, args, kwargs).get("queue")
        except Exception:  # a user router that raises: Celery will say so at the send
            return ""
        queue_name = getattr(queue, "name", queue)
        return str(queue_name) if queue_name else ""


class CelerySend:
    """The callable a Celery-bound record runs: ``task.apply_async`` with tasklens headers.

    ``__wrapped__`` is the task's own function, so code attributes point at the user's code."""

    def __init__(self, task: Any, name: str, queue: str) -> None:
        self.task = task
        self.name = name
        self.queue = queue or None
        self.task_id = str(uuid.uuid4())
        self.__wrapped__ = getattr(task, "run", task)

    def identity(self, namer: TaskNamer) -> TaskIdentity:
        return celery_identity(namer, self.task, EXECUTOR_BROKER)

    def message(self) -> Message:
        return Message(MESSAGING_SYSTEM, "send", self.task_id, self.queue)

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        record = current_task_var.get()
        headers: dict[str, str] = {}
        propagate.inject(headers)  # the send's span is current: the worker's parent
        enqueued_ns = record.enqueued_ns if record is not None else time.time_ns()
        headers[HEADER_ENQUEUED_NS] = str(enqueued_ns)
        self.task.apply_async(args, kwargs, task_id=self.task_id, headers=headers)


def celery_identity(namer: TaskNamer, task: Any, executor: Executor) -> TaskIdentity:
    """The identity of a Celery task, on either side: its registered name (the same in the
    web process and on workers), code attributes from the function it runs."""
    run = getattr(task, "run", task)
    return namer.identify_named(
        str(task.name),
        executor,
        str(getattr(run, "__qualname__", task.name)),
        str(getattr(run, "__module__", "") or ""),
    )


def warn_unbounded_publish(app: Any) -> bool:
    """Warn (and return True) when the app's Redis broker has no socket timeout: a broker
    that stops answering without closing the connection would then hold every send, and the
    thread-pool slot it runs in, forever (kombu's default)."""
    url = str(app.conf.broker_url or "")
    options = app.conf.broker_transport_options or {}
    if not url.startswith(("redis://", "rediss://", "sentinel://")):
        return False
    if options.get("socket_timeout") is not None:
        return False
    _logger.warning(
        "tasklens: the Celery app %r has no broker socket timeout: a Redis broker that stops "
        "answering would block each send (and its thread-pool slot) forever; set "
        "broker_transport_options={'socket_timeout': 5, 'socket_connect_timeout': 5}",
        app.main,
    )
    return True


def _check_serializable(
    task: Any, name: str, serializer: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """One ``dumps`` of all the arguments (what the send will serialize); only when it
    fails, one per argument to name the culprit."""
    from kombu.serialization import dumps

    try:
        dumps((args, kwargs), serializer=serializer)
        return
    except Exception:
        pass
    labels = _argument_labels(task, args)
    values = [*zip(labels, args, strict=True), *((repr(k), v) for k, v in kwargs.items())]
    for label, value in values:
        try:
            dumps(value, serializer=serializer)
        except Exception as exc:
            raise TypeError(
                f"add_task({name}): argument {label} (a {type(value).__name__}) cannot be "
                f"serialized by Celery's {serializer!r} serializer ({type(exc).__name__}); "
                "pass values the serializer supports (ids, not objects)"
            ) from None
    raise TypeError(
        f"add_task({name}): the arguments cannot be serialized by Celery's {serializer!r} "
        "serializer together (each alone can)"
    )


def _argument_labels(task: Any, args: tuple[Any, ...]) -> list[str]:
    """``'email'`` for a positional argument whose parameter name is known, else ``#0``."""
    try:
        parameters = list(inspect.signature(task.run).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    positional = [
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return [repr(positional[i]) if i < len(positional) else f"#{i}" for i in range(len(args))]
