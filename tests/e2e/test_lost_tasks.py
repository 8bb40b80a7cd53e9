"""A gunicorn worker SIGKILLed mid-task: the difference the BgTaskLost rule records
(enqueued - finished - pending - in progress, per instance) is exactly the tasks it held.
The rule's logic is unit-tested by promtool (deploy/prometheus/tests/lost_tasks.yml); this
proves its input on real parts."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx

from tests.e2e.reliability_support import APP
from tests.support.metrics import Samples, scrape, try_scrape
from tests.support.net import free_port
from tests.support.polling import wait_for
from tests.support.server import PYTHON, ServerProcess, clean_env

WORKERS = 2
POOL = 8  # more than the hanging tasks, so that all of them run
HANG = "tests.e2e.apps.reliability_app.hang"


def unaccounted(samples: Samples) -> float:
    """What ``job_instance:bgtask_lost:sum`` computes for one scrape target."""
    return (
        samples.total("bgtask_enqueued_total")
        - samples.total("bgtask_finished_total")
        - samples.total("bgtask_pending")
        - samples.total("bgtask_in_progress")
    )


def _hang(base_url: str) -> int:
    """POST /hang on a connection of its own (a kept-alive one waits for the hanging cycle)."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        return int(client.post("/hang").json()["pid"])


def test_tasks_of_a_killed_worker_stay_visible_as_lost(tmp_path: Path) -> None:
    directory = tmp_path / "prometheus-multiproc"
    directory.mkdir(mode=0o700)
    port = free_port()
    env = clean_env(
        PROMETHEUS_MULTIPROC_DIR=str(directory),
        RELIABILITY_THREADPOOL_SIZE=str(POOL),
        HOME=str(tmp_path),  # gunicorn >= 25's control socket: one per test run
    )
    args = [PYTHON, "-m", "gunicorn", "-c", "python:tasklens.gunicorn_conf",
            "--workers", str(WORKERS), "--bind", f"127.0.0.1:{port}",
            "--keep-alive", "3600", APP]  # fmt: skip
    with ServerProcess(args, env, tmp_path / "gunicorn.log", port) as server:
        server.wait_ready()
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            for order in range(20):
                assert client.post(f"/orders/{order}?tasks=2").status_code == 200
            first = wait_for(
                lambda: (
                    (s := scrape(client)).total("bgtask_finished_total") == 40
                    and s.total("bgtask_pending") == 0
                    and s.total("bgtask_in_progress") == 0
                    and s
                ),
                30,
                "40 tasks done, settled",
            )
            assert unaccounted(first) == 0

            # Hanging tasks on several workers; kill the worker of the first one.
            pids = [_hang(server.base_url) for _ in range(6)]
            victim = pids[0]
            held = pids.count(victim)
            wait_for(
                lambda: scrape(client).total("bgtask_in_progress", task=HANG) == len(pids),
                15,
                "every hanging task running",
            )
            assert unaccounted(scrape(client)) == 0  # running tasks are accounted for
            os.kill(victim, signal.SIGKILL)
            after = wait_for(
                lambda: (
                    (s := try_scrape(client)).total("bgtask_in_progress", task=HANG)
                    == len(pids) - held
                    and not (directory / f"gauge_livesum_{victim}.db").exists()
                    and s
                ),
                60,
                "the dead worker's live gauges gone",
            )
            assert unaccounted(after) == held
            assert after.total("bgtask_enqueued_total", task=HANG) == len(pids)
            assert after.total("bgtask_finished_total", task=HANG) == 0
            # It stays: a later scrape, after more traffic, still shows the same gap.
            for order in range(20, 30):
                assert client.post(f"/orders/{order}?tasks=2").status_code == 200
            # One scrape reads each worker's counter and gauge files one after another, not
            # as one snapshot: a task that starts and ends between the two reads is counted
            # pending and finished at once (BgTaskLost takes min_over_time for that). Only
            # a settled scrape (nothing pending, only the hanging tasks running) is exact.
            later = wait_for(
                lambda: (
                    (s := scrape(client)).total("bgtask_finished_total") == 60
                    and s.total("bgtask_pending") == 0
                    and s.total("bgtask_in_progress") == len(pids) - held
                    and s
                ),
                30,
                "the later tasks done",
            )
            assert unaccounted(later) == held
