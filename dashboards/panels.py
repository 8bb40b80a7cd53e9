"""Panel builders, template variables and the views both dashboards are made of, and how they
are assembled into a dashboard (stable JSON)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.builders import heatmap, stat, table, timeseries
from grafana_foundation_sdk.builders import prometheus as prometheus_b
from grafana_foundation_sdk.cog import variants
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_m
from grafana_foundation_sdk.models import heatmap as heatmap_m
from grafana_foundation_sdk.models import prometheus as prometheus_m

from dashboards.config import bucket, eq, increase, quantile, rate, regex, series, sum_by
from tasklens.telemetry import contract

#: Every panel queries the data source chosen in the ``datasource`` variable.
DATASOURCE = dashboard_m.DataSourceRef(type_val="prometheus", uid="${datasource}")

PanelBuilder = timeseries.Panel | heatmap.Panel | table.Panel | stat.Panel


@dataclass(frozen=True)
class Query:
    """One PromQL target. ``exemplar`` asks Prometheus for trace-id exemplars."""

    expr: str
    legend: str = ""
    exemplar: bool = False


def _targets(
    queries: Sequence[Query], fmt: prometheus_m.PromQueryFormat | None = None, instant: bool = False
) -> list[Builder[variants.Dataquery]]:
    targets: list[Builder[variants.Dataquery]] = []
    for index, query in enumerate(queries):
        target = (
            prometheus_b.Dataquery()
            .expr(query.expr)
            .ref_id(chr(ord("A") + index))
            .datasource(DATASOURCE)
            .exemplar(query.exemplar)
        )
        if query.legend:
            target = target.legend_format(query.legend)
        if fmt is not None:
            target = target.format(fmt)
        target = target.instant() if instant else target.range()
        targets.append(target)
    return targets


def _thresholds(*steps: tuple[float | None, str]) -> dashboard_b.ThresholdsConfig:
    return (
        dashboard_b.ThresholdsConfig()
        .mode(dashboard_m.ThresholdsMode.ABSOLUTE)
        .steps([dashboard_m.Threshold(value=value, color=color) for value, color in steps])
    )


def timeseries_panel(
    title: str,
    description: str,
    queries: Sequence[Query],
    unit: str,
    *,
    width: int = 12,
    height: int = 8,
    stacking: common.StackingMode = common.StackingMode.NONE,
    threshold: float | None = None,
) -> timeseries.Panel:
    """A line graph; ``threshold`` draws a dashed red line (e.g. an alert threshold)."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(queries))
        .unit(unit)
        .span(width)
        .height(height)
        .min(0)
        .fill_opacity(10 if stacking == common.StackingMode.NONE else 60)
        .stacking(common_b.StackingConfig().mode(stacking))
        .legend(
            common_b.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
        )
        .tooltip(
            common_b.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if threshold is not None:
        panel = panel.thresholds(_thresholds((None, "green"), (threshold, "red"))).thresholds_style(
            common_b.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.DASHED)
        )
    return panel


def heatmap_panel(
    title: str, description: str, query: Query, *, width: int = 12, height: int = 8
) -> heatmap.Panel:
    """A heatmap of histogram buckets, read as-is (``calculate`` off) with exemplars on top."""
    return (
        heatmap.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets([query], prometheus_m.PromQueryFormat.HEATMAP))
        .span(width)
        .height(height)
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit("s"))
        .color(
            heatmap.HeatmapColorOptions()
            .mode(heatmap_m.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .fill("dark-orange")
            .scale(heatmap_m.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
        )
        .cell_gap(1)
        .show_tooltip()
        .show_y_histogram()
        .exemplars_color("rgba(255,0,255,0.7)")
    )


def table_panel(
    title: str, description: str, query: Query, *, width: int = 12, height: int = 8
) -> table.Panel:
    """An instant-query table: one row per series, its labels as columns."""
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets([query], prometheus_m.PromQueryFormat.TABLE, instant=True))
        .span(width)
        .height(height)
        .show_header(True)
        .sort_by([common_b.TableSortByFieldState().display_name("Value").desc(True)])
        .with_transformation(
            dashboard_m.DataTransformerConfig(
                id_val="organize",
                options={"excludeByName": {"Time": True}, "renameByName": {"Value": "Failures"}},
            )
        )
    )


