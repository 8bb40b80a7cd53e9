"""Fixtures of the runtime tests: isolated telemetry and structlog capture."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import structlog.testing

from tests.runtime.helpers import Probe


@pytest.fixture
def probe() -> Iterator[Probe]:
    """A fresh registry and span exporter with the three observers."""
    probe = Probe()
    try:
        yield probe
    finally:
        probe.close()


@pytest.fixture
def task_logs() -> Iterator[list[dict[str, Any]]]:
    """Every structlog event (the LogObserver's lines), from any thread, for the test."""
    with structlog.testing.capture_logs() as events:
        yield events
