"""Recording rules: per-task finished rate, failure rate, failure ratio and error-budget burn."""

from __future__ import annotations

from dashboards import promql
from dashboards.params import Params
from telemetry import contract

#: Windows of the multi-window, multi-burn-rate SLO alerts (Google SRE workbook, chapter 5).
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
#: Recording rules aggregate to one series per job and task.
BY = ("job", "task")

Rule = dict[str, object]


def finished_rate(window: str) -> str:
    """Name of the recorded per-task rate of finished tasks (any outcome)."""
    return f"job_task:{contract.FINISHED.name}:rate{window}"


def failed_rate(window: str) -> str:
    """Name of the recorded per-task rate of failed tasks."""
    return f"job_task:{contract.FINISHED.name}_{contract.OUTCOME_FAILURE}:rate{window}"


def failure_ratio(window: str) -> str:
    """Name of the recorded per-task failure ratio (failed / finished)."""
    return f"job_task:bgtask_failure_ratio:rate{window}"


def burn_rate(window: str) -> str:
    """Name of the recorded error-budget burn rate (failure ratio / (1 - SLO))."""
    return f"job_task:bgtask_error_budget_burn:rate{window}"


def finished_rate_expr(params: Params, window: str, *matchers: str) -> str:
    """``sum by (job, task) (rate(bgtask_finished_total{job=...}[window]))``."""
    selector = promql.series(contract.FINISHED, promql.eq("job", params.job), *matchers)
    return promql.sum_by(BY, promql.rate(selector, window))


def failed_rate_expr(params: Params, window: str) -> str:
    """Like :func:`finished_rate_expr`, failures only."""
    return finished_rate_expr(params, window, promql.eq("outcome", contract.OUTCOME_FAILURE))


def rules(params: Params) -> list[Rule]:
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
    return recorded
