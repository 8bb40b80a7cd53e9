"""The "Background tasks / Task" dashboard: one task (single-select ``task`` variable)."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dashboard_m

from dashboards import views
from dashboards.layout import assemble, dashboard_link
from dashboards.params import Params

UID = "tasklens-task"
TITLE = "Background tasks / Task"


def build(params: Params) -> dashboard_m.Dashboard:
    """The per-task dashboard; thresholds drawn on panels come from ``params``."""
    rows = [
        (
            "Summary",
            [
                views.finished_per_second_stat("Runs finished / s"),
                views.enqueued_per_second_stat(),
                views.failure_ratio_stat(params.failure_ratio),
                views.in_progress_stat(),
            ],
        ),
        (
            "Throughput and failures",
            [
                views.throughput(("outcome", "executor"), "Throughput by outcome and executor"),
                views.failure_ratio((), params.failure_ratio),
                views.failures_by_exception(),
                views.top_failures_table("Exception types"),
            ],
        ),
        (
            "Duration",
            [
                views.duration_quantiles(),
                views.duration_p95_by("outcome"),
                views.duration_heatmap(),
            ],
        ),
        (
            "Queue time",
            [
                views.queue_quantiles(params.queue_p95_seconds),
                views.queue_heatmap(),
                views.threadpool_wait(),
            ],
        ),
        (
            "Concurrency and the event loop",
            [
                views.pending_and_in_progress(),
                views.executor_share(),
                views.threadpool_tokens(),
                views.loop_blocking(()),
                views.event_loop_lag(),
            ],
        ),
    ]
    return assemble(
        TITLE,
        UID,
        "One background task: its throughput, failures, latency and where it runs.",
        rows,
        multi_task=False,
        links=[dashboard_link("Background tasks")],
    )
