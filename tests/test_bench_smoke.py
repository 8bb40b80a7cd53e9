"""``python -m bench --smoke`` runs every benchmark case and writes every row (no timings
are asserted: CI machines are too noisy for that; ``make bench`` is for numbers). The
sustained case runs apart, 2 s per variant (``BENCH_SUSTAINED_SECONDS``)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from packaging.version import Version

from bench import CASES, case_ids

#: FastAPIInstrumentor wraps each background task in a span from 0.63b0 on (none before).
INSTRUMENTOR_TASK_SPANS = int(
    Version(version("opentelemetry-instrumentation-fastapi")) >= Version("0.63b0")
)

#: FastAPI's native telemetry (``FastAPI(telemetry=...)``) exists from 0.143 on.
FASTAPI_NATIVE = importlib.util.find_spec("fastapi.telemetry") is not None

ROOT = Path(__file__).resolve().parent.parent
NOT_SUSTAINED = ",".join(c for c in CASES if c != "sustained")


def _smoke(module: str, *args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    """``python -m <module> --smoke <args>`` from the repository, without OTEL_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-m", module, "--smoke", *args],
        cwd=ROOT,
        env={**env, **env_extra},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _bench(out: Path, cases: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    return _smoke("bench", "--cases", cases, "--out", str(out), **env_extra)


def test_bench_smoke_writes_every_case(tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    proc = _bench(out, NOT_SUSTAINED)
    assert proc.returncode == 0, proc.stderr[-4000:]

    markdown = out.with_suffix(".md").read_text()
    result = json.loads(out.with_suffix(".json").read_text())
    ids = [row["id"] for row in result["rows"]]
    expected = case_ids(tuple(NOT_SUSTAINED.split(",")))
    assert ids == expected
    for case in expected:
        assert f"| {case} |" in markdown, f"no row for {case}"
    assert len(result["targets"]) == 4
    for key in ("cpu", "cores", "python", "packages"):
        assert result["machine"][key]
    # Each case measured what its name says: spans only where tracing is sampled, and the
    # end-to-end servers ran every task of every request they answered.
    rows = {row["id"]: row for row in result["rows"]}
    for kind in ("async", "sync"):
        assert rows[f"{kind}.plain"]["spans_per_task"] == 0
        assert rows[f"{kind}.tasklens-unsampled"]["spans_per_task"] == 0
        assert rows[f"{kind}.tasklens-bare"]["spans_per_task"] == 0
        assert rows[f"{kind}.otel"]["spans_per_task"] == INSTRUMENTOR_TASK_SPANS
        assert rows[f"{kind}.tasklens"]["spans_per_task"] == 1
    for row in result["rows"]:
        if row["section"] == "e2e":
            assert row["errors"] == 0
            assert row["tasks_run"] >= 2 * row["rounds"][0]["requests"] > 0


def _spans_expected(variant: str, row: dict[str, Any]) -> int | None:
    """Spans the server exported: one per request (the request span) and one per task where
    tracing is sampled; None where the count depends on the instrumentor's version."""
    loads, stats = row["served_load"], row["served_stats"]
    if variant in ("plain", "tasklens-unsampled"):
        return 0
    if variant in ("tasklens-inline", "tasklens-detached"):
        return 3 * loads + stats
    if variant == "fastapi-native":
        return 3 * loads + stats if FASTAPI_NATIVE else 0
    return None


def test_bench_smoke_sustained_case(tmp_path: Path) -> None:
    """The sustained case, 2 s per variant: every variant's row and the end state it read."""
    out = tmp_path / "sustained"
    proc = _bench(out, "sustained", BENCH_SUSTAINED_SECONDS="2")
    assert proc.returncode == 0, proc.stderr[-4000:]

    markdown = out.with_suffix(".md").read_text()
    result = json.loads(out.with_suffix(".json").read_text())
    expected = case_ids(("sustained",))
    assert [row["id"] for row in result["rows"]] == expected
    for case in expected:
        assert f"| {case} |" in markdown, f"no row for {case}"
    assert len(result["targets"]) == 7
    for row in result["rows"]:
        variant = row["variant"]
        assert row["seconds"] == 2
        assert row["errors"] == 0, variant
        assert row["requests"] > 0, variant
        assert row["served_load"] >= row["requests"], variant
        assert row["enqueued_end"] == 2 * row["end_loads"], variant
        assert 0 <= row["finished_end"] <= row["enqueued_end"], variant
        assert row["behind_end"] == row["enqueued_end"] - row["finished_end"], variant
        # Nothing lost: every task of every served request ran once the load stopped.
        assert row["drain_s"] is not None, variant
        assert row["finished_after_drain"] == 2 * row["served_load"], variant
        assert row["rss_start_mb"] > 0 and row["rss_end_mb"] > 0, variant
        assert row["objects_start"] > 0 and row["objects_end"] > 0, variant
        assert row["gc2_max_ms"] <= row["gc2_total_ms"] or row["gc2_count"] == 0, variant
        assert row["timeline"], variant
        assert row["shutdown"] == "clean", variant
        if variant.startswith("tasklens"):
            assert row["bgtask_pending_end"] is not None, variant
            assert row["bgtask_pending_after_drain"] == 0, variant
        else:
            assert row["bgtask_pending_end"] is None, variant
        spans = _spans_expected(variant, row)
        if spans is not None:
            assert row["spans"] == spans, variant
        else:  # the instrumentor: its request span at least
            assert row["spans"] >= row["served_load"] + row["served_stats"], variant


def test_celery_bench_smoke_prints_every_row_and_the_worker_ran_every_send() -> None:
    """``python -m bench.case_celery --smoke``: its three rows, and every sent task ran."""
    proc = _smoke("bench.case_celery")
    assert proc.returncode == 0, proc.stderr[-4000:]
    for row in ("inprocess", "apply_async", "send"):
        assert f"| {row} | " in proc.stdout
    # 1 round: 5 requests x (1 + 0 + 5) tasks sent through add_task, 5 x 5 + 1 published
    # directly, then 200 while the worker runs.
    assert "56 of 56 tasks sent before it started ran" in proc.stdout, proc.stdout
    assert "256 runs in all" in proc.stdout, proc.stdout


def test_live_page_bench_smoke_prints_every_row_and_the_ratio() -> None:
    """``python -m bench.case_live_page --smoke`` runs and prints every row (no timing
    asserted: ``make bench`` is for numbers)."""
    proc = _smoke("bench.case_live_page")
    assert proc.returncode == 0, proc.stderr[-4000:]
    for row in ("tasklens", "tasklens+page", "bare", "bare+buffer"):
        assert f"| {row} | " in proc.stdout
    for kind in ("async", "sync"):
        assert (
            f"- {kind}: the page adds " in proc.stdout
            and "tasklens+page / tasklens = " in proc.stdout
        )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["per_task_us"]) == {"tasklens", "tasklens+page", "bare", "bare+buffer"}
    assert result["api_live_full_ms"] > 0 and result["api_live_nothing_new_ms"] > 0
