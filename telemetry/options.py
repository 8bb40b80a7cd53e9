"""Telemetry's keyword options of ``tasklens.instrument``, validated once at instrument time."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider
from starlette.requests import Request

from tasklens.runtime.options import positive_int, validate

from .metrics import DEFAULT_EXCEPTION_LIMIT

#: ``ui_path``: segments of letters, digits and ``-._~`` (no query, fragment, space, ``//``,
#: ``.`` or ``..`` segment: a path the page can actually be reached at).
_UI_PATH = re.compile(r"(?:/[A-Za-z0-9._~-]+)+")
#: ``ui_trace_url``: ``http(s)://host[:port]`` then a path, query or fragment, or an
#: absolute path (not ``//`` or ``/\``: another host); no space, control character, quote,
#: ``<``, ``>``, backslash or backtick anywhere.
_TRACE_URL = re.compile(
    r"(?:https?://(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
    r"(?=[/?#]|$)|/(?![/\\]))[^\x00-\x20\x7f\"'<>\\`]*"
)


def _reachable(path: object) -> bool:
    return (
        isinstance(path, str)
        and _UI_PATH.fullmatch(path) is not None
        and not any(part in (".", "..") for part in path.split("/"))
    )


def _nested(a: str | None, b: str | None) -> bool:
    """``a`` at or below ``b``, or ``b`` at or below ``a``: one would shadow the other."""
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


@dataclass(frozen=True)
class TelemetryOptions:
    """What the observers and the app's telemetry endpoints do; see the README's option table."""

    #: Path that serves Prometheus metrics from the app; None: not mounted.
    metrics_path: str | None = "/metrics"
    #: Who may read ``metrics_path``: called with the request (sync or async) before any
    #: rendering; false -> 401 (403 when the request carried an Authorization header).
    #: None: the path is public.
    metrics_auth: Callable[[Request], bool | Awaitable[bool]] | None = None
    #: Distinct ``exception`` label values (classes) before new ones fold into "other".
    max_exception_types: int = DEFAULT_EXCEPTION_LIMIT
    #: Put (truncated, redacted) task arguments into spans and logs.
    record_args: bool = False
    #: Add a server span per request when nothing else traces it (telemetry/requests.py).
    request_spans: bool = True
    #: Put the (scrubbed) query string into tasklens's request spans as ``url.query``.
    record_url_query: bool = False
    #: A ``bgtask.enqueued`` event on the request span per task it schedules.
    enqueue_events: bool = False
    #: ``"child"``: task spans are children of the request span (one trace); ``"link"``:
    #: each task is the root of its own trace, with a span link to the request span.
    task_trace: Literal["child", "link"] = "child"
    #: Provider of task and request spans; None: the app's (FastAPI's ``telemetry``
    #: config), else the global one.
    tracer_provider: TracerProvider | None = None
    #: Also record the metrics through this provider's instruments (otel_metrics.py);
    #: None: the app's (FastAPI's ``telemetry`` config), else Prometheus only.
    meter_provider: MeterProvider | None = None
    #: Path of the live page (tasks, failures, a request's trace; telemetry/live_page.py);
    #: None: not served. Protected by ``metrics_auth`` like ``metrics_path``.
    ui_path: str | None = None
    #: Link from the page to a trace elsewhere (Tempo, Grafana): a URL with ``{trace_id}``.
    ui_trace_url: str | None = None

    def __post_init__(self) -> None:
        path = self.metrics_path
        validate(self, [
            ("metrics_path", path is None or (isinstance(path, str) and path.startswith("/")),
             "a path starting with '/', or None"),
            ("metrics_auth", self.metrics_auth is None or callable(self.metrics_auth),
             "a callable taking the Request and returning a bool (or an awaitable of one), "
             "or None"),
            ("metrics_auth", self.metrics_auth is None or path is not None
             or self.ui_path is not None,
             "None when metrics_path=None (no path is served to protect)"),
            ("max_exception_types", positive_int(self.max_exception_types), "a positive int"),
            ("record_args", isinstance(self.record_args, bool), "True or False"),
            ("request_spans", isinstance(self.request_spans, bool), "True or False"),
            ("record_url_query", isinstance(self.record_url_query, bool), "True or False"),
            ("enqueue_events", isinstance(self.enqueue_events, bool), "True or False"),
            ("task_trace", self.task_trace in ("child", "link"), "'child' or 'link'"),
            ("tracer_provider", self.tracer_provider is None
             or isinstance(self.tracer_provider, TracerProvider),
             "an OpenTelemetry TracerProvider, or None"),
            ("meter_provider", self.meter_provider is None
             or isinstance(self.meter_provider, MeterProvider),
             "an OpenTelemetry MeterProvider, or None"),
            ("ui_path", self.ui_path is None or _reachable(self.ui_path),
             "a path like '/tasks' (segments of letters, digits and '-._~'; no query, "
             "fragment, space, '//', '.' or '..', no trailing '/'), or None"),
            ("ui_path", not _nested(self.ui_path, path),
             f"a path neither at, below nor above metrics_path={path!r} (the live page and "
             "/metrics would shadow each other): change ui_path or metrics_path"),
            ("ui_trace_url", self.ui_trace_url is None or (isinstance(self.ui_trace_url, str)
             and "{trace_id}" in self.ui_trace_url
             and _TRACE_URL.fullmatch(self.ui_trace_url) is not None),
             "a URL (http://host..., https://host... or /path..., no space, quote, '<', '>', "
             "backslash or backtick) containing '{trace_id}', or None"),
            ("ui_trace_url", self.ui_trace_url is None or self.ui_path is not None,
             "None when ui_path=None (no page to link from)"),
        ])  # fmt: skip
