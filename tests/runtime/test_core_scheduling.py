"""Every way FastAPI and Starlette schedule a task takes the runtime's path, unchanged."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import httpx
import pytest
from fastapi import BackgroundTasks, Depends, FastAPI
from fastapi.responses import JSONResponse
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.background import BackgroundTasks as StarletteBackgroundTasks
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import tasklens
from tasklens.telemetry.logs import add_task_context, install_record_factory
from tasklens.telemetry.spans import EnqueueEventObserver
from tests.conftest import Kit, task_spans

pytestmark = pytest.mark.anyio

RAN: list[str] = []


def write(tag: str) -> None:
    RAN.append(tag)


async def awrite(tag: str) -> None:
    await asyncio.sleep(0)
    RAN.append(tag)


class ChargeError(Exception):
    pass


def fail(tag: str) -> None:
    raise ChargeError(tag)


def sub_dependency(background_tasks: BackgroundTasks) -> None:
    background_tasks.add_task(write, "sub")


def dependency(
    background_tasks: BackgroundTasks, _: Annotated[None, Depends(sub_dependency)]
) -> None:
    background_tasks.add_task(write, "dep")


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()


async def _call(app, method: str = "GET", path: str = "/", **kw) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path, **kw)


def _server_span(exporter):
    servers = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(servers) == 1, [s.name for s in exporter.get_finished_spans()]
    return servers[0]


async def test_path_operation_parameter(spans, kit: Kit) -> None:
    app = FastAPI()

    @app.get("/")
    async def endpoint(background_tasks: BackgroundTasks) -> dict[str, bool]:
        background_tasks.add_task(write, "a")
        background_tasks.add_task(awrite, "b")
        return {"ok": True}

    tasklens.instrument(app, observers=[EnqueueEventObserver(), *kit.observers])
    assert (await _call(app)).status_code == 200
    assert RAN == ["a", "b"]
    server = _server_span(spans)
    mine = task_spans(spans)
    assert [s.name for s in mine] == [
        "bgtask tests.runtime.test_core_scheduling.write",
        "bgtask tests.runtime.test_core_scheduling.awrite",
    ]
    for index, span in enumerate(mine):
        assert span.kind == SpanKind.INTERNAL
        assert span.context.trace_id == server.context.trace_id
        assert span.parent.span_id == server.context.span_id
        assert span.attributes["bgtask.index"] == index
        assert span.attributes["bgtask.batch_size"] == 2
        assert span.attributes["bgtask.outcome"] == "success"
    assert mine[0].attributes["bgtask.executor"] == "thread_pool"
    assert mine[1].attributes["bgtask.executor"] == "event_loop"
    assert [e.attributes["bgtask.name"] for e in server.events if e.name == "bgtask.enqueued"] == [
        "tests.runtime.test_core_scheduling.write",
        "tests.runtime.test_core_scheduling.awrite",
    ]
    assert kit.value("bgtask_enqueued_total") == 2
    assert kit.value("bgtask_finished_total", outcome="success") == 2
    assert kit.value("bgtask_pending") == 0


async def test_dependency_and_sub_dependency_share_one_set(spans, kit: Kit) -> None:
    app = FastAPI()

    @app.get("/")
    def endpoint(background_tasks: BackgroundTasks, _: Annotated[None, Depends(dependency)]) -> str:
        background_tasks.add_task(write, "endpoint")
        return "ok"

    tasklens.instrument(app, observers=kit.observers)
    assert (await _call(app)).status_code == 200
    assert RAN == ["sub", "dep", "endpoint"]
    mine = task_spans(spans)
    assert [s.attributes["bgtask.batch_size"] for s in mine] == [3, 3, 3]
    assert [s.attributes["bgtask.index"] for s in mine] == [0, 1, 2]
    # Consecutive sync tasks share one thread hand-off: only the first waited for a slot.
    assert [s.attributes["bgtask.threadpool_wait_seconds"] == 0.0 for s in mine] == [
        False,
        True,
        True,
    ]


async def test_json_response_background_and_response_background(spans, kit: Kit) -> None:
    app = FastAPI()

    @app.get("/json")
    async def json_endpoint() -> JSONResponse:
        tasks = StarletteBackgroundTasks()
        tasks.add_task(write, "json-1")
        tasks.add_task(awrite, "json-2")
        return JSONResponse({"ok": True}, background=tasks)

    @app.get("/single")
    async def single() -> JSONResponse:
        response = JSONResponse({"ok": True})
        response.background = BackgroundTask(awrite, "single")
        return response

    tasklens.instrument(app, observers=kit.observers)
    await _call(app, path="/json")
    await _call(app, path="/single")
    assert RAN == ["json-1", "json-2", "single"]
    assert len(task_spans(spans)) == 3
    assert kit.value("bgtask_finished_total", outcome="success") == 3


async def test_plain_starlette_app(spans, kit: Kit) -> None:
    async def endpoint(request: Request) -> PlainTextResponse:
        tasks = StarletteBackgroundTasks()
        tasks.add_task(write, "s1")
        tasks.add_task(fail, "boom")
        tasks.add_task(awrite, "s2")
        return PlainTextResponse("ok", background=tasks)

    app = Starlette(routes=[Route("/", endpoint)])
    tasklens.instrument(app, observers=kit.observers)
    assert (await _call(app)).status_code == 200
    # on_error="continue": the failure is recorded, the later task still ran.
    assert RAN == ["s1", "s2"]
    server = _server_span(spans)  # added by opentelemetry-instrumentation-asgi
    mine = task_spans(spans)
    assert all(s.parent.span_id == server.context.span_id for s in mine)
    failed = mine[1]
    assert failed.attributes["bgtask.outcome"] == "failure"
    assert failed.attributes["error.type"] == "tests.runtime.test_core_scheduling.ChargeError"
    assert failed.status.status_code == StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    assert (
        kit.value(
            "bgtask_failures_total",
            task="tests.runtime.test_core_scheduling.fail",
            exception="tests.runtime.test_core_scheduling.ChargeError",
        )
        == 1
    )


async def test_on_error_stop_keeps_starlette_semantics_and_counts_skipped(spans, kit: Kit) -> None:
    app = FastAPI()

    @app.get("/")
    async def endpoint(background_tasks: BackgroundTasks) -> str:
        background_tasks.add_task(write, "first")
        background_tasks.add_task(fail, "boom")
        background_tasks.add_task(write, "never")
        background_tasks.add_task(awrite, "never-either")
        return "ok"

    tasklens.instrument(app, observers=kit.observers, on_error="stop")
    await _call(app)
    assert RAN == ["first"]
    assert kit.value("bgtask_finished_total", outcome="success") == 1
    assert kit.value("bgtask_finished_total", outcome="failure") == 1
    assert kit.value("bgtask_finished_total", outcome="skipped") == 2
    assert kit.value("bgtask_pending") == 0
    outcomes = [s.attributes["bgtask.outcome"] for s in task_spans(spans)]
    assert outcomes == ["success", "failure", "skipped", "skipped"]


async def test_uninstrumented_app_keeps_plain_behaviour(spans, kit: Kit) -> None:
    instrumented, plain = FastAPI(), FastAPI()
    for app in (instrumented, plain):

        @app.get("/")
        async def endpoint(background_tasks: BackgroundTasks) -> str:
            background_tasks.add_task(fail, "boom")
            background_tasks.add_task(write, "after")
            return "ok"

    tasklens.instrument(instrumented, observers=kit.observers)
    await _call(plain)
    assert RAN == []  # Starlette: the failure skipped the later task, uncounted
    assert task_spans(spans) == []
    assert kit.value("bgtask_enqueued_total") == 0
    await _call(instrumented)
    assert RAN == ["after"]
    assert kit.value("bgtask_enqueued_total") == 2


async def test_instrument_twice_doubles_nothing(spans, kit: Kit) -> None:
    app = FastAPI()

    @app.get("/")
    async def endpoint(background_tasks: BackgroundTasks) -> str:
        background_tasks.add_task(write, "once")
        return "ok"

    first = tasklens.instrument(app, observers=kit.observers)
    assert tasklens.instrument(app, observers=kit.observers) is first
    await _call(app)
    assert RAN == ["once"]
    assert len(task_spans(spans)) == 1
    assert kit.value("bgtask_enqueued_total") == 1
    assert len([m for m in app.user_middleware if "TaskRuntime" in repr(m)]) == 1


@pytest.mark.parametrize("order", ["otel-first", "tasklens-first"])
async def test_with_fastapi_instrumentor_exactly_one_span_per_task(spans, kit: Kit, order) -> None:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    app = FastAPI()

    @app.get("/")
    async def endpoint(background_tasks: BackgroundTasks) -> JSONResponse:
        background_tasks.add_task(write, "x")
        response = JSONResponse({})
        response.background = None
        return response

    @app.get("/single")
    async def single() -> JSONResponse:
        return JSONResponse({}, background=BackgroundTask(awrite, "y"))

    if order == "otel-first":
        FastAPIInstrumentor.instrument_app(app)
        tasklens.instrument(app, observers=kit.observers)
    else:
        tasklens.instrument(app, observers=kit.observers)
        FastAPIInstrumentor.instrument_app(app)
    try:
        await _call(app)
        await _call(app, path="/single")
    finally:
        FastAPIInstrumentor.uninstrument_app(app)
    names = [s.name for s in spans.get_finished_spans()]
    assert RAN == ["x", "y"]
    assert [n for n in names if "ackground" in n or n.startswith("bgtask")] == [
        "bgtask tests.runtime.test_core_scheduling.write",
        "bgtask tests.runtime.test_core_scheduling.awrite",
    ]
    assert len([s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]) == 2


async def test_non_callable_is_rejected_at_add_time(kit: Kit) -> None:
    app = FastAPI()
    errors: list[str] = []

    @app.get("/")
    async def endpoint(background_tasks: BackgroundTasks) -> str:
        try:
            background_tasks.add_task("send_email")  # type: ignore[arg-type]
        except TypeError as exc:
            errors.append(str(exc))
        return "ok"

    tasklens.instrument(app, observers=kit.observers)
    await _call(app)
    assert errors == ["add_task() expects a callable, got 'send_email' of type str"]
    with pytest.raises(TypeError, match="got 42 of type int"):
        tasklens.BackgroundTasks().add_task(42)  # type: ignore[arg-type]


async def test_task_of_a_response_never_sent_is_counted_abandoned(kit: Kit) -> None:
    app = FastAPI()

    @app.get("/")
    async def endpoint(background_tasks: BackgroundTasks) -> str:
        background_tasks.add_task(write, "lost")
        raise RuntimeError("endpoint failed after add_task")

    tasklens.instrument(app, observers=kit.observers)
    assert (await _call(app)).status_code == 500
    assert RAN == []
    assert kit.value("bgtask_finished_total", outcome="abandoned") == 1
    assert kit.value("bgtask_pending") == 0


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"on_error": "ignore"}, ValueError, "invalid on_error='ignore'"),
        ({"metrics_path": "metrics"}, ValueError, "invalid metrics_path='metrics'"),
        ({"record_args": "yes"}, ValueError, "invalid record_args='yes'"),
        ({"mode": "async"}, ValueError, "invalid mode='async'"),
        ({"threadpool_size": 0}, ValueError, "invalid threadpool_size=0"),
        ({"on_eror": "stop"}, TypeError, "unknown option.*on_eror"),
    ],
)
def test_invalid_options_name_the_option(options, error, message) -> None:
    with pytest.raises(error, match=message):
        tasklens.instrument(FastAPI(), **options)


def test_instrument_rejects_non_starlette_apps() -> None:
    with pytest.raises(TypeError, match="FastAPI or Starlette application, got function"):
        tasklens.instrument(lambda scope, receive, send: None)  # type: ignore[arg-type]


async def test_metrics_path_served_and_optional(kit: Kit) -> None:
    app, silent = FastAPI(), FastAPI()
    tasklens.instrument(app, observers=kit.observers)
    tasklens.instrument(silent, observers=kit.observers, metrics_path=None)
    response = await _call(app, path="/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    assert (await _call(silent, path="/metrics")).status_code == 404


async def test_logs_inside_tasks_carry_trace_and_task_fields(spans, kit: Kit) -> None:
    install_record_factory()
    records: list[logging.LogRecord] = []
    structlog_events: list[dict] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("tests.task-logs")
    logger.addHandler(Collect())
    logger.propagate = False

    def logging_task() -> None:
        logger.warning("inside the task")
        structlog_events.append(add_task_context(None, "info", {"event": "x"}))

    app = FastAPI()

    @app.get("/")
    async def endpoint(background_tasks: BackgroundTasks) -> str:
        background_tasks.add_task(logging_task)
        return "ok"

    tasklens.instrument(app, observers=kit.observers)
    await _call(app)
    (span,) = task_spans(spans)
    trace_id, span_id = f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"
    name = "tests.runtime.test_core_scheduling.test_logs_inside_tasks_carry_trace_and_task_fields.<locals>.logging_task"  # noqa: E501
    assert [(r.trace_id, r.span_id, r.task) for r in records] == [(trace_id, span_id, name)]  # type: ignore[attr-defined]
    assert structlog_events == [
        {"event": "x", "trace_id": trace_id, "span_id": span_id, "task": name}
    ]


async def test_metrics_scrapes_are_not_traced(spans, kit: Kit) -> None:
    app = FastAPI()

    @app.get("/ping")
    def ping() -> str:
        return "pong"

    tasklens.instrument(app, observers=kit.observers)
    await _call(app, path="/metrics")
    assert spans.get_finished_spans() == ()
    await _call(app, path="/ping")
    assert [s.kind for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER] == [
        SpanKind.SERVER
    ]


async def test_unsampled_trace_makes_no_task_span_but_counts_and_correlates(
    spans, kit: Kit
) -> None:
    install_record_factory()
    seen: list[tuple[str, str]] = []

    def traced_task() -> None:
        record = logging.getLogRecordFactory()("t", logging.INFO, __file__, 1, "m", (), None)
        seen.append((record.trace_id, record.task))  # type: ignore[attr-defined]

    app = FastAPI()

    @app.get("/")
    async def endpoint(background_tasks: BackgroundTasks) -> str:
        background_tasks.add_task(traced_task)
        return "ok"

    tasklens.instrument(app, observers=kit.observers)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    await _call(app, headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-00"})
    assert spans.get_finished_spans() == ()  # parent-based sampling: nothing to export
    assert kit.value("bgtask_finished_total", outcome="success") == 1
    assert seen == [(trace_id, "tests.runtime.test_core_scheduling." + traced_task.__qualname__)]


class _AroundTask(BackgroundTask):
    """A subclass with its own ``__call__`` around Starlette's."""

    async def __call__(self) -> None:
        RAN.append("before")
        await super().__call__()
        RAN.append("after")


