"""Run an ASGI app under a real uvicorn subprocess on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from .net import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    """A running uvicorn process."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


@contextlib.contextmanager
def uvicorn_server(
    app: str,
    log_path: Path,
    env: dict[str, str] | None = None,
    factory: bool = False,
    ready_path: str = "/health",
    extra_args: tuple[str, ...] = (),
) -> Iterator[Server]:
    """Start ``uvicorn app`` (e.g. ``tests.e2e.apps.core_app:app``) and wait until it answers."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--log-level", "warning", *extra_args]
    if factory:
        command.append("--factory")
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=log, stderr=log)
    server = Server(process, port, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {process.returncode}:\n{server.log()}")
            try:
                if httpx.get(server.url + ready_path, timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not answer within 30 s:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        server.terminate()
