"""Request spans: one server span per request, whoever makes it.

:class:`RequestSpanMiddleware` sits innermost in the app's middleware stack (just outside
routing), so it sees the span of every tracer placed anywhere in the stack: FastAPI's
native telemetry, ``FastAPIInstrumentor`` and OpenTelemetry's ASGI middleware (outer),
Starlette's ``OpenTelemetryMiddleware`` (outer or inner), an ASGI middleware the user added
before ``instrument``. Only when none traces the request does it make a span of its own.
Either way it makes that span the parent of the request's tasks (the runtime's request
scope captured the context at the request's start, outside the inner tracers).

Its own span follows the HTTP server conventions: named ``METHOD route-template`` with
``http.route`` (never the raw path), ``url.query`` only with ``record_url_query``,
``OTEL_PYTHON_EXCLUDED_URLS`` (or its ``_STARLETTE_``/``_FASTAPI_`` form) honoured, and the
context it starts from is the current one (not a fresh one, as OpenTelemetry's ASGI
middleware does), so what FastAPI's telemetry put there survives. Websockets are named
after the route alone, as opentelemetry-instrumentation-asgi names them.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.util.http import ExcludeList, parse_excluded_urls
from starlette.datastructures import URL, Headers
from starlette.routing import Host, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from tasklens.runtime.scope import current_scope

from .contract import error_type
from .redact import scrub

#: Attributes that may carry the query string or credentials (old and stable conventions).
URL_ATTRIBUTES = ("url.query", "url.full", "http.url", "http.target")
#: Key of the request's OpenTelemetry context holding the app's tracer provider, read by
#: the span observer so each app's task spans go to the provider that app was given.
PROVIDER_KEY = otel_context.create_key("tasklens.tracer_provider")
_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)
#: Server-span makers known by type: (module, class name).
_TRACERS = frozenset(
    {
        ("opentelemetry.instrumentation.asgi", "OpenTelemetryMiddleware"),
        ("starlette.middleware.opentelemetry", "OpenTelemetryMiddleware"),
    }
)


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


def app_tracer_provider(app: object) -> TracerProvider | None:
    """The tracer provider a FastAPI app was configured with
    (``FastAPI(telemetry={"tracer_provider": tp})``, kept in ``app._telemetry``), or None."""
    config = getattr(app, "_telemetry", None)
    provider = config.get("tracer_provider") if isinstance(config, dict) else None
    return provider if isinstance(provider, TracerProvider) else None


def excluded_urls(app: object) -> ExcludeList | None:
    """``OTEL_PYTHON_FASTAPI_EXCLUDED_URLS`` for FastAPI apps, ``..._STARLETTE_...`` for the
    others, else ``OTEL_PYTHON_EXCLUDED_URLS``, as the instrumentors read them; None when
    none is set (no URL to build per request)."""
    fastapi = any(cls.__module__.startswith("fastapi") for cls in type(app).__mro__)
    name = "FASTAPI" if fastapi else "STARLETTE"
    raw = os.environ.get(f"OTEL_PYTHON_{name}_EXCLUDED_URLS")
    if raw is None:
        raw = os.environ.get("OTEL_PYTHON_EXCLUDED_URLS", "")
    return parse_excluded_urls(raw) if raw.strip() else None


def route_template(routes: Any, scope: Scope) -> str | None:
    """The template of the route the router will pick (``/users/{name}``), through
    ``Mount``/``Host``; None when none matches (a 404)."""
    partial: tuple[Any, Scope] | None = None
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            return _template(route, {**scope, **child})
        if match is Match.PARTIAL and partial is None:
            partial = (route, {**scope, **child})
    return None if partial is None else _template(*partial)


def _template(route: Any, scope: Scope) -> str:
    prefix = "" if isinstance(route, Host) else str(getattr(route, "path", ""))
    if isinstance(route, Mount | Host):
        inner = route_template(route.routes, scope)
        return prefix + inner if inner else prefix or "/"
    return prefix


def _traced_by_stack(app: object, this: object) -> bool:
    """A known server-span maker in ``app``'s middleware: its own decision (an excluded
    URL, a no-op provider) then stands for the request."""
    classes = {getattr(m, "cls", None) for m in getattr(app, "user_middleware", ())}
    node = getattr(app, "middleware_stack", None)
    seen: set[int] = set()
    while node is not None and node is not this and id(node) not in seen:
        seen.add(id(node))
        classes.add(type(node))
        node = getattr(node, "app", None)
    return any(
        isinstance(cls, type) and (cls.__module__, cls.__name__) in _TRACERS for cls in classes
    )


class RequestSpanMiddleware:
    """Innermost middleware of an instrumented app; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        owner: object,
        request_spans: bool = True,
        record_url_query: bool = False,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.app = app
        self._owner = owner
        self._request_spans = request_spans
        self._record_query = record_url_query
        self._provider = tracer_provider or app_tracer_provider(owner)
        #: Asked of the provider at the first span tasklens makes, not before: when another
        #: tracer traces every request, the app's provider sees no lookup of tasklens's.
        self._tracer: trace.Tracer | None = None
        self._excluded = excluded_urls(owner)
        self._stack_traced: bool | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        current = trace.get_current_span()
        if current.get_span_context().is_valid:
            if scope.get("query_string") and getattr(current, "kind", None) is SpanKind.SERVER:
                scrub_request_span(current)
        elif self._makes_span(scope):
            await self._traced(scope, receive, send)
            return
        self._adopt(otel_context.get_current())
        await self.app(scope, receive, send)

    def _makes_span(self, scope: Scope) -> bool:
        if not self._request_spans or scope.get("starlette.opentelemetry"):
            return False  # Starlette's middleware is on this request (it may have excluded it)
        if scope.get("fastapi.telemetry", False) is None:
            return False  # FastAPI's telemetry excluded this request (its ``exclude``)
        if self._stack_traced is None:
            self._stack_traced = _traced_by_stack(self._owner, self)
        if self._stack_traced:
            return False
        return self._excluded is None or not self._excluded.url_disabled(str(URL(scope=scope)))

    def _adopt(self, context: otel_context.Context) -> None:
        """Make ``context`` (its span: the request's server span) the parent of the tasks
        this request adds, with the app's tracer provider for their spans."""
        request = current_scope.get()
        if request is None or request.closed:
            return
        if self._provider is not None:
            context = otel_context.set_value(PROVIDER_KEY, self._provider, context)
        request.context = context

    async def _traced(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = scope["type"] == "websocket"
        original = scope.get("method", "")
        method = original if original in _METHODS else "_OTHER"
        route = route_template(getattr(self._owner, "routes", ()), scope)
        root = str(scope.get("root_path", "")).rstrip("/")
        if route is not None:
            route = root + route
        name = self._span_name(websocket, method, route, scope)
        headers = Headers(scope=scope)
        attributes = self._attributes(scope, headers, websocket, method, original, route)
        parent = propagate.extract(headers, context=otel_context.get_current())
        if self._tracer is None:
            self._tracer = trace.get_tracer("tasklens", tracer_provider=self._provider)
        span = self._tracer.start_span(name, parent, SpanKind.SERVER, attributes)
        context = trace.set_span_in_context(span, parent)
        token = otel_context.attach(context)
        self._adopt(context)
        status: list[int] = []

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status if not websocket else send)
        except BaseException as exc:
            if span.is_recording() and not _normal_close(exc):
                span.set_attribute("error.type", error_type(exc))
                span.set_status(Status(StatusCode.ERROR))
            raise
        finally:
            if status and span.is_recording():
                span.set_attribute("http.response.status_code", status[0])
                if status[0] >= 500:
                    span.set_attribute("error.type", str(status[0]))
                    span.set_status(Status(StatusCode.ERROR))
            span.end()
            otel_context.detach(token)

    @staticmethod
    def _span_name(websocket: bool, method: str, route: str | None, scope: Scope) -> str:
        verb = "HTTP" if method == "_OTHER" else method
        if websocket:  # opentelemetry-instrumentation-asgi: the route alone
            return route or "websocket"
        return f"{verb} {route}" if route else verb

    def _attributes(
        self,
        scope: Scope,
        headers: Headers,
        websocket: bool,
        method: str,
        original: str,
        route: str | None,
    ) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "url.scheme": scope.get("scheme", "ws" if websocket else "http"),
            "url.path": scope.get("path", ""),
        }
        if websocket:
            attributes["network.protocol.name"] = "websocket"
        else:
            attributes["http.request.method"] = method
            if original != method:
                attributes["http.request.method_original"] = original
        if route is not None:
            attributes["http.route"] = route
        query = scope.get("query_string")
        if self._record_query and query:
            attributes["url.query"] = scrub(query.decode("latin-1"))
        server = scope.get("server")
        if server:
            attributes["server.address"], attributes["server.port"] = server[0], server[1]
        client = scope.get("client")
        if client:
            attributes["client.address"] = client[0]
        if scope.get("http_version"):
            attributes["network.protocol.version"] = scope["http_version"]
        agent = headers.get("user-agent")
        if agent:
            attributes["user_agent.original"] = agent
        return attributes


def _normal_close(exc: BaseException) -> bool:
    return isinstance(exc, WebSocketDisconnect) and exc.code in (1000, 1001)
