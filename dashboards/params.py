"""Generation parameters: the SLO, the scrape job and every alert threshold, in one place."""

from __future__ import annotations

from dataclasses import dataclass


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
