"""``python -m bench.case_live_page --smoke`` runs and prints every row (no timing asserted:
``make bench`` is for numbers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_live_page_bench_smoke_prints_every_row_and_the_ratio() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.case_live_page", "--smoke"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
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
