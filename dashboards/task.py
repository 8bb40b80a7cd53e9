"""The "Background tasks / Task" dashboard: one task (single-select ``task`` variable)."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as dashboard_m

from dashboards import panels
from dashboards.config import Params

UID = "tasklens-task"
TITLE = "Background tasks / Task"


def build(params: Params) -> dashboard_m.Dashboard:
    """The per-task dashboard; thresholds drawn on panels come from ``params``."""
    rows = [
        (
            "Summary",
            [
                panels.finished_per_second_stat("Runs finished / s"),
                panels.enqueued_per_second_stat(),
                panels.failure_ratio_stat(params.failure_ratio),
                panels.in_progress_stat(),
            ],
        ),
        (
            "Throughput and failures",
            [
                panels.throughput(("outcome", "executor"), "Throughput by outcome and executor"),
                panels.failure_ratio((), params.failure_ratio),
                panels.failures_by_exception(),
                panels.top_failures_table("Exception types"),
            ],
        ),
        (
            "Duration",
            [
                panels.duration_quantiles(panels.EXECUTOR),
                panels.duration_p95_by("outcome"),
                panels.duration_heatmap(),
            ],
        ),
        (
            "Queue time",
            [
                panels.queue_quantiles(params.queue_p95_seconds, panels.EXECUTOR),
                panels.queue_heatmap(),
                panels.threadpool_wait(),
            ],
        ),
        (
            "Concurrency and the event loop",
            [
                panels.pending_and_in_progress(),
                panels.executor_share(),
                panels.threadpool_tokens(),
                panels.loop_blocking(()),
                panels.event_loop_lag(),
            ],
        ),
    ]
    return panels.assemble(
        TITLE,
        UID,
        "One background task: its throughput, failures, latency and where it runs.",
        rows,
        multi_task=False,
        links=[panels.dashboard_link("Background tasks")],
    )
