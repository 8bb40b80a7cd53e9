"""``python -m dashboards``: regenerate the dashboards, the rules (also as a PrometheusRule) and
the Grafana data-source provisioning, or ``--check`` that the committed files are up to date."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dashboards import overview, panels, rules, task
from dashboards.config import (
    DATASOURCES_YAML,
    OVERVIEW_JSON,
    PROMETHEUS_RULE_YAML,
    REPO_ROOT,
    RULES_YML,
    TASK_JSON,
    Params,
    bucket,
    rate,
    series,
    sum_by,
)
from tasklens.artefacts import prometheus_rule_resource, write
from tasklens.telemetry import contract

# --- Grafana data-source provisioning (the compose stack) -----------------------------------
# Generated because the Tempo-to-metrics links name contract metrics.

PROMETHEUS_UID = "prometheus"
TEMPO_UID = "tempo"
LOKI_UID = "loki"
ALERTMANAGER_UID = "alertmanager"

#: Grafana expands ``$VAR`` in provisioning files; ``$$`` is a literal dollar.
_TAGS = "$$__tags"

#: Loki's OTLP ingestion keeps a log record's trace id as the structured metadata ``trace_id``.
LOKI_TRACE_ID = "trace_id"
#: A trace id inside a log line: tasklens's JSON lines (``"trace_id": "<32 hex>"``) and console
#: or stdlib ``%(trace_id)s`` lines (``trace_id=<32 hex>``), for logs shipped to Loki from
#: stdout rather than over OTLP. Written for JavaScript (Grafana runs it in the browser), RE2
#: and Python alike.
TRACE_ID_IN_LINE = r'trace_id"?\s*[=:]\s*"?([0-9a-f]{32})\b'
#: The span's service (resource ``service.name``) is Loki's stream label ``service_name``.
_SERVICE_TAG = {"key": "service.name", "value": "service_name"}


def _trace_link(name: str, matcher_type: str, matcher: str) -> dict[str, str]:
    """A Loki derived field that opens the trace in Tempo (logs to trace)."""
    return {
        "name": name,
        "matcherType": matcher_type,
        "matcherRegex": matcher,
        "datasourceUid": TEMPO_UID,
        "url": "$${__value.raw}",
        "urlDisplayLabel": "Open trace",
    }


def _trace_to_metric_queries() -> list[dict[str, str]]:
    def p95(spec: contract.MetricSpec) -> str:
        buckets = rate(bucket(spec, _TAGS), "5m")
        return f"histogram_quantile(0.95, {sum_by(('le',), buckets)})"

    finished = sum_by(("outcome",), rate(series(contract.FINISHED, _TAGS), "5m"))
    return [
        {"name": "Task duration p95", "query": p95(contract.DURATION_SECONDS)},
        {"name": "Task queue time p95", "query": p95(contract.QUEUE_SECONDS)},
        {"name": "Task outcomes / s", "query": finished},
    ]


def datasources() -> dict[str, object]:
    """The provisioning document (``apiVersion: 1``)."""
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "type": "prometheus",
                "uid": PROMETHEUS_UID,
                "access": "proxy",
                "url": "http://prometheus:9090",
                "isDefault": True,
                "jsonData": {
                    "httpMethod": "POST",
                    "timeInterval": "15s",
                    "exemplarTraceIdDestinations": [
                        {"name": "trace_id", "datasourceUid": TEMPO_UID},
                    ],
                },
            },
            {
                "name": "Tempo",
                "type": "tempo",
                "uid": TEMPO_UID,
                "access": "proxy",
                "url": "http://tempo:3200",
                "jsonData": {
                    "tracesToMetrics": {
                        "datasourceUid": PROMETHEUS_UID,
                        "spanStartTimeShift": "-5m",
                        "spanEndTimeShift": "5m",
                        "tags": [{"key": contract.ATTR_NAME, "value": "task"}],
                        "queries": _trace_to_metric_queries(),
                    },
                    # Trace to logs: the trace's lines in Loki, by service and trace id (a
                    # structured-metadata filter: the id is not in an OTLP record's body).
                    "tracesToLogsV2": {
                        "datasourceUid": LOKI_UID,
                        "spanStartTimeShift": "-5m",
                        "spanEndTimeShift": "5m",
                        "tags": [_SERVICE_TAG],
                        "filterByTraceID": False,
                        "filterBySpanID": False,
                        "customQuery": True,
                        "query": f'{{$${{__tags}}}} | {LOKI_TRACE_ID}="$${{__trace.traceId}}"',
                    },
                    "serviceMap": {"datasourceUid": PROMETHEUS_UID},
                    "nodeGraph": {"enabled": True},
                    "search": {"hide": False},
                },
            },
            {
                "name": "Loki",
                "type": "loki",
                "uid": LOKI_UID,
                "access": "proxy",
                "url": "http://loki:3100",
                "jsonData": {
                    "derivedFields": [
                        _trace_link("TraceID", "label", LOKI_TRACE_ID),
                        _trace_link("TraceID in line", "regex", TRACE_ID_IN_LINE),
                    ],
                },
            },
            {
                "name": "Alertmanager",
                "type": "alertmanager",
                "uid": ALERTMANAGER_UID,
                "access": "proxy",
                "url": "http://alertmanager:9093",
                "jsonData": {"implementation": "prometheus", "handleGrafanaManagedAlerts": False},
            },
        ],
    }


def datasources_yaml() -> str:
    """The provisioning file's text."""
    header = "# Generated by `python -m dashboards` (dashboards/__main__.py): do not edit.\n"
    return header + rules.dump(datasources())