def stat_panel(
    title: str,
    description: str,
    query: Query,
    unit: str,
    *,
    width: int = 4,
    height: int = 4,
    warn: float | None = None,
) -> stat.Panel:
    """A single number (last value), red from ``warn`` on."""
    steps: list[tuple[float | None, str]] = [(None, "green")]
    if warn is not None:
        steps.append((warn, "red"))
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets([query]))
        .unit(unit)
        .span(width)
        .height(height)
        .thresholds(_thresholds(*steps))
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


# --- Template variables --------------------------------------------------------------------

#: The value a multi-value variable takes when "All" is selected.
ALL_VALUE = ".*"

#: Label matchers every panel query starts with.
JOB = regex("job", "$job")
INSTANCE = regex("instance", "$instance")
TASK = regex("task", "$task")


def _query_variable(name: str, label: str, query: str, *, multi: bool) -> dashboard_b.QueryVariable:
    variable = (
        dashboard_b.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(dashboard_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_m.VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(multi)
    )
    return variable.all_value(ALL_VALUE) if multi else variable


def variables(*, multi_task: bool) -> list[Builder[dashboard_m.VariableModel]]:
    """Data source (panels use ``${datasource}``), jobs exposing tasklens metrics, their
    instances, and the tasks seen there (single-select on the per-task dashboard)."""
    pending, enqueued = contract.PENDING, contract.ENQUEUED
    return [
        dashboard_b.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        _query_variable("job", "Job", f"label_values({pending.sample_name}, job)", multi=True),
        _query_variable(
            "instance", "Instance", f"label_values({series(pending, JOB)}, instance)", multi=True
        ),
        _query_variable(
            "task",
            "Task",
            f"label_values({series(enqueued, JOB, INSTANCE)}, task)",
            multi=multi_task,
        ),
    ]


# --- Views: each answers one question about background tasks ------------------------------

#: Grafana's rate window: at least four scrape intervals, whatever the zoom.
WINDOW = "$__rate_interval"
#: The dashboard's whole time range (for totals).
RANGE = "$__range"

SCOPE = (JOB, INSTANCE)
TASK_SCOPE = (JOB, INSTANCE, TASK)
FAILURE = eq("outcome", contract.OUTCOME_FAILURE)
QUANTILES = (0.5, 0.95, 0.99)


def _legend(labels: Sequence[str], suffix: str = "") -> str:
    text = " ".join(f"{{{{{label}}}}}" for label in labels)
    return f"{text} {suffix}".strip() if suffix else (text or "all")


def _finished_rate(by: Sequence[str], *extra: str) -> str:
    return sum_by(by, rate(series(contract.FINISHED, *TASK_SCOPE, *extra), WINDOW))


def _failure_ratio(by: Sequence[str]) -> str:
    return f"{_finished_rate(by, FAILURE)}\n/\n{_finished_rate(by)}"


def _quantile_queries(
    spec: contract.MetricSpec, matchers: Sequence[str], by: Sequence[str] = ()
) -> list[Query]:
    return [
        Query(quantile(q, spec, matchers, by, WINDOW), _legend(by, f"p{round(q * 100)}"), True)
        for q in QUANTILES
    ]


# --- Summary stats --------------------------------------------------------------------------


#: Counts of finished tasks are shown per executor: a Celery task finishes twice in a job,
#: as its send in the web process (``broker``) and as its run on a worker (``celery``).
EXECUTOR = ("executor",)
#: Executors that run a task's function (a Celery task's send is not a run of it).
RUNS = f'executor!="{contract.EXECUTOR_BROKER}"'


def finished_per_second_stat(title: str = "Tasks finished / s") -> PanelBuilder:
    return stat_panel(
        title,
        "How many background tasks finish per second, whatever their outcome, per executor "
        "(a Celery task counts as its send, broker, and its run, celery)?",
        Query(_finished_rate(EXECUTOR), _legend(EXECUTOR)),
        "ops",
    )


def enqueued_per_second_stat() -> PanelBuilder:
    by = ("instance",)
    expr = sum_by(by, rate(series(contract.ENQUEUED, *TASK_SCOPE), WINDOW))
    return stat_panel(
        "Enqueued / s",
        "How many background tasks are added per second, per instance (a web process's "
        "add_task; a Celery worker's received task)?",
        Query(expr, _legend(by)),
        "ops",
    )


def failure_ratio_stat(threshold: float) -> PanelBuilder:
    return stat_panel(
        "Failure ratio",
        "What fraction of finished tasks failed (raised an exception), per executor (a "
        "Celery task's sends, broker, and runs, celery, apart)? Red from the alert threshold.",
        Query(_failure_ratio(EXECUTOR), _legend(EXECUTOR)),
        "percentunit",
        warn=threshold,
    )


def pending_stat() -> PanelBuilder:
    return stat_panel(
        "Pending",
        "How many tasks are added but not started yet (all tasks, selected instances)?",
        Query(sum_by((), series(contract.PENDING, *SCOPE))),
        "short",
    )


def in_progress_stat() -> PanelBuilder:
    return stat_panel(
        "In progress",
        "How many tasks are running right now?",
        Query(sum_by((), series(contract.IN_PROGRESS, *TASK_SCOPE))),
        "short",
    )


def threadpool_usage_stat(threshold: float) -> PanelBuilder:
    def tokens(state: str) -> str:
        return sum_by((), series(contract.THREADPOOL_TOKENS, *SCOPE, eq("state", state)))

    return stat_panel(
        "Thread-pool tokens in use",
        "How full is the thread pool that runs sync tasks (borrowed / total tokens)?",
        Query(f"{tokens('borrowed')}\n/\n{tokens('total')}"),
        "percentunit",
        warn=threshold,
    )


def spans_dropped_stat() -> PanelBuilder:
    expr = sum_by((), increase(series(contract.SPANS_DROPPED, *SCOPE), RANGE))
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
    by = ("instance",)
    enqueued = sum_by(by, rate(series(contract.ENQUEUED, *TASK_SCOPE), WINDOW))
    return timeseries_panel(
        "Enqueued vs finished",
        "Are tasks finishing as fast as they are added, in each process (a web process's "
        "sends and a Celery worker's runs balance separately)? A lasting gap means a growing "
        "backlog.",
        [
            Query(enqueued, _legend(by, "enqueued")),
            Query(_finished_rate(by), _legend(by, "finished")),
        ],
        "ops",
    )


def failure_ratio(by: Sequence[str], threshold: float) -> PanelBuilder:
    """One series per ``by`` and executor (the alert's grouping); titled by ``by``."""
    title, question = (
        (f"Failure ratio by {', '.join(by)}", "Which tasks fail, and what fraction of their runs?")
        if by
        else ("Failure ratio over time", "What fraction of the runs fail, and since when?")
    )
    by = (*by, *EXECUTOR)
    return timeseries_panel(
        title,
        f"{question} One series per executor; the dashed line is the BgTaskFailureRatioHigh "
        "threshold.",
        [Query(_failure_ratio(by), _legend(by, "failure ratio"))],
        "percentunit",
        threshold=threshold,
    )


def failures_by_exception() -> PanelBuilder:
    by = ("exception",)
    expr = sum_by(by, rate(series(contract.FAILURES, *TASK_SCOPE), WINDOW))
    return timeseries_panel(
        "Failures by exception",
        "Which exception classes make the task fail, and since when?",
        [Query(expr, _legend(by))],
        "ops",
    )


def top_failures_table(title: str = "Top failing tasks and exception types") -> PanelBuilder:
    by = ("task", "exception")
    total = sum_by(by, increase(series(contract.FAILURES, *TASK_SCOPE), RANGE))
    return table_panel(
        title,
        "Which tasks failed most in the time range, and with which exception classes?",
        Query(f"topk(10, {total}) > 0"),
    )


# --- Latency --------------------------------------------------------------------------------


def duration_quantiles(by: Sequence[str] = ()) -> PanelBuilder:
    return timeseries_panel(
        "Duration p50 / p95 / p99",
        "How long do task functions run, start to end? Exemplars link to the slow runs' traces."
        + (f" Per {', '.join(by)}." if by else ""),
        _quantile_queries(contract.DURATION_SECONDS, TASK_SCOPE, by),
        "s",
    )


def duration_p95_by(label: str) -> PanelBuilder:
    """Per ``label`` and executor (a Celery task's send and run are different durations)."""
    by = (label, *EXECUTOR)
    return timeseries_panel(
        f"Duration p95 by {label}",
        f"Which {label} is slow? 95th percentile run time per {label} and executor.",
        [
            Query(
                quantile(0.95, contract.DURATION_SECONDS, TASK_SCOPE, by, WINDOW),
                _legend(by),
                True,
            )
        ],
        "s",
    )


def duration_heatmap() -> PanelBuilder:
    expr = sum_by(("le",), rate(bucket(contract.DURATION_SECONDS, *TASK_SCOPE), WINDOW))
    return heatmap_panel(
        "Duration heatmap",
        "How are run times distributed, and is there more than one mode (e.g. cache hit vs miss)?",
        Query(expr, "{{le}}", True),
    )


def queue_quantiles(threshold: float, by: Sequence[str] = ()) -> PanelBuilder:
    return timeseries_panel(
        "Queue time p50 / p95 / p99",
        "How long do tasks wait between add_task and the start of the function (response "
        "sending, earlier tasks, thread-pool wait; on a Celery worker, from add_task in the "
        "web process)? The dashed line is the BgTaskQueueTimeHigh threshold."
        + (f" Per {', '.join(by)}." if by else ""),
        _quantile_queries(contract.QUEUE_SECONDS, TASK_SCOPE, by),
        "s",
        threshold=threshold,
    )


def queue_p95_by_task() -> PanelBuilder:
    by = ("task", *EXECUTOR)
    return timeseries_panel(
        "Queue time p95 by task",
        "Which tasks wait longest before they start (per executor, as BgTaskQueueTimeHigh)?",
        [
            Query(
                quantile(0.95, contract.QUEUE_SECONDS, TASK_SCOPE, by, WINDOW),
                _legend(by),
                True,
            )
        ],
        "s",
    )


def queue_heatmap() -> PanelBuilder:
    expr = sum_by(("le",), rate(bucket(contract.QUEUE_SECONDS, *TASK_SCOPE), WINDOW))
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
    pending = sum_by(("instance",), series(contract.PENDING, *SCOPE))
    running = sum_by(("executor",), series(contract.IN_PROGRESS, *TASK_SCOPE))
    return timeseries_panel(
        "Pending and in progress",
        "How many tasks wait to start (pending, per instance, all tasks) and how many run now "
        "(per executor)?",
        [Query(pending, "pending {{instance}}"), Query(running, "in progress {{executor}}")],
        "short",
    )


def threadpool_tokens() -> PanelBuilder:
    by = ("instance", "state")
    expr = sum_by(by, series(contract.THREADPOOL_TOKENS, *SCOPE))
    return timeseries_panel(
        "Thread-pool tokens: borrowed vs total",
        "Is the thread pool saturated? When borrowed reaches total, sync tasks queue for a slot.",
        [Query(expr, _legend(by))],
        "short",
    )


def executor_share() -> PanelBuilder:
    by = EXECUTOR
    expr = (
        f"{_finished_rate(by, RUNS)}\n/ ignoring(executor) group_left\n{_finished_rate((), RUNS)}"
    )
    return timeseries_panel(
        "Event loop vs thread pool share",
        "Where do tasks run: on the event loop (async def), in the thread pool (def) or on a "
        "Celery worker? Sends to the broker are not runs and are left out.",
        [Query(expr, _legend(by))],
        "percentunit",
        stacking=common.StackingMode.NORMAL,
    )


def loop_blocking(by: Sequence[str]) -> PanelBuilder:
    expr = quantile(0.99, contract.LOOP_BLOCKING_SECONDS, TASK_SCOPE, by, WINDOW)
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
            quantile(q, contract.EVENT_LOOP_LAG_SECONDS, SCOPE, by, WINDOW),
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


# --- Assembly ------------------------------------------------------------------------------

Row = tuple[str, Sequence[PanelBuilder]]

TAGS = ["tasklens", "background-tasks"]


def assemble(
    title: str,
    uid: str,
    description: str,
    rows: Sequence[Row],
    *,
    multi_task: bool,
    links: Sequence[dashboard_b.DashboardLink] = (),
) -> dashboard_m.Dashboard:
    """A dashboard with the four variables and ``rows`` of panels, panel ids numbered from 1."""
    board = (
        dashboard_b.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(dashboard_m.DashboardCursorSync.CROSSHAIR)
        .variables(variables(multi_task=multi_task))
    )
    for link in links:
        board = board.link(link)
    panel_id = 1
    for row_title, panels in rows:
        board = board.with_row(dashboard_b.Row(row_title).id(panel_id))
        panel_id += 1
        for panel in panels:
            board = board.with_panel(panel.id(panel_id))
            panel_id += 1
    return board.build()


def dashboard_link(title: str, tags: Sequence[str] = TAGS) -> dashboard_b.DashboardLink:
    """A link to the other tasklens dashboards, keeping time range and variables."""
    return (
        dashboard_b.DashboardLink(title)
        .type(dashboard_m.DashboardLinkType.DASHBOARDS)
        .tags(list(tags))
        .as_dropdown(False)
        .include_vars(True)
        .keep_time(True)
    )


def to_json(dashboard: dashboard_m.Dashboard) -> str:
    """Stable JSON (sorted keys, trailing newline) so regeneration diffs are meaningful."""
    return json.dumps(dashboard, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
