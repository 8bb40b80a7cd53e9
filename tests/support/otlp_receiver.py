"""A real OTLP receiver for tests: OTLP/HTTP (protobuf) and OTLP/gRPC on 127.0.0.1.

    with OTLPReceiver() as rx:
        exporter = OTLPSpanExporter(endpoint=rx.http_endpoint + "/v1/traces")
        ...
        spans = rx.wait_for(lambda r: r.spans())

Requests are decoded with the generated ``opentelemetry.proto`` classes and kept as-is;
``spans()``, ``metrics()`` and ``logs()`` flatten them into plain dataclasses on demand.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, cast

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2

from .net import LOOPBACK, BlackholeServer, free_port

__all__ = [
    "BlackholeServer",
    "MetricKind",
    "OTLPReceiver",
    "ReceivedLogRecord",
    "ReceivedMetricPoint",
    "ReceivedSpan",
    "Signal",
    "Transport",
    "decode_any_value",
    "decode_attributes",
    "free_port",
]

_log = logging.getLogger(__name__)

Signal = Literal["traces", "metrics", "logs"]
Transport = Literal["http", "grpc"]
MetricKind = Literal["sum", "gauge", "histogram", "exponential_histogram", "summary"]
T = TypeVar("T")

SIGNALS: tuple[Signal, ...] = ("traces", "metrics", "logs")
TRANSPORTS: tuple[Transport, ...] = ("http", "grpc")

_HTTP_PATHS: dict[str, Signal] = {
    "/v1/traces": "traces",
    "/v1/metrics": "metrics",
    "/v1/logs": "logs",
}
_REQUEST_TYPES: dict[Signal, type[Message]] = {
    "traces": trace_service_pb2.ExportTraceServiceRequest,
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
    "logs": logs_service_pb2.ExportLogsServiceRequest,
}
_RESPONSE_TYPES: dict[Signal, type[Message]] = {
    "traces": trace_service_pb2.ExportTraceServiceResponse,
    "metrics": metrics_service_pb2.ExportMetricsServiceResponse,
    "logs": logs_service_pb2.ExportLogsServiceResponse,
}
_PROTOBUF = "application/x-protobuf"
_POLL_SECONDS = 0.05
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


# --------------------------------------------------------------------------- decoded records


@dataclass(frozen=True, kw_only=True)
class ReceivedSpan:
    """One span as received, with ids as lowercase hex and attributes as Python values."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, object]
    events: list[tuple[str, dict[str, object]]]
    status_code: int
    resource: dict[str, object]
    scope: str
    transport: Transport

    @property
    def url_path(self) -> str:
        """A server span's request path: ``url.path`` (stable HTTP conventions, FastAPI's
        native telemetry), else ``http.target`` (opentelemetry-instrumentation-asgi's default
        conventions, what tasklens's own request spans use on FastAPI < 0.142), query cut."""
        value = self.attributes.get("url.path") or self.attributes.get("http.target") or ""
        return str(value).split("?", 1)[0]


@dataclass(frozen=True, kw_only=True)
class ReceivedMetricPoint:
    """One data point of one metric, flattened with its metric's metadata.

    ``value`` is set for sum and gauge points; ``count``/``sum`` for histogram-like points;
    ``bucket_counts``/``explicit_bounds`` for explicit-bucket histograms only. Exemplars are
    dicts with ``trace_id`` and ``span_id`` (hex, "" if absent) and ``value``.
    """

    name: str
    kind: MetricKind
    attributes: dict[str, object]
    value: float | None = None
    count: int | None = None
    sum: float | None = None
    bucket_counts: list[int] = field(default_factory=list)
    explicit_bounds: list[float] = field(default_factory=list)
    exemplars: list[dict[str, object]] = field(default_factory=list)
    is_monotonic: bool | None = None
    temporality: int | None = None
    resource: dict[str, object]
    scope: str
    transport: Transport


