"""``instrument(app)``: the one call that puts an app's background tasks on the runtime."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from starlette.applications import Starlette

from runtime import patch
from runtime.middleware import TaskRuntimeMiddleware
from runtime.observer import TaskObserver
from runtime.options import RuntimeOptions
from runtime.runner import TaskRunner
from runtime.yield_deps import warn_yield_dependencies

_logger = logging.getLogger("tasklens.runtime")
_STATE_ATTR = "tasklens_runner"


def instrument(
    app: Starlette,
    *,
    observers: Sequence[TaskObserver] | None = None,
    **options: Any,
) -> TaskRunner:
    """Run every background task of ``app`` in the instrumented runtime.

    Options (validated here, each error names the option): ``metrics_path="/metrics"``,
    ``on_error="continue"``, ``record_args=False``, ``mode="inline"``, ``max_concurrency``,
    ``shutdown_timeout``, ``threadpool_size``, ``max_task_names``, ``loop_block_threshold``,
    ``loop_lag_interval``, ``request_spans``. Calling it twice returns the first runner.
    """
    if not isinstance(app, Starlette):
        raise TypeError(
            f"instrument() expects a FastAPI or Starlette application, got {type(app).__name__}"
        )
    parsed = RuntimeOptions.from_kwargs(options)
    existing: TaskRunner | None = getattr(app.state, _STATE_ATTR, None)
    if existing is not None:
        if options and parsed != existing.options:
            _logger.warning(
                "tasklens: instrument() called again with different options; keeping the first"
            )
        return existing

    from telemetry.wiring import default_observers, metrics_asgi_app

    runner = TaskRunner(parsed, observers if observers is not None else default_observers(parsed))
    patch.install()
    app.add_middleware(
        TaskRuntimeMiddleware,
        runner=runner,
        metrics_app=metrics_asgi_app() if parsed.metrics_path else None,
        metrics_path=parsed.metrics_path,
        request_spans=parsed.request_spans,
    )
    app.router.lifespan_context = _with_runtime(app.router.lifespan_context, runner, app)
    if parsed.metrics_path:
        _exclude_from_fastapi_telemetry(app, parsed.metrics_path)
    setattr(app.state, _STATE_ATTR, runner)
    return runner


def _exclude_from_fastapi_telemetry(app: Starlette, path: str) -> None:
    """Keep scrapes of ``path`` out of FastAPI's native request spans (FastAPI >= 0.164 wraps
    the whole app, outside any middleware); the user's own ``exclude`` still applies."""
    config = getattr(app, "_telemetry", None)
    if not isinstance(config, dict) or "exclude" not in config:
        return
    user_exclude = config["exclude"]

    def exclude(scope: Any) -> bool:
        return scope.get("path") == path or bool(user_exclude and user_exclude(scope))

    config["exclude"] = exclude


def _with_runtime(
    original: Callable[[Any], AbstractAsyncContextManager[Any]], runner: TaskRunner, app: Starlette
) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    """Wrap the app's lifespan: the runtime starts after the user's startup, stops before
    the user's shutdown (so detached tasks drain while the app's resources still exist)."""

    @asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        try:
            async with original(asgi_app) as state:
                if runner.options.mode == "detached":
                    warn_yield_dependencies(app)
                async with runner.lifespan():
                    yield state
        finally:
            # Last: export the spans and metrics still buffered (uvicorn re-raises SIGTERM
            # after the shutdown, so the SDK's atexit flush never runs).
            from telemetry.wiring import flush_telemetry

            await flush_telemetry()

    return lifespan
