"""`tasklens demo --self-traffic` shows every metric of the contract's core table, non-zero."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tasklens.telemetry import contract
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_demo_self_traffic_fills_every_core_metric(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "TASKLENS_DEMO_DIR": str(tmp_path)}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    log_path = tmp_path / "demo.log"
    command = [sys.executable, "-m", "tasklens.cli", "demo", "--port", str(port)]
    command += ["--self-traffic", "--rate", "40", "--traffic-seconds", "30", "--span-logs"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    seen: set[str] = set()
    wanted = {m.sample_name for m in contract.CORE_METRICS}
    try:
        deadline = time.monotonic() + 40
        while seen != wanted and time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    base = sample.name.removesuffix("_count")
                    if base in wanted and sample.value > 0:
                        if family.type == "gauge" and sample.labels.get("state") == "total":
                            continue  # the total is constant: borrowed must be seen > 0
                        seen.add(base)
            time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(10)
    assert seen == wanted, f"never non-zero: {sorted(wanted - seen)}"
    log = log_path.read_text()
    # No OTLP endpoint and --span-logs: spans are printed as structured log lines.
    assert '"event": "span"' in log and '"span_name": "bgtask tasklens.demo.' in log
    assert '"event": "background task failed"' in log
