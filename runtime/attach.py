"""``attach(app, runner)``: put an app's background tasks on a runner, for its lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from . import patch
from .detached import ShutdownSignals, exit_if_stuck
from .middleware import TaskRuntimeMiddleware
from .runner import TaskRunner
from .yield_deps import warn_yield_dependencies

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]
_logger = logging.getLogger("tasklens.runtime")


class DetachedWithoutLifespan(RuntimeError):
    """``mode="detached"`` in an app whose lifespan never ran: tasks would have nowhere to
    run detached, and nothing would drain them or flush their telemetry at shutdown."""


def attach(
    app: Starlette,
    runner: TaskRunner,
    *,
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
) -> None:
    """Hook Starlette's background tasks (once per process), open a request scope in every
    request of ``app``, and run ``runner`` with the app's lifespan. ``on_shutdown`` callbacks
    run last, after the user's shutdown (the telemetry flush)."""
    patch.install()
    app.add_middleware(TaskRuntimeMiddleware, runner=runner)
    state = _LifespanState()
    if runner.options.detached:
        app.add_middleware(_RequireLifespan, state=state)
    app.router.lifespan_context = _with_runtime(
        app.router.lifespan_context, runner, app, tuple(on_shutdown), state
    )


class _LifespanState:
    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = False


class _RequireLifespan:
    """Detached mode: fail every request of an app whose lifespan never started, naming the
    cause (mounted under another app, or ``lifespan="off"``) and the fix, instead of
    silently running its tasks inline with no shutdown drain and no telemetry flush."""

    def __init__(self, app: ASGIApp, state: _LifespanState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.state.started and scope["type"] in ("http", "websocket"):
            raise DetachedWithoutLifespan(_no_lifespan_message(scope))
        await self.app(scope, receive, send)


def _no_lifespan_message(scope: Scope) -> str:
    root_path = scope.get("root_path") or ""
    where = f"an app mounted at {root_path!r}" if root_path else "this app"
    return (
        f"tasklens: mode='detached' in {where}, whose lifespan never started: Starlette "
        "sends no lifespan events to mounted apps, and a server run with lifespan='off' "
        "sends none at all. Without it detached tasks have no task group, nothing drains "
        "them at shutdown and telemetry is never flushed. Fix: instrument the outermost "
        "app (the one the server runs) with mode='detached', or enter this app's lifespan "
        "from the outer app's (`async with sub.router.lifespan_context(sub):`), or serve "
        "with lifespan 'on'/'auto', or use mode='inline'"
    )


def _with_runtime(
    original: Lifespan,
    runner: TaskRunner,
    app: Starlette,
    on_shutdown: tuple[Callable[[], Awaitable[None]], ...],
    started: _LifespanState,
) -> Lifespan:
    """Wrap the app's lifespan: the runtime starts after the user's startup, stops before
    the user's shutdown (so detached tasks drain while the app's resources still exist).
    From the start of the shutdown, a second SIGINT/SIGTERM stops waiting: for detached
    tasks (abandoned at once) and for the telemetry flush (skipped)."""

    @asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        signals = ShutdownSignals()
        executor = None
        try:
            async with original(asgi_app) as state:
                if runner.options.detached:
                    warn_yield_dependencies(app)
                async with runner.lifespan():
                    executor = runner.detached
                    started.started = True
                    try:
                        yield state
                    finally:
                        signals.install()
                        if executor is not None:
                            signals.on_signal(executor.force)
        finally:
            try:
                await _run_callbacks(on_shutdown, signals)
            finally:
                signals.restore()
                if executor is not None:
                    exit_if_stuck(executor.stragglers)

    return lifespan


async def _run_callbacks(
    callbacks: tuple[Callable[[], Awaitable[None]], ...], signals: ShutdownSignals
) -> None:
    for callback in callbacks:
        if signals.received:
            _logger.warning(
                "tasklens: shutdown forced by a second signal; %s skipped",
                getattr(callback, "__qualname__", callback),
            )
            continue
        with anyio.CancelScope() as scope:
            signals.on_signal(scope.cancel)
            try:
                await callback()
            finally:
                signals.remove(scope.cancel)
