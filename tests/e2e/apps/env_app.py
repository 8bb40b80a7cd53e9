"""A tasklens app configured only by the environment: ``tasklens.setup()`` with no argument."""

from __future__ import annotations

from fastapi import BackgroundTasks, FastAPI

import tasklens

tasklens.setup()
app = FastAPI()
tasklens.instrument(app)
done: list[int] = []


def record(n: int) -> None:
    done.append(n)


@app.post("/work/{n}")
async def work(n: int, background_tasks: BackgroundTasks) -> dict[str, int]:
    background_tasks.add_task(record, n)
    return {"n": n}


@app.get("/done")
async def count() -> dict[str, int]:
    return {"count": len(done)}
