"""Render every generated artefact and write it under a root directory."""

from __future__ import annotations

from pathlib import Path

from dashboards import layout, overview, provisioning, rulefiles, task
from dashboards.params import Params

#: Repository root (the parent of this package).
REPO_ROOT = Path(__file__).resolve().parent.parent

OVERVIEW_JSON = "dashboards/generated/overview.json"
TASK_JSON = "dashboards/generated/task.json"
RULES_YML = "deploy/prometheus/rules/tasklens-alerts.yml"
PROMETHEUS_RULE_YAML = "deploy/k8s/prometheusrule.yaml"
DATASOURCES_YAML = "deploy/grafana/provisioning/datasources/datasources.yaml"


def render(params: Params) -> dict[str, str]:
    """Repository-relative path -> file content, for every generated file."""
    return {
        OVERVIEW_JSON: layout.to_json(overview.build(params)),
        TASK_JSON: layout.to_json(task.build(params)),
        RULES_YML: rulefiles.prometheus_rules(params),
        PROMETHEUS_RULE_YAML: rulefiles.prometheus_rule_resource(params),
        DATASOURCES_YAML: provisioning.datasources_yaml(),
    }


def write_rules(path: Path, params: Params) -> Path:
    """Write only the Prometheus rules file for ``params`` (e.g. a test variant) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(rulefiles.prometheus_rules(params), encoding="utf-8")
    return path


def write(files: dict[str, str], root: Path) -> list[Path]:
    """Write ``files`` under ``root`` (creating directories); return the written paths."""
    written = []
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def stale(files: dict[str, str], root: Path) -> list[str]:
    """Paths under ``root`` whose content differs from ``files`` (or that are missing)."""
    return [
        relative
        for relative, content in files.items()
        if not (root / relative).is_file()
        or (root / relative).read_text(encoding="utf-8") != content
    ]