@dataclass(frozen=True, kw_only=True)
class ReceivedLogRecord:
    """One log record. ``body`` is the string body ("" if unset, ``str()`` of other types)."""

    body: str
    attributes: dict[str, object]
    trace_id: str
    span_id: str
    severity_text: str
    severity_number: int
    resource: dict[str, object]
    scope: str
    transport: Transport


def decode_any_value(value: AnyValue) -> object:
    """Convert an OTLP ``AnyValue`` to Python (str/bool/int/float/bytes/list/dict/None)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [decode_any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return decode_attributes(value.kvlist_value.values)
    return getattr(value, kind)


def decode_attributes(attributes: Iterable[KeyValue]) -> dict[str, object]:
    """Convert repeated OTLP ``KeyValue`` to a dict."""
    return {kv.key: decode_any_value(kv.value) for kv in attributes}


def _flatten_spans(
    transport: Transport, request: trace_service_pb2.ExportTraceServiceRequest
) -> list[ReceivedSpan]:
    out: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = decode_attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=span.kind,
                        attributes=decode_attributes(span.attributes),
                        events=[(e.name, decode_attributes(e.attributes)) for e in span.events],
                        status_code=span.status.code,
                        resource=dict(resource),
                        scope=scope_spans.scope.name,
                        transport=transport,
                    )
                )
    return out


def _number_value(point: metrics_pb2.NumberDataPoint | metrics_pb2.Exemplar) -> float | None:
    which = point.WhichOneof("value")
    return None if which is None else float(getattr(point, which))


def _exemplars(points: Iterable[metrics_pb2.Exemplar]) -> list[dict[str, object]]:
    return [
        {"trace_id": e.trace_id.hex(), "span_id": e.span_id.hex(), "value": _number_value(e)}
        for e in points
    ]


def _flatten_metric(
    metric: metrics_pb2.Metric, resource: dict[str, object], scope: str, transport: Transport
) -> list[ReceivedMetricPoint]:
    def point(
        kind: MetricKind, attributes: Iterable[KeyValue], **fields: Any
    ) -> ReceivedMetricPoint:
        return ReceivedMetricPoint(
            name=metric.name,
            kind=kind,
            attributes=decode_attributes(attributes),
            resource=dict(resource),
            scope=scope,
            transport=transport,
            **fields,
        )

    data = metric.WhichOneof("data")
    if data == "sum":
        return [
            point(
                "sum",
                p.attributes,
                value=_number_value(p),
                exemplars=_exemplars(p.exemplars),
                is_monotonic=metric.sum.is_monotonic,
                temporality=metric.sum.aggregation_temporality,
            )
            for p in metric.sum.data_points
        ]
    if data == "gauge":
        return [
            point("gauge", p.attributes, value=_number_value(p), exemplars=_exemplars(p.exemplars))
            for p in metric.gauge.data_points
        ]
    if data == "histogram":
        return [
            point(
                "histogram",
                p.attributes,
                count=p.count,
                sum=p.sum if p.HasField("sum") else None,
                bucket_counts=list(p.bucket_counts),
                explicit_bounds=list(p.explicit_bounds),
                exemplars=_exemplars(p.exemplars),
                temporality=metric.histogram.aggregation_temporality,
            )
            for p in metric.histogram.data_points
        ]
    if data == "exponential_histogram":
        return [
            point(
                "exponential_histogram",
                p.attributes,
                count=p.count,
                sum=p.sum if p.HasField("sum") else None,
                exemplars=_exemplars(p.exemplars),
                temporality=metric.exponential_histogram.aggregation_temporality,
            )
            for p in metric.exponential_histogram.data_points
        ]
    if data == "summary":
        return [
            point("summary", p.attributes, count=p.count, sum=p.sum)
            for p in metric.summary.data_points
        ]
    return []


def _flatten_metrics(
    transport: Transport, request: metrics_service_pb2.ExportMetricsServiceRequest
) -> list[ReceivedMetricPoint]:
    out: list[ReceivedMetricPoint] = []
    for resource_metrics in request.resource_metrics:
        resource = decode_attributes(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                out.extend(_flatten_metric(metric, resource, scope_metrics.scope.name, transport))
    return out


def _flatten_logs(
    transport: Transport, request: logs_service_pb2.ExportLogsServiceRequest
) -> list[ReceivedLogRecord]:
    out: list[ReceivedLogRecord] = []
    for resource_logs in request.resource_logs:
        resource = decode_attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                body = decode_any_value(record.body)
                out.append(
                    ReceivedLogRecord(
                        body="" if body is None else body if isinstance(body, str) else str(body),
                        attributes=decode_attributes(record.attributes),
                        trace_id=record.trace_id.hex(),
                        span_id=record.span_id.hex(),
                        severity_text=record.severity_text,
                        severity_number=record.severity_number,
                        resource=dict(resource),
                        scope=scope_logs.scope.name,
                        transport=transport,
                    )
                )
    return out


# --------------------------------------------------------------------------- HTTP transport


class _OTLPHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers open connections so ``close()`` can cut them."""

    daemon_threads = True

    def __init__(self, receiver: OTLPReceiver) -> None:
        self.receiver = receiver
        self._conn_lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        super().__init__((LOOPBACK, 0), _OTLPHTTPHandler)

    def track(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._connections[conn] = threading.current_thread()

    def untrack(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._connections.pop(conn, None)

    def close_connections(self, timeout: float) -> None:
        """Shut down every open keep-alive connection and wait for its handler thread."""
        with self._conn_lock:
            open_connections = list(self._connections.items())
        for conn, _ in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _, thread in open_connections:
            thread.join(max(0.0, deadline - time.monotonic()))


class _OTLPHTTPHandler(BaseHTTPRequestHandler):
    """Handles ``POST /v1/{traces,metrics,logs}`` with protobuf bodies (optionally gzip)."""

    protocol_version = "HTTP/1.1"
    server: _OTLPHTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def do_POST(self) -> None:
        receiver = self.server.receiver
        signal = _HTTP_PATHS.get(self.path.split("?", 1)[0])
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        if length < 0:
            self._reject(HTTPStatus.LENGTH_REQUIRED, "Content-Length required", close=True)
            return
        body = self.rfile.read(length)
        if signal is None:
            self._reject(HTTPStatus.NOT_FOUND, f"unknown OTLP path {self.path!r}")
            return
        content_type = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if content_type != _PROTOBUF:
            unsupported = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
            self._reject(unsupported, f"only {_PROTOBUF} is supported, got {content_type!r}")
            return
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding not in ("", "identity"):
                self._reject(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"bad encoding {encoding!r}")
                return
            request = _REQUEST_TYPES[signal].FromString(body)
        except (OSError, EOFError, zlib.error, DecodeError) as exc:
            self._reject(HTTPStatus.BAD_REQUEST, f"cannot decode {signal} request: {exc}")
            return
        if not receiver._accept("http", signal, request):
            receiver._stall(lambda: True)
            self.close_connection = True  # hang up without answering
            return
        self._send(HTTPStatus.OK, _RESPONSE_TYPES[signal]().SerializeToString())

    def _reject(self, status: HTTPStatus, message: str, *, close: bool = False) -> None:
        self.server.receiver._note_rejection(f"http {self.command} {self.path}: {status} {message}")
        self.close_connection = close or self.close_connection
        error = status_pb2.Status(code=status.value, message=message)
        self._send(status, error.SerializeToString())

    def _send(self, status: HTTPStatus, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", _PROTOBUF)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        _log.debug("otlp-http %s - " + format, self.address_string(), *args)


# --------------------------------------------------------------------------- gRPC transport


class _TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OTLPReceiver) -> None:
        self._receiver = receiver

    def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.ServicerContext,
    ) -> Message:
        return self._receiver._grpc_export("traces", request, context)


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OTLPReceiver) -> None:
        self._receiver = receiver

    def Export(
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: grpc.ServicerContext,
    ) -> Message:
        return self._receiver._grpc_export("metrics", request, context)


