"""The lifespan of the shutdown test apps: after shutdown (tasklens' runtime lifespan runs
inside it) it writes the final ``bgtask_*`` counters as JSON to ``$TASKLENS_TEST_SUMMARY``."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import REGISTRY


def summary() -> dict[str, object]:
    """Tasks enqueued, and finished by outcome, from the default registry."""
    enqueued = 0.0
    finished: Counter[str] = Counter()
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == "bgtask_enqueued_total":
                enqueued += sample.value
            elif sample.name == "bgtask_finished_total":
                finished[sample.labels["outcome"]] += int(sample.value)
    return {"enqueued": int(enqueued), "finished": dict(finished)}


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    yield
    with open(os.environ["TASKLENS_TEST_SUMMARY"], "w") as f:
        json.dump(summary(), f)
