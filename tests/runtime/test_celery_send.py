"""The web side of Celery, in process (a memory broker): which tasks are sent, the errors
at ``add_task`` and at ``instrument``, clock skew on the worker side. The real broker and
workers are tests/e2e/test_celery.py."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from celery import Celery
from fastapi import BackgroundTasks, FastAPI
from fastapi.testclient import TestClient
from opentelemetry.trace import SpanKind

import tasklens
import tasklens.celery
from tasklens.runtime import RuntimeOptions, TaskRunner
from tasklens.runtime.outcomes import EXECUTOR_CELERY
from tests.runtime.helpers import Probe

RAN: list[str] = []
celery_app = Celery("unit", broker="memory://")
celery_app.conf.update(task_publish_retry=False)


@celery_app.task
def notify(email: str, message: str = "") -> None:
    RAN.append(f"{email}:{message}")


@pytest.fixture
def probe() -> Iterator[Probe]:
    RAN.clear()
    probe = Probe()
    yield probe
    probe.close()


def _app(probe: Probe, **options: object) -> FastAPI:
    app = FastAPI()

    @app.post("/notify")
    async def send(background_tasks: BackgroundTasks, bad: str = "") -> dict[str, str]:
        if bad == "positional":
            background_tasks.add_task(notify, object())
        elif bad == "keyword":
            background_tasks.add_task(notify, "a@example.com", message={1, 2})
        else:
            background_tasks.add_task(notify, "a@example.com", message="hi")
        return {"ok": "yes"}

    tasklens.instrument(app, observers=probe.observers(), metrics_path=None, **options)
    probe.mount_metrics(app)
    return app


def test_a_celery_task_is_sent_not_run_when_celery_is_given(probe: Probe) -> None:
    with TestClient(_app(probe, celery=celery_app)) as client:
        assert client.post("/notify").status_code == 200
    assert RAN == []  # not called in the web process: a message went to the broker
    (span,) = probe.task_spans()
    assert span.name == f"bgtask send {notify.name}"
    assert span.kind == SpanKind.PRODUCER
    assert span.attributes is not None
    assert span.attributes["bgtask.executor"] == "broker"
    assert span.attributes["messaging.system"] == "celery"
    assert span.attributes["messaging.destination.name"] == "celery"
    assert span.attributes["bgtask.outcome"] == "success"
    assert (
        probe.samples().value(
            "bgtask_finished_total", task=notify.name, executor="broker", outcome="success"
        )
        == 1
    )


def test_without_the_option_a_celery_task_is_called_inline_as_starlette_does(
    probe: Probe,
) -> None:
    with TestClient(_app(probe)) as client:
        assert client.post("/notify").status_code == 200
    assert RAN == ["a@example.com:hi"]
    (span,) = probe.task_spans()
    assert span.kind == SpanKind.INTERNAL
    assert span.attributes is not None and span.attributes["bgtask.executor"] == "thread_pool"


@pytest.mark.parametrize(
    ("bad", "named", "kind"), [("positional", "'email'", "object"), ("keyword", "'message'", "set")]
)
def test_unserializable_argument_fails_at_add_task_naming_it(
    probe: Probe, bad: str, named: str, kind: str
) -> None:
    with TestClient(_app(probe, celery=celery_app)) as client, pytest.raises(TypeError) as raised:
        client.post(f"/notify?bad={bad}")
    message = str(raised.value)
    assert f"argument {named} (a {kind})" in message
    assert "'json' serializer" in message
    assert notify.name in message
    assert probe.task_spans() == []  # nothing enqueued
    assert probe.samples().total("bgtask_enqueued_total") == 0


def test_celery_option_must_be_a_celery_app() -> None:
    with pytest.raises(TypeError, match=r"invalid celery='redis://x'; expected a celery.Celery"):
        tasklens.instrument(FastAPI(), celery="redis://x")


def test_instrument_worker_rejects_bad_options() -> None:
    with pytest.raises(TypeError, match=r"unknown option.*mode"):
        tasklens.celery.instrument_worker(celery_app, mode="detached")
    with pytest.raises(ValueError, match=r"invalid metrics_port=70000"):
        tasklens.celery.instrument_worker(celery_app, metrics_port=70000)
    with pytest.raises(TypeError, match=r"expected a celery\.Celery"):
        tasklens.celery.instrument_worker(object())


def test_worker_clock_behind_the_add_task_time_is_clamped_and_counted(probe: Probe) -> None:
    runner = TaskRunner(RuntimeOptions(), probe.observers())
    identity = runner.namer.identify_named("shop.t", EXECUTOR_CELERY, "t", "shop")
    ahead = time.time_ns() + 2_000_000_000  # the web process's clock is 2 s ahead
    record = runner.receive(identity, notify, (), {}, None, ahead)
    runner.start_external(record)
    runner.finish_external(record, "success")
    assert record.queue_seconds < 0.1
    behind = runner.receive(identity, notify, (), {}, None, time.time_ns() - 1_500_000_000)
    runner.start_external(behind)
    runner.finish_external(behind, "success")
    assert 1.5 <= behind.queue_seconds < 2.5
    samples = probe.samples()
    assert samples.value("bgtask_clock_skew_total", task="shop.t") == 1
    assert (
        samples.value("bgtask_finished_total", task="shop.t", executor="celery", outcome="success")
        == 2
    )
    assert samples.total("bgtask_in_progress") == 0


def test_worker_detects_opentelemetry_instrumentation_celery_beside_it() -> None:
    """Its spans would duplicate tasklens's: the worker warns at start (tasklens/celery.py)."""
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    from tasklens.celery import _celery_instrumentor_active

    assert not _celery_instrumentor_active()
    CeleryInstrumentor().instrument()
    try:
        assert _celery_instrumentor_active()
    finally:
        CeleryInstrumentor().uninstrument()
    assert not _celery_instrumentor_active()


def test_a_redis_broker_without_socket_timeout_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tasklens.runtime.celery_send import warn_unbounded_publish

    unbounded = Celery("u", broker="redis://127.0.0.1:1/0")
    bounded = Celery("b", broker="redis://127.0.0.1:1/0")
    bounded.conf.broker_transport_options = {"socket_timeout": 5}
    with caplog.at_level("WARNING", logger="tasklens.runtime"):
        assert warn_unbounded_publish(unbounded)
        assert not warn_unbounded_publish(bounded)
        assert not warn_unbounded_publish(celery_app)  # memory://
    (record,) = caplog.records
    assert "'u' has no broker socket timeout" in record.getMessage()
    assert "socket_timeout" in record.getMessage()
