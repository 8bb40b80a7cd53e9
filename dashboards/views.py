"""The panels both dashboards are made of; each answers one question about background tasks."""

from __future__ import annotations

from collections.abc import Sequence

from grafana_foundation_sdk.models import common

from dashboards import promql
from dashboards.panels import (
    PanelBuilder,
    Query,
    heatmap_panel,
    stat_panel,
    table_panel,
    timeseries_panel,
)
from dashboards.variables import INSTANCE, JOB, TASK
from telemetry import contract

#: Grafana's rate window: at least four scrape intervals, whatever the zoom.
WINDOW = "$__rate_interval"
#: The dashboard's whole time range (for totals).
RANGE = "$__range"

SCOPE = (JOB, INSTANCE)
TASK_SCOPE = (JOB, INSTANCE, TASK)
FAILURE = promql.eq("outcome", contract.OUTCOME_FAILURE)
QUANTILES = (0.5, 0.95, 0.99)


def _legend(labels: Sequence[str], suffix: str = "") -> str:
    text = " ".join(f"{{{{{label}}}}}" for label in labels)
    return f"{text} {suffix}".strip() if suffix else (text or "all")


def _finished_rate(by: Sequence[str], *extra: str) -> str:
    return promql.sum_by(
        by, promql.rate(promql.series(contract.FINISHED, *TASK_SCOPE, *extra), WINDOW)
    )


def _failure_ratio(by: Sequence[str]) -> str:
    return f"{_finished_rate(by, FAILURE)}\n/\n{_finished_rate(by)}"


def _quantile_queries(
    spec: contract.MetricSpec, matchers: Sequence[str], by: Sequence[str] = ()
) -> list[Query]:
    return [
        Query(
            promql.quantile(q, spec, matchers, by, WINDOW), _legend(by, f"p{round(q * 100)}"), True
        )
        for q in QUANTILES
    ]


# --- Summary stats --------------------------------------------------------------------------


def finished_per_second_stat(title: str = "Tasks finished / s") -> PanelBuilder:
    return stat_panel(
        title,
        "How many background tasks finish per second, whatever their outcome?",
        Query(_finished_rate(())),
        "ops",
    )


def enqueued_per_second_stat() -> PanelBuilder:
    expr = promql.sum_by((), promql.rate(promql.series(contract.ENQUEUED, *TASK_SCOPE), WINDOW))
    return stat_panel(
        "Enqueued / s",
        "How many background tasks are added to responses per second?",
        Query(expr),
        "ops",
    )


def failure_ratio_stat(threshold: float) -> PanelBuilder:
    return stat_panel(
        "Failure ratio",
        "What fraction of finished tasks failed (raised an exception)? "
        "Red from the alert threshold.",
        Query(_failure_ratio(())),
        "percentunit",
        warn=threshold,
    )


def pending_stat() -> PanelBuilder:
    return stat_panel(
        "Pending",
        "How many tasks are added but not started yet (all tasks, selected instances)?",
        Query(promql.sum_by((), promql.series(contract.PENDING, *SCOPE))),
        "short",
    )


def in_progress_stat() -> PanelBuilder:
    return stat_panel(
        "In progress",
        "How many tasks are running right now?",
        Query(promql.sum_by((), promql.series(contract.IN_PROGRESS, *TASK_SCOPE))),
        "short",
    )


def threadpool_usage_stat(threshold: float) -> PanelBuilder:
    def tokens(state: str) -> str:
        return promql.sum_by(
            (), promql.series(contract.THREADPOOL_TOKENS, *SCOPE, promql.eq("state", state))
        )

    return stat_panel(
        "Thread-pool tokens in use",
        "How full is the thread pool that runs sync tasks (borrowed / total tokens)?",
        Query(f"{tokens('borrowed')}\n/\n{tokens('total')}"),
        "percentunit",
        warn=threshold,
    )


