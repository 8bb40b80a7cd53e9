"""Fixtures for the dashboard, rule and deploy-config tests: promtool and amtool."""

from __future__ import annotations

import pytest

from tests.dashboards.tools import require_tool


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool (Debian package ``prometheus``); the test fails without it."""
    return require_tool("promtool", "prometheus")


@pytest.fixture(scope="session")
def amtool() -> str:
    """amtool (Debian package ``prometheus-alertmanager``); the test fails without it."""
    return require_tool("amtool", "prometheus-alertmanager")
