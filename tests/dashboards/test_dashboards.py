"""The generated dashboards: up to date, and every query sound against the contract."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashboards import config
from dashboards.__main__ import render, write
from dashboards.config import Params
from tasklens import artefacts
from tasklens.telemetry import contract
from tests.dashboards import queries
from tests.dashboards.tools import REPO_ROOT, assert_ok, run

DASHBOARDS = {"tasklens-overview": config.OVERVIEW_JSON, "tasklens-task": config.TASK_JSON}
METRIC_TOKEN = re.compile(r"(?<![\w:])bgtask_\w+")
VARIABLE_VALUES = {"job": "tasklens", "instance": queries.ALL, "task": ["demo.tasks.send_email"]}


def contract_sample_names() -> set[str]:
    """Every series name the contract's metrics expose."""
    names: set[str] = set()
    for spec in contract.ALL_METRICS:
        if spec.type == "counter":
            names |= {spec.sample_name, f"{spec.name}_created"}
        elif spec.type == "histogram":
            names |= {
                f"{spec.name}{suffix}" for suffix in ("_bucket", "_sum", "_count", "_created")
            }
        else:
            names.add(spec.name)
    return names


@pytest.fixture(scope="module", params=sorted(DASHBOARDS))
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return queries.load(DASHBOARDS[request.param])


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return list(queries.iter_panels(board))


def test_regenerating_changes_nothing(tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "dashboards", "--out", str(tmp_path)])
    assert_ok(result)
    for relative in render(Params()):
        fresh = (tmp_path / relative).read_text(encoding="utf-8")
        committed = (REPO_ROOT / relative).read_text(encoding="utf-8")
        assert fresh == committed, f"{relative} is stale: run `python -m dashboards`"
    assert_ok(run([sys.executable, "-m", "dashboards", "--check"]))


def test_every_generated_file_is_rendered_and_checked() -> None:
    """The shipped data files and the repository's deploy files all come from one render."""
    assert set(render(Params())) == {
        "tasklens/data/dashboards/overview.json",
        "tasklens/data/dashboards/task.json",
        "tasklens/data/prometheus/tasklens-alerts.yml",
        "deploy/k8s/prometheusrule.yaml",
        "deploy/grafana/provisioning/datasources/datasources.yaml",
    }


def test_tasklens_export_writes_what_the_generator_renders(tmp_path: Path) -> None:
    """``tasklens export`` (from the installed package) equals a fresh generation."""
    files = render(Params())
    artefacts.export(tmp_path)
    for exported, generated in {
        "dashboards/overview.json": config.OVERVIEW_JSON,
        "dashboards/task.json": config.TASK_JSON,
        "prometheus/tasklens-alerts.yml": config.RULES_YML,
        artefacts.PROMETHEUS_RULE: config.PROMETHEUS_RULE_YAML,
    }.items():
        assert (tmp_path / exported).read_text(encoding="utf-8") == files[generated], exported


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    write(render(Params()), tmp_path)
    (tmp_path / config.TASK_JSON).write_text("{}\n")
    result = run([sys.executable, "-m", "dashboards", "--check", "--out", str(tmp_path)])
    assert result.returncode == 1
    assert config.TASK_JSON in result.stderr


def test_titles_and_uids() -> None:
    boards = queries.generated_dashboards()
    assert boards["tasklens-overview"]["title"] == "Background tasks / Overview"
    assert boards["tasklens-task"]["title"] == "Background tasks / Task"


def test_has_the_four_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "instance", "task"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["multi"] is True and variables[name]["includeAll"] is True
    for name in ("job", "instance", "task"):
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    per_task = dashboard["uid"] == "tasklens-task"
    assert variables["task"]["multi"] is not per_task
    assert variables["task"]["includeAll"] is not per_task


def test_no_hard_coded_datasource(dashboard: dict[str, Any]) -> None:
    def refs(node: Any) -> list[Any]:
        if isinstance(node, dict):
            found = [node["datasource"]] if "datasource" in node else []
            return found + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for item in node for r in refs(item)]
        return []

    for panel in panels(dashboard):
        for ref in refs(panel):
            assert ref == {"type": "prometheus", "uid": "${datasource}"}, (panel["title"], ref)


