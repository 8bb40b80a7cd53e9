"""``python -m bench.case_celery``: what sending a task to Celery costs the web process,
beside running it there, and what the worker then measures (``make bench`` runs it last).

A real redis-server on a free loopback port (Debian's), the instrumented app called through
its ASGI interface (httpx), tasks per request as in the issue's example. Rows, µs per task
(slope over tasks per response, so the request's own cost is left out), best of rounds:

- ``inprocess``: a no-op sync task run in the web process (``instrument(app)``);
- ``apply_async``: Celery's own publish of a no-op task, called directly (no tasklens);
- ``send``: the same task through ``add_task`` with ``instrument(app, celery=...)``.

Then a solo worker runs what was sent: tasks run, and their queue time (``add_task`` in the
web process to start on the worker) from the worker's ``/metrics``. Writes
``bench/results/celery.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    redis = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen(
        [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}", timeout=0.2)
        except httpx.RemoteProtocolError:
            return proc, port  # something answers (not HTTP): redis is up
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("bench.case_celery: redis-server did not start")


async def _per_task(app: object, path: str, tasks: int, requests: int) -> float:
    """µs per task: (time at ``tasks`` per request - time at 0) / tasks / requests."""
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

        async def run(n: int) -> float:
            start = time.perf_counter()
            for _ in range(requests):
                response = await client.post(f"{path}?n={n}")
                assert response.status_code == 200, response.text
            return time.perf_counter() - start

        await run(1)  # warm up
        empty = await run(0)
        full = await run(tasks)
    return (full - empty) / (tasks * requests) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.case_celery", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks, not numbers")
    args = parser.parse_args(argv)
    rounds, tasks, requests = (1, 5, 5) if args.smoke else (5, 50, 40)
    workdir = Path(tempfile.mkdtemp(prefix="tasklens-bench-celery-"))
    redis, port = _start_redis(workdir)
    os.environ["SHOP_BROKER_URL"] = broker = f"redis://127.0.0.1:{port}/0"
    os.environ["OTEL_TRACES_EXPORTER"] = "none"
    os.environ["OTEL_METRICS_EXPORTER"] = "none"
    try:
        from bench import celery_apps

        best: dict[str, float] = {}
        for _ in range(rounds):
            for name, measure in (
                ("inprocess", lambda: _per_task(celery_apps.local_app, "/local", tasks, requests)),
                ("apply_async", lambda: celery_apps.direct_publish(tasks * requests)),
                (
                    "send",
                    lambda: _per_task(celery_apps.celery_backed_app, "/send", tasks, requests),
                ),
            ):
                value = asyncio.run(measure())  # type: ignore[arg-type]
                best[name] = min(best.get(name, value), value)
        sent = celery_apps.sent_count()
        worker = _run_worker(broker, workdir, sent)
    finally:
        redis.kill()
        redis.wait(10)
    lines = [
        "# Celery: the web side's cost per task, and the worker's view",
        "",
        f"{rounds} rounds, {tasks} tasks per request, {requests} requests; best round. "
        "µs per task (slope: the request's own cost left out).",
        "",
        "| row | µs per task | vs inprocess | vs apply_async |",
        "|---|---|---|---|",
    ]
    for name in ("inprocess", "apply_async", "send"):
        lines.append(
            f"| {name} | {best[name]:.1f} | {best[name] / best['inprocess']:.2f}x "
            f"| {best[name] / best['apply_async']:.2f}x |"
        )
    lines += [
        "",
        f"tasklens on top of Celery's own publish: {best['send'] - best['apply_async']:+.1f} µs "
        "per task (span, metrics, headers, the thread-pool hand-off).",
        "",
        f"Worker (solo): {worker['backlog_ran']:.0f} of {sent} tasks sent before it started "
        f"ran, in {worker['drain_seconds']:.2f} s from its start; their queue time (add_task "
        f"to start on the worker, its start-up included) mean "
        f"{worker['queue_mean'] * 1000:.1f} ms. Then {worker['live_count']:.0f} tasks sent "
        f"while it ran (10 per request, 20 ms apart): queue time mean "
        f"{worker['live_mean'] * 1000:.2f} ms; {worker['ran']:.0f} runs in all.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.smoke:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "celery.md").write_text(text)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _scrape_worker(port: int) -> dict[str, float] | None:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    values = {"ran": 0.0, "queue_sum": 0.0, "queue_count": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "bgtask_finished_total" and s.labels.get("executor") == "celery":
                values["ran"] += s.value
            elif s.name == "bgtask_queue_seconds_sum":
                values["queue_sum"] += s.value
            elif s.name == "bgtask_queue_seconds_count":
                values["queue_count"] += s.value
    return values


def _wait_ran(port: int, count: float, timeout: float = 300) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    values: dict[str, float] = {"ran": 0.0, "queue_sum": 0.0, "queue_count": 0.0}
    while time.monotonic() < deadline:
        scraped = _scrape_worker(port)
        if scraped is not None:
            values = scraped
            if values["ran"] >= count:
                break
        time.sleep(0.1)
    return values


async def _send_live(count: int) -> None:
    """``count`` tasks, 10 per request, 20 ms apart: a worker running meanwhile."""
    from bench import celery_apps

    transport = httpx.ASGITransport(app=celery_apps.celery_backed_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for _ in range(count // 10):
            await client.post("/send?n=10")
            await asyncio.sleep(0.02)


def _run_worker(broker: str, workdir: Path, sent: int) -> dict[str, float]:
    """A solo worker runs every sent task (sent before it started: their queue time holds its
    start-up), then 200 more sent while it runs; its /metrics counts runs and queue time."""

    port = _free_port()
    env = {**os.environ, "SHOP_BROKER_URL": broker, "SHOP_WORKER_METRICS_PORT": str(port),
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    celery = str(Path(sys.executable).with_name("celery"))
    started = time.monotonic()
    proc = subprocess.Popen(
        [celery, "-A", "bench.celery_apps", "worker", "--pool", "solo", "--loglevel", "WARNING",
         "--without-heartbeat", "--without-gossip", "--without-mingle"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        backlog = _wait_ran(port, sent)
        backlog["drain_seconds"] = time.monotonic() - started
        asyncio.run(_send_live(200))
        after = _wait_ran(port, sent + 200, timeout=60)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    live_count = after["queue_count"] - backlog["queue_count"]
    return {
        "ran": after["ran"],
        "backlog_ran": backlog["ran"],
        "queue_mean": backlog["queue_sum"] / max(backlog["queue_count"], 1),
        "queue_count": backlog["queue_count"],
        "drain_seconds": backlog["drain_seconds"],
        "live_mean": (after["queue_sum"] - backlog["queue_sum"]) / max(live_count, 1),
        "live_count": live_count,
    }


if __name__ == "__main__":
    sys.exit(main())
