"""Helpers of the multi-worker and reliability tests: server subprocesses, load, scrapes.

Every server runs in its own process session (``start_new_session``) so that stopping it
also stops its workers; ``ServerProcess`` always stops what it started, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
APP = "tests.e2e.apps.reliability_app:app"
T = TypeVar("T")


def clean_env(**extra: str) -> dict[str, str]:
    """The test environment without OTEL_*, proxies or a multiprocess dir, plus ``extra``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("OTEL_")
        and not name.lower().endswith("_proxy")
        and name.upper() not in ("PROMETHEUS_MULTIPROC_DIR", "GRPC_PROXY")
    }
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def poll(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``predicate`` until it returns a truthy value; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last={last!r}")
        time.sleep(interval)
        last = predicate()
    return last


class ServerProcess:
    """A server subprocess (uvicorn or gunicorn) with its output in ``log_path``."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path, port: int):
        self.args = args
        self.env = dict(env)
        self.log_path = log_path
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @classmethod
    def uvicorn(cls, env: Mapping[str, str], log_path: Path, port: int, app: str = APP) -> Self:
        args = [PYTHON, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
                "--no-access-log", "--log-level", "warning"]  # fmt: skip
        return cls(args, env, log_path, port)

    def start(self) -> Self:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.args,
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_ready(self, path: str = "/stats", timeout: float = 30.0) -> None:
        """Poll ``path`` until it answers 200; fail fast if the process exited."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=2.0) as client:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"server exited with {self.proc.returncode}:\n{self.log_tail()}"
                    )
                try:
                    if client.get(path).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() >= deadline:
                    raise AssertionError(f"server not ready after {timeout}s:\n{self.log_tail()}")
                time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> float:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL the whole session; return the
        seconds the graceful stop took (``timeout`` if it had to be killed)."""
        started = time.monotonic()
        proc = self.proc
        try:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout)
            return time.monotonic() - started
        finally:
            if proc is not None:
                # The session (process group) we created: workers left behind go too.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                if proc.poll() is None:
                    proc.wait(5)
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- metrics ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Samples:
    """Parsed exposition: ``{(sample name, sorted label items): value}``."""

    values: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    @classmethod
    def parse(cls, text: str) -> Samples:
        values = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                values[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return cls(values)

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample, items), value in self.values.items()
            if sample == name and wanted <= set(items)
        )

    def series(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {items: v for (sample, items), v in self.values.items() if sample == name}


def scrape(client: httpx.Client, path: str = "/metrics") -> Samples:
    response = client.get(path)
    response.raise_for_status()
    return Samples.parse(response.text)


def try_scrape(client: httpx.Client, path: str = "/metrics") -> Samples:
    """Like :func:`scrape`; a connection error (a worker just died) gives no samples."""
    try:
        return scrape(client, path)
    except httpx.TransportError:
        return Samples({})


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
