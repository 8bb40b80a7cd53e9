"""The runtime's ASGI middleware: a request scope, so tasks added in the request are claimed."""

from __future__ import annotations

from opentelemetry import context as otel_context
from starlette.types import ASGIApp, Receive, Scope, Send

from . import patch
from .runner import TaskRunner
from .scope import RequestScope, current_scope


class TaskRuntimeMiddleware:
    """Opens a :class:`RequestScope` per HTTP/websocket request: tasks created or run in it
    take the runtime's path; it captures the trace context current at the request's start
    (the request's server span, if something made one) as the parent of its tasks."""

    def __init__(self, app: ASGIApp, runner: TaskRunner) -> None:
        self.app = app
        self.runner = runner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            try:
                await self.app(scope, receive, send)
            finally:
                patch.reconcile()  # after the lifespan: holds of batches abandoned at shutdown
            return
        runner = self.runner
        if runner.unfinished > runner.admission_limit:  # max_pending reached: backpressure
            await runner.admit()
        request = RequestScope(runner, otel_context.get_current())
        token = current_scope.set(request)
        try:
            await self.app(scope, receive, send)
        finally:
            current_scope.reset(token)
            request.close()
            patch.reconcile()
