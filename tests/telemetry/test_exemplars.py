"""Exemplars: one per histogram bucket and second, so outliers always carry their trace."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI

import tasklens
from tests.conftest import Kit, task_spans

pytestmark = pytest.mark.anyio


async def quick() -> None:
    return None


async def slow() -> None:
    await asyncio.sleep(0.03)


def _exemplars(kit: Kit, outcome: str = "success") -> dict[float, str]:
    """Duration bucket upper bound → exemplar span id."""
    found = {}
    for family in kit.registry.collect():
        for s in family.samples:
            if s.name == "bgtask_duration_seconds_bucket" and s.exemplar is not None:
                found[float(s.labels["le"])] = s.exemplar.labels["span_id"]
    return found


async def test_first_of_a_bucket_and_every_outlier_get_exemplars(spans, kit: Kit) -> None:
    app = FastAPI()

    @app.get("/")
    async def endpoint(background_tasks: BackgroundTasks) -> str:
        for _ in range(50):
            background_tasks.add_task(quick)
        background_tasks.add_task(slow)
        return "ok"

    tasklens.instrument(app, observers=kit.observers, loop_block_threshold=None)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/")
    finished = task_spans(spans)
    assert len(finished) == 51
    span_ids = [f"{s.context.span_id:016x}" for s in finished]
    exemplars = _exemplars(kit)
    # The slow task is alone in its bucket (0.025, 0.05]: it carries its own trace.
    assert exemplars[0.05] == span_ids[-1]
    # 50 quick tasks within a second share one bucket: only the first paid for an exemplar.
    quick_buckets = {le: sid for le, sid in exemplars.items() if le < 0.025}
    assert len(quick_buckets) >= 1
    assert set(quick_buckets.values()) <= set(span_ids[:50])
    assert span_ids[0] in quick_buckets.values()