@pytest.mark.parametrize("order", ["otel-first", "tasklens-first"])
async def test_subclass_override_runs_with_one_span_under_fastapi_instrumentor(
    spans, kit: Kit, order: str
) -> None:
    """The override runs (it used to be skipped) and its ``super().__call__()`` adds no
    instrumentor span: one ``bgtask`` span per task, whoever instrumented first."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    app = FastAPI()

    @app.get("/list")
    async def in_a_list() -> JSONResponse:
        tasks = StarletteBackgroundTasks([_AroundTask(write, "in-list")])
        tasks.add_task(awrite, "next")
        return JSONResponse({}, background=tasks)

    @app.get("/single")
    async def single() -> JSONResponse:
        return JSONResponse({}, background=_AroundTask(awrite, "single"))

    if order == "otel-first":
        FastAPIInstrumentor.instrument_app(app)
        tasklens.instrument(app, observers=kit.observers, on_error="stop")
    else:
        tasklens.instrument(app, observers=kit.observers, on_error="stop")
        FastAPIInstrumentor.instrument_app(app)
    try:
        await _call(app, path="/list")
        await _call(app, path="/single")
    finally:
        FastAPIInstrumentor.uninstrument_app(app)
    assert RAN == ["before", "in-list", "after", "next", "before", "single", "after"]
    names = [s.name for s in spans.get_finished_spans()]
    assert [n for n in names if "ackground" in n or n.startswith("bgtask")] == [
        "bgtask tests.runtime.test_core_scheduling.write",
        "bgtask tests.runtime.test_core_scheduling.awrite",
        "bgtask tests.runtime.test_core_scheduling.awrite",
    ]
    assert kit.value("bgtask_finished_total", outcome="success") == 3
    assert kit.value("bgtask_pending") == 0


async def test_enqueue_events_only_when_asked(spans) -> None:
    """``bgtask.enqueued`` events on the request span: off by default, on with the option."""
    seen = {}
    for enabled in (False, True):
        spans.clear()
        app = FastAPI()

        @app.get("/")
        async def endpoint(background_tasks: BackgroundTasks) -> dict[str, bool]:
            background_tasks.add_task(write, "a")
            return {"ok": True}

        tasklens.instrument(app, enqueue_events=enabled, metrics_path=None)
        assert (await _call(app)).status_code == 200
        seen[enabled] = [e.name for e in _server_span(spans).events]
    assert seen == {False: [], True: ["bgtask.enqueued"]}
