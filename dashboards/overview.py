"""The "Background tasks / Overview" dashboard: every task of the selected jobs at once."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dashboard_m

from dashboards import panels
from dashboards.config import Params

UID = "tasklens-overview"
TITLE = "Background tasks / Overview"


def build(params: Params) -> dashboard_m.Dashboard:
    """The overview dashboard; thresholds drawn on panels come from ``params``."""
    rows = [
        (
            "Summary",
            [
                panels.finished_per_second_stat(),
                panels.failure_ratio_stat(params.failure_ratio),
                panels.pending_stat(),
                panels.in_progress_stat(),
                panels.threadpool_usage_stat(params.threadpool_saturation),
                panels.spans_dropped_stat(),
            ],
        ),
        (
            "Throughput and failures",
            [
                panels.throughput(
                    ("task", "executor", "outcome"), "Throughput by task and outcome"
                ),
                panels.enqueued_vs_finished(),
                panels.failure_ratio(("task",), params.failure_ratio),
                panels.top_failures_table(),
            ],
        ),
        (
            "Duration",
            [
                panels.duration_quantiles(),
                panels.duration_p95_by("task"),
            ],
        ),
        (
            "Queue time",
            [
                panels.queue_quantiles(params.queue_p95_seconds),
                panels.queue_p95_by_task(),
                panels.queue_heatmap(),
                panels.threadpool_wait(),
            ],
        ),
        (
            "Concurrency and the event loop",
            [
                panels.pending_and_in_progress(),
                panels.threadpool_tokens(),
                panels.executor_share(),
                panels.loop_blocking(("task",)),
                panels.event_loop_lag(),
            ],
        ),
    ]
    return panels.assemble(
        TITLE,
        UID,
        "Throughput, failures, latency and saturation of FastAPI/Starlette background tasks.",
        rows,
        multi_task=True,
        links=[panels.dashboard_link("Background tasks")],
    )
