"""Render the local Prometheus and Alertmanager configurations from their templates."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
PROMETHEUS_TEMPLATE = HERE / "prometheus.yml.tmpl"
ALERTMANAGER_TEMPLATE = HERE / "alertmanager.yml.tmpl"
DEFAULT_RULES = (REPO_ROOT / "tasklens" / "data" / "prometheus" / "tasklens-alerts.yml",)

_DURATION = re.compile(r"^(\d+)(ms|s|m|h)$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def render_template(template: Path, values: Mapping[str, str]) -> str:
    """Fill ``${NAME}`` placeholders; a missing value raises :class:`KeyError`."""
    return Template(template.read_text(encoding="utf-8")).substitute(values)


def _seconds(duration: str) -> float:
    match = _DURATION.match(duration)
    if not match:
        raise ValueError(f"unsupported duration {duration!r} (use e.g. 500ms, 5s, 1m)")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def render_prometheus_config(
    *,
    app_target: str,
    alertmanager: str,
    extra_targets: Sequence[str] = (),
    rules: Sequence[Path | str] = DEFAULT_RULES,
    job: str = "tasklens",
    scrape_interval: str = "5s",
    evaluation_interval: str = "5s",
    metrics_path: str = "/metrics",
) -> str:
    """prometheus.yml scraping ``app_target`` (host:port) and ``extra_targets`` (e.g. a Celery
    worker's metrics port) as ``job`` and alerting to ``alertmanager`` (host:port); ``rules``
    should be absolute paths."""
    timeout = scrape_interval if _seconds(scrape_interval) <= 10 else "10s"
    return render_template(
        PROMETHEUS_TEMPLATE,
        {
            "TARGETS": json.dumps([app_target, *extra_targets]),
            "ALERTMANAGER": alertmanager,
            "RULES": json.dumps([str(rule) for rule in rules]),
            "JOB": job,
            "SCRAPE_INTERVAL": scrape_interval,
            "SCRAPE_TIMEOUT": timeout,
            "EVALUATION_INTERVAL": evaluation_interval,
            "METRICS_PATH": metrics_path,
        },
    )


def render_alertmanager_config(
    *,
    webhook_url: str,
    group_wait: str = "1s",
    group_interval: str = "5s",
    repeat_interval: str = "1h",
) -> str:
    """alertmanager.yml sending every alert (and its resolution) to ``webhook_url``."""
    return render_template(
        ALERTMANAGER_TEMPLATE,
        {
            "WEBHOOK_URL": webhook_url,
            "GROUP_WAIT": group_wait,
            "GROUP_INTERVAL": group_interval,
            "REPEAT_INTERVAL": repeat_interval,
        },
    )
