"""Task spans go to the app's tracer provider: ``instrument(app, tracer_provider=...)``, or
the one the FastAPI app was configured with (``FastAPI(telemetry={"tracer_provider": tp})``),
else the global one. Real uvicorn, both providers exporting OTLP/HTTP to the test receiver
under different service names. Before, task spans always went to the global provider: the
app's received none, and inside the task ``get_current_span()`` was non-recording."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_one_server_span import FASTAPI_NATIVE, TASK, run

OWN = "own-provider"
GLOBAL = "server-span-e2e"


def test_instrument_tracer_provider_gets_task_and_request_spans(tmp_path: Path) -> None:
    result = run(tmp_path, "plain", SPAN_APP_PROVIDER="option")
    tasks = [s for s in result.spans if s.name == TASK]
    assert len(tasks) == 2
    assert {s.resource["service.name"] for s in tasks} == {OWN}
    (server,) = result.servers("/users/")
    assert server.resource["service.name"] == OWN
    assert tasks[0].trace_id == server.trace_id or tasks[1].trace_id == server.trace_id
    assert result.recording == [True, True]


@pytest.mark.skipif(not FASTAPI_NATIVE, reason="FastAPI < 0.164 has no telemetry config")
@pytest.mark.parametrize("variant", ["native", "plain"], ids=["tracing", "tracing-off"])
def test_fastapi_app_provider_gets_its_task_spans(tmp_path: Path, variant: str) -> None:
    result = run(tmp_path, variant, SPAN_APP_PROVIDER="app")
    tasks = [s for s in result.spans if s.name == TASK]
    assert len(tasks) == 2
    assert {s.resource["service.name"] for s in tasks} == {OWN}
    (server,) = result.servers("/users/")
    assert server.resource["service.name"] == OWN
    assert server.scope == ("fastapi" if variant == "native" else "tasklens")
    (task,) = [s for s in tasks if s.trace_id == server.trace_id]
    assert task.parent_span_id == server.span_id
    # One span per task: tasklens's replaces FastAPI's own fastapi.background_task span.
    assert [s.name for s in result.spans if "background" in s.name] == []
    assert [s for s in result.spans if s.resource["service.name"] == GLOBAL] == []
    assert result.recording == [True, True]
