"""What a pip user deploys beside the app, shipped in the wheel: Grafana dashboards, the
Prometheus rules (also as a PrometheusRule resource) and the gunicorn config.

The dashboards and rules are generated in the repository (``python -m dashboards``, with
grafana-foundation-sdk) from the telemetry contract, with the default parameters (SLO 0.99,
scrape job ``tasklens``; see docs/dashboards.md to regenerate with others).
"""

from __future__ import annotations

import textwrap
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

#: Files of the package's ``data`` folder, exported under the same paths.
RULES = "prometheus/tasklens-alerts.yml"
SHIPPED = ("dashboards/overview.json", "dashboards/task.json", RULES)
PROMETHEUS_RULE = "k8s/prometheusrule.yaml"
GUNICORN_CONF = "gunicorn.conf.py"

_RESOURCE_HEAD = """\
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: tasklens
  labels:
    app.kubernetes.io/name: tasklens
    app.kubernetes.io/component: alerting
    role: alert-rules
spec:
"""


def data_file(relative: str) -> Traversable:
    """A file of the package's ``data`` folder."""
    return files("tasklens").joinpath("data", *relative.split("/"))


def rules_text() -> str:
    """The shipped Prometheus rules file."""
    return data_file(RULES).read_text(encoding="utf-8")


def prometheus_rule_resource(rules: str) -> str:
    """The rule groups of a rules file wrapped in a ``monitoring.coreos.com/v1`` PrometheusRule
    (its comment lines kept on top, its document indented under ``spec``)."""
    lines = rules.splitlines(keepends=True)
    head = "".join(line for line in lines if line.startswith("#"))
    body = "".join(line for line in lines if not line.startswith("#"))
    return head + _RESOURCE_HEAD + textwrap.indent(body, "  ")


def export(out: Path) -> list[Path]:
    """Write every shipped artefact under ``out``; return the written paths."""
    contents = {relative: data_file(relative).read_text(encoding="utf-8") for relative in SHIPPED}
    contents[PROMETHEUS_RULE] = prometheus_rule_resource(rules_text())
    contents[GUNICORN_CONF] = (
        files("tasklens").joinpath("gunicorn_conf.py").read_text(encoding="utf-8")
    )
    return write(contents, out)


def write(files: dict[str, str], root: Path) -> list[Path]:
    """Write ``files`` (path under ``root`` -> text), creating folders; return the paths."""
    written = []
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written
