"""``make upstream`` fails only on upstream tests that fail instrumented and are not listed in
ci/upstream_by_design.txt; every listed test is one docs/runtime.md explains."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _suites() -> ModuleType:
    spec = importlib.util.spec_from_file_location("upstream_suites", ROOT / "ci/upstream_suites.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("upstream_suites", module)
    spec.loader.exec_module(module)
    return module


def test_every_listed_test_is_explained_in_the_docs() -> None:
    suites = _suites()
    prefixes = suites.by_design("fastapi")
    assert len(prefixes) == 11
    assert suites.by_design("starlette") == ()
    docs = (ROOT / "docs/runtime.md").read_text()
    for prefix in prefixes:
        module, _, test = prefix.partition("::")
        assert Path(module).name in docs, module
        function = re.sub(r"\[.*", "", test)  # without its parameters
        assert re.search(rf"(`|::){function}\b", docs), test


def test_a_listed_prefix_matches_its_parametrisations_only() -> None:
    prefixes = _suites().by_design("fastapi")
    failing = [
        "tests/test_telemetry/test_http.py::test_independent_signals[False-True]",
        "tests/test_telemetry/test_http.py::test_independent_signals[True-True]",
        "tests/test_telemetry/test_background.py::test_background_task_spans[True-trio]",
        "tests/test_background_tasks.py::test_it",
    ]
    assert [n for n in failing if not n.startswith(prefixes)] == failing[1::2]


def test_a_malformed_line_names_the_file_and_line(tmp_path: Path) -> None:
    listing = tmp_path / "by_design.txt"
    listing.write_text("# comment\n\nfastapi tests/a.py::t\nflask tests/b.py::t\n")
    with pytest.raises(SystemExit, match=r"by_design.txt:4: expected '<starlette\|fastapi>"):
        _suites().by_design("fastapi", listing)
