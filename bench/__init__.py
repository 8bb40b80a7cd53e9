"""tasklens benchmarks: overhead per task, side by side with plain Starlette and OpenTelemetry.

``python -m bench`` (``make bench``) runs every case, each variant in its own subprocess
(global tracer providers can be set once per process), prints one table and writes
``bench/results/latest.md`` and ``latest.json``. ``python -m bench --smoke`` runs the same
cases briefly (CI: it must work, its numbers mean nothing) and writes ``smoke.md``/``.json``.

Cases (the first column of every table row):

- ``async.*`` / ``sync.*``: no-op background tasks, many per response, through the ASGI app
  called directly; µs per task (the slope over tasks per response, so the per-request cost
  is not counted), delta and ratio to plain Starlette.
- ``e2e.*``: a uvicorn server and a load generator in separate processes on loopback,
  two tasks per request (one async, one sync): requests/s, p50 and p99 latency.
- ``memory.*``: bytes per pending task (added to a response, not yet run).
- ``retained.*``: bytes left behind per finished task (flat: label children are cached).
- ``sustained.*``: 30 s (``BENCH_SUSTAINED_SECONDS``) of wrk load on uvicorn, 16 keep-alive
  connections, two tasks per request: req/s, p50/p99, tasks behind at the end, queue time,
  RSS and gen-2 GC pauses, with ratios to plain and to the FastAPI instrumentor.
"""

from __future__ import annotations

#: Task-cost variants, in table order.
TASK_VARIANTS = ("plain", "otel", "tasklens", "tasklens-unsampled", "tasklens-bare")
#: End-to-end variants.
E2E_VARIANTS = ("plain", "tasklens-inline", "tasklens-detached", "tasklens-unsampled")
#: Memory variants (pending tasks) and retention scenarios (finished tasks).
MEMORY_VARIANTS = ("plain", "tasklens")
RETAINED_SCENARIOS = ("same-function", "distinct-partials")
#: Sustained-load variants.
SUSTAINED_VARIANTS = (
    "plain",
    "fastapi-native",
    "otel",
    "tasklens-inline",
    "tasklens-detached",
    "tasklens-unsampled",
)
#: The case groups ``python -m bench --cases`` selects from, in run order.
CASES = ("tasks", "e2e", "memory", "sustained")


def case_ids(cases: tuple[str, ...] = CASES) -> list[str]:
    """Every row the results of ``cases`` must have, in order."""
    ids: list[str] = []
    if "tasks" in cases:
        ids += [f"{kind}.{v}" for kind in ("async", "sync") for v in TASK_VARIANTS]
    if "e2e" in cases:
        ids += [f"e2e.{v}" for v in E2E_VARIANTS]
    if "memory" in cases:
        ids += [f"memory.{v}" for v in MEMORY_VARIANTS]
        ids += [f"retained.{s}" for s in RETAINED_SCENARIOS]
    if "sustained" in cases:
        ids += [f"sustained.{v}" for v in SUSTAINED_VARIANTS]
    return ids
