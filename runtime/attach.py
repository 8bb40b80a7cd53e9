"""``attach(app, runner)``: put an app's background tasks on a runner, for its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from starlette.applications import Starlette

from . import patch
from .middleware import TaskRuntimeMiddleware
from .runner import TaskRunner
from .yield_deps import warn_yield_dependencies

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


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
    app.router.lifespan_context = _with_runtime(
        app.router.lifespan_context, runner, app, tuple(on_shutdown)
    )


def _with_runtime(
    original: Lifespan,
    runner: TaskRunner,
    app: Starlette,
    on_shutdown: tuple[Callable[[], Awaitable[None]], ...],
) -> Lifespan:
    """Wrap the app's lifespan: the runtime starts after the user's startup, stops before
    the user's shutdown (so detached tasks drain while the app's resources still exist)."""

    @asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        try:
            async with original(asgi_app) as state:
                if runner.options.detached:
                    warn_yield_dependencies(app)
                async with runner.lifespan():
                    yield state
        finally:
            for callback in on_shutdown:
                await callback()

    return lifespan
