"""pytest plugin of ``ci/upstream_suites.py``: run Starlette's or FastAPI's own tests with
every app given to ``TestClient`` instrumented by tasklens (or not), and write each test's
outcome to a JSON file.

Environment: ``TASKLENS_UPSTREAM_MODE`` ``plain`` (nothing instrumented, the reference) or
``instrumented`` (``tasklens.instrument(app, on_error="stop")``, default options otherwise);
``TASKLENS_UPSTREAM_OPTIONS`` (optional) JSON of more ``instrument`` options
(``{"request_spans": false}``); ``TASKLENS_UPSTREAM_REPORT`` the JSON file written at the
end; ``TASKLENS_UPSTREAM_SELECT`` (optional) a file of node ids, one a line: only those run
(the rerun of the differences).
Apps that are not Starlette instances (raw ASGI callables) run as they are: ``instrument``
accepts Starlette and FastAPI apps only, and wrapping them would change what they do.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import starlette.testclient
from starlette.applications import Starlette

import tasklens

MODE = os.environ.get("TASKLENS_UPSTREAM_MODE", "plain")
OPTIONS: dict[str, Any] = {
    "on_error": "stop",
    **json.loads(os.environ.get("TASKLENS_UPSTREAM_OPTIONS", "{}")),
}
_STATS: Counter[str] = Counter()
_OUTCOMES: dict[str, str] = {}
_INSTRUMENTED: set[str] = set()
_REFUSED: dict[str, str] = {}
_current: list[str] = [""]
_RANK = {"passed": 0, "skipped": 1, "xfailed": 1, "xpassed": 1, "failed": 2, "error": 2}
_original_init = starlette.testclient.TestClient.__init__


def _init(self: Any, app: Any, *args: Any, **kwargs: Any) -> None:
    if MODE == "instrumented":
        if not isinstance(app, Starlette):
            _STATS["raw ASGI app (not instrumented)"] += 1
        else:
            try:
                tasklens.instrument(app, **OPTIONS)
            except Exception as exc:  # e.g. the app's middleware stack is already built
                _STATS["refused"] += 1
                _REFUSED[_current[0]] = f"{type(exc).__name__}: {exc}"
            else:
                _STATS["instrumented"] += 1
                _INSTRUMENTED.add(_current[0])
    _original_init(self, app, *args, **kwargs)


starlette.testclient.TestClient.__init__ = _init  # type: ignore[method-assign]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    select = os.environ.get("TASKLENS_UPSTREAM_SELECT")
    if not select:
        return
    wanted = set(Path(select).read_text().splitlines())
    keep = [item for item in items if item.nodeid in wanted]
    config.hook.pytest_deselected(items=[item for item in items if item.nodeid not in wanted])
    items[:] = keep


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:  # a module that does not import: one "error" under its node id
        _OUTCOMES[report.nodeid] = "error"


def pytest_runtest_logstart(nodeid: str, location: object) -> None:
    _current[0] = nodeid


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        outcome = "error" if report.when != "call" else "failed"
    elif hasattr(report, "wasxfail"):
        outcome = "xfailed" if report.skipped else "xpassed"
    elif report.skipped:
        outcome = "skipped"
    else:
        outcome = "passed"
    previous = _OUTCOMES.get(report.nodeid)
    if previous is None or _RANK[outcome] > _RANK[previous]:  # a phase's failure wins
        _OUTCOMES[report.nodeid] = outcome


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("TASKLENS_UPSTREAM_REPORT")
    if path:
        Path(path).write_text(
            json.dumps(
                {
                    "mode": MODE,
                    "outcomes": _OUTCOMES,
                    "stats": dict(_STATS),
                    "instrumented": sorted(_INSTRUMENTED),
                    "refused": _REFUSED,
                },
                indent=1,
            )
        )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(f"tasklens upstream ({MODE}): {dict(_STATS)}")