# --- Render, write, check ------------------------------------------------------------------


def render(params: Params) -> dict[str, str]:
    """Path under the output root -> content, for every generated file."""
    rules_text = rules.prometheus_rules(params)
    return {
        OVERVIEW_JSON: panels.to_json(overview.build(params)),
        TASK_JSON: panels.to_json(task.build(params)),
        RULES_YML: rules_text,
        PROMETHEUS_RULE_YAML: prometheus_rule_resource(rules_text),
        DATASOURCES_YAML: datasources_yaml(),
    }


def stale(files: dict[str, str], root: Path) -> list[str]:
    """Paths under ``root`` whose content differs from ``files`` (or that are missing)."""
    return [
        relative
        for relative, content in files.items()
        if not (root / relative).is_file()
        or (root / relative).read_text(encoding="utf-8") != content
    ]


def parse_params(argv: Sequence[str] | None = None) -> tuple[Params, Path, bool]:
    """Command-line options -> (parameters, output root, check-only)."""
    defaults = Params()
    parser = argparse.ArgumentParser(prog="python -m dashboards", description=__doc__)
    parser.add_argument(
        "--slo",
        type=float,
        default=defaults.slo,
        help="task success SLO, e.g. 0.995 (default %(default)s)",
    )
    parser.add_argument(
        "--job", default=defaults.job, help="Prometheus job label (default %(default)s)"
    )
    parser.add_argument(
        "--failure-ratio",
        type=float,
        default=defaults.failure_ratio,
        help="BgTaskFailureRatioHigh threshold (default %(default)s)",
    )
    parser.add_argument(
        "--failure-min-rate",
        type=float,
        default=defaults.failure_min_rate,
        help="tasks/s a task must finish for failure alerts to fire (default %(default)s)",
    )
    parser.add_argument(
        "--failure-window",
        default=defaults.failure_window,
        help="rate window of BgTaskFailureRatioHigh (default %(default)s)",
    )
    parser.add_argument(
        "--failure-for",
        default=defaults.failure_for,
        help="'for' of BgTaskFailureRatioHigh (default %(default)s)",
    )
    parser.add_argument(
        "--runbook-base-url",
        default=defaults.runbook_base_url,
        help="prefix of runbook_url annotations (default %(default)s)",
    )
    parser.add_argument(
        "--grafana-url",
        default=defaults.grafana_url,
        help="prefix of dashboard_url annotations (default: a Grafana path)",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT, help="root to write under (default: the repository)"
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a generated file is stale"
    )
    args = parser.parse_args(argv)
    params = Params(
        slo=args.slo,
        job=args.job,
        failure_ratio=args.failure_ratio,
        failure_min_rate=args.failure_min_rate,
        failure_window=args.failure_window,
        failure_for=args.failure_for,
        runbook_base_url=args.runbook_base_url,
        grafana_url=args.grafana_url,
    )
    return params, args.out, args.check


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    params, root, check = parse_params(argv)
    files = render(params)
    if check:
        outdated = stale(files, root)
        for relative in outdated:
            print(f"stale: {relative}", file=sys.stderr)
        return 1 if outdated else 0
    for path in write(files, root):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
