"""Start, wait for and stop the local stack's processes (each in its own process group)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_binary(*names: str) -> str:
    """The first of ``names`` found on PATH; :class:`FileNotFoundError` names them all."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError(f"none of {', '.join(names)} is on PATH")


@dataclass
class Process:
    """A started process, its log file and the URL it serves."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    url: str

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The end of the process's log, for error messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def start_process(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    url: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Process:
    """Start ``argv`` in a new session, stdout and stderr to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
    return Process(name, popen, log_path, url)


def wait_until_ready(url: str, *, timeout: float = 30.0, process: Process | None = None) -> None:
    """Poll ``url`` until it answers 2xx; fail early, with its log, if ``process`` dies."""
    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise RuntimeError(
                f"{process.name} exited with {process.popen.returncode} before {url} was ready:\n"
                f"{process.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if 200 <= response.status < 300:
                    return
                last_error = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as error:
            last_error = str(error)
        time.sleep(0.2)
    tail = f"\n{process.log_tail()}" if process is not None else ""
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s ({last_error}){tail}")


def redis_answers(port: int, host: str = LOOPBACK) -> bool:
    """Whether a Redis server on ``host:port`` answers ``PING``."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def wait_until_redis(port: int, *, timeout: float = 30.0, process: Process | None = None) -> None:
    """Poll until Redis answers on ``port``; fail early, with its log, if ``process`` dies."""
    deadline = time.monotonic() + timeout
    while not redis_answers(port):
        if process is not None and not process.alive():
            raise RuntimeError(
                f"{process.name} exited with {process.popen.returncode} before answering on "
                f"port {port}:\n{process.log_tail()}"
            )
        if time.monotonic() >= deadline:
            tail = f"\n{process.log_tail()}" if process is not None else ""
            raise TimeoutError(f"redis not answering on port {port} after {timeout:.0f}s{tail}")
        time.sleep(0.1)


def stop_process(process: Process, timeout: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited within ``timeout``."""
    if not process.alive():
        return
    pgid = os.getpgid(process.popen.pid)
    os.killpg(pgid, signal.SIGTERM)
    try:
        process.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        process.popen.wait(timeout=timeout)


def stop_all(processes: Sequence[Process], timeout: float = 10.0) -> None:
    """Stop ``processes`` in reverse start order."""
    for process in reversed(processes):
        stop_process(process, timeout)


def prometheus_argv(
    binary: str, config: Path, *, port: int, data_dir: Path, extra: Sequence[str] = ()
) -> list[str]:
    """Prometheus on loopback with exemplar storage, lifecycle API and its own TSDB."""
    return [
        binary,
        f"--config.file={config}",
        f"--web.listen-address={LOOPBACK}:{port}",
        f"--storage.tsdb.path={data_dir}",
        "--enable-feature=exemplar-storage",
        "--web.enable-lifecycle",
        *extra,
    ]


def alertmanager_argv(binary: str, config: Path, *, port: int, data_dir: Path) -> list[str]:
    """Alertmanager on loopback, clustering off (empty ``--cluster.listen-address``)."""
    return [
        binary,
        f"--config.file={config}",
        f"--web.listen-address={LOOPBACK}:{port}",
        "--cluster.listen-address=",
        f"--storage.path={data_dir}",
    ]


def redis_argv(binary: str, *, port: int, data_dir: Path) -> list[str]:
    """Redis on loopback as a throwaway broker: no persistence, protected mode on."""
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        LOOPBACK,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data_dir),
        "--protected-mode",
        "yes",
    ]


def celery_worker_argv(
    python: str, module: str, *, pool: str = "prefork", concurrency: int = 2, hostname: str
) -> list[str]:
    """``celery -A module worker`` run by ``python`` (no gossip, mingle or heartbeats: one
    worker, nothing to synchronise with)."""
    return [
        python, "-m", "celery", "-A", module, "worker", "--pool", pool,
        "--concurrency", str(concurrency), "--loglevel", "INFO", "--hostname", hostname,
        "--without-heartbeat", "--without-gossip", "--without-mingle",
    ]  # fmt: skip
