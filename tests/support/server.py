"""Server subprocesses for the end-to-end tests (uvicorn or gunicorn, loopback only).

Every server runs in its own process session (``start_new_session``) so that stopping it
also stops its workers; ``ServerProcess`` always stops what it started, also on failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


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


class ServerProcess:
    """A server subprocess (uvicorn or gunicorn) with its output in ``log_path``."""

    def __init__(
        self,
        args: list[str],
        env: Mapping[str, str],
        log_path: Path,
        port: int,
        cwd: Path = REPO,
    ):
        self.args = args
        self.cwd = cwd
        self.env = dict(env)
        self.log_path = log_path
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @classmethod
    def uvicorn(cls, app: str, env: Mapping[str, str], log_path: Path, port: int) -> Self:
        args = [PYTHON, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
                "--no-access-log", "--log-level", "warning"]  # fmt: skip
        return cls(args, env, log_path, port)

    def start(self) -> Self:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.args,
            cwd=self.cwd,
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