class _LogsServicer(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, receiver: OTLPReceiver) -> None:
        self._receiver = receiver

    def Export(
        self,
        request: logs_service_pb2.ExportLogsServiceRequest,
        context: grpc.ServicerContext,
    ) -> Message:
        return self._receiver._grpc_export("logs", request, context)


# --------------------------------------------------------------------------- the receiver


class OTLPReceiver:
    """OTLP/HTTP + OTLP/gRPC receiver on 127.0.0.1 (free ports), for use as a context manager.

    ``blackhole=True`` (also settable later via ``rx.blackhole``) makes both transports
    count incoming requests but neither store nor answer them until the receiver closes;
    exporters then run into their own timeouts.
    """

    def __init__(self, *, blackhole: bool = False) -> None:
        self._lock = threading.Lock()
        self._received: list[tuple[Transport, Signal, Message]] = []
        self._requests = self._zero_counters()
        self._rejections: list[str] = []
        self._blackhole = blackhole
        self._closing = threading.Event()
        self._http_server: _OTLPHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._grpc_server: grpc.Server | None = None
        self._grpc_executor: futures.ThreadPoolExecutor | None = None
        self._grpc_port: int | None = None

    # -- lifecycle

    def start(self) -> Self:
        """Start both servers; on failure, whatever started is stopped again."""
        if self._http_server is not None or self._grpc_server is not None:
            raise RuntimeError("OTLPReceiver already started")
        self._closing.clear()
        try:
            self._start_http()
            self._start_grpc()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop both servers, release stalled (blackholed) requests and join threads."""
        self._closing.set()
        if self._http_server is not None:
            if self._http_thread is not None:
                self._http_server.shutdown()  # ends serve_forever (it polls every 50 ms)
                self._http_thread.join(timeout=5.0)
            self._http_server.close_connections(timeout=5.0)
            self._http_server.server_close()
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=0.5).wait(timeout=5.0)
        if self._grpc_executor is not None:
            self._grpc_executor.shutdown(wait=True, cancel_futures=True)
        self._http_server = self._http_thread = None
        self._grpc_server = self._grpc_executor = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _start_http(self) -> None:
        server = _OTLPHTTPServer(self)
        self._http_server = server
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": _POLL_SECONDS},
            name="otlp-receiver-http",
            daemon=True,
        )
        thread.start()
        self._http_thread = thread

    def _start_grpc(self) -> None:
        self._grpc_executor = futures.ThreadPoolExecutor(
            max_workers=8, thread_name_prefix="otlp-receiver-grpc"
        )
        server = grpc.server(
            self._grpc_executor,
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ],
        )
        self._grpc_server = server
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _MetricsServicer(self), server
        )
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsServicer(self), server)
        port = server.add_insecure_port(f"{LOOPBACK}:0")
        if not port:
            raise RuntimeError("OTLPReceiver: could not bind a gRPC port on 127.0.0.1")
        self._grpc_port = port
        server.start()

    # -- endpoints

    @property
    def http_endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` (append ``/v1/traces`` etc. for the HTTP exporters)."""
        if self._http_server is None:
            raise RuntimeError("OTLPReceiver is not started")
        return f"http://{LOOPBACK}:{self._http_server.server_address[1]}"

    @property
    def grpc_endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` (use with ``insecure=True`` on the gRPC exporters)."""
        if self._grpc_server is None or self._grpc_port is None:
            raise RuntimeError("OTLPReceiver is not started")
        return f"http://{LOOPBACK}:{self._grpc_port}"

    @property
    def blackhole(self) -> bool:
        """While true, requests are counted but not stored or answered (until close)."""
        with self._lock:
            return self._blackhole

    @blackhole.setter
    def blackhole(self, value: bool) -> None:
        with self._lock:
            self._blackhole = value

    # -- recorded data

    @property
    def requests(self) -> dict[str, dict[str, int]]:
        """Snapshot of decoded requests, e.g. ``rx.requests["grpc"]["traces"]``."""
        with self._lock:
            return {transport: dict(counts) for transport, counts in self._requests.items()}

    @property
    def rejections(self) -> list[str]:
        """Requests answered with an HTTP error (bad path, content type, body), for debugging."""
        with self._lock:
            return list(self._rejections)

    def export_requests(self, signal: Signal) -> list[tuple[Transport, Message]]:
        """The raw decoded ``Export*ServiceRequest`` messages of one signal, in arrival order."""
        with self._lock:
            return [(t, req) for t, s, req in self._received if s == signal]

    def spans(self) -> list[ReceivedSpan]:
        """All received spans, in arrival order."""
        return [
            span
            for transport, request in self.export_requests("traces")
            for span in _flatten_spans(
                transport, cast(trace_service_pb2.ExportTraceServiceRequest, request)
            )
        ]

    def metrics(self) -> list[ReceivedMetricPoint]:
        """All received metric data points, in arrival order (one entry per point)."""
        return [
            point
            for transport, request in self.export_requests("metrics")
            for point in _flatten_metrics(
                transport, cast(metrics_service_pb2.ExportMetricsServiceRequest, request)
            )
        ]

    def logs(self) -> list[ReceivedLogRecord]:
        """All received log records, in arrival order."""
        return [
            record
            for transport, request in self.export_requests("logs")
            for record in _flatten_logs(
                transport, cast(logs_service_pb2.ExportLogsServiceRequest, request)
            )
        ]

    def clear(self) -> None:
        """Forget all received data, counters and rejections."""
        with self._lock:
            self._received.clear()
            self._requests = self._zero_counters()
            self._rejections.clear()

    def wait_for(self, predicate: Callable[[OTLPReceiver], T], timeout: float = 10.0) -> T:
        """Poll ``predicate(self)`` every 50 ms until truthy and return its value.

        Raises AssertionError (with a summary of what did arrive) on timeout. Exceptions
        raised by the predicate propagate immediately.
        """
        deadline = time.monotonic() + timeout
        while True:
            result = predicate(self)
            if result:
                return result
            if time.monotonic() >= deadline:
                name = getattr(predicate, "__qualname__", repr(predicate))
                raise AssertionError(
                    f"OTLPReceiver.wait_for({name}) still falsy after {timeout:g}s "
                    f"(last value {result!r}); received so far: {self.summary()}"
                )
            time.sleep(_POLL_SECONDS)

    def summary(self) -> str:
        """One-line description of everything received, for failure messages."""
        spans = self.spans()
        metrics = self.metrics()
        logs = self.logs()
        span_names = sorted({s.name for s in spans})
        metric_names = sorted({m.name for m in metrics})
        return (
            f"requests={self.requests}, {len(spans)} spans {span_names}, "
            f"{len(metrics)} metric points {metric_names}, {len(logs)} log records, "
            f"rejections={self.rejections}"
        )

    # -- internals shared by both transports

    @staticmethod
    def _zero_counters() -> dict[Transport, dict[Signal, int]]:
        return {transport: dict.fromkeys(SIGNALS, 0) for transport in TRANSPORTS}

    def _accept(self, transport: Transport, signal: Signal, request: Message) -> bool:
        """Count a decoded request; store it and return True unless blackholed."""
        with self._lock:
            self._requests[transport][signal] += 1
            if self._blackhole:
                return False
            self._received.append((transport, signal, request))
            return True

    def _stall(self, still_waiting: Callable[[], bool]) -> None:
        """Block a blackholed request until close() or until ``still_waiting()`` is false."""
        while not self._closing.wait(_POLL_SECONDS) and still_waiting():
            pass

    def _note_rejection(self, message: str) -> None:
        _log.debug("OTLPReceiver rejected a request: %s", message)
        with self._lock:
            self._rejections.append(message)

    def _grpc_export(
        self, signal: Signal, request: Message, context: grpc.ServicerContext
    ) -> Message:
        if not self._accept("grpc", signal, request):
            self._stall(context.is_active)
            context.abort(grpc.StatusCode.UNAVAILABLE, "OTLPReceiver is in blackhole mode")
        return _RESPONSE_TYPES[signal]()
