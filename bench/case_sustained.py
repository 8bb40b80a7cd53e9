"""The sustained case: each variant under a closed-loop load for ``BENCH_SUSTAINED_SECONDS``.

The server (``bench.server VARIANT``: uvicorn, h11, asyncio) is pinned to the first CPU and
the load generator, in its own process, to the second (``os.sched_setaffinity``, what
``taskset -c`` does). The generator is wrk (``/usr/bin/wrk``, Debian's; ``make bench``
installs it) with one thread, C keep-alive connections and ``--latency``, or
:mod:`bench.loadgen` when wrk is not installed. Each request (``GET /load``) adds one async
and one sync no-op task. During the load the harness reads ``/_bench/stats`` (a 17th
connection, once a second: the timeline of tasks behind) and, a quarter second before it
stops, the end state; then it waits (bounded) for the tasks still behind to finish and
reads the state again.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import machine, subproc

ROOT = Path(__file__).resolve().parent.parent
#: Seconds of load per variant (full run); ``--smoke`` uses 2 unless the variable is set.
DURATION_ENV = "BENCH_SUSTAINED_SECONDS"


def duration(smoke: bool) -> int:
    """Seconds of load per variant: ``BENCH_SUSTAINED_SECONDS``, else 30 (2 with --smoke)."""
    raw = os.environ.get(DURATION_ENV)
    if raw is None:
        return 2 if smoke else 30
    try:
        seconds = int(raw)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise ValueError(f"{DURATION_ENV} must be a whole number of seconds >= 1, got {raw!r}")
    return seconds


def _stats(port: int, **query: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/_bench/stats?" + "&".join(f"{k}={v}" for k, v in query.items()))
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"/_bench/stats answered {response.status}: {body[:200]!r}")
        return json.loads(body)
    finally:
        conn.close()


# --- load generators ---------------------------------------------------------------------------
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str, seconds: float) -> dict[str, Any]:
    """req/s, p50/p99 (``--latency``), requests and errors from wrk's report."""
    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.M))
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(\w+)", output, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if not (latency.get("99") and total and rps):
        raise RuntimeError(f"cannot read wrk's report:\n{output}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(non2xx.group(1)) if non2xx else 0
    return {
        "generator": "wrk",
        "requests": int(total.group(1)),
        "rps": float(rps.group(1)),
        "p50_ms": _ms(latency["50"]),
        "p99_ms": _ms(latency["99"]),
        "errors": errors,
        "duration_s": seconds,
    }


def _start_load(
    port: int, connections: int, seconds: int, cpu: int | None
) -> subprocess.Popen[str]:
    wrk = shutil.which("wrk")
    if wrk is not None:
        args = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                "--timeout", "30s", f"http://127.0.0.1:{port}/load"]  # fmt: skip
    else:
        args = [sys.executable, "-m", "bench.loadgen", str(port), "--path", "/load",
                "--connections", str(connections), "--warmup", "0",
                "--duration", str(seconds)]  # fmt: skip
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=subproc.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=subproc.pin(cpu),
    )


def _load_result(proc: subprocess.Popen[str], seconds: int) -> dict[str, Any]:
    out, err = proc.communicate(timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator exited {proc.returncode}: {err[-2000:]}")
    if isinstance(proc.args, list) and str(proc.args[0]).endswith("wrk"):
        return parse_wrk(out, seconds)
    line = [ln for ln in out.splitlines() if ln.startswith("{")][-1]
    return {"generator": "bench.loadgen", **json.loads(line)}


# --- one variant -------------------------------------------------------------------------------
def _start_server(variant: str, cpu: int | None) -> tuple[subprocess.Popen[str], int]:
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.server", variant],
        cwd=ROOT,
        env=subproc.env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=subproc.pin(cpu),
    )
    assert server.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        if not line:
            break
        if line.startswith("PORT "):
            return server, int(line.split()[1])
    server.kill()
    _, err = server.communicate()
    raise RuntimeError(f"server {variant} did not start: {err[-3000:]}")


def _stop_server(server: subprocess.Popen[str], variant: str) -> dict[str, Any]:
    try:
        out, err = server.communicate(timeout=60)  # closes stdin: graceful shutdown
    except subprocess.TimeoutExpired:
        server.kill()
        out, err = server.communicate()
        return {"shutdown": "killed after 60 s"}
    if server.returncode != 0:
        raise RuntimeError(f"server {variant} exited {server.returncode}: {err[-3000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return {"shutdown": "clean", **(json.loads(lines[-1]) if lines else {})}


def run_variant(
    variant: str, seconds: int, connections: int, cpus: list[int], drain_timeout: float
) -> dict[str, Any]:
    server_cpu, client_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    server, port = _start_server(variant, server_cpu)
    try:
        _stats(port)  # first request: lazy setup (middleware stack, tracer) out of the way
        start = _stats(port, reset="1", objects="1")
        load = _start_load(port, connections, seconds, client_cpu)
        began = time.monotonic()
        # Once a second, then the end state a quarter second before the load stops (after
        # it, whatever fell behind would already be draining).
        timeline, end = [], None
        for tick in (*range(1, seconds), seconds - 0.25):
            time.sleep(max(0.0, began + tick - time.monotonic()))
            if load.poll() is not None:
                break
            end = _stats(port, objects="1") if tick == seconds - 0.25 else _stats(port)
            timeline.append(end)
        result = _load_result(load, seconds)
        if end is None:
            raise RuntimeError(f"{variant}: the load generator stopped early")
        drained_at = time.monotonic()
        after, previous = end, None
        # Drained: nothing behind, twice in a row with nothing newly enqueued (a request the
        # load generator left in flight when it stopped may still add its tasks).
        while (
            after["behind"] > 0 or previous is None or previous["enqueued"] != after["enqueued"]
        ) and time.monotonic() - drained_at < drain_timeout:
            time.sleep(0.25)
            previous, after = after, _stats(port)
        drain_s = time.monotonic() - drained_at if after["behind"] == 0 else None
        after = _stats(port, objects="1")
    except BaseException:
        server.kill()
        server.communicate()
        raise
    shutdown = _stop_server(server, variant)
    t0 = start["t"]
    return {
        **result,
        "variant": variant,
        "connections": connections,
        "start": start,
        "end": end,
        "after_drain": after,
        "drain_s": drain_s,
        "timeline": [
            {
                "t_s": round(s["t"] - t0, 2),
                "enqueued": s["enqueued"],
                "behind": s["behind"],
                "bgtask_pending": s["bgtask_pending"],
                "loop_tasks": s["loop_tasks"],
                "queue_sync_p99_ms": s["queue_sync"]["p99_ms"],
                "rss_mb": round(s["rss_bytes"] / 2**20, 1),
                "gc2_count": s["gc2_count"],
            }
            for s in timeline
        ],
        "spans": shutdown.get("spans"),
        "served_load": shutdown.get("requests_load"),
        "served_stats": shutdown.get("requests_stats"),
        "shutdown": shutdown["shutdown"],
    }


def run(variants: tuple[str, ...], seconds: int, connections: int, log: Any) -> dict[str, Any]:
    cpus = machine.usable_cpus()
    drain_timeout = max(10.0, seconds / 2)
    results: dict[str, Any] = {}
    for variant in variants:
        log(f"[bench] sustained.{variant}: {seconds} s, {connections} connections")
        results[variant] = run_variant(variant, seconds, connections, cpus, drain_timeout)
    return results
