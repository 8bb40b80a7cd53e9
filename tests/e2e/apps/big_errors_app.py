"""A tasklens app whose task fails with a big (``BIG_MESSAGE_BYTES``, default 50 KB) message,
for the span-size and memory tests; ``/rss`` reports the process's resident memory."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import BackgroundTasks, FastAPI

import tasklens

tasklens.setup(service_name="big-errors")
app = FastAPI()
tasklens.instrument(app)
BIG = int(os.environ.get("BIG_MESSAGE_BYTES", "50000"))
done = {"failed": 0}


class BigError(Exception):
    pass


def fail(n: int) -> None:
    done["failed"] += 1
    raise BigError(f"#{n} " + "x" * BIG)


@app.post("/fail/{n}")
async def fail_later(n: int, background_tasks: BackgroundTasks) -> dict[str, int]:
    background_tasks.add_task(fail, n)
    return {"n": n}


@app.get("/stats")
async def stats() -> dict[str, int]:
    status = Path("/proc/self/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return {"failed": done["failed"], "rss_kb": rss_kb}
