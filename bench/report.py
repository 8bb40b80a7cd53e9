"""Rows, targets and the markdown table of one benchmark run."""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench import (
    E2E_VARIANTS,
    MEMORY_VARIANTS,
    RETAINED_SCENARIOS,
    SUSTAINED_VARIANTS,
    TASK_VARIANTS,
)
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


_MB = 2**20


def _sustained_rows(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    plain, otel = runs["plain"], runs["otel"]
    rows = []
    for variant in SUSTAINED_VARIANTS:
        r = runs[variant]
        start, end, after = r["start"], r["end"], r["after_drain"]
        rows.append(
            {
                "id": f"sustained.{variant}",
                "section": "sustained",
                "variant": variant,
                "description": DESCRIPTIONS[variant],
                "generator": r["generator"],
                "seconds": r["duration_s"],
                "connections": r["connections"],
                "requests": r["requests"],
                "rps": r["rps"],
                "x_plain": _ratio(r["rps"], plain["rps"]),
                "x_instrumentor": _ratio(r["rps"], otel["rps"]),
                "p50_ms": r["p50_ms"],
                "p99_ms": r["p99_ms"],
                "p99_x_instrumentor": _ratio(r["p99_ms"], otel["p99_ms"]),
                "errors": r["errors"],
                "enqueued_end": end["enqueued"],
                "end_loads": end["loads"],
                "finished_end": end["finished"],
                "behind_end": end["behind"],
                "bgtask_pending_end": end["bgtask_pending"],
                "bgtask_pending_after_drain": after["bgtask_pending"],
                "finished_after_drain": after["finished"],
                "queue_sync_p99_ms_end": end["queue_sync"]["p99_ms"],
                "queue_async_p99_ms_end": end["queue_async"]["p99_ms"],
                "loop_tasks_end": end["loop_tasks"],
                "objects_start": start["objects"],
                "objects_end": end["objects"],
                "rss_start_mb": start["rss_bytes"] / _MB,
                "rss_end_mb": end["rss_bytes"] / _MB,
                "rss_after_drain_mb": after["rss_bytes"] / _MB,
                "rss_growth_mb": (end["rss_bytes"] - start["rss_bytes"]) / _MB,
                "gc2_count": end["gc2_count"],
                "gc2_total_ms": end["gc2_total_ms"],
                "gc2_max_ms": end["gc2_max_ms"],
                "gc2_max_x_instrumentor": _ratio(end["gc2_max_ms"], otel["end"]["gc2_max_ms"]),
                "drain_s": r["drain_s"],
                "spans": r["spans"],
                "served_load": r["served_load"],
                "served_stats": r["served_stats"],
                "shutdown": r["shutdown"],
                "timeline": r["timeline"],
            }
        )
    return rows


def _sustained_targets(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    inline, otel = rows["sustained.tasklens-inline"], rows["sustained.otel"]
    native, unsampled = rows["sustained.fastapi-native"], rows["sustained.tasklens-unsampled"]
    x_native = _ratio(inline["rps"], native["rps"]) or 0.0
    bound = 2 * inline["connections"] * 2
    pending = inline["bgtask_pending_end"]
    return [
        {
            "target": "sustained inline: req/s ≥ 1.0× the instrumentor's",
            "measured": f"{inline['x_instrumentor'] or 0:.2f}×",
            "met": (inline["x_instrumentor"] or 0) >= 1.0,
        },
        {
            "target": "sustained inline: req/s ≥ 1.0× FastAPI native telemetry's",
            "measured": f"{x_native:.2f}×",
            "met": x_native >= 1.0,
        },
        {
            "target": "sustained inline: p99 ≤ 1.2× the instrumentor's",
            "measured": f"{inline['p99_ms']:.1f} ms vs {otel['p99_ms']:.1f} ms "
            f"({inline['p99_x_instrumentor'] or 0:.2f}×)",
            "met": (inline["p99_x_instrumentor"] or 0) <= 1.2,
        },
        {
            "target": f"sustained inline: bgtask_pending at the end ≤ {bound} "
            "(2 × connections × tasks/request)",
            "measured": "n/a" if pending is None else f"{pending:,.0f}",
            "met": pending is not None and pending <= bound,
        },
        {
            "target": "sustained inline: RSS growth ≤ 10 MB",
            "measured": f"{inline['rss_growth_mb']:.1f} MB",
            "met": inline["rss_growth_mb"] <= 10.0,
        },
        {
            "target": "sustained inline: max gen-2 pause ≤ 1.5× the instrumentor's",
            "measured": f"{inline['gc2_max_ms']:.1f} ms vs {otel['gc2_max_ms']:.1f} ms",
            "met": inline["gc2_max_ms"] <= 1.5 * otel["gc2_max_ms"],
        },
        {
            "target": "sustained sampled out: req/s ≥ 0.85× plain",
            "measured": f"{unsampled['x_plain'] or 0:.2f}×",
            "met": (unsampled["x_plain"] or 0) >= 0.85,
        },
    ]


def _targets(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []
    if "async.otel" in rows:
        targets += _task_targets(rows)
    if "e2e.tasklens-inline" in rows:
        e2e = rows["e2e.tasklens-inline"]["x_plain"] or 0.0
        targets.append(
            {
                "target": "end to end: tasklens inline ≥ 0.95× plain requests/s",
                "measured": f"{e2e:.3f}×",
                "met": e2e >= 0.95,
            }
        )
    if "sustained.tasklens-inline" in rows:
        targets += _sustained_targets(rows)
    return targets


def _task_targets(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    otel = rows["async.otel"]["delta_us"]
    full = rows["async.tasklens"]["delta_us"]
    unsampled = rows["async.tasklens-unsampled"]["delta_us"]
    sync_speedup = rows["sync.plain"]["us_per_task"] / rows["sync.tasklens"]["us_per_task"]
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
    ]


def build(
    *,
    mode: str,
    config: dict[str, Any],
    machine: dict[str, Any],
    tasks: dict[str, dict[str, list[dict[str, Any]]]] | None,
    e2e: dict[str, list[dict[str, Any]]] | None,
    pending: dict[str, Any] | None,
    retained: dict[str, Any] | None,
    sustained: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The rows and targets of the cases that ran (None: the case group did not run)."""
    rows: list[dict[str, Any]] = []
    if tasks is not None:
        rows += [*_task_rows("async", tasks["async"]), *_task_rows("sync", tasks["sync"])]
    if e2e is not None:
        rows += _e2e_rows(e2e)
    if pending is not None and retained is not None:
        rows += [*_memory_rows(pending), *_retained_rows(retained)]
    if sustained is not None:
        rows += _sustained_rows(sustained)
    return {
        "mode": mode,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine,
        "config": config,
        "rows": rows,
        "targets": _targets({row["id"]: row for row in rows}),
    }


# --- markdown ---------------------------------------------------------------------------------
def _mb(value: float) -> str:
    return f"{value:,.0f}"


def _sustained_markdown(rows: dict[str, dict[str, Any]], cfg: dict[str, Any]) -> list[str]:
    r = {v: rows[f"sustained.{v}"] for v in SUSTAINED_VARIANTS}
    first = r["plain"]
    return [
        "## Sustained load: uvicorn + wrk",
        "",
        f"uvicorn (h11, asyncio, 1 worker) pinned to one CPU, {first['generator']} (1 thread, "
        f"{first['connections']} keep-alive connections) pinned to the other, "
        f"{first['seconds']:g} s per variant (`BENCH_SUSTAINED_SECONDS`), one variant after the "
        "other; each request adds 1 async + 1 sync no-op task. `× instr.`: ratio to the "
        "FastAPIInstrumentor variant (`otel`). *Behind*: tasks enqueued and not finished when the "
        "load stops; *sync queue p99*: add_task to function start of the sync tasks started in "
        "the last second of load; *loop tasks*: asyncio tasks alive then (each suspended "
        "request cycle is one); gen-2 pauses from `gc.callbacks` during the load.",
        "",
        *_table(
            [
                "case",
                "what",
                "req/s",
                "× plain",
                "× instr.",
                "p50 ms",
                "p99 ms",
                "p99 × instr.",
                "errors",
            ],
            [
                [
                    f"sustained.{v}",
                    x["description"],
                    _f(x["rps"], 0),
                    _x(x["x_plain"]),
                    _x(x["x_instrumentor"]),
                    _f(x["p50_ms"]),
                    _f(x["p99_ms"]),
                    _x(x["p99_x_instrumentor"]),
                    str(x["errors"]),
                ]
                for v, x in r.items()
            ],
        ),
        "",
        *_table(
            [
                "case",
                "finished / enqueued",
                "behind",
                "bgtask_pending",
                "sync queue p99 ms",
                "loop tasks",
                "objects start → end",
                "RSS MB start → end (drained)",
                "gen-2 pauses: n, total ms, max ms",
                "max × instr.",
                "drain s",
            ],
            [
                [
                    f"sustained.{v}",
                    f"{x['finished_end']:,} / {x['enqueued_end']:,}",
                    f"{x['behind_end']:,}",
                    "n/a" if x["bgtask_pending_end"] is None else f"{x['bgtask_pending_end']:,.0f}",
                    _f(x["queue_sync_p99_ms_end"], 1),
                    f"{x['loop_tasks_end']:,}",
                    f"{x['objects_start']:,} → {x['objects_end']:,}",
                    f"{_mb(x['rss_start_mb'])} → {_mb(x['rss_end_mb'])} "
                    f"({_mb(x['rss_after_drain_mb'])})",
                    f"{x['gc2_count']}, {x['gc2_total_ms']:,.0f}, {x['gc2_max_ms']:,.1f}",
                    _x(x["gc2_max_x_instrumentor"]),
                    "n/a" if x["drain_s"] is None else f"{x['drain_s']:.2f}",
                ]
                for v, x in r.items()
            ],
        ),
        "",
    ]


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
    if "async.plain" in rows:
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
    if "e2e.plain" in rows:
        out += [
            "## End to end: uvicorn + load generator on loopback",
            "",
            "uvicorn (h11, asyncio, 1 worker) and a closed-loop generator "
            f"({cfg['e2e_connections']} keep-alive connections) in separate processes pinned to "
            "separate CPUs; each request"
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
        ]
    if "memory.plain" in rows:
        out += [
            "## Memory per pending task",
            "",
            f"{cfg['pending_tasks']:,} async tasks added to one `BackgroundTasks` inside a "
            "request, before they run: bytes allocated per task (tracemalloc) and resident-set "
            "growth.",
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
            f"{cfg['retained_tasks']:,} and after 11 × N finished tasks of one task name; the "
            "growth per task should be ~0: label children, names and span data are cached per "
            "callable.",
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
        ]
    if "sustained.plain" in rows:
        out += _sustained_markdown(rows, cfg)
    out += [
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
