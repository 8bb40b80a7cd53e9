"""The ASGI middleware of an instrumented app: request scope, request spans, /metrics."""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace
from starlette.types import ASGIApp, Receive, Scope, Send

from runtime.context import current_scope
from runtime.runner import TaskRunner
from runtime.scope import RequestScope


class TaskRuntimeMiddleware:
    """Opens a :class:`RequestScope` per request so tasks added in it take the runtime's path.

    Requests get an OpenTelemetry server span from opentelemetry-instrumentation-asgi unless
    one is already current (FastAPIInstrumentor or an outer ASGI middleware made it), so a
    request is never traced twice. ``metrics_path`` is answered before any of that.
    """

    def __init__(
        self,
        app: ASGIApp,
        runner: TaskRunner,
        metrics_app: ASGIApp | None = None,
        metrics_path: str | None = None,
        request_spans: bool = True,
    ) -> None:
        self.app = app
        self.runner = runner
        self.metrics_app = metrics_app
        self.metrics_path = metrics_path
        self.traced_app: ASGIApp | None = None
        if request_spans:
            from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

            # Not reachable through ``.app``: FastAPI looks for OpenTelemetryMiddleware in
            # the stack to turn its own request spans off, and ours is conditional.
            self.traced_app = OpenTelemetryMiddleware(
                self._scoped, exclude_spans=["receive", "send"]
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.metrics_app is not None and scope["path"] == self.metrics_path:
            await self.metrics_app(scope, receive, send)
            return
        if self.traced_app is None or trace.get_current_span().get_span_context().is_valid:
            await self._scoped(scope, receive, send)
        else:
            await self.traced_app(scope, receive, send)

    async def _scoped(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = RequestScope(self.runner, otel_context.get_current())
        token = current_scope.set(request)
        try:
            await self.app(scope, receive, send)
        finally:
            current_scope.reset(token)
            request.close()
