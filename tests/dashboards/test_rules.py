"""The generated alert rules: valid, unit-tested by promtool, and consistent with the repo."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards import config, rules
from dashboards.__main__ import render, write
from dashboards.config import Params
from tasklens.telemetry import contract
from tests.dashboards import queries
from tests.dashboards.tools import REPO_ROOT, assert_ok, run

RULES = REPO_ROOT / config.RULES_YML
PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
UNIT_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
RUNBOOKS = REPO_ROOT / "docs" / "runbooks"
METRIC_TOKEN = re.compile(r"(?<![\w:])bgtask_\w+")


def rule_groups(path: Path = RULES) -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text())["groups"]


def alerting_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules(promtool: str) -> None:
    result = run([promtool, "check", "rules", str(RULES)])
    assert_ok(result)
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_unit_tests(promtool: str) -> None:
    assert UNIT_TESTS, "no promtool unit tests in deploy/prometheus/tests"
    result = run([promtool, "test", "rules", *map(str, UNIT_TESTS)], cwd=PROMETHEUS_DIR)
    assert_ok(result)
    assert "FAILED" not in result.stdout + result.stderr


def test_unit_tests_point_at_the_generated_rules() -> None:
    for path in UNIT_TESTS:
        assert yaml.safe_load(path.read_text())["rule_files"] == [
            "../../../tasklens/data/prometheus/tasklens-alerts.yml"
        ]


def test_every_alert_is_tested_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = set(rules.alert_names())
    assert names == {rule["alert"] for rule in alerting_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested silent"


def test_quiet_hour_unit_test_would_catch_a_missing_traffic_floor(
    tmp_path: Path, promtool: str
) -> None:
    """Generated without the traffic floor, the quiet-hour case pages: the test must notice."""
    write(render(Params(failure_min_rate=0.0001)), tmp_path)
    tests = tmp_path / "deploy" / "prometheus" / "tests"
    tests.mkdir(parents=True)
    shutil.copy(PROMETHEUS_DIR / "tests" / "failure_ratio.yml", tests)
    result = run([promtool, "test", "rules", "tests/failure_ratio.yml"], cwd=tests.parent)
    assert result.returncode != 0
    assert "app.nightly_report" in result.stdout + result.stderr


def test_alert_labels_and_annotations() -> None:
    dashboards = queries.generated_dashboards()
    for rule in alerting_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        notes = rule["annotations"]
        assert set(notes) == {"summary", "description", "runbook_url", "dashboard_url"}, name
        assert notes["runbook_url"] == f"docs/runbooks/{name}.md"
        uid = re.match(r"/d/([\w-]+)", notes["dashboard_url"])
        assert uid and uid.group(1) in dashboards, (name, notes["dashboard_url"])
        if "$labels.task" in notes["summary"]:
            assert "var-task={{ $labels.task }}" in notes["dashboard_url"]


def test_failure_alert_fires_quickly() -> None:
    """The end-to-end test waits for BgTaskFailureRatioHigh: keep `for` short."""
    rule = next(r for r in alerting_rules() if r["alert"] == "BgTaskFailureRatioHigh")
    assert rule["for"] == "1m"
    assert "[5m]" in rule["expr"]


def test_runbook_for_every_alert() -> None:
    for name in rules.alert_names():
        path = RUNBOOKS / f"{name}.md"
        assert path.is_file(), f"missing runbook {path}"
        text = path.read_text()
        assert text.startswith(f"# {name}"), path
        for heading in ("## Meaning", "## Impact", "## Diagnosis", "## Fixes"):
            assert heading in text, (path, heading)


def test_rules_only_use_contract_metrics() -> None:
    known = {spec.sample_name for spec in contract.ALL_METRICS}
    known |= {f"{spec.name}_bucket" for spec in contract.ALL_METRICS if spec.type == "histogram"}
    for group in rule_groups():
        for rule in group["rules"]:
            for name in METRIC_TOKEN.findall(rule["expr"]):
                assert name in known, (rule.get("alert") or rule.get("record"), name)


def test_recording_rules_cover_every_burn_window() -> None:
    recorded = {rule["record"] for rule in rule_groups()[0]["rules"]}
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
        assert f"job_task_executor:bgtask_failure_ratio:rate{window}" in recorded
        assert f"job_task_executor:bgtask_error_budget_burn:rate{window}" in recorded


def test_per_task_rules_keep_executors_apart() -> None:
    """A Celery task finishes as its send (broker) and as its run (celery) in one job: every
    per-task aggregation and matching keeps the executor, or the sends dilute the runs."""
    for group in rule_groups():
        for rule in group["rules"]:
            name = rule.get("record") or rule["alert"]
            expr = rule["expr"]
            for by in re.findall(r"\bsum by \(([^)]*)\)", expr):
                labels = {label.strip() for label in by.split(",")}
                if "task" in labels:
                    assert "executor" in labels, (name, by)
            for on in re.findall(r"\bon \(([^)]*)\)", expr):
                assert {label.strip() for label in on.split(",")} >= {"task", "executor"}, name


def test_prometheus_rule_wraps_the_rules_file() -> None:
    resource = yaml.safe_load((REPO_ROOT / config.PROMETHEUS_RULE_YAML).read_text())
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["metadata"]["name"] == "tasklens"
    assert resource["metadata"]["labels"]["role"] == "alert-rules"
    assert resource["spec"] == yaml.safe_load(RULES.read_text())


@pytest.mark.parametrize("slo", ["0.995", "0.9"])
def test_slo_is_configurable(tmp_path: Path, promtool: str, slo: str) -> None:
    assert_ok(run([sys.executable, "-m", "dashboards", "--slo", slo, "--out", str(tmp_path)]))
    rules = tmp_path / config.RULES_YML
    assert_ok(run([promtool, "check", "rules", str(rules)]))
    budget = f"{1 - float(slo):g}"
    burn = [
        r
        for g in rule_groups(rules)
        for r in g["rules"]
        if "error_budget_burn" in r.get("record", "")
    ]
    assert burn and all(r["expr"].endswith(f"/ {budget}") for r in burn)
    assert all(r["labels"]["slo"] == slo for r in burn)
    text = rules.read_text()
    assert f"{float(slo) * 100:g}% success SLO" in text
    resource = yaml.safe_load((tmp_path / config.PROMETHEUS_RULE_YAML).read_text())
    assert resource["spec"] == yaml.safe_load(text)


def test_job_is_configurable(tmp_path: Path) -> None:
    write(render(Params(job="shop")), tmp_path)
    text = (tmp_path / config.RULES_YML).read_text()
    assert 'up{job="shop"}' in text and 'job="tasklens"' not in text


def test_invalid_slo_is_rejected() -> None:
    with pytest.raises(ValueError, match="slo"):
        Params(slo=1.0)


def test_docs_list_every_alert_with_its_for() -> None:
    docs = (REPO_ROOT / "docs" / "dashboards.md").read_text()
    for rule in alerting_rules():
        row = next(
            (line for line in docs.splitlines() if line.startswith(f"| {rule['alert']} |")), ""
        )
        assert row, f"docs/dashboards.md has no table row for {rule['alert']}"
        assert f"| {rule['for']} |" in row and f"| {rule['labels']['severity']} |" in row, row
