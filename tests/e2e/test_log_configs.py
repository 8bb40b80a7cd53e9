"""The failure line carries a real traceback whatever the app configured before
``tasklens.setup()``: ``logging.basicConfig()``, its own structlog chain (JSON or console
renderer), or nothing. A real uvicorn serving ``tests/e2e/apps/logs_app.py``; its task
raises ``ValueError("card declined for order 7")``. Before, with ``basicConfig()`` the line
was the event dict's repr (``ERROR:tasklens:{'task': ..., 'exception': 'Traceback...\\n...'}``)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.support.net import free_port
from tests.support.polling import wait_for
from tests.support.server import ServerProcess, clean_env

APP = "tests.e2e.apps.logs_app:app"
TASK = "tests.e2e.apps.logs_app.charge_card"
TRACEBACK = [
    "Traceback (most recent call last):",
    'tests/e2e/apps/logs_app.py", line 35, in charge_card',
    '    raise ValueError(f"card declined for order {order}")',
    "ValueError: card declined for order 7",
]


def _served_log(tmp_path: Path, config: str) -> str:
    env = clean_env(
        LOGS_APP_CONFIG=config, OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none"
    )
    with ServerProcess.uvicorn(APP, env, tmp_path / "server.log", free_port()) as server:
        server.wait_ready("/health")
        assert httpx.post(f"{server.base_url}/orders/7", timeout=10).status_code == 200
        wait_for(lambda: "card declined for order 7" in server.log_text(), 10, "failure line")
        return server.log_text()


def _in_order(lines: list[str], expected: list[str]) -> bool:
    """Each expected line is (ends) a line of ``lines``, in that order."""
    position = 0
    for line in lines:
        if position < len(expected) and line.endswith(expected[position]):
            position += 1
    return position == len(expected)


@pytest.mark.parametrize("config", ["basic", "structlog_console"])
def test_text_line_then_the_traceback_on_its_own_lines(tmp_path: Path, config: str) -> None:
    lines = _served_log(tmp_path, config).splitlines()
    (head,) = [line for line in lines if "background task failed" in line]
    assert f"task={TASK}" in head and "error_type=ValueError" in head and "trace_id=" in head
    if config == "basic":  # basicConfig's format: LEVEL:logger:message
        assert head.startswith("ERROR:tasklens:background task failed task=")
    after = lines[lines.index(head) + 1 :]
    assert after[0] == TRACEBACK[0]
    assert _in_order(after, TRACEBACK)
    assert not any(line.startswith("{") or "\\n" in line for line in lines)


@pytest.mark.parametrize("config", ["structlog_json", "none"])
def test_json_line_with_the_traceback_field(tmp_path: Path, config: str) -> None:
    text = _served_log(tmp_path, config)
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    (failure,) = [r for r in records if r.get("event") == "background task failed"]
    assert failure["task"] == TASK and failure["error_type"] == "ValueError"
    assert len(failure["trace_id"]) == 32 and failure["level"] == "error"
    assert _in_order(failure["exception"].splitlines(), TRACEBACK)
