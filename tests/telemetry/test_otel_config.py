"""``tasklens.setup()`` and the standard OpenTelemetry configuration: service name precedence,
``OTEL_SDK_DISABLED``, ``OTEL_{TRACES,METRICS}_EXPORTER``, providers set before, attribute
length limits.

Providers are process-global and can be set once, so each case runs ``setup()`` in a fresh
interpreter and reports what it built (threads, providers, warnings) as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode
from prometheus_client import CollectorRegistry

from tasklens.telemetry.export import CountingBatchSpanProcessor
from tasklens.telemetry.metrics import TaskMetrics
from tasklens.telemetry.setup import DEFAULT_ATTRIBUTE_LENGTH_LIMIT, span_limits
from tests.support.server import REPO, clean_env

# Reports what setup() left behind: the handle, the global providers, the threads it
# started and every warning logged or raised while it ran.
_REPORT = """
import json, logging, threading, warnings
from opentelemetry import metrics, trace
records = []
class Keep(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING and record.name != "app":
            records.append(record.getMessage())
logging.getLogger().addHandler(Keep())
logging.getLogger().setLevel(logging.WARNING)
warnings.simplefilter("always")
before = {t.ident for t in threading.enumerate()}
with warnings.catch_warnings(record=True) as caught:
    {setup}
    trace.get_tracer("probe").start_span("probe-span").end()
    logging.getLogger("app").warning("a warning")
    handle.force_flush()
# Thread names of the SDK's batch span processor differ between releases.
kinds = {"OtelBatchSpan": "spans", "OtelBatchLog": "logs",
         "OtelPeriodicExportingMetricReader": "sdk-metrics",
         "tasklens-otlp-metrics": "tasklens-metrics"}
threads = sorted(
    next((kind for prefix, kind in kinds.items() if t.name.startswith(prefix)), t.name)
    for t in threading.enumerate() if t.ident not in before
)
tp, mp = trace.get_tracer_provider(), metrics.get_meter_provider()
print(json.dumps({
    "service_name": handle.service_name,
    "resource_service_name": dict(getattr(tp, "resource", None).attributes).get("service.name")
        if hasattr(tp, "resource") else None,
    "exporting": handle.exporting,
    "tracer_provider": type(tp).__name__,
    "meter_provider": type(mp).__name__,
    "meter_provider_is_ours": mp is handle.meter_provider,
    "threads": threads,
    "warnings": records + [str(w.message) for w in caught],
}))
"""


def _run(setup: str = "handle = tasklens.setup()", **env: str) -> dict:
    code = _REPORT.replace("{setup}", "import tasklens\n    " + setup.replace("\n", "\n    "))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=clean_env(**env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "stdout": proc.stdout}


# An endpoint nothing listens on: exporters are built, exports fail fast and are counted.
_ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}


@pytest.mark.parametrize(
    ("setup", "env", "expected"),
    [
        ("handle = tasklens.setup()", {}, "tasklens-app"),
        ("handle = tasklens.setup()", {"OTEL_SERVICE_NAME": "from-env"}, "from-env"),
        (
            "handle = tasklens.setup()",
            {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=from-attrs"},
            "from-attrs",
        ),
        (
            "handle = tasklens.setup()",
            {"OTEL_SERVICE_NAME": "from-env", "OTEL_RESOURCE_ATTRIBUTES": "service.name=x"},
            "from-env",
        ),
        # Code configuration wins over the environment, as in the SDK's Resource.create.
        ("handle = tasklens.setup(service_name='code')", {"OTEL_SERVICE_NAME": "env"}, "code"),
    ],
    ids=["default", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "both", "explicit"],
)
def test_service_name_precedence(setup: str, env: dict[str, str], expected: str) -> None:
    report = _run(setup, OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", **env)
    assert report["service_name"] == expected
    assert report["resource_service_name"] == expected


def test_sdk_disabled_installs_nothing() -> None:
    report = _run(OTEL_SDK_DISABLED="true", **_ENDPOINT)
    assert report["tracer_provider"] == "ProxyTracerProvider"
    assert report["meter_provider"] == "_ProxyMeterProvider"
    assert report["exporting"] == []
    assert report["threads"] == []
    assert report["warnings"] == []


@pytest.mark.parametrize(
    ("env", "exporting", "threads"),
    [
        (
            {},
            ["traces: OTLP http/protobuf", "metrics: OTLP http/protobuf"],
            ["spans", "sdk-metrics", "tasklens-metrics"],
        ),
        (
            {"OTEL_TRACES_EXPORTER": "none"},
            ["metrics: OTLP http/protobuf"],
            ["sdk-metrics", "tasklens-metrics"],
        ),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}, [], []),
        (
            {"OTEL_TRACES_EXPORTER": "console, otlp", "OTEL_METRICS_EXPORTER": "prometheus"},
            ["traces: console", "traces: OTLP http/protobuf"],
            ["spans", "spans"],
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
            ["traces: OTLP grpc", "metrics: OTLP http/protobuf"],
            ["spans", "sdk-metrics", "tasklens-metrics"],
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "none",
                "OTEL_METRICS_EXPORTER": "none",
                "OTEL_LOGS_EXPORTER": "console,otlp",
            },
            ["logs: console", "logs: OTLP http/protobuf"],
            ["logs", "logs"],
        ),
    ],
    ids=["default", "traces-none", "all-none", "console-list", "per-signal-protocol", "logs"],
)
def test_exporter_variables_choose_the_exporters(
    env: dict[str, str], exporting: list[str], threads: list[str]
) -> None:
    report = _run(**_ENDPOINT, OTEL_METRIC_EXPORT_INTERVAL="600000", **env)
    assert report["exporting"] == exporting
    assert _exporter_threads(report) == sorted(threads)
    if "console" in env.get("OTEL_TRACES_EXPORTER", ""):
        assert '"name": "probe-span"' in report["stdout"]  # the SDK's console exporter
    if "console" in env.get("OTEL_LOGS_EXPORTER", ""):
        assert '"body": "a warning"' in report["stdout"]


def _exporter_threads(report: dict) -> list[str]:
    """The exporter threads (a grpc or http client may start pool threads of its own)."""
    kinds = ("spans", "sdk-metrics", "tasklens-metrics", "logs")
    return sorted(t for t in report["threads"] if t in kinds)


def test_console_without_endpoint_and_none_turns_span_logs_off() -> None:
    assert _run(OTEL_TRACES_EXPORTER="none")["exporting"] == []
    assert _run()["exporting"] == ["traces: log lines"]  # nothing chosen: today's default


@pytest.mark.parametrize(
    ("variable", "value", "supported"),
    [
        ("OTEL_TRACES_EXPORTER", "otlp,zipkin", "console, none, otlp"),
        ("OTEL_LOGS_EXPORTER", "zipkin", "console, none, otlp"),
    ],
)
def test_unknown_exporter_is_a_clear_error_and_installs_nothing(
    variable: str, value: str, supported: str
) -> None:
    code = (
        "import tasklens\n"
        "from opentelemetry import trace\n"
        "try:\n"
        "    tasklens.setup()\n"
        "except ValueError as e:\n"
        "    print(e)\n"
        "print(type(trace.get_tracer_provider()).__name__)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", **{variable: value}),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.splitlines() == [
        f"{variable}={value!r}: unknown exporter 'zipkin'; tasklens supports {supported}",
        "ProxyTracerProvider",  # nothing installed before the error
    ]


_USER_PROVIDERS = """from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
user_mp = MeterProvider(metric_readers=[InMemoryMetricReader()])
metrics.set_meter_provider(user_mp)
trace.set_tracer_provider(TracerProvider(resource=Resource.create({"service.name": "user"})))
handle = tasklens.setup()
assert metrics.get_meter_provider() is user_mp"""


def test_providers_set_earlier_are_used_not_duplicated() -> None:
    report = _run(_USER_PROVIDERS, **_ENDPOINT, OTEL_METRIC_EXPORT_INTERVAL="600000")
    # No "Overriding of current MeterProvider is not allowed" (exports to the dead endpoint
    # do warn).
    assert [w for w in report["warnings"] if "Overrid" in w] == []
    assert report["meter_provider_is_ours"] is False
    assert report["meter_provider"] == "MeterProvider"
    # tasklens's own metrics still go out over OTLP (their exporter); no second provider
    # with its own periodic reader thread.
    assert _exporter_threads(report) == ["tasklens-metrics"]
    assert report["exporting"] == ["metrics: OTLP http/protobuf"]
    assert report["service_name"] == "user"


# --------------------------------------------------------------------- attribute length limits


def _failed_span(message: str) -> tuple[dict, dict]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=span_limits())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("task", end_on_exit=True) as span:
        span.set_attribute("big", message)
        span.record_exception(ValueError(message))
    (finished,) = exporter.get_finished_spans()
    return dict(finished.attributes or {}), dict(finished.events[0].attributes or {})


_BIG = "x" * 50_000


def test_attribute_values_are_bounded_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", raising=False)
    monkeypatch.delenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", raising=False)
    attributes, event = _failed_span(_BIG)
    assert DEFAULT_ATTRIBUTE_LENGTH_LIMIT == 4096
    assert len(attributes["big"]) == 4096
    assert event["exception.message"] == "x" * 4096
    assert len(event["exception.stacktrace"]) == 4096


def test_attribute_length_variables_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "100")
    monkeypatch.delenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", raising=False)
    attributes, event = _failed_span(_BIG)
    assert (len(attributes["big"]), len(event["exception.message"])) == (100, 100)

    monkeypatch.delenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT")
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "200")
    attributes, event = _failed_span(_BIG)
    # The span-only variable bounds span attributes; event attributes keep the default.
    assert (len(attributes["big"]), len(event["exception.message"])) == (200, 4096)


def test_status_description_is_bounded_like_span_attributes() -> None:
    """The SDK's limits skip the status description (the exception message, 50 KB here);
    setup()'s processors bound it to the span attribute limit."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=span_limits())
    metrics = TaskMetrics(CollectorRegistry())
    processor = CountingBatchSpanProcessor(exporter, metrics, status_limit=4096)
    provider.add_span_processor(processor)
    with provider.get_tracer("t").start_as_current_span("task") as span:
        span.set_status(Status(StatusCode.ERROR, "ValueError: " + _BIG))
    provider.force_flush()
    (finished,) = exporter.get_finished_spans()
    assert finished.status.status_code is StatusCode.ERROR
    assert finished.status.description == ("ValueError: " + _BIG)[:4096]
    provider.shutdown()
