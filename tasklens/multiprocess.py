"""Several worker processes (gunicorn, ``uvicorn --workers``): prometheus_client's multiprocess
mode, prepared safely. See docs/multi-worker.md and ``tasklens export`` (gunicorn config)."""

from tasklens.telemetry.multiprocess import (
    MultiprocessDirectoryError,
    child_exit,
    on_starting,
    prepare_directory,
)

__all__ = ["MultiprocessDirectoryError", "child_exit", "on_starting", "prepare_directory"]
