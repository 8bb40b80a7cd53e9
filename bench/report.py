"""Rows, targets and the markdown table of one benchmark run."""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench import E2E_VARIANTS, MEMORY_VARIANTS, RETAINED_SCENARIOS, TASK_VARIANTS
from bench.apps import DESCRIPTIONS

RETAINED_DESCRIPTIONS = {
    "same-function": "tasklens: the same async function every task",
    "distinct-partials": "tasklens: a new functools.partial of one function every task",
}


def _ratio(value: float, base: float) -> float | None:
    return value / base if base else None


def _task_rows(kind: str, runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    best = {v: min(r["us_per_task"] for r in runs[v]) for v in TASK_VARIANTS}
    plain = best["plain"]
    rows = []
    for variant in TASK_VARIANTS:
        rounds = runs[variant]
        rows.append(
            {
                "id": f"{kind}.{variant}",
                "section": kind,
                "variant": variant,
                "description": DESCRIPTIONS[variant],
                "us_per_task": best[variant],
                "us_per_task_median_of_rounds": statistics.median(r["us_per_task"] for r in rounds),
                "delta_us": best[variant] - plain,
                "x_plain": _ratio(best[variant], plain),
                "us_per_request_empty": min(r["us_per_request_empty"] for r in rounds),
                "spans_per_task": rounds[0]["spans_per_task"],
                "rounds": rounds,
            }
        )
    return rows


def _e2e_rows(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
        return sorted(rounds, key=lambda r: r["rps"])[len(rounds) // 2]

    chosen = {v: median_round(runs[v]) for v in E2E_VARIANTS}
    plain = chosen["plain"]["rps"]
    rows = []
    for variant in E2E_VARIANTS:
        r = chosen[variant]
        rows.append(
            {
                "id": f"e2e.{variant}",
                "section": "e2e",
                "variant": variant,
                "description": DESCRIPTIONS[variant],
                "rps": r["rps"],
                "x_plain": _ratio(r["rps"], plain),
                "p50_ms": r["p50_ms"],
                "p99_ms": r["p99_ms"],
                "errors": r["errors"],
                "tasks_run": r["tasks_async"] + r["tasks_sync"],
                "spans": r["spans"],
                "rounds": runs[variant],
            }
        )
    return rows


def _memory_rows(pending: dict[str, Any]) -> list[dict[str, Any]]:
    plain = pending["plain"]["bytes_per_task"]
    return [
        {
            "id": f"memory.{variant}",
            "section": "memory",
            "variant": variant,
            "description": DESCRIPTIONS[variant],
            "tasks": pending[variant]["tasks"],
            "bytes_per_task": pending[variant]["bytes_per_task"],
            "x_plain": _ratio(pending[variant]["bytes_per_task"], plain),
            "rss_bytes_per_task": pending[variant]["rss_bytes_per_task"],
        }
        for variant in MEMORY_VARIANTS
    ]


def _retained_rows(retained: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": f"retained.{scenario}",
            "section": "retained",
            "variant": "tasklens",
            "description": RETAINED_DESCRIPTIONS[scenario],
            **retained[scenario],
        }
        for scenario in RETAINED_SCENARIOS
    ]


def _targets(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    otel = rows["async.otel"]["delta_us"]
    full = rows["async.tasklens"]["delta_us"]
    unsampled = rows["async.tasklens-unsampled"]["delta_us"]
    sync_speedup = rows["sync.plain"]["us_per_task"] / rows["sync.tasklens"]["us_per_task"]
    e2e = rows["e2e.tasklens-inline"]["x_plain"] or 0.0
    return [
        {
            "target": "async, full telemetry: Δ/task ≤ OTel instrumentor's Δ/task",
            "measured": f"{full:.2f} µs vs {otel:.2f} µs ({full / otel:.2f}×)",
            "met": full <= otel,
        },
        {
            "target": "async, tracing sampled out: Δ/task ≤ 3 µs",
            "measured": f"{unsampled:.2f} µs",
            "met": unsampled <= 3.0,
        },
        {
            "target": "sync, full telemetry: ≥ 2× faster per task than plain",
            "measured": f"{sync_speedup:.2f}× faster",
            "met": sync_speedup >= 2.0,
        },
        {
            "target": "end to end: tasklens inline ≥ 0.95× plain requests/s",
            "measured": f"{e2e:.3f}×",
            "met": e2e >= 0.95,
        },
    ]


def build(
    *,
    mode: str,
    config: dict[str, Any],
    machine: dict[str, Any],
    tasks: dict[str, dict[str, list[dict[str, Any]]]],
    e2e: dict[str, list[dict[str, Any]]],
    pending: dict[str, Any],
    retained: dict[str, Any],
) -> dict[str, Any]:
    rows = [
        *_task_rows("async", tasks["async"]),
        *_task_rows("sync", tasks["sync"]),
        *_e2e_rows(e2e),
        *_memory_rows(pending),
        *_retained_rows(retained),
    ]
    return {
        "mode": mode,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine,
        "config": config,
        "rows": rows,
        "targets": _targets({row["id"]: row for row in rows}),
    }


# --- markdown ---------------------------------------------------------------------------------
def _f(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return lines


def markdown(result: dict[str, Any]) -> str:
    m, cfg = result["machine"], result["config"]
    rows = {row["id"]: row for row in result["rows"]}
    out = [f"# tasklens benchmark ({result['mode']} run)", ""]
    if result["mode"] == "smoke":
        out += ["**Smoke run: tiny sizes, the numbers mean nothing.**", ""]
    out += [
        f"Generated {result['generated']} by `python -m bench"
        f"{' --smoke' if result['mode'] == 'smoke' else ''}` in {m['seconds']} s. "
        "Method: [docs/performance.md](../../docs/performance.md).",
        "",
        *_table(
            ["machine", ""],
            [
                ["CPU", f"{m['cpu']} ({m['cores']} cores, {m['usable_cpus']} usable)"],
                ["Python", f"{m['python']} ({m['platform']})"],
                ["packages", ", ".join(f"{k} {v}" for k, v in m["packages"].items())],
                ["load average", f"{m['load_average_start']} → {m['load_average_end']}"],
            ],
        ),
        "",
    ]
    for kind, title in (("async", "Async no-op tasks"), ("sync", "Sync no-op tasks")):
        requests = cfg["requests"] if kind == "async" else cfg["sync_requests"]
        out += [
            f"## {title}: µs per task",
            "",
            f"{requests} requests × {cfg['tasks']} tasks through the ASGI app, "
            f"best of {cfg['reps']} repetitions × {cfg['rounds']} rounds (one process per "
            "variant and round). µs/task is the slope over tasks per request: the per-request "
            "cost (routing, request span) is shown apart.",
            "",
            *_table(
                [
                    "case",
                    "what",
                    "µs/task",
                    "Δ vs plain µs",
                    "× plain",
                    "spans/task",
                    "µs/request (0 tasks)",
                ],
                [
                    [
                        f"{kind}.{v}",
                        rows[f"{kind}.{v}"]["description"],
                        _f(rows[f"{kind}.{v}"]["us_per_task"]),
                        _f(rows[f"{kind}.{v}"]["delta_us"]),
                        _x(rows[f"{kind}.{v}"]["x_plain"]),
                        _f(rows[f"{kind}.{v}"]["spans_per_task"]),
                        _f(rows[f"{kind}.{v}"]["us_per_request_empty"], 1),
                    ]
                    for v in TASK_VARIANTS
                ],
            ),
            "",
        ]
    out += [
        "## End to end: uvicorn + load generator on loopback",
        "",
        f"uvicorn (h11, asyncio, 1 worker) and a closed-loop generator ({cfg['e2e_connections']}"
        f" keep-alive connections) in separate processes pinned to separate CPUs; each request"
        f" adds 2 tasks (1 async, 1 sync); {cfg['e2e_duration']} s measured after "
        f"{cfg['e2e_warmup']} s warm-up; median of {cfg['e2e_rounds']} rounds.",
        "",
        *_table(
            ["case", "what", "req/s", "× plain", "p50 ms", "p99 ms", "tasks run", "errors"],
            [
                [
                    f"e2e.{v}",
                    rows[f"e2e.{v}"]["description"],
                    _f(rows[f"e2e.{v}"]["rps"], 0),
                    _x(rows[f"e2e.{v}"]["x_plain"]),
                    _f(rows[f"e2e.{v}"]["p50_ms"]),
                    _f(rows[f"e2e.{v}"]["p99_ms"]),
                    f"{rows[f'e2e.{v}']['tasks_run']:,}",
                    str(rows[f"e2e.{v}"]["errors"]),
                ]
                for v in E2E_VARIANTS
            ],
        ),
        "",
        "## Memory per pending task",
        "",
        f"{cfg['pending_tasks']:,} async tasks added to one `BackgroundTasks` inside a request, "
        "before they run: bytes allocated per task (tracemalloc) and resident-set growth.",
        "",
        *_table(
            ["case", "what", "bytes/task", "× plain", "RSS bytes/task"],
            [
                [
                    f"memory.{v}",
                    rows[f"memory.{v}"]["description"],
                    _f(rows[f"memory.{v}"]["bytes_per_task"], 0),
                    _x(rows[f"memory.{v}"]["x_plain"]),
                    _f(rows[f"memory.{v}"]["rss_bytes_per_task"], 0),
                ]
                for v in MEMORY_VARIANTS
            ],
        ),
        "",
        "## Memory left behind per finished task",
        "",
        f"Allocated memory still held (tracemalloc, after gc and a span flush) after N = "
        f"{cfg['retained_tasks']:,} and after 11 × N finished tasks of one task name; the growth "
        "per task should be ~0: label children, names and span data are cached per callable.",
        "",
        *_table(
            ["case", "what", "after N bytes", "after 11×N bytes", "growth bytes/task"],
            [
                [
                    f"retained.{s}",
                    rows[f"retained.{s}"]["description"],
                    f"{rows[f'retained.{s}']['after_n_bytes']:,}",
                    f"{rows[f'retained.{s}']['after_11n_bytes']:,}",
                    _f(rows[f"retained.{s}"]["growth_bytes_per_task"], 3),
                ]
                for s in RETAINED_SCENARIOS
            ],
        ),
        "",
        "## Targets",
        "",
        *_table(
            ["target", "measured", "met"],
            [
                [t["target"], t["measured"], "yes" if t["met"] else "**no**"]
                for t in result["targets"]
            ],
        ),
        "",
    ]
    return "\n".join(out)
