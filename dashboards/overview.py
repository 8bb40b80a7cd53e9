"""The "Background tasks / Overview" dashboard: every task of the selected jobs at once."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dashboard_m

from dashboards import views
from dashboards.layout import assemble, dashboard_link
from dashboards.params import Params

UID = "tasklens-overview"
TITLE = "Background tasks / Overview"


def build(params: Params) -> dashboard_m.Dashboard:
    """The overview dashboard; thresholds drawn on panels come from ``params``."""
    rows = [
        (
            "Summary",
            [
                views.finished_per_second_stat(),
                views.failure_ratio_stat(params.failure_ratio),
                views.pending_stat(),
                views.in_progress_stat(),
                views.threadpool_usage_stat(params.threadpool_saturation),
                views.spans_dropped_stat(),
            ],
        ),
        (
            "Throughput and failures",
            [
                views.throughput(("task", "outcome"), "Throughput by task and outcome"),
                views.enqueued_vs_finished(),
                views.failure_ratio(("task",), params.failure_ratio),
                views.top_failures_table(),
            ],
        ),
        (
            "Duration",
            [
                views.duration_quantiles(),
                views.duration_p95_by("task"),
            ],
        ),
        (
            "Queue time",
            [
                views.queue_quantiles(params.queue_p95_seconds),
                views.queue_p95_by_task(),
                views.queue_heatmap(),
                views.threadpool_wait(),
            ],
        ),
        (
            "Concurrency and the event loop",
            [
                views.pending_and_in_progress(),
                views.threadpool_tokens(),
                views.executor_share(),
                views.loop_blocking(("task",)),
                views.event_loop_lag(),
            ],
        ),
    ]
    return assemble(
        TITLE,
        UID,
        "Throughput, failures, latency and saturation of FastAPI/Starlette background tasks.",
        rows,
        multi_task=True,
        links=[dashboard_link("Background tasks")],
    )
