"""Secrets never leave the process: a real uvicorn app whose task fails with httpx's
``raise_for_status()`` error (its message carries ``?api_key=sk_live_...``), exported with the
real OTLP exporter to the test receiver. Neither the API key, the request's ``token`` query
value, its ``Authorization`` header, nor a DSN password appear in any exported byte (span
attributes, status, events, metrics) or in the server's output, with ``record_args`` off or
on; what is recorded instead says ``[redacted]``."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.net import free_port
from tests.support.otlp_receiver import OTLPReceiver, ReceivedSpan
from tests.support.polling import wait_for
from tests.support.server import ServerProcess, clean_env

APP = "tests.e2e.apps.secrets_app:app"
TASK_SPAN = "bgtask tests.e2e.apps.secrets_app.call_upstream"
REQUESTS = 3


def _status_messages(rx: OTLPReceiver) -> dict[str, str]:
    """span id (hex) -> status message, from the raw export requests."""
    messages = {}
    for _, request in rx.export_requests("traces"):
        for resource_spans in request.resource_spans:  # type: ignore[attr-defined]
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    messages[span.span_id.hex()] = span.status.message
    return messages


def _log_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


@pytest.mark.parametrize("record_args", [False, True], ids=lambda on: f"record_args={on}")
def test_no_secret_in_spans_metrics_or_logs(tmp_path: Path, record_args: bool) -> None:
    api_key = f"sk_live_{secrets.token_hex(12)}"
    db_password = f"pw{secrets.token_hex(8)}"
    query_token = f"tok{secrets.token_hex(8)}"
    bearer = f"au{secrets.token_hex(8)}"
    all_secrets = {"api key": api_key, "DSN password": db_password,
                   "query token": query_token, "Authorization": bearer}  # fmt: skip
    with OTLPReceiver() as rx:
        env = clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=rx.http_endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_METRIC_EXPORT_INTERVAL="500",
            SECRETS_APP_API_KEY=api_key,
            SECRETS_APP_DB_PASSWORD=db_password,
            SECRETS_APP_RECORD_ARGS="1" if record_args else "0",
        )
        with ServerProcess.uvicorn(APP, env, tmp_path / "server.log", free_port()) as server:
            server.wait_ready("/health")
            with httpx.Client(base_url=server.base_url, timeout=10) as client:
                for _ in range(REQUESTS):
                    response = client.post(
                        f"/trigger?token={query_token}&lang=en",
                        headers={"Authorization": f"Bearer {bearer}"},
                    )
                    assert response.status_code == 200

            def task_spans(r: OTLPReceiver) -> list[ReceivedSpan]:
                spans = [s for s in r.spans() if s.name == TASK_SPAN]
                return spans if len(spans) == REQUESTS else []

            spans = rx.wait_for(task_spans, timeout=20)
            wait_for(
                lambda: server.log_text().count("background task failed") == REQUESTS,
                10,
                "the failure lines",
            )
            server.stop()
            log = server.log_text()
        exported = "\n".join(
            str(request) for signal in ("traces", "metrics", "logs")
            for _, request in rx.export_requests(signal)
        )  # fmt: skip
        status = _status_messages(rx)
        servers = [s for s in rx.spans() if s.kind == 2]

    found = {what: (exported.count(value), log.count(value)) for what, value in all_secrets.items()}
    print(f"RELIABILITY secrets record_args={record_args}: {len(exported)} chars exported, "
          f"{len(log)} chars of server output; (exported, output) occurrences {found}")  # fmt: skip
    for what, value in all_secrets.items():
        assert value not in exported, f"{what} exported"
        assert value not in log, f"{what} in the server output"

    # What is recorded instead: the failure, its message, the request URL, all redacted.
    for span in spans:
        assert span.status_code == 2  # ERROR
        assert span.attributes["error.type"] == "httpx.HTTPStatusError"
        assert "/upstream?api_key=[redacted]&page=2" in status[span.span_id]
        ((_, event),) = [e for e in span.events if e[0] == "exception"]
        assert "api_key=[redacted]" in str(event["exception.message"])
        assert "Traceback (most recent call last):" in str(event["exception.stacktrace"])
        assert "api_key=[redacted]" in str(event["exception.stacktrace"])
        if record_args:
            args = json.loads(str(span.attributes["bgtask.args"]))
            assert len(args) == 7
            assert "api_key=[redacted]&page=2" in args[0]
            # Cut at 200 characters after redaction: the value's start shows it was redacted.
            assert args[1].startswith("Headers({") and "'authorization': '[reda" in args[1]
            assert args[2] == "[('Authorization', '[redacted]'), ('Accept', '*/*')]"
            assert args[3].startswith("[(b'host', b'127.0.0.1:")  # the pairs: tests/telemetry
            assert args[4] == "'postgresql://app:[redacted]@db.internal:5432/shop'"
            assert args[5] == "URL('postgresql://app:[redacted]@db.internal:5432/shop')"
            assert args[6] == (
                "{'user': 'app', 'pwd': '[redacted]', 'private_key': '[redacted]', 'region': 'eu'}"
            )
        else:
            assert "bgtask.args" not in span.attributes
    trigger_spans = [s for s in servers if s.url_path == "/trigger"]
    assert len(trigger_spans) == REQUESTS
    for span in trigger_spans:
        # FastAPI's native span records the query (tasklens scrubs it); tasklens's own
        # span records none unless record_url_query (FastAPI < 0.164).
        queries = [str(v) for v in span.attributes.values() if "token=" in str(v)]
        assert all("token=[redacted]" in q for q in queries), span.attributes
    failed = [e for e in _log_lines(log) if e.get("event") == "background task failed"]
    assert len(failed) == REQUESTS
    for line in failed:
        assert line["error_type"] == "httpx.HTTPStatusError"
        assert "api_key=[redacted]" in line["exception"]
        assert ("task_args" in line) is record_args
