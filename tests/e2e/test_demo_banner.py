"""The demo's URL banner is printed for the demo's own server only: another server on the
port answering ``/health`` with 200 is not taken for it (review of issue 13)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tasklens import demo


class _OtherHealth(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def other_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OtherHealth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("TASKLENS_DEMO_HOST", "127.0.0.1")
    monkeypatch.setenv("TASKLENS_DEMO_PORT", str(server.server_address[1]))
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_no_banner_when_another_server_answers_health(
    other_server: None, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(demo._print_urls("/tasks", False, False, attempts=3))
    assert "tasklens demo is running" not in capsys.readouterr().err


def test_the_demos_own_health_is_recognised() -> None:
    import httpx

    ours = httpx.Response(200, json={"status": "ok", "demo": demo.INSTANCE})
    assert demo._ours(ours)
    assert not demo._ours(httpx.Response(200, json={"status": "ok"}))
    assert not demo._ours(httpx.Response(200, text="<html>"))
    assert not demo._ours(httpx.Response(200, json=["ok"]))
