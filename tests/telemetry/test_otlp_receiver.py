"""The test OTLP receiver, driven by the real OpenTelemetry SDK exporters (no mocks)."""

from __future__ import annotations

import gzip
import math
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator

import grpc
import httpx
import pytest
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
    OTLPLogExporter as GRPCLogExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GRPCMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GRPCSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression as HTTPCompression
from opentelemetry.exporter.otlp.proto.http._log_exporter import (
    OTLPLogExporter as HTTPLogExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HTTPMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HTTPSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

from tests.support.otlp_receiver import (
    BlackholeServer,
    OTLPReceiver,
    ReceivedMetricPoint,
    ReceivedSpan,
    Transport,
    free_port,
)

try:
    from opentelemetry.sdk._logs.export import LogRecordExporter
except ImportError:  # opentelemetry-sdk < 1.39 names it LogExporter
    from opentelemetry.sdk._logs.export import LogExporter as LogRecordExporter  # type: ignore

AnySpanExporter = HTTPSpanExporter | GRPCSpanExporter
TRANSPORTS: tuple[Transport, ...] = ("http", "grpc")
RESOURCE = {"service.name": "tasklens-tests", "deployment.environment": "test"}
EXPORT_TIMEOUT = 5.0
CUMULATIVE = AggregationTemporality.CUMULATIVE.value  # same number as in the OTLP proto


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep OTEL_* settings and proxies from the outer environment away from the exporters."""
    for name in list(os.environ):
        lowered = name.lower()
        if name.startswith("OTEL_") or lowered.endswith("_proxy") or lowered == "grpc_proxy":
            monkeypatch.delenv(name)


@pytest.fixture
def rx() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as receiver:
        yield receiver


def span_exporter(
    rx: OTLPReceiver,
    transport: Transport,
    *,
    timeout: float = EXPORT_TIMEOUT,
    compressed: bool = False,
) -> AnySpanExporter:
    if transport == "http":
        return HTTPSpanExporter(
            endpoint=f"{rx.http_endpoint}/v1/traces",
            timeout=timeout,
            compression=HTTPCompression.Gzip if compressed else None,
        )
    return GRPCSpanExporter(
        endpoint=rx.grpc_endpoint,
        insecure=True,
        timeout=timeout,
        compression=grpc.Compression.Gzip if compressed else None,
    )


def metric_exporter(rx: OTLPReceiver, transport: Transport) -> MetricExporter:
    if transport == "http":
        return HTTPMetricExporter(endpoint=f"{rx.http_endpoint}/v1/metrics", timeout=EXPORT_TIMEOUT)
    return GRPCMetricExporter(endpoint=rx.grpc_endpoint, insecure=True, timeout=EXPORT_TIMEOUT)


def log_exporter(rx: OTLPReceiver, transport: Transport) -> LogRecordExporter:
    if transport == "http":
        return HTTPLogExporter(endpoint=f"{rx.http_endpoint}/v1/logs", timeout=EXPORT_TIMEOUT)
    return GRPCLogExporter(endpoint=rx.grpc_endpoint, insecure=True, timeout=EXPORT_TIMEOUT)


def hex_trace_id(span: trace_api.Span) -> str:
    return format(span.get_span_context().trace_id, "032x")


def hex_span_id(span: trace_api.Span) -> str:
    return format(span.get_span_context().span_id, "016x")


def export_parent_and_child(exporter: AnySpanExporter) -> tuple[str, str, str]:
    """Export a server span with one child through ``exporter``; return (trace, parent, child)."""
    provider = TracerProvider(resource=Resource.create(RESOURCE))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tasklens.tests")
    try:
        with (
            tracer.start_as_current_span(
                "POST /signup", kind=SpanKind.SERVER, attributes={"http.route": "/signup"}
            ) as parent,
            tracer.start_as_current_span(
                "bgtask send_email",
                attributes={
                    "bgtask.name": "send_email",
                    "bgtask.attempt": 2,
                    "bgtask.sync": False,
                    "bgtask.queue_seconds": 0.25,
                    "bgtask.tags": ["mail", "signup"],
                },
            ) as child,
        ):
            child.add_event("retry", {"bgtask.attempt": 1})
            child.set_status(Status(StatusCode.ERROR, "smtp down"))
        assert provider.force_flush(5_000)
    finally:
        provider.shutdown()
    return hex_trace_id(parent), hex_span_id(parent), hex_span_id(child)


def by_name(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {span.name: span for span in spans}


# --------------------------------------------------------------------------- traces


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_spans_arrive_with_exact_ids_and_attributes(rx: OTLPReceiver, transport: Transport) -> None:
    trace_id, parent_id, child_id = export_parent_and_child(span_exporter(rx, transport))

    spans = by_name(rx.wait_for(lambda r: len(r.spans()) == 2 and r.spans()))

    parent, child = spans["POST /signup"], spans["bgtask send_email"]
    assert parent.trace_id == child.trace_id == trace_id
    assert len(trace_id) == 32 and trace_id == trace_id.lower()
    assert (parent.span_id, parent.parent_span_id) == (parent_id, "")
    assert (child.span_id, child.parent_span_id) == (child_id, parent_id)
    assert parent.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert child.kind == Span.SpanKind.SPAN_KIND_INTERNAL
    assert parent.attributes == {"http.route": "/signup"}
    assert child.attributes == {
        "bgtask.name": "send_email",
        "bgtask.attempt": 2,
        "bgtask.sync": False,
        "bgtask.queue_seconds": 0.25,
        "bgtask.tags": ["mail", "signup"],
    }
    assert child.events == [("retry", {"bgtask.attempt": 1})]
    assert child.status_code == 2  # STATUS_CODE_ERROR
    assert parent.status_code == 0  # STATUS_CODE_UNSET
    assert {s.scope for s in spans.values()} == {"tasklens.tests"}
    assert {s.transport for s in spans.values()} == {transport}
    for span in spans.values():
        assert span.resource["service.name"] == "tasklens-tests"
        assert span.resource["deployment.environment"] == "test"
    other: Transport = "grpc" if transport == "http" else "http"
    # SimpleSpanProcessor exports each span on end: one request per span.
    assert rx.requests[transport] == {"traces": 2, "metrics": 0, "logs": 0}
    assert rx.requests[other] == {"traces": 0, "metrics": 0, "logs": 0}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_gzip_compressed_exports(rx: OTLPReceiver, transport: Transport) -> None:
    trace_id, _, child_id = export_parent_and_child(span_exporter(rx, transport, compressed=True))

    spans = rx.wait_for(lambda r: len(r.spans()) == 2 and r.spans())
    assert {s.trace_id for s in spans} == {trace_id}
    assert by_name(spans)["bgtask send_email"].span_id == child_id


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_counter_and_histogram_values(rx: OTLPReceiver, transport: Transport) -> None:
    tracer_provider = TracerProvider()  # no processors: only gives the exemplar a sampled span
    reader = PeriodicExportingMetricReader(
        metric_exporter(rx, transport), export_interval_millis=math.inf
    )
    provider = MeterProvider(metric_readers=[reader], resource=Resource.create(RESOURCE))
    try:
        meter = provider.get_meter("tasklens.tests")
        enqueued = meter.create_counter("bgtask_enqueued", unit="1")
        duration = meter.create_histogram(
            "bgtask_duration_seconds", unit="s", explicit_bucket_boundaries_advisory=[0.1, 1, 10]
        )
        for _ in range(3):
            enqueued.add(1, {"task": "send_email"})
        duration.record(0.25, {"task": "send_email"})
        with tracer_provider.get_tracer("t").start_as_current_span("task") as span:
            duration.record(2.5, {"task": "send_email"})
        assert provider.force_flush(5_000)

        points = rx.wait_for(lambda r: {p.name: p for p in r.metrics()} if r.metrics() else None)
    finally:
        provider.shutdown()
        tracer_provider.shutdown()

    assert set(points) == {"bgtask_enqueued", "bgtask_duration_seconds"}
    counter = points["bgtask_enqueued"]
    assert counter == ReceivedMetricPoint(
        name="bgtask_enqueued",
        kind="sum",
        attributes={"task": "send_email"},
        value=3.0,
        is_monotonic=True,
        temporality=CUMULATIVE,
        resource=counter.resource,
        scope="tasklens.tests",
        transport=transport,
    )
    assert counter.resource["service.name"] == "tasklens-tests"

    histogram = points["bgtask_duration_seconds"]
    assert histogram.kind == "histogram"
    assert histogram.attributes == {"task": "send_email"}
    assert histogram.value is None
    assert histogram.count == 2
    assert histogram.sum == 2.75
    assert histogram.explicit_bounds == [0.1, 1.0, 10.0]
    assert histogram.bucket_counts == [0, 1, 1, 0]
    assert histogram.temporality == CUMULATIVE
    assert histogram.is_monotonic is None
    assert histogram.exemplars == [
        {"trace_id": hex_trace_id(span), "span_id": hex_span_id(span), "value": 2.5}
    ]
    assert histogram.transport == transport
    assert rx.requests[transport]["metrics"] == 1


# --------------------------------------------------------------------------- logs


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_log_records(rx: OTLPReceiver, transport: Transport) -> None:
    tracer_provider = TracerProvider()
    provider = LoggerProvider(resource=Resource.create(RESOURCE))
    provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter(rx, transport)))
    try:
        with tracer_provider.get_tracer("t").start_as_current_span("task") as span:
            provider.get_logger("tasklens.tests").emit(
                body="task failed", severity_text="ERROR", attributes={"task": "send_email"}
            )
        assert provider.force_flush(5_000)
        (record,) = rx.wait_for(lambda r: r.logs())
    finally:
        provider.shutdown()
        tracer_provider.shutdown()

    assert record.body == "task failed"
    assert record.attributes == {"task": "send_email"}
    assert record.severity_text == "ERROR"
    assert (record.trace_id, record.span_id) == (hex_trace_id(span), hex_span_id(span))
    assert record.scope == "tasklens.tests"
    assert record.resource["service.name"] == "tasklens-tests"
    assert record.transport == transport


# --------------------------------------------------------------------------- raw HTTP protocol


def _raw_trace_request(name: str) -> bytes:
    span = Span(
        trace_id=bytes(range(16)),
        span_id=bytes(range(8)),
        name=name,
        attributes=[KeyValue(key="k", value=AnyValue(int_value=7))],
    )
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
    )
    return request.SerializeToString()


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [(None, lambda b: b), ("gzip", gzip.compress), ("deflate", zlib.compress)],
)
def test_http_protocol_encodings(
    rx: OTLPReceiver, encoding: str | None, compress: Callable[[bytes], bytes]
) -> None:
    headers = {"Content-Type": "application/x-protobuf"}
    if encoding:
        headers["Content-Encoding"] = encoding
    body = compress(_raw_trace_request("raw"))

    response = httpx.post(f"{rx.http_endpoint}/v1/traces", content=body, headers=headers)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    assert ExportTraceServiceResponse.FromString(response.content) == ExportTraceServiceResponse()
    (span,) = rx.spans()
    assert (span.trace_id, span.span_id, span.parent_span_id) == (
        "000102030405060708090a0b0c0d0e0f",
        "0001020304050607",
        "",
    )
    assert span.attributes == {"k": 7}
    assert span.transport == "http"


def test_http_protocol_errors(rx: OTLPReceiver) -> None:
    protobuf = {"Content-Type": "application/x-protobuf"}
    with httpx.Client(base_url=rx.http_endpoint) as client:
        assert client.post("/v1/nope", content=b"", headers=protobuf).status_code == 404
        json_headers = {"Content-Type": "application/json"}
        assert client.post("/v1/traces", content=b"{}", headers=json_headers).status_code == 415
        assert client.post("/v1/traces", content=b"\xff\xff", headers=protobuf).status_code == 400
        bad_gzip = {**protobuf, "Content-Encoding": "gzip"}
        assert client.post("/v1/logs", content=b"nope", headers=bad_gzip).status_code == 400
        # The connection stays usable after errors (keep-alive).
        ok = client.post("/v1/traces", content=_raw_trace_request("after"), headers=protobuf)
        assert ok.status_code == 200

    assert [s.name for s in rx.spans()] == ["after"]
    assert len(rx.rejections) == 4
    assert rx.requests["http"] == {"traces": 1, "metrics": 0, "logs": 0}


# --------------------------------------------------------------------------- helpers


def test_wait_for_returns_value_and_times_out_clearly(rx: OTLPReceiver) -> None:
    assert rx.wait_for(lambda r: 42, timeout=0.1) == 42
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"still falsy after 0\.2s.*0 spans"):
        rx.wait_for(lambda r: r.spans(), timeout=0.2)
    assert time.monotonic() - started < 2


def test_clear_forgets_everything(rx: OTLPReceiver) -> None:
    export_parent_and_child(span_exporter(rx, "grpc"))
    rx.wait_for(lambda r: len(r.spans()) == 2)

    rx.clear()

    assert rx.spans() == [] and rx.metrics() == [] and rx.logs() == []
    assert rx.requests == {
        "http": {"traces": 0, "metrics": 0, "logs": 0},
        "grpc": {"traces": 0, "metrics": 0, "logs": 0},
    }


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_servers_stop_when_the_body_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), OTLPReceiver() as rx:
        ports = [int(rx.http_endpoint.rsplit(":", 1)[1]), int(rx.grpc_endpoint.rsplit(":", 1)[1])]
        assert not any(_refused(port) for port in ports)
        raise RuntimeError("boom")

    assert all(_refused(port) for port in ports)
    assert not [t for t in threading.enumerate() if t.name.startswith("otlp-receiver")]


def test_close_cuts_idle_keep_alive_connections() -> None:
    def handler_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if "process_request_thread" in t.name]

    with httpx.Client() as client:
        rx = OTLPReceiver().start()
        try:
            response = client.post(
                f"{rx.http_endpoint}/v1/traces",
                content=_raw_trace_request("kept-alive"),
                headers={"Content-Type": "application/x-protobuf"},
            )
            assert response.status_code == 200
            assert handler_threads()  # the connection is still open, its thread waits
        finally:
            started = time.monotonic()
            rx.close()
        assert time.monotonic() - started < 1
        assert handler_threads() == []


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# --------------------------------------------------------------------------- black holes


def _one_span() -> list[ReadableSpan]:
    span = TracerProvider().get_tracer("t").start_span("lost")
    span.end()
    assert isinstance(span, ReadableSpan)
    return [span]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_blackhole_server_makes_exporters_time_out(transport: Transport) -> None:
    with BlackholeServer() as hole:
        if transport == "http":
            exporter: AnySpanExporter = HTTPSpanExporter(
                endpoint=f"{hole.endpoint}/v1/traces", timeout=0.3
            )
        else:
            exporter = GRPCSpanExporter(endpoint=hole.endpoint, insecure=True, timeout=0.3)
        started = time.monotonic()
        result = exporter.export(_one_span())
        elapsed = time.monotonic() - started
        exporter.shutdown()
        assert result is SpanExportResult.FAILURE
        assert elapsed < 3
        assert hole.accepted >= 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_receiver_blackhole_mode_counts_but_never_answers(transport: Transport) -> None:
    with OTLPReceiver(blackhole=True) as rx:
        exporter = span_exporter(rx, transport, timeout=0.3)
        started = time.monotonic()
        assert exporter.export(_one_span()) is SpanExportResult.FAILURE
        assert time.monotonic() - started < 3
        assert rx.requests[transport]["traces"] >= 1
        assert rx.spans() == []

        rx.blackhole = False
        assert exporter.export(_one_span()) is SpanExportResult.SUCCESS
        assert [s.name for s in rx.spans()] == ["lost"]
        exporter.shutdown()
