"""The app of ``tests/e2e/test_failure_always_recorded.py``: failures that are hard to record.

- ``POST /bad-repr``: a sync task whose argument's ``__repr__`` raises (an ORM object after its
  session closed), with ``record_args=True``;
- ``POST /bad-str``: an async task raising an exception whose ``__str__`` raises;
- ``POST /bad-renderer``: an async task whose failure line makes the app's structlog chain
  raise (a renderer or blocking-call detector failing on that line).

The app configures structlog itself (JSON lines on stderr), as many apps do. An audit hook
counts the opens of the tasks' module file (what a traceback formatter reads for source
lines) on the event-loop thread: ``GET /loop-source-reads``. (Not this file: FastAPI reads an
endpoint's source on its first request.)
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import structlog
from fastapi import BackgroundTasks, FastAPI

import tasklens
from tests.e2e.apps import failures_tasks
from tests.e2e.apps.failures_tasks import (
    Ghost,
    fail_in_the_renderer,
    fail_unprintably,
    fail_with_ghost,
)

VICTIM = f"{failures_tasks.__name__}.fail_in_the_renderer"
_loop_source_reads = 0


def _audit(event: str, args: tuple[Any, ...]) -> None:
    global _loop_source_reads
    if (
        event == "open"
        and args[0] == failures_tasks.__file__
        and threading.current_thread() is threading.main_thread()
    ):
        _loop_source_reads += 1


sys.addaudithook(_audit)


def explode_on_victim(_: Any, __: str, event_dict: Any) -> Any:
    """A renderer step that fails on one task's lines."""
    if event_dict.get("task") == VICTIM:
        raise RuntimeError("renderer failed")
    return event_dict


structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        explode_on_victim,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.JSONRenderer(),
    ],
    logger_factory=structlog.PrintLoggerFactory(sys.stderr),
)
tasklens.setup(service_name="failures-e2e")
app = FastAPI()


@app.post("/bad-repr")
async def bad_repr(background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(fail_with_ghost, Ghost())
    return {"status": "scheduled"}


@app.post("/bad-str")
async def bad_str(background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(fail_unprintably)
    return {"status": "scheduled"}


@app.post("/bad-renderer")
async def bad_renderer(background_tasks: BackgroundTasks) -> dict[str, str]:
    background_tasks.add_task(fail_in_the_renderer)
    return {"status": "scheduled"}


@app.get("/loop-source-reads")
def loop_source_reads() -> dict[str, int]:
    return {"count": _loop_source_reads}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


tasklens.instrument(app, record_args=True)
