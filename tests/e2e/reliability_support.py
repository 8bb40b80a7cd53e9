"""Helpers of the multi-worker and reliability tests: load generation and process memory.

Servers, scrapes and polling are shared: ``tests.support.server``, ``.metrics``, ``.polling``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.net import free_port
from tests.support.server import ServerProcess

APP = "tests.e2e.apps.reliability_app:app"
#: uvicorn's keep-alive timeout for the reliability servers, longer than any test: a server
#: that closes an idle connection (after 5 s by default) just as the client reuses it resets
#: that request (``httpx.ReadError: Connection reset by peer``); a client-side expiry only
#: narrows that race. The sick-collector test's control clients idle while the other runs
#: take their rounds, several seconds on a loaded machine.
KEEP_ALIVE_SECONDS = 3600


def reliability_server(env: Mapping[str, str], log_path: Path) -> ServerProcess:
    """A uvicorn server of the reliability app that never closes an idle connection first."""
    server = ServerProcess.uvicorn(APP, env, log_path, free_port())
    server.args += ["--timeout-keep-alive", str(KEEP_ALIVE_SECONDS)]
    return server


# --- load ---------------------------------------------------------------------------------
@dataclass
class LoadResult:
    ok: int
    errors: list[str]
    bodies: list[dict[str, object]]
    seconds: float
    latencies: list[float]

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def _send(
    base_url: str, paths: Iterable[str], concurrency: int, timeout: float, keepalive: bool
) -> LoadResult:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for path in paths:
        queue.put_nowait(path)
    result = LoadResult(0, [], [], 0.0, [])
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency if keepalive else 0
    )
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as client:

        async def worker() -> None:
            while True:
                try:
                    path = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                sent = time.monotonic()
                try:
                    response = await client.post(path)
                except httpx.HTTPError as exc:
                    result.errors.append(f"{path}: {type(exc).__name__}: {exc}")
                    continue
                result.latencies.append(time.monotonic() - sent)
                if response.status_code != 200:
                    result.errors.append(f"{path}: HTTP {response.status_code}")
                else:
                    result.ok += 1
                    result.bodies.append(response.json())

        await asyncio.wait_for(
            asyncio.gather(*(worker() for _ in range(concurrency))), timeout=timeout * 4
        )
    result.seconds = time.monotonic() - started
    return result


def send_load(
    base_url: str,
    paths: Iterable[str],
    concurrency: int = 16,
    timeout: float = 15.0,
    keepalive: bool = True,
) -> LoadResult:
    """POST every path with ``concurrency`` connections; bounded by ``4 * timeout`` s."""
    return asyncio.run(_send(base_url, list(paths), concurrency, timeout, keepalive))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
