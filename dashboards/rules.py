"""The Prometheus rules: recording rules (per-task rates, failure ratio, error-budget burn),
the alerts, and their serialisation as a rules file. Metric names come from the contract,
thresholds from :class:`Params`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dashboards import overview, task
from dashboards.config import Params, eq, quantile, rate, regex, series, sum_by
from tasklens.telemetry import contract

Rule = dict[str, object]

# --- Recording rules ----------------------------------------------------------------------

#: Windows of the multi-window, multi-burn-rate SLO alerts (Google SRE workbook, chapter 5).
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
#: Recording rules aggregate to one series per job, task and executor: a Celery task is
#: finished twice in a job, as its send (``broker``, web process) and as its run (``celery``,
#: worker), and a failing run must not be diluted by its successful send.
BY = ("job", "task", "executor")
#: ``and on (...)`` matching of two recorded or aggregated per-task series.
ON = f"on ({', '.join(BY)})"
#: Prefix of the recorded names (Prometheus' level:metric:operations convention).
LEVEL = "job_task_executor"


def finished_rate(window: str) -> str:
    """Name of the recorded per-task, per-executor rate of finished tasks (any outcome)."""
    return f"{LEVEL}:{contract.FINISHED.name}:rate{window}"


def failed_rate(window: str) -> str:
    """Name of the recorded per-task, per-executor rate of failed tasks."""
    return f"{LEVEL}:{contract.FINISHED.name}_{contract.OUTCOME_FAILURE}:rate{window}"


def failure_ratio(window: str) -> str:
    """Name of the recorded per-task, per-executor failure ratio (failed / finished)."""
    return f"{LEVEL}:bgtask_failure_ratio:rate{window}"


def burn_rate(window: str) -> str:
    """Name of the recorded error-budget burn rate (failure ratio / (1 - SLO))."""
    return f"{LEVEL}:bgtask_error_budget_burn:rate{window}"


def finished_rate_expr(params: Params, window: str, *matchers: str) -> str:
    """``sum by (job, task, executor) (rate(bgtask_finished_total{job=...}[window]))``."""
    selector = series(contract.FINISHED, eq("job", params.job), *matchers)
    return sum_by(BY, rate(selector, window))


def failed_rate_expr(params: Params, window: str) -> str:
    """Like :func:`finished_rate_expr`, failures only."""
    return finished_rate_expr(params, window, eq("outcome", contract.OUTCOME_FAILURE))


def recording_rules(params: Params) -> list[Rule]:
    """Four rules per window, each building on the previous (rules of a group run in order)."""
    recorded: list[Rule] = []
    for window in WINDOWS:
        recorded += [
            {"record": finished_rate(window), "expr": finished_rate_expr(params, window)},
            {"record": failed_rate(window), "expr": failed_rate_expr(params, window)},
            {
                "record": failure_ratio(window),
                "expr": f"{failed_rate(window)}\n/\n{finished_rate(window)}",
            },
            {
                "record": burn_rate(window),
                "expr": f"{failure_ratio(window)} / {params.error_budget:g}",
                "labels": {"slo": f"{params.slo:g}"},
            },
        ]
    return recorded + lost_rules(params)


def lost() -> str:
    """Name of the recorded per-instance count of tasks that vanished without an outcome."""
    return "job_instance:bgtask_lost:sum"


def lost_rules(params: Params) -> list[Rule]:
    """Tasks enqueued and neither finished (any outcome), pending nor in progress.

    For a live process the difference is 0: every task is in exactly one of those. With
    several gunicorn workers, ``/metrics`` keeps the counters of dead workers and drops
    their live gauges (``child_exit``), so a worker killed mid-task leaves exactly the tasks
    it held: the difference, persistent until the directory is wiped at the next start.
    Totals, not ``increase()``: a window's extrapolation credits a new series (a new worker,
    a new task name) with its first value, and the last scrape before a graceful exit can
    show tasks that were then ended (``abandoned``) unseen, so a windowed difference would
    report losses at every deploy. A scrape is not atomic; tasklens's ``/metrics`` reads the
    four metrics back to back, enqueued first and finished last, so tasks moving meanwhile
    bias the difference down (a miss, not an invented loss); ``min_over_time`` in the alert
    ignores the +1 of an observer call caught between its two increments."""
    by = ("job", "instance")
    job = eq("job", params.job)
    gauges = regex("__name__", f"{contract.PENDING.name}|{contract.IN_PROGRESS.name}")
    terms = [
        sum_by(by, series(contract.ENQUEUED, job)),
        sum_by(by, series(contract.FINISHED, job)),
        sum_by(by, f"{{{gauges}, {job}}}"),
    ]
    return [{"record": lost(), "expr": "\n- ".join(terms)}]


# --- Alerts -------------------------------------------------------------------------------

CRITICAL = "critical"
WARNING = "warning"

#: Burn-rate pairs (long window, short window, burn factor) of the SRE workbook.
FAST_BURN = (("1h", "5m", 14.4), ("6h", "30m", 6.0))
SLOW_BURN = (("1d", "2h", 3.0), ("3d", "6h", 1.0))


@dataclass(frozen=True)
class Alert:
    """One alerting rule, before serialisation."""

    name: str
    expr: str
    duration: str
    severity: str
    summary: str
    description: str
    #: Alert labels passed to the dashboard as variables (``task`` selects the per-task one).
    link_labels: tuple[str, ...]

    def rule(self, params: Params) -> Rule:
        """The rule as it appears in a Prometheus rules file."""
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.duration,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": f"{params.runbook_base_url}/{self.name}.md",
                "dashboard_url": dashboard_url(params, self.link_labels),
            },
        }


def dashboard_url(params: Params, labels: tuple[str, ...]) -> str:
    """Grafana link (a path, or a full URL with ``grafana_url``) with alert labels as variables."""
    uid = task.UID if "task" in labels else overview.UID
    query = "&".join(f"var-{label}={{{{ $labels.{label} }}}}" for label in labels)
    return f"{params.grafana_url.rstrip('/')}/d/{uid}?{query}"


#: How a per-task alert names the executor: ``celery`` is a worker's run, ``broker`` the web
#: process's send of a Celery task.
EXECUTOR = "executor {{ $labels.executor }}"


def _num(value: float) -> str:
    return f"{value:g}"


def _pct(value: float) -> str:
    return f"{value * 100:g}%"


def failure_ratio_high(p: Params) -> Alert:
    """A task fails often while it has real traffic."""
    w = p.failure_window
    finished = finished_rate_expr(p, w)
    expr = (
        f"(\n  {failed_rate_expr(p, w)}\n/\n  {finished}\n) > {_num(p.failure_ratio)}\n"
        f"and {ON}\n  {finished} > {_num(p.failure_min_rate)}"
    )
    return Alert(
        "BgTaskFailureRatioHigh",
        expr,
        p.failure_for,
        CRITICAL,
        "Background task {{ $labels.task }} is failing",
        f"{{{{ $value | humanizePercentage }}}} of the runs of {{{{ $labels.task }}}} "
        f"({EXECUTOR}) in job {{{{ $labels.job }}}} failed over the last {w} "
        f"(threshold {_pct(p.failure_ratio)}, while more than {_num(p.failure_min_rate)} "
        "tasks/s finish).",
        ("job", "task"),
    )


def _burn_expr(pairs: tuple[tuple[str, str, float], ...], min_rate: float | None) -> str:
    branches = []
    for long, short, factor in pairs:
        terms = [
            f"{burn_rate(long)} > {_num(factor)}",
            f"{burn_rate(short)} > {_num(factor)}",
        ]
        if min_rate is not None:
            terms.append(f"{finished_rate(short)} > {_num(min_rate)}")
        branches.append("(\n  " + f"\n  and {ON}\n  ".join(terms) + "\n)")
    return "\nor\n".join(branches)


def _burn_windows(pairs: tuple[tuple[str, str, float], ...]) -> str:
    return " or ".join(f"{_num(factor)}x over {long} and {short}" for long, short, factor in pairs)


def error_budget_burn_fast(p: Params) -> Alert:
    """Page: at this pace the monthly error budget is gone in days (SRE workbook, 14.4x/6x)."""
    return Alert(
        "BgTaskErrorBudgetBurnFast",
        _burn_expr(FAST_BURN, p.failure_min_rate),
        "2m",
        CRITICAL,
        "Background task {{ $labels.task }} burns its error budget fast",
        f"{{{{ $labels.task }}}} ({EXECUTOR}) in job {{{{ $labels.job }}}} fails "
        f"{{{{ $value | humanize }}}} times faster than its {_pct(p.slo)} success SLO allows "
        f"({_burn_windows(FAST_BURN)}).",
        ("job", "task"),
    )


def error_budget_burn_slow(p: Params) -> Alert:
    """Ticket: a slow, steady burn that would exhaust the budget within the SLO period."""
    return Alert(
        "BgTaskErrorBudgetBurnSlow",
        _burn_expr(SLOW_BURN, None),
        "15m",
        WARNING,
        "Background task {{ $labels.task }} burns its error budget",
        f"{{{{ $labels.task }}}} ({EXECUTOR}) in job {{{{ $labels.job }}}} fails "
        f"{{{{ $value | humanize }}}} times faster than its {_pct(p.slo)} success SLO allows "
        f"({_burn_windows(SLOW_BURN)}).",
        ("job", "task"),
    )


def queue_time_high(p: Params) -> Alert:
    """Tasks wait long between add_task and their start."""
    p95 = quantile(0.95, contract.QUEUE_SECONDS, [eq("job", p.job)], BY, "5m")
    return Alert(
        "BgTaskQueueTimeHigh",
        f"{p95}\n> {_num(p.queue_p95_seconds)}",
        p.queue_for,
        WARNING,
        "Background task {{ $labels.task }} waits long before it starts",
        f"95% of {{{{ $labels.task }}}} runs ({EXECUTOR}) in job {{{{ $labels.job }}}} "
        f"started within {{{{ $value | humanizeDuration }}}} of add_task over the last 5m "
        f"(threshold {_num(p.queue_p95_seconds)}s).",
        ("job", "task"),
    )


def threadpool_saturated(p: Params) -> Alert:
    """Sync tasks have (almost) no free thread-pool slot."""

    def tokens(state: str) -> str:
        selector = series(contract.THREADPOOL_TOKENS, eq("job", p.job), eq("state", state))
        return f"avg_over_time({selector}[5m])"

    return Alert(
        "BgTaskThreadPoolSaturated",
        f"{tokens('borrowed')}\n/ ignoring (state)\n{tokens('total')}\n"
        f">= {_num(p.threadpool_saturation)}",
        p.threadpool_for,
        WARNING,
        "Background-task thread pool of {{ $labels.instance }} is saturated",
        f"{{{{ $value | humanizePercentage }}}} of the thread-pool tokens of "
        f"{{{{ $labels.instance }}}} (job {{{{ $labels.job }}}}) were borrowed on average over 5m "
        f"(threshold {_pct(p.threadpool_saturation)}): sync tasks wait for a slot.",
        ("job", "instance"),
    )


def pending_growing(p: Params) -> Alert:
    """The backlog of tasks not started yet keeps growing."""
    pending = series(contract.PENDING, eq("job", p.job))
    return Alert(
        "BgTaskPendingGrowing",
        f"{pending} > {_num(p.pending_floor)}\nand\nderiv({pending}[10m]) > 0",
        p.pending_for,
        WARNING,
        "Background-task backlog of {{ $labels.instance }} keeps growing",
        f"{{{{ $value | humanize }}}} background tasks of {{{{ $labels.instance }}}} "
        f"(job {{{{ $labels.job }}}}) are added but not started, more than "
        f"{_num(p.pending_floor)}, and the number kept rising for {p.pending_for}.",
        ("job", "instance"),
    )


def target_down(p: Params) -> Alert:
    """Prometheus cannot scrape the application (or finds no target at all)."""
    up = f"up{{{eq('job', p.job)}}}"
    return Alert(
        "BgTaskTargetDown",
        f"{up} == 0\nor\nabsent({up})",
        p.target_down_for,
        CRITICAL,
        "tasklens metrics of job {{ $labels.job }} are not scraped",
        "Prometheus cannot scrape {{ with $labels.instance }}{{ . }}{{ else }}any target{{ end }} "
        "of job {{ $labels.job }}: background-task metrics and every other tasklens alert "
        "are blind.",
        ("job",),
    )


def tasks_lost(p: Params) -> Alert:
    """Tasks vanished without an outcome: a worker died with them."""
    return Alert(
        "BgTaskLost",
        f"min_over_time({lost()}[{p.lost_window}]) > {_num(p.lost_floor)}",
        p.lost_for,
        WARNING,
        "Background tasks of {{ $labels.instance }} were lost",
        f'{{{{ $value | printf "%.0f" }}}} background tasks of {{{{ $labels.instance }}}} '
        f"(job {{{{ $labels.job }}}}) were enqueued and are neither finished (any outcome), "
        f"pending nor in progress, for at least {p.lost_window}: a worker died with them "
        "(SIGKILL, OOM kill, crash). The count stays until the service restarts.",
        ("job", "instance"),
    )


ALERTS: tuple[Callable[[Params], Alert], ...] = (
    failure_ratio_high,
    error_budget_burn_fast,
    error_budget_burn_slow,
    queue_time_high,
    threadpool_saturated,
    pending_growing,
    tasks_lost,
    target_down,
)


def alerts(params: Params) -> list[Alert]:
    """Every alert, in documentation order."""
    return [make(params) for make in ALERTS]


def alert_names() -> list[str]:
    """The alert names (independent of parameters)."""
    return [alert.name for alert in alerts(Params())]


# --- The rules file -----------------------------------------------------------------------

HEADER = (
    "# Generated by tasklens (`python -m dashboards` in its repository, from\n"
    "# telemetry/contract.py): do not edit by hand. SLO {slo:g}, scrape job {job!r}; for\n"
    "# other values regenerate from the repository: python -m dashboards --help\n"
)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks; everything else as usual."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def groups(params: Params) -> list[dict[str, Any]]:
    """The rule groups: recording rules first (alerts read them), then the alerts."""
    return [
        {"name": "tasklens.recording", "rules": recording_rules(params)},
        {
            "name": "tasklens.alerts",
            "rules": [alert.rule(params) for alert in alerts(params)],
        },
    ]


def dump(document: object) -> str:
    """YAML with stable key order and literal-block PromQL."""
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)


def prometheus_rules(params: Params) -> str:
    """A plain Prometheus ``rule_files`` document."""
    return HEADER.format(slo=params.slo, job=params.job) + dump({"groups": groups(params)})


def write_rules(path: Path, params: Params) -> Path:
    """Write only the rules file for ``params`` (e.g. a test variant) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prometheus_rules(params), encoding="utf-8")
    return path
