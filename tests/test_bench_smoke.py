"""``python -m bench --smoke`` runs every benchmark case and writes every row (no timings
are asserted: CI machines are too noisy for that; ``make bench`` is for numbers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from packaging.version import Version

from bench import case_ids

#: FastAPIInstrumentor wraps each background task in a span from 0.63b0 on (none before).
INSTRUMENTOR_TASK_SPANS = int(
    Version(version("opentelemetry-instrumentation-fastapi")) >= Version("0.63b0")
)

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_writes_every_case(tmp_path: Path) -> None:
    out = tmp_path / "smoke"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    markdown = out.with_suffix(".md").read_text()
    result = json.loads(out.with_suffix(".json").read_text())
    ids = [row["id"] for row in result["rows"]]
    assert ids == case_ids()
    for case in case_ids():
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
