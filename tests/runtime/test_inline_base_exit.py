"""Inline mode: a task raising ``SystemExit`` or ``KeyboardInterrupt``, on a real uvicorn
process, with and without an ``@app.middleware("http")``, instrumented and plain.

What docs/runtime.md says, proven: the exception goes into the ASGI call exactly as with
plain Starlette/FastAPI. Without a ``BaseHTTPMiddleware`` uvicorn logs "Exception in ASGI
application" and keeps serving; with one (``@app.middleware("http")``) the response's
background runs in a child task of the middleware's task group, asyncio lets the exception
out of the event loop and the server process exits: ``sys.exit(3)`` with status 3.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.net import free_port
from tests.support.polling import wait_for
from tests.support.server import ServerProcess, clean_env

APP = "tests.runtime.apps.inline_base_exit:app"
CASES = [
    (framework, variant, middleware, path)
    for framework, paths in (("fastapi", ("/exit", "/interrupt")), ("starlette", ("/exit",)))
    for variant in ("plain", "tasklens")
    for middleware in (False, True)
    for path in paths
]


@pytest.mark.parametrize(
    ("framework", "variant", "middleware", "path"),
    CASES,
    ids=[f"{f}-{v}-{'middleware' if m else 'bare'}-{p[1:]}" for f, v, m, p in CASES],
)
def test_inline_task_raising_systemexit_or_keyboardinterrupt(
    tmp_path: Path, framework: str, variant: str, middleware: bool, path: str
) -> None:
    env = clean_env(
        TASKLENS_TEST_FRAMEWORK=framework,
        TASKLENS_TEST_VARIANT=variant,
        TASKLENS_TEST_MIDDLEWARE="1" if middleware else "0",
    )
    with ServerProcess.uvicorn(APP, env, tmp_path / "server.log", free_port()) as server:
        server.wait_ready("/health")
        proc = server.proc
        assert proc is not None
        # The response is sent before its background task runs, in every case.
        assert httpx.get(server.base_url + path, timeout=10).status_code == 200
        if middleware:
            # Out of the event loop: the process ends by itself.
            wait_for(lambda: proc.poll() is not None, 10, "the exit")
            if path == "/exit":
                assert proc.returncode == 3  # sys.exit(3), the task's own status
        else:
            wait_for(lambda: "Exception in ASGI application" in server.log_text(), 10, "log")
            for _ in range(3):  # the same process keeps serving
                assert httpx.get(server.base_url + "/health", timeout=5).status_code == 200
            assert proc.poll() is None
    log = server.log_text()
    assert "Exception in ASGI application" in log
    assert ("SystemExit: 3" if path == "/exit" else "KeyboardInterrupt") in log
