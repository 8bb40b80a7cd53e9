"""The task span's status description is bounded like its attributes, whoever made the
provider: the SDK limits attribute values but never the status description, so a 50 KB
exception message on an app's own provider made 50 KB statuses."""

from __future__ import annotations

import httpx
from fastapi import BackgroundTasks, FastAPI

import tasklens
from tasklens.telemetry.setup import DEFAULT_ATTRIBUTE_LENGTH_LIMIT
from tests.runtime.helpers import Probe, serve, wait_for

MESSAGE = "x" * 50_000


def fail() -> None:
    raise RuntimeError(MESSAGE)


def test_status_description_is_bounded_on_an_apps_own_provider() -> None:
    probe = Probe()
    app = FastAPI()

    @app.post("/go")
    async def go(tasks: BackgroundTasks) -> dict[str, bool]:
        tasks.add_task(fail)
        return {"ok": True}

    tasklens.instrument(app, observers=probe.observers(), metrics_path=None)
    with serve(app) as server, httpx.Client(base_url=server.base_url) as client:
        assert client.post("/go").status_code == 200
        wait_for(lambda: probe.task_spans(), 10, "the task span")
    (span,) = probe.task_spans()
    assert span.status.description is not None
    assert len(span.status.description) == DEFAULT_ATTRIBUTE_LENGTH_LIMIT
    assert span.status.description.startswith("RuntimeError: xxx")
    probe.close()
