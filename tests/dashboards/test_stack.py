"""deploy/local/stack.py against real Prometheus and Alertmanager, fed by a fake app.

Every dashboard query must return data, exemplars must reach Prometheus, the rules must evaluate
cleanly, and a failure alert must travel Prometheus -> Alertmanager -> webhook.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboards import config
from dashboards.config import Params
from dashboards.rules import write_rules
from deploy.local import stack
from deploy.local.processes import redis_answers
from tests.dashboards import queries
from tests.dashboards.tools import require_tool

FAKE_APP = Path(__file__).with_name("fake_app.py")
FLAKY = "demo.tasks.flaky_sync"


def api(base: str, path: str, **params: Any) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def eventually(check: Any, timeout: float = 60.0) -> Any:
    """Call ``check`` until it returns something truthy; fail with its last result."""
    deadline = time.monotonic() + timeout
    result = None
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"condition not met within {timeout:.0f}s: last result {result!r}")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[stack.Stack, Any]]:
    require_tool("prometheus", "prometheus")
    require_tool("prometheus-alertmanager", "prometheus-alertmanager")
    state = tmp_path_factory.mktemp("stack")
    # The committed rules with `for: 0s` on the failure alert, so delivery is seen in seconds.
    rules = write_rules(state / "rules.yml", Params(failure_for="0s"))
    with stack.WebhookReceiver() as receiver:
        options = stack.StackOptions(
            state_dir=state,
            app_command=[sys.executable, str(FAKE_APP), "--host", "{host}", "--port", "{port}"],
            rules=[rules],
            webhook_url=receiver.url,
            scrape_interval="1s",
            evaluation_interval="1s",
        )
        with stack.start_stack(options) as started:
            yield started, receiver


@pytest.fixture(scope="module")
def prometheus(running: tuple[stack.Stack, Any]) -> str:
    """Prometheus' URL once it has scraped the app for a few seconds."""
    base = running[0].prometheus_url
    eventually(lambda: api(base, "/api/v1/query", query='up{job="tasklens"} == 1')["result"])
    eventually(lambda: api(base, "/api/v1/query", query="count_over_time(up[1m]) >= 5")["result"])
    return base


