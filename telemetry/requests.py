"""Request spans: OpenTelemetry's ASGI middleware, only where nothing else traces requests.

Either way the request span's URL attributes are scrubbed (:func:`scrub_request_span`):
opentelemetry-instrumentation-asgi redacts only a few cloud-signature query parameters in
``http.url`` and none in ``url.query``; FastAPI's own telemetry redacts the same few.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.trace import SpanKind
from starlette.types import ASGIApp, Receive, Scope, Send

from .redact import scrub

#: Attributes that may carry the query string or credentials (old and stable conventions).
URL_ATTRIBUTES = ("url.query", "url.full", "http.url", "http.target")


def scrub_request_span(span: trace.Span, _: Any = None) -> None:
    """Rewrite the span's URL attributes with sensitive query values and URL passwords
    redacted (the ``server_request_hook`` signature: ``(span, scope)``)."""
    if not span.is_recording():
        return
    attributes = getattr(span, "attributes", None)  # the SDK's spans; others: nothing to read
    if not attributes:
        return
    for key in URL_ATTRIBUTES:
        value = attributes.get(key)
        if isinstance(value, str):
            cleaned = scrub(value)
            if cleaned != value:
                span.set_attribute(key, cleaned)


class RequestSpanMiddleware:
    """Gives each HTTP/websocket request a server span from opentelemetry-instrumentation-asgi
    unless one is already current (FastAPIInstrumentor or an outer ASGI middleware made it),
    so a request is never traced twice and its tasks have a parent. The server span, ours or
    theirs, gets its URL attributes scrubbed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Not reachable through ``.app``: FastAPI looks for OpenTelemetryMiddleware in the
        # stack to turn its own request spans off, and this one is conditional.
        self._traced = OpenTelemetryMiddleware(
            app, exclude_spans=["receive", "send"], server_request_hook=scrub_request_span
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        current = trace.get_current_span()
        if current.get_span_context().is_valid:
            if scope.get("query_string") and getattr(current, "kind", None) is SpanKind.SERVER:
                scrub_request_span(current)
            await self.app(scope, receive, send)
        else:
            await self._traced(scope, receive, send)