def spans_dropped_stat() -> PanelBuilder:
    expr = promql.sum_by((), promql.increase(promql.series(contract.SPANS_DROPPED, *SCOPE), RANGE))
    return stat_panel(
        "Spans dropped",
        "Did we lose task traces in the time range (exporter queue full, collector down)?",
        Query(expr),
        "short",
        warn=1,
    )


# --- Throughput and failures ----------------------------------------------------------------


def throughput(by: Sequence[str], title: str) -> PanelBuilder:
    return timeseries_panel(
        title,
        "How many tasks finish per second, and how do they end (success, failure, skipped, "
        "cancelled, abandoned)?",
        [Query(_finished_rate(by), _legend(by))],
        "ops",
    )


def enqueued_vs_finished() -> PanelBuilder:
    enqueued = promql.sum_by((), promql.rate(promql.series(contract.ENQUEUED, *TASK_SCOPE), WINDOW))
    return timeseries_panel(
        "Enqueued vs finished",
        "Are tasks finishing as fast as they are added? A lasting gap means a growing backlog.",
        [Query(enqueued, "enqueued"), Query(_finished_rate(()), "finished")],
        "ops",
    )


def failure_ratio(by: Sequence[str], threshold: float) -> PanelBuilder:
    title, question = (
        (f"Failure ratio by {', '.join(by)}", "Which tasks fail, and what fraction of their runs?")
        if by
        else ("Failure ratio over time", "What fraction of the runs fail, and since when?")
    )
    return timeseries_panel(
        title,
        f"{question} The dashed line is the BgTaskFailureRatioHigh threshold.",
        [Query(_failure_ratio(by), _legend(by, "failure ratio"))],
        "percentunit",
        threshold=threshold,
    )


def failures_by_exception() -> PanelBuilder:
    by = ("exception",)
    expr = promql.sum_by(by, promql.rate(promql.series(contract.FAILURES, *TASK_SCOPE), WINDOW))
    return timeseries_panel(
        "Failures by exception",
        "Which exception classes make the task fail, and since when?",
        [Query(expr, _legend(by))],
        "ops",
    )


def top_failures_table(title: str = "Top failing tasks and exception types") -> PanelBuilder:
    by = ("task", "exception")
    total = promql.sum_by(by, promql.increase(promql.series(contract.FAILURES, *TASK_SCOPE), RANGE))
    return table_panel(
        title,
        "Which tasks failed most in the time range, and with which exception classes?",
        Query(f"topk(10, {total}) > 0"),
    )


# --- Latency --------------------------------------------------------------------------------


def duration_quantiles() -> PanelBuilder:
    return timeseries_panel(
        "Duration p50 / p95 / p99",
        "How long do task functions run, start to end? Exemplars link to the slow runs' traces.",
        _quantile_queries(contract.DURATION_SECONDS, TASK_SCOPE),
        "s",
    )


def duration_p95_by(label: str) -> PanelBuilder:
    return timeseries_panel(
        f"Duration p95 by {label}",
        f"Which {label} is slow? 95th percentile run time per {label}.",
        [
            Query(
                promql.quantile(0.95, contract.DURATION_SECONDS, TASK_SCOPE, (label,), WINDOW),
                _legend((label,)),
                True,
            )
        ],
        "s",
    )


def duration_heatmap() -> PanelBuilder:
    expr = promql.sum_by(
        ("le",), promql.rate(promql.bucket(contract.DURATION_SECONDS, *TASK_SCOPE), WINDOW)
    )
    return heatmap_panel(
        "Duration heatmap",
        "How are run times distributed, and is there more than one mode (e.g. cache hit vs miss)?",
        Query(expr, "{{le}}", True),
    )


