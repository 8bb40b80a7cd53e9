"""The web side of Celery, in process (a memory broker): which tasks are sent, the errors
at ``add_task`` and at ``instrument``, clock skew on the worker side. The real broker and
workers are tests/e2e/test_celery.py."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from celery import Celery, shared_task
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


@shared_task(name="unit.shared_notify")
def shared_notify(email: str) -> None:
    RAN.append(f"shared {email}")


@celery_app.task(name="unit.routed")
def routed(email: str) -> None:
    RAN.append(f"routed {email}")


celery_app.conf.task_routes = {"unit.routed": {"queue": "emails"}}


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
        elif bad == "arity":
            background_tasks.add_task(notify, "a@example.com", "hi", "extra")
        elif bad == "shared":
            background_tasks.add_task(shared_notify, "s@example.com")
        elif bad == "routed":
            background_tasks.add_task(routed, "r@example.com")
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


def test_celery_option_must_be_a_celery_app_and_the_error_shows_no_secret() -> None:
    with pytest.raises(TypeError, match=r"invalid celery app, a builtins.str; expected a celery"):
        tasklens.instrument(FastAPI(), celery="redis://x")
    secret = Celery("s", broker="redis://:supersecret@127.0.0.1:1/0")
    with pytest.raises(TypeError) as raised:
        tasklens.instrument(FastAPI(), celery=secret.conf)  # the config, not the app
    assert "supersecret" not in str(raised.value)
    assert "celery.app.utils.Settings" in str(raised.value)


def test_instrument_worker_rejects_bad_options() -> None:
    with pytest.raises(TypeError, match=r"unknown option.*mode"):
        tasklens.celery.instrument_worker(celery_app, mode="detached")
    with pytest.raises(ValueError, match=r"invalid metrics_port=70000"):
        tasklens.celery.instrument_worker(celery_app, metrics_port=70000)
    with pytest.raises(TypeError, match=r"instrument_worker\(\): invalid celery app"):
        tasklens.celery.instrument_worker(object())
    with pytest.raises(ValueError, match=r"invalid metrics_host=5"):
        tasklens.celery.instrument_worker(celery_app, metrics_host=5)
    with pytest.raises(ValueError, match=r"invalid service_name=5"):
        tasklens.celery.instrument_worker(celery_app, service_name=5)


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


def test_wrong_arguments_fail_at_add_task_as_delay_would(probe: Probe) -> None:
    with TestClient(_app(probe, celery=celery_app)) as client, pytest.raises(TypeError) as raised:
        client.post("/notify?bad=arity")
    assert str(raised.value).startswith(f"add_task({notify.name}): ")
    assert "positional argument" in str(raised.value)
    assert probe.samples().total("bgtask_enqueued_total") == 0


@pytest.mark.parametrize(("kind", "task", "queue"), [
    ("shared", "unit.shared_notify", "celery"), ("routed", "unit.routed", "emails"),
])  # fmt: skip
def test_shared_and_routed_tasks_go_to_this_apps_broker_and_queue(
    probe: Probe, kind: str, task: str, queue: str
) -> None:
    """A @shared_task proxy resolves Celery's per-thread current app: sent from the thread
    pool it would go to Celery's default app (amqp://localhost). tasklens sends through
    this app's own task; the span names the queue Celery's router picks."""
    with TestClient(_app(probe, celery=celery_app)) as client:
        assert client.post(f"/notify?bad={kind}").status_code == 200
    (span,) = probe.task_spans()
    assert span.attributes is not None
    assert (span.name, span.attributes["bgtask.outcome"]) == (f"bgtask send {task}", "success")
    assert span.attributes["messaging.destination.name"] == queue
    assert RAN == []


def test_an_eager_app_runs_its_tasks_here(probe: Probe) -> None:
    eager = Celery("eager", broker="memory://")
    eager.conf.task_always_eager = True

    @eager.task(name="eager.notify")
    def eager_notify(email: str) -> None:
        RAN.append(f"eager {email}")

    app = FastAPI()

    @app.post("/e")
    async def endpoint(background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(eager_notify, "e@example.com")
        return {}

    tasklens.instrument(app, observers=probe.observers(), metrics_path=None, celery=eager)
    with TestClient(app) as client:
        assert client.post("/e").status_code == 200
    assert RAN == ["eager e@example.com"]
    (span,) = probe.task_spans()
    assert span.kind == SpanKind.INTERNAL
    assert span.attributes is not None and span.attributes["bgtask.executor"] == "thread_pool"


def test_a_message_without_a_plausible_enqueue_time_records_no_queue_time(probe: Probe) -> None:
    runner = TaskRunner(RuntimeOptions(), probe.observers())
    identity = runner.namer.identify_named("shop.q", EXECUTOR_CELERY, "q", "shop")
    for enqueued_ns in (None, 12):  # no header (beat, .delay() elsewhere); the year 1970
        record = runner.receive(identity, notify, (), {}, None, enqueued_ns)
        token = runner.start_external(record)
        runner.finish_external(record, "success", None, token)
        assert not record.queue_known
    samples = probe.samples()
    assert (
        samples.value("bgtask_finished_total", task="shop.q", executor="celery", outcome="success")
        == 2
    )
    assert samples.value("bgtask_queue_seconds_count", task="shop.q", executor="celery") == 0
    assert all("bgtask.queue_seconds" not in (s.attributes or {}) for s in probe.task_spans())


def test_a_task_run_inside_another_restores_the_outer_task(probe: Probe) -> None:
    runner = TaskRunner(RuntimeOptions(), probe.observers())
    identity = runner.namer.identify_named("shop.outer", EXECUTOR_CELERY, "o", "shop")
    outer = runner.receive(identity, notify, (), {}, None, time.time_ns())
    outer_token = runner.start_external(outer)
    inner = runner.receive(identity, notify, (), {}, None, time.time_ns())
    inner_token = runner.start_external(inner)
    assert tasklens.current_task() is inner
    runner.finish_external(inner, "success", None, inner_token)
    assert tasklens.current_task() is outer  # the outer task's later logs keep its fields
    runner.finish_external(outer, "success", None, outer_token)
    assert tasklens.current_task() is None
