"""Request spans: OpenTelemetry's ASGI middleware, only where nothing else traces requests."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send


class RequestSpanMiddleware:
    """Gives each HTTP/websocket request a server span from opentelemetry-instrumentation-asgi
    unless one is already current (FastAPIInstrumentor or an outer ASGI middleware made it),
    so a request is never traced twice and its tasks have a parent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Not reachable through ``.app``: FastAPI looks for OpenTelemetryMiddleware in the
        # stack to turn its own request spans off, and this one is conditional.
        self._traced = OpenTelemetryMiddleware(app, exclude_spans=["receive", "send"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or (
            trace.get_current_span().get_span_context().is_valid
        ):
            await self.app(scope, receive, send)
        else:
            await self._traced(scope, receive, send)
