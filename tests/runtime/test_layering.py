"""The house: the runtime is the ground floor. It imports no telemetry, no OpenTelemetry SDK and
no prometheus_client, and runs tasks with nothing but a recording observer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("tasklens.telemetry", "telemetry", "opentelemetry.sdk", "prometheus_client")

# Runs in a fresh interpreter. The ``tasklens`` package is stood in for by an empty module
# with the real package's path, so ``tasklens/__init__.py`` (the composition, which imports
# telemetry) does not run; every forbidden import raises.
PROGRAM = r"""
import importlib.abc, importlib.util, sys, types

FORBIDDEN = {forbidden!r}

class Wall(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN):
            raise ImportError(f"forbidden import: {{name}}")
        return None

spec = importlib.util.find_spec("tasklens")
stand_in = types.ModuleType("tasklens")
stand_in.__path__ = list(spec.submodule_search_locations)
sys.modules["tasklens"] = stand_in
sys.meta_path.insert(0, Wall())

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tasklens.runtime import RuntimeOptions, TaskObserver, TaskRunner, attach

events = []

class Recorder(TaskObserver):
    def enqueued(self, task):
        events.append(("enqueued", task.name, task.executor))
    def started(self, task):
        events.append(("started", task.name))
    def finished(self, task):
        events.append(("finished", task.name, task.outcome, task.duration_seconds >= 0))

def work(n):
    if n < 0:
        raise ValueError(n)

async def endpoint(request):
    n = int(request.query_params["n"])
    return PlainTextResponse("ok", background=BackgroundTask(work, n))

app = Starlette(routes=[Route("/", endpoint)])
attach(app, TaskRunner(RuntimeOptions(), [Recorder()]))
with TestClient(app) as client:
    assert client.get("/?n=1").text == "ok"
    assert client.get("/?n=-1").text == "ok"

loaded = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
assert not loaded, loaded
for event in events:
    print(*event)
"""


def _imports(path: Path) -> list[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.append(node.module or "")
            else:
                assert node.level == 1, f"{path.name}: import reaches above the runtime"
                names.append(f"tasklens.runtime.{node.module or ''}".rstrip("."))
    return names


def test_no_runtime_module_imports_telemetry_sdk_or_prometheus_client() -> None:
    offenders = [
        f"{path.name}: {name}"
        for path in sorted((REPO / "runtime").glob("*.py"))
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    ]
    assert offenders == []


def test_runtime_modules_import_each_other_without_cycles() -> None:
    graph = {
        path.stem: {
            name.removeprefix("tasklens.runtime.").split(".")[0]
            for name in _imports(path)
            if name.startswith("tasklens.runtime.")
        }
        for path in (REPO / "runtime").glob("*.py")
        if path.stem != "__init__"
    }
    floors: list[list[str]] = []
    while graph:
        below = {m for floor in floors for m in floor}
        ready = sorted(m for m, deps in graph.items() if not deps - below)
        assert ready, f"import cycle among {sorted(graph)}"  # TYPE_CHECKING imports count too
        floors.append(ready)
        for module in ready:
            del graph[module]
    assert "outcomes" in floors[0] and "runner" not in floors[0]


def test_runtime_runs_tasks_with_telemetry_and_sdk_unimportable() -> None:
    program = PROGRAM.format(forbidden=FORBIDDEN)
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    name = "__main__.work"
    assert result.stdout.splitlines() == [
        f"enqueued {name} thread_pool",
        f"started {name}",
        f"finished {name} success True",
        f"enqueued {name} thread_pool",
        f"started {name}",
        f"finished {name} failure True",
    ]
