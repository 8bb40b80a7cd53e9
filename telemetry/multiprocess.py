"""Prometheus metrics with several worker processes (gunicorn, ``uvicorn --workers``).

prometheus_client's multiprocess mode: each worker writes its values to memory-mapped
``*.db`` files in ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` (any worker) sums them.
The variable must be set before the processes start (prometheus_client decides the mode
when it is first imported). Two chores remain for the process manager:

- at start, the directory must exist, be safe, and hold no files of a previous run
  (their counts would be added to the new run's): :func:`prepare_directory`;
- when a worker exits, its ``live*`` gauge files must go, or its last in-progress,
  pending and thread-pool values stay in the sums forever: :func:`child_exit`
  (counters and histograms of dead workers are kept, so totals never go down).

``deploy/gunicorn.conf.py`` wires both into gunicorn. Exemplars are not available in
multiprocess mode (prometheus_client does not store them in the files): ``/metrics``
and the OTLP export then carry none, and nothing fails.

Over OTLP, each worker exports its own values (its own ``service.instance.id``); the
backend's ``sum`` adds them up. See docs/multi-worker.md.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"
_logger = logging.getLogger("tasklens.telemetry")


class MultiprocessDirectoryError(ValueError):
    """``PROMETHEUS_MULTIPROC_DIR`` is missing, unsafe or unusable."""


def directory_from_env() -> Path | None:
    """``PROMETHEUS_MULTIPROC_DIR`` as a path (None when unset or empty)."""
    value = os.environ.get(ENV) or os.environ.get(ENV.lower(), "")
    return Path(value) if value else None


def prepare_directory(path: str | os.PathLike[str] | None = None, *, wipe: bool = True) -> Path:
    """Make ``path`` (default: ``$PROMETHEUS_MULTIPROC_DIR``) ready for a new run.

    Creates it (mode 0700, parents too) when missing; refuses, with
    :class:`MultiprocessDirectoryError`, a path that is a symlink or not a directory, or a
    directory this process's user does not own or cannot write. With ``wipe`` (the
    default, for a process manager before it starts workers), deletes the ``*.db`` files
    left by a previous run. Returns the directory.
    """
    if path is None or str(path) == "":
        path = directory_from_env()
        if path is None:
            raise MultiprocessDirectoryError(
                f"{ENV} is not set: set it to a directory reserved for this service's "
                "metric files (e.g. /run/myservice-metrics) before starting the workers"
            )
    directory = Path(path)
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise MultiprocessDirectoryError(
                f"{ENV}={str(directory)!r}: cannot create the directory: {exc}"
            ) from exc
        info = os.lstat(directory)
    _check(directory, info)
    if wipe:
        removed = 0
        for entry in directory.glob("*.db"):
            if entry.is_symlink() or entry.is_file():
                entry.unlink(missing_ok=True)
                removed += 1
        if removed:
            _logger.info(
                "tasklens: removed %d metric file(s) of a previous run from %s", removed, directory
            )
    return directory


def claim_directory(path: str | os.PathLike[str] | None = None) -> Path:
    """:func:`prepare_directory` for a process manager that wrote metric files itself before
    it knew it was one (a Celery worker imports the app first): deletes the ``*.db`` files
    of processes that are gone, keeps this process's own, and refuses, with
    :class:`MultiprocessDirectoryError`, a directory with files of another running
    process (a second worker sharing it would mix both workers' counts)."""
    directory = prepare_directory(path, wipe=False)
    me = os.getpid()
    removed = 0
    for entry in directory.glob("*.db"):
        pid = pid_of(entry.name)
        if pid is None or pid == me:
            continue
        if pid_alive(pid):
            raise MultiprocessDirectoryError(
                f"{ENV}={str(directory)!r} holds the metric files of running process {pid}: "
                "give each worker a directory of its own"
            )
        entry.unlink(missing_ok=True)
        removed += 1
    if removed:
        _logger.info("tasklens: removed %d metric file(s) of a previous run", removed)
    return directory


def pid_of(file_name: str) -> int | None:
    """The process id in a prometheus_client file name (``counter_1234.db``), if any."""
    stem = file_name[: -len(".db")] if file_name.endswith(".db") else file_name
    tail = stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _check(directory: Path, info: os.stat_result) -> None:
    where = f"{ENV}={str(directory)!r}"
    if stat.S_ISLNK(info.st_mode):
        raise MultiprocessDirectoryError(
            f"{where} is a symlink; refusing to use it (point the variable at the real directory)"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise MultiprocessDirectoryError(f"{where} exists and is not a directory")
    uid = os.geteuid()
    if info.st_uid != uid:
        raise MultiprocessDirectoryError(
            f"{where} is owned by uid {info.st_uid}, not by this process's uid {uid}; "
            "use a directory of the service's own user"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise MultiprocessDirectoryError(f"{where} is not writable by uid {uid}")


def mark_dead(pid: int, path: str | os.PathLike[str] | None = None) -> None:
    """Remove the ``live*`` gauge files of the exited process ``pid`` (counters stay)."""
    directory = Path(path) if path is not None else directory_from_env()
    if directory is None:
        return
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid, str(directory))


def on_starting(server: Any) -> None:
    """gunicorn ``on_starting`` hook (master, before any worker): :func:`prepare_directory`."""
    prepare_directory()


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn ``child_exit`` hook (master, after a worker exited, killed or not): drop the
    worker's live gauges from the sums."""
    mark_dead(worker.pid)
