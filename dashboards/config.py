"""Generation parameters, the output paths, and PromQL fragments built from the contract."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tasklens.telemetry.contract import MetricSpec

#: Repository root (the parent of this folder).
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Generated files, relative to the output root (the repository by default).
OVERVIEW_JSON = "tasklens/data/dashboards/overview.json"
TASK_JSON = "tasklens/data/dashboards/task.json"
RULES_YML = "tasklens/data/prometheus/tasklens-alerts.yml"
PROMETHEUS_RULE_YAML = "deploy/k8s/prometheusrule.yaml"
DATASOURCES_YAML = "deploy/grafana/provisioning/datasources/datasources.yaml"


@dataclass(frozen=True)
class Params:
    """What ``python -m dashboards`` can be told; the defaults produce the committed files."""

    #: Share of finished tasks that must not fail (per task), e.g. 0.99.
    slo: float = 0.99
    #: The Prometheus ``job`` label of the scraped application.
    job: str = "tasklens"
    #: BgTaskFailureRatioHigh: failure ratio over ``failure_window`` above this ...
    failure_ratio: float = 0.05
    failure_window: str = "5m"
    #: ... while at least this many tasks per second finish (6 per 5 minutes), so that one
    #: failure in a quiet hour does not page.
    failure_min_rate: float = 0.02
    failure_for: str = "1m"
    #: BgTaskQueueTimeHigh: queue-time p95 above this many seconds.
    queue_p95_seconds: float = 10.0
    queue_for: str = "10m"
    #: BgTaskThreadPoolSaturated: borrowed / total tokens (5m average) at or above this.
    threadpool_saturation: float = 0.9
    threadpool_for: str = "10m"
    #: BgTaskPendingGrowing: pending tasks above this and still rising.
    pending_floor: float = 100.0
    pending_for: str = "15m"
    target_down_for: str = "2m"
    #: BgTaskLost: tasks without an outcome (enqueued - finished - pending - in progress)
    #: above this at every evaluation of ``lost_window``, for ``lost_for``.
    lost_window: str = "5m"
    lost_floor: float = 0.5
    lost_for: str = "1m"
    #: Prefix of runbook links (``<base>/<Alert>.md``); the default is the repository path.
    runbook_base_url: str = "docs/runbooks"
    #: Prefix of dashboard links (``<grafana_url>/d/<uid>``); empty gives a Grafana-relative path.
    grafana_url: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.slo < 1:
            raise ValueError(f"slo must be between 0 and 1 (exclusive), got {self.slo}")

    @property
    def error_budget(self) -> float:
        """The allowed failure ratio, ``1 - slo``."""
        return round(1 - self.slo, 10)


# --- PromQL: no metric name is spelled by hand ------------------------------------------------


def series(spec: MetricSpec, *matchers: str, suffix: str = "") -> str:
    """``name{m1, m2}``: the sample name of ``spec`` (or name + ``suffix``) with matchers."""
    name = f"{spec.name}{suffix}" if suffix else spec.sample_name
    wanted = [m for m in matchers if m]
    return f"{name}{{{', '.join(wanted)}}}" if wanted else name


def bucket(spec: MetricSpec, *matchers: str) -> str:
    """The ``_bucket`` series of a histogram."""
    return series(spec, *matchers, suffix="_bucket")


def rate(selector: str, window: str) -> str:
    """``rate(selector[window])``."""
    return f"rate({selector}[{window}])"


def increase(selector: str, window: str) -> str:
    """``increase(selector[window])``."""
    return f"increase({selector}[{window}])"


def sum_by(labels: Sequence[str], expr: str) -> str:
    """``sum by (labels) (expr)``, or ``sum(expr)`` when ``labels`` is empty."""
    return f"sum by ({', '.join(labels)}) ({expr})" if labels else f"sum({expr})"


def quantile(
    q: float, spec: MetricSpec, matchers: Sequence[str], by: Sequence[str], window: str
) -> str:
    """The ``q`` quantile of histogram ``spec``, aggregated by ``by``."""
    buckets = rate(bucket(spec, *matchers), window)
    return f"histogram_quantile({q:g}, {sum_by([*by, 'le'], buckets)})"


def eq(label: str, value: str) -> str:
    """An equality matcher."""
    return f'{label}="{value}"'


def regex(label: str, value: str) -> str:
    """A regex matcher."""
    return f'{label}=~"{value}"'