def queue_quantiles(threshold: float) -> PanelBuilder:
    return timeseries_panel(
        "Queue time p50 / p95 / p99",
        "How long do tasks wait between add_task and the start of the function (response "
        "sending, earlier tasks, thread-pool wait)? The dashed line is the BgTaskQueueTimeHigh "
        "threshold.",
        _quantile_queries(contract.QUEUE_SECONDS, TASK_SCOPE),
        "s",
        threshold=threshold,
    )


def queue_p95_by_task() -> PanelBuilder:
    by = ("task",)
    return timeseries_panel(
        "Queue time p95 by task",
        "Which tasks wait longest before they start?",
        [
            Query(
                promql.quantile(0.95, contract.QUEUE_SECONDS, TASK_SCOPE, by, WINDOW),
                _legend(by),
                True,
            )
        ],
        "s",
    )


def queue_heatmap() -> PanelBuilder:
    expr = promql.sum_by(
        ("le",), promql.rate(promql.bucket(contract.QUEUE_SECONDS, *TASK_SCOPE), WINDOW)
    )
    return heatmap_panel(
        "Queue time heatmap",
        "How is queue time distributed over time: do all tasks wait a little, or some a lot?",
        Query(expr, "{{le}}", True),
    )


def threadpool_wait() -> PanelBuilder:
    return timeseries_panel(
        "Thread-pool wait p50 / p95 / p99",
        "How long do sync tasks wait for a free thread-pool slot? Rising wait means the pool is "
        "the bottleneck.",
        _quantile_queries(contract.THREADPOOL_WAIT_SECONDS, TASK_SCOPE),
        "s",
    )


# --- Concurrency and the event loop ---------------------------------------------------------


def pending_and_in_progress() -> PanelBuilder:
    pending = promql.sum_by(("instance",), promql.series(contract.PENDING, *SCOPE))
    running = promql.sum_by(("executor",), promql.series(contract.IN_PROGRESS, *TASK_SCOPE))
    return timeseries_panel(
        "Pending and in progress",
        "How many tasks wait to start (pending, per instance, all tasks) and how many run now "
        "(per executor)?",
        [Query(pending, "pending {{instance}}"), Query(running, "in progress {{executor}}")],
        "short",
    )


def threadpool_tokens() -> PanelBuilder:
    by = ("instance", "state")
    expr = promql.sum_by(by, promql.series(contract.THREADPOOL_TOKENS, *SCOPE))
    return timeseries_panel(
        "Thread-pool tokens: borrowed vs total",
        "Is the thread pool saturated? When borrowed reaches total, sync tasks queue for a slot.",
        [Query(expr, _legend(by))],
        "short",
    )


def executor_share() -> PanelBuilder:
    by = ("executor",)
    expr = f"{_finished_rate(by)}\n/ ignoring(executor) group_left\n{_finished_rate(())}"
    return timeseries_panel(
        "Event loop vs thread pool share",
        "Where do tasks run: on the event loop (async def) or in the thread pool (def)?",
        [Query(expr, _legend(by))],
        "percentunit",
        stacking=common.StackingMode.NORMAL,
    )


def loop_blocking(by: Sequence[str]) -> PanelBuilder:
    expr = promql.quantile(0.99, contract.LOOP_BLOCKING_SECONDS, TASK_SCOPE, by, WINDOW)
    return timeseries_panel(
        "Loop-blocking p99" + (f" by {', '.join(by)}" if by else ""),
        "Which async tasks block the event loop, and for how long between two awaits (p99)?",
        [Query(expr, _legend(by, "p99"), True)],
        "s",
    )


def event_loop_lag() -> PanelBuilder:
    by = ("instance",)
    queries = [
        Query(
            promql.quantile(q, contract.EVENT_LOOP_LAG_SECONDS, SCOPE, by, WINDOW),
            _legend(by, f"p{round(q * 100)}"),
        )
        for q in (0.5, 0.99)
    ]
    return timeseries_panel(
        "Event-loop lag",
        "Is the event loop responsive? Lag of a periodic sampler, per instance (p50, p99).",
        queries,
        "s",
    )
