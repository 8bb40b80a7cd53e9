"""How every case starts its processes: the repository importable, pinned to one CPU."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def env() -> dict[str, str]:
    """The environment of every case: the repository importable, no OTEL_* or multiprocess
    settings of the caller's (they would change what is measured)."""
    out = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OTEL_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), out.get("PYTHONPATH")]))
    out["PYTHONHASHSEED"] = "0"
    return out


def pin(cpu: int | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` pinning the child to ``cpu`` (what ``taskset -c CPU`` does)."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    return lambda: os.sched_setaffinity(0, {cpu})