def test_every_panel_has_a_question_as_description(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        assert panel.get("description", "").strip(), f"{panel['title']!r} has no description"
        assert "?" in panel["description"], f"{panel['title']!r}: say what question it answers"


def test_every_panel_has_queries_with_unique_ref_ids(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_queries_only_use_contract_metrics(dashboard: dict[str, Any]) -> None:
    known = contract_sample_names()
    used = set()
    for title, expr in queries.panel_queries(dashboard):
        for name in METRIC_TOKEN.findall(expr):
            assert name in known, (
                f"{title!r} queries {name}, which the telemetry contract does not define"
            )
            used.add(name)
    assert used, "no bgtask_ metric found in any query"


def test_overview_shows_every_contract_metric() -> None:
    board = queries.load(config.OVERVIEW_JSON)
    text = "\n".join(expr for _, expr in queries.panel_queries(board))
    for spec in contract.ALL_METRICS:
        assert spec.name in text, f"no overview panel shows {spec.name}"


def test_rate_uses_rate_interval(dashboard: dict[str, Any]) -> None:
    for title, expr in queries.panel_queries(dashboard):
        windows = re.findall(r"\brate\([^\[]*\[([^\]]+)\]", expr)
        assert windows or "rate(" not in expr, title
        assert all(window == "$__rate_interval" for window in windows), (title, windows)


def test_queries_filter_by_job_and_instance(dashboard: dict[str, Any]) -> None:
    selectors = re.compile(r"bgtask_\w+\{([^}]*)\}")
    for title, expr in queries.panel_queries(dashboard):
        found = selectors.findall(expr)
        assert found, (title, expr)
        for matchers in found:
            assert 'job=~"$job"' in matchers and 'instance=~"$instance"' in matchers, (title, expr)


def test_task_filter_on_every_task_labelled_metric(dashboard: dict[str, Any]) -> None:
    task_metrics = {spec.name for spec in contract.ALL_METRICS if "task" in spec.labels}
    for title, expr in queries.panel_queries(dashboard):
        for name, matchers in re.findall(r"(bgtask_\w+)\{([^}]*)\}", expr):
            base = re.sub(r"_(bucket|sum|count|total)$", "", name)
            if base in task_metrics:
                assert 'task=~"$task"' in matchers, (title, expr)


def test_exemplars_on_duration_and_queue_panels(dashboard: dict[str, Any]) -> None:
    latency = (
        contract.DURATION_SECONDS.name,
        contract.QUEUE_SECONDS.name,
        contract.THREADPOOL_WAIT_SECONDS.name,
    )
    seen = 0
    for panel in panels(dashboard):
        for target in panel["targets"]:
            if any(name in target["expr"] for name in latency):
                assert target.get("exemplar") is True, panel["title"]
                seen += 1
    assert seen >= 4


def test_queue_heatmap_reads_buckets(dashboard: dict[str, Any]) -> None:
    heatmaps = [p for p in panels(dashboard) if p["type"] == "heatmap"]
    assert any(contract.QUEUE_SECONDS.name in p["targets"][0]["expr"] for p in heatmaps)
    for panel in heatmaps:
        assert panel["targets"][0]["format"] == "heatmap"
        assert panel["options"]["calculate"] is False


def test_overview_has_the_requested_views() -> None:
    titles = {panel["title"] for panel in panels(queries.load(config.OVERVIEW_JSON))}
    for title in (
        "Throughput by task and outcome",
        "Failure ratio by task",
        "Duration p50 / p95 / p99",
        "Queue time p50 / p95 / p99",
        "Queue time heatmap",
        "Pending and in progress",
        "Thread-pool tokens: borrowed vs total",
        "Thread-pool wait p50 / p95 / p99",
        "Event loop vs thread pool share",
        "Top failing tasks and exception types",
        "Loop-blocking p99 by task",
        "Event-loop lag",
    ):
        assert title in titles


def test_panel_queries_are_valid_promql(tmp_path: Path, promtool: str) -> None:
    """promtool parses every panel query once variables are substituted."""
    rules = []
    for uid, relative in DASHBOARDS.items():
        for index, (title, expr) in enumerate(queries.panel_queries(queries.load(relative))):
            concrete = queries.substitute_variables(expr, VARIABLE_VALUES)
            assert "$" not in concrete, (title, concrete)
            rules.append({"record": f"panel:{uid.replace('-', '_')}:{index}", "expr": concrete})
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    assert_ok(run([promtool, "check", "rules", str(path)]))


# --- substitute_variables ----------------------------------------------------------------


def test_substitute_all_syntaxes() -> None:
    expr = 'x{a=~"$job", b=~"${instance}", c=~"${task:regex}", d="[[job]]"}[$__rate_interval]'
    values = {"job": "tasklens", "instance": "h:1", "task": "t"}
    assert (
        queries.substitute_variables(expr, values)
        == 'x{a=~"tasklens", b=~"h:1", c=~"t", d="tasklens"}[1m]'
    )


def test_substitute_multi_value_and_all() -> None:
    expr = 'x{task=~"$task", instance=~"$instance"}[$__rate_interval]'
    values = {"task": ["a.b", "c"], "instance": queries.ALL, "__rate_interval": "2m"}
    assert (
        queries.substitute_variables(expr, values) == 'x{task=~"(a\\\\.b|c)", instance=~".*"}[2m]'
    )
    assert queries.substitute_variables("$v", {"v": ["a.b"]}) == "a\\\\.b"
    assert queries.substitute_variables("$v", {"v": []}) == ".*"


def test_substitute_does_not_confuse_prefixes() -> None:
    values = {"job": "j", "jobs": "J"}
    assert queries.substitute_variables("$jobs $job $__range", values) == "J j 1h"


def test_substitute_unknown_variable_fails() -> None:
    with pytest.raises(KeyError, match="missing"):
        queries.substitute_variables("$missing", {})


def test_panel_queries_lists_every_target() -> None:
    board = queries.load(config.OVERVIEW_JSON)
    pairs = queries.panel_queries(board)
    targets = sum(len(p["targets"]) for p in queries.iter_panels(board))
    assert len(pairs) == targets
    assert (
        "Enqueued vs finished",
        pairs[[t for t, _ in pairs].index("Enqueued vs finished")][1],
    ) in pairs


def test_docs_name_every_panel(dashboard: dict[str, Any]) -> None:
    docs = (REPO_ROOT / "docs" / "dashboards.md").read_text()
    assert dashboard["title"] in docs
    for panel in panels(dashboard):
        assert panel["title"] in docs, f"docs/dashboards.md does not mention {panel['title']!r}"
