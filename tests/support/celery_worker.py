"""A real Celery worker process (``celery -A <module> worker``), loopback broker, own session."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from .server import REPO, ServerProcess

CELERY = str(Path(sys.executable).with_name("celery"))


def celery_worker(
    module: str,
    env: Mapping[str, str],
    log_path: Path,
    metrics_port: int,
    pool: str = "prefork",
    concurrency: int = 2,
) -> ServerProcess:
    """A ``ServerProcess`` running ``celery -A module worker`` (``wait_ready("/metrics")``
    waits for its metrics port; SIGTERM is Celery's warm shutdown)."""
    args = [CELERY, "-A", module, "worker", "--pool", pool, "--concurrency", str(concurrency),
            "--loglevel", "INFO", "--without-heartbeat", "--without-gossip", "--without-mingle",
            "--hostname", f"tasklens-test-{pool}@%h"]  # fmt: skip
    return ServerProcess(args, env, log_path, metrics_port, cwd=REPO)