def test_rules_evaluate_without_errors(prometheus: str) -> None:
    def healthy() -> list[Any] | None:
        groups = api(prometheus, "/api/v1/rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(rule["health"] == "ok" for rule in rules) else None

    rules = eventually(healthy)
    assert {rule["name"] for rule in rules if rule["type"] == "alerting"} >= {
        "BgTaskFailureRatioHigh",
        "BgTaskTargetDown",
    }


def test_prometheus_talks_to_alertmanager(
    prometheus: str, running: tuple[stack.Stack, Any]
) -> None:
    active = api(prometheus, "/api/v1/alertmanagers")["activeAlertmanagers"]
    assert [am["url"] for am in active] == [f"{running[0].alertmanager_url}/api/v2/alerts"]


@pytest.mark.parametrize("relative", [config.OVERVIEW_JSON, config.TASK_JSON])
def test_every_panel_query_returns_data(prometheus: str, relative: str) -> None:
    task = queries.ALL if relative == config.OVERVIEW_JSON else FLAKY
    values = {"job": "tasklens", "instance": queries.ALL, "task": task}
    end = time.time()
    empty = []
    for title, expr in queries.panel_queries(queries.load(relative)):
        query = queries.substitute_variables(expr, values)
        data = api(prometheus, "/api/v1/query_range", query=query, start=end - 60, end=end, step=1)
        if not data["result"]:
            empty.append((title, query))
    assert not empty, f"queries without data: {empty}"


def test_exemplars_reach_prometheus(prometheus: str) -> None:
    board = queries.load(config.OVERVIEW_JSON)
    title, expr = next(pair for pair in queries.panel_queries(board) if "Duration p50" in pair[0])
    query = queries.substitute_variables(expr, {"job": "tasklens", "instance": ".*", "task": ".*"})
    end = time.time()
    data = api(prometheus, "/api/v1/query_exemplars", query=query, start=end - 60, end=end)
    trace_ids = {e["labels"]["trace_id"] for series in data for e in series["exemplars"]}
    assert trace_ids, f"no exemplars for {title!r}"


def test_failure_alert_reaches_the_webhook(running: tuple[stack.Stack, Any]) -> None:
    receiver = running[1]
    alert = receiver.wait_for(
        lambda a: (
            a["labels"].get("alertname") == "BgTaskFailureRatioHigh"
            and a["labels"].get("task") == FLAKY
        ),
        timeout=60,
    )
    assert alert["status"] == "firing"
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["runbook_url"] == "docs/runbooks/BgTaskFailureRatioHigh.md"
    assert alert["annotations"]["dashboard_url"].endswith(f"var-task={FLAKY}")


def test_a_dying_process_fails_fast_with_its_log(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    with pytest.raises(RuntimeError, match="boom"):
        stack.start_app(command, port=stack.free_port(), log_path=tmp_path / "app.log", timeout=10)


def test_make_stack_runs_celery_unless_told_not_to() -> None:
    """`make stack` (no arguments) starts Redis, a worker and the Celery demo too."""
    options = stack._parse([])
    assert options.celery is not None
    assert options.celery.module == "tasklens.demo_celery"
    assert options.celery.web_command is not None
    assert options.celery.web_command[:3] == (sys.executable, "-m", "tasklens.demo_celery")
    assert stack._parse(["--without-celery"]).celery is None


def test_make_stack_starts_redis_a_worker_and_the_celery_demo(tmp_path: Path) -> None:
    """`python -m deploy.local.stack` as `make stack` runs it (shorter intervals): the demo,
    the Celery demo's web app and a real worker are scraped as three instances of job
    tasklens, the worker's runs appear as executor="celery", and SIGTERM stops everything."""
    require_tool("redis-server", "redis-server")
    require_tool("prometheus", "prometheus")
    command = [sys.executable, "-m", "deploy.local.stack", "--state-dir", str(tmp_path),
               "--scrape-interval", "1s", "--evaluation-interval", "1s"]  # fmt: skip
    log = tmp_path / "stack.out"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=config.REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:

        def urls() -> dict[str, str] | None:
            assert process.poll() is None, log.read_text()
            found = dict(re.findall(r"^([a-z ]+):\s+(\S+)", log.read_text(), re.MULTILINE))
            return found if "configs and logs" in found else None

        printed = eventually(urls, timeout=90)
        prometheus = printed["prometheus"]
        broker = printed["broker"]
        assert broker.startswith("redis://127.0.0.1:")

        def three_up() -> list[Any]:
            result = api(prometheus, "/api/v1/query", query='up{job="tasklens"} == 1')["result"]
            return result if len(result) == 3 else []

        instances = {r["metric"]["instance"] for r in eventually(three_up)}
        worker = printed["celery worker"].removeprefix("http://").removesuffix("/metrics")
        web = printed["celery demo"].removeprefix("http://").removesuffix("/metrics")
        assert {worker, web} < instances

        def celery_runs() -> list[Any]:
            selector = f'bgtask_finished_total{{instance="{worker}", executor="celery"}}'
            query = f"sum by (task) ({selector}) > 0"
            return api(prometheus, "/api/v1/query", query=query)["result"]

        tasks = {r["metric"]["task"] for r in eventually(celery_runs)}
        assert tasks <= {
            f"tasklens.demo_celery.{t}" for t in ("charge_card", "send_receipt", "build_invoice")
        }
        assert tasks
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    assert process.returncode == 0, log.read_text()
    port = int(broker.rsplit(":", 1)[1].split("/")[0])
    assert not redis_answers(port), "redis-server outlived the stack"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{prometheus}/-/ready", timeout=2)
