"""Each task runs in its own copy of the context captured at ``add_task`` (issue 11, item 10).

Starlette runs a response's async tasks one after the other in the request's own context,
so a contextvar or structlog binding set by one task shows in every later task. Here each
task, async or sync, sees the context as it was when it was added, and what it sets stays
its own; its span is current inside it and ``tasklens.current_task()`` is itself.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Any

import httpx
import pytest
import structlog
from fastapi import BackgroundTasks, FastAPI
from opentelemetry import trace

import tasklens
from tests.runtime.helpers import Probe, scrape_until, serve

M = __name__
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
SEEN: list[dict[str, Any]] = []


def _look(tag: str, first_seen: str | None) -> None:
    task = tasklens.current_task()
    SEEN.append(
        {
            "tag": tag,
            "at_start": first_seen,
            "request_id": REQUEST_ID.get(),
            "bound": structlog.contextvars.get_contextvars(),
            "span_id": trace.get_current_span().get_span_context().span_id,
            "task": task.name if task is not None else None,
        }
    )


async def binds(tag: str) -> None:
    first = REQUEST_ID.get()
    REQUEST_ID.set(f"set by {tag}")
    structlog.contextvars.bind_contextvars(leaked=tag)
    await asyncio.sleep(0)  # what it set is still its own after a suspension
    _look(tag, first)


async def reads(tag: str) -> None:
    first = REQUEST_ID.get()
    await asyncio.sleep(0)
    _look(tag, first)


def reads_sync(tag: str) -> None:
    _look(tag, REQUEST_ID.get())


@pytest.mark.parametrize("mode", ["inline", "detached"])
def test_tasks_run_in_their_own_copy_of_the_add_task_context(probe: Probe, mode: str) -> None:
    SEEN.clear()
    app = FastAPI()

    @app.post("/order")
    async def order(background_tasks: BackgroundTasks) -> None:
        structlog.contextvars.clear_contextvars()
        REQUEST_ID.set("req-1")
        structlog.contextvars.bind_contextvars(user="ada")
        background_tasks.add_task(binds, "a")
        # Changed after the first add_task: later tasks see the new values, "a" the old.
        REQUEST_ID.set("req-2")
        structlog.contextvars.bind_contextvars(user="bob")
        background_tasks.add_task(reads, "b")
        background_tasks.add_task(binds, "c")
        background_tasks.add_task(reads_sync, "d")
        background_tasks.add_task(reads, "e")

    probe.mount_metrics(app)
    tasklens.instrument(app, observers=probe.observers(), metrics_path=None, mode=mode)
    with serve(app) as server, httpx.Client(base_url=server.base_url) as client:
        assert client.post("/order").status_code == 200
        scrape_until(
            client,
            lambda s: s.total("bgtask_finished_total", outcome="success") == 5,
            5,
            "five tasks",
        )
    span_ids = {
        "abcde"[s.attributes["bgtask.index"]]: s.context.span_id
        for s in probe.task_spans()
        if s.attributes is not None
    }
    seen = {entry.pop("tag"): entry for entry in SEEN}
    # Inside each task its own span is current (set by the span observer at its start).
    assert {tag: entry.pop("span_id") for tag, entry in seen.items()} == span_ids
    ada, bob = {"user": "ada"}, {"user": "bob"}
    assert {tag: tuple(entry.values()) for tag, entry in seen.items()} == {
        # tag: (at start, after its own changes, structlog bindings, current_task().name)
        "a": ("req-1", "set by a", {**ada, "leaked": "a"}, f"{M}.binds"),
        "b": ("req-2", "req-2", bob, f"{M}.reads"),
        "c": ("req-2", "set by c", {**bob, "leaked": "c"}, f"{M}.binds"),
        "d": ("req-2", "req-2", bob, f"{M}.reads_sync"),
        "e": ("req-2", "req-2", bob, f"{M}.reads"),
    }
