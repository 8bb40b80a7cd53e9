"""``record_args``: task arguments in spans and logs, truncated and redacted, or nowhere.

With ``record_args=True`` the task span gets ``bgtask.args``/``bgtask.kwargs`` (JSON lists/
objects of ``repr`` strings, each cut at 200 characters) and the failure/abandon log lines
get ``task_args``/``task_kwargs``. Values are replaced by ``[redacted]`` when their key is
sensitive (``tasklens.telemetry.redact.SENSITIVE_KEYS``: password, token, secret, auth, api
key, cookie, session, credential...): keyword names, keys inside dict (and list) arguments,
and the parameter names positional arguments bind to. With ``record_args=False`` (the
default) no value is recorded anywhere. Header containers, URLs and unrepresentable values:
``tests/telemetry/test_scrubbing.py`` and ``tests/e2e/test_secrets.py``.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI
from pydantic import BaseModel

import tasklens
from tasklens.telemetry.redact import MAX_VALUE_CHARS, REDACTED
from tests.runtime.helpers import Probe, serve
from tests.support.metrics import scrape
from tests.support.polling import wait_for

SENTINEL = "s3ntinel-7f3a"
LONG_NOTE = "n" * 500


class Signup(BaseModel):
    user: str
    password: str
    api_token: str
    note: str
    authorization: str
    card: str


def create_account(
    user: str, password: str, *, note: str, api_token: str, headers: dict[str, Any]
) -> None:
    return None


def charge_card(card: str, client_secret: str, items: list[dict[str, str]]) -> None:
    raise ValueError("card declined")  # the message names no argument value


def build_app(probe: Probe, record_args: bool) -> FastAPI:
    app = FastAPI(telemetry={"tracer_provider": probe.tracer_provider})

    @app.post("/signup")
    async def signup(body: Signup, background_tasks: BackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(
            create_account,
            body.user,
            body.password,  # positional, bound to the parameter "password"
            note=body.note,
            api_token=body.api_token,
            headers={"Authorization": body.authorization, "Accept": "application/json"},
        )
        background_tasks.add_task(
            charge_card, body.card, client_secret=body.password,
            items=[{"sku": "A1", "session_id": body.api_token}],
        )  # fmt: skip
        return {"status": "ok"}

    probe.mount_metrics(app)
    tasklens.instrument(
        app, record_args=record_args, observers=probe.observers(record_args=record_args),
        metrics_path=None,
    )  # fmt: skip
    return app


def _run(probe: Probe, record_args: bool, body: dict[str, str]) -> None:
    with (
        serve(build_app(probe, record_args)) as server,
        httpx.Client(base_url=server.base_url, timeout=10) as client,
    ):
        assert client.post("/signup", json=body).status_code == 200
        wait_for(lambda: scrape(client).total("bgtask_finished_total") == 2, 5, "both tasks")
        samples = scrape(client)
    assert samples.total("bgtask_finished_total", outcome="success") == 1
    assert samples.total("bgtask_finished_total", outcome="failure") == 1


def _task_span(probe: Probe, func: str) -> dict[str, Any]:
    (span,) = [s for s in probe.task_spans() if s.name == f"bgtask {__name__}.{func}"]
    assert span.attributes is not None
    return dict(span.attributes)


def test_args_truncated_and_redacted(probe: Probe, task_logs: list[dict[str, Any]]) -> None:
    secrets = {"password": "hunter2-pw", "api_token": "tok-123456", "authorization":
               "Bearer abc.def", "card": "4111-1111"}  # fmt: skip
    _run(probe, True, {"user": "ada", "note": LONG_NOTE, **secrets})

    account = _task_span(probe, "create_account")
    assert json.loads(account["bgtask.args"]) == ["'ada'", REDACTED]
    kwargs = json.loads(account["bgtask.kwargs"])
    assert kwargs["api_token"] == REDACTED
    assert kwargs["headers"] == repr({"Authorization": REDACTED, "Accept": "application/json"})
    note = repr(LONG_NOTE)
    assert kwargs["note"] == f"{note[:MAX_VALUE_CHARS]}…(+{len(note) - MAX_VALUE_CHARS} chars)"
    assert len(kwargs["note"]) < MAX_VALUE_CHARS + 20

    charge = _task_span(probe, "charge_card")
    assert json.loads(charge["bgtask.args"]) == ["'4111-1111'"]  # "card": not a secret name
    assert json.loads(charge["bgtask.kwargs"]) == {
        "client_secret": REDACTED,
        "items": repr([{"sku": "A1", "session_id": REDACTED}]),
    }

    (failed,) = [e for e in task_logs if e["event"] == "background task failed"]
    assert failed["task"] == f"{__name__}.charge_card"
    assert failed["task_args"] == ["'4111-1111'"]
    assert failed["task_kwargs"] == json.loads(charge["bgtask.kwargs"])

    exported = _everything_exported(probe, task_logs)
    for key in ("password", "api_token", "authorization"):
        assert secrets[key] not in exported, key


def test_no_argument_value_anywhere_by_default(
    probe: Probe,
    task_logs: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = {k: f"{SENTINEL}-{k}" for k in Signup.model_fields}
    _run(probe, False, body)

    for func in ("create_account", "charge_card"):
        attributes = _task_span(probe, func)
        assert "bgtask.args" not in attributes and "bgtask.kwargs" not in attributes
    (failed,) = [e for e in task_logs if e["event"] == "background task failed"]
    assert "task_args" not in failed and "task_kwargs" not in failed
    assert probe.spans(), "spans were exported"
    captured = capsys.readouterr()
    everything = "\n".join(
        [_everything_exported(probe, task_logs), caplog.text, captured.out, captured.err]
    )
    assert SENTINEL not in everything


def _everything_exported(probe: Probe, task_logs: list[dict[str, Any]]) -> str:
    """Every span's name, attributes, events and status, and every structlog event."""
    parts = []
    for span in probe.spans():
        parts.append(span.to_json())
        parts.extend(repr(dict(e.attributes or {})) for e in span.events)
    parts.extend(repr(event) for event in task_logs)
    return "\n".join(parts)
