"""Helpers for the dashboard, rule and deploy-config tests: paths, tools, subprocesses."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def require_tool(name: str, package: str) -> str:
    """Path of ``name``; a missing tool fails the test (it is never skipped)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: install it (apt-get install {package})", pytrace=False)
    return path


def run(
    argv: Sequence[str], cwd: Path = REPO_ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output as text."""
    return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    """Fail with the command's output unless it exited 0."""
    assert result.returncode == 0, (
        f"{' '.join(map(str, result.args))} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
