"""`tasklens demo --self-traffic`: the live page is on, the console is calm, and the URLs to
open are printed once, last (issue 13)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.net import free_port
from tests.support.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_demo_prints_the_urls_once_and_last_and_shows_tasks_on_the_page(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["TASKLENS_DEMO_DIR"] = str(tmp_path)
    log_path = tmp_path / "demo.log"
    command = [sys.executable, "-m", "tasklens.cli", "demo", "--port", str(port)]
    command += ["--self-traffic", "--rate", "40", "--traffic-seconds", "60"]
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    try:

        def page() -> dict[str, object] | None:
            assert process.poll() is None, log_path.read_text()
            try:
                live = httpx.get(f"{base}/tasks/api/live", timeout=2).json()
            except httpx.HTTPError:
                return None
            totals = live["totals"]
            # Failures, loop-blocking tasks and slow ones have all happened by now.
            enough = totals["failure"] >= 3 and totals["success"] >= 100
            return live if enough else None

        live = wait_for(page, 60, "demo tasks with failures on the live page", interval=0.2)
        names = {row["name"] for row in live["names"]}  # type: ignore[union-attr]
        assert {"tasklens.demo.capture_payment", "tasklens.demo.rebuild_cache"} <= names
        assert httpx.get(f"{base}/tasks", timeout=5).status_code == 200
        assert httpx.get(f"{base}/docs", timeout=5).status_code == 200
        assert "bgtask_finished_total" in httpx.get(f"{base}/metrics", timeout=5).text
    finally:
        process.terminate()
        process.wait(15)
    output = log_path.read_text()
    # Calm: nothing but the URLs (no span lines, no task failure lines, no uvicorn INFO),
    # printed once, when the server answered; still the last thing after the shutdown.
    assert output.strip().splitlines() == [
        "tasklens demo is running; open:",
        f"  live page  {base}/tasks",
        f"  metrics    {base}/metrics",
        f"  API docs   {base}/docs",
        "  (sending itself traffic; console: warnings only (--span-logs for spans and every log "
        "line); Ctrl+C stops)",
    ], output[-3000:]
