"""Template variables shared by both dashboards: datasource, job, instance and task."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.models import dashboard as dashboard_m

from dashboards import promql
from dashboards.panels import DATASOURCE
from telemetry import contract

#: The value a multi-value variable takes when "All" is selected.
ALL_VALUE = ".*"

#: Label matchers every panel query starts with.
JOB = promql.regex("job", "$job")
INSTANCE = promql.regex("instance", "$instance")
TASK = promql.regex("task", "$task")


def datasource() -> dashboard_b.DatasourceVariable:
    """Which Prometheus to query; panels refer to it as ``${datasource}``."""
    return dashboard_b.DatasourceVariable("datasource").label("Data source").type("prometheus")


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


def job() -> dashboard_b.QueryVariable:
    """Scrape jobs exposing tasklens metrics."""
    query = f"label_values({contract.PENDING.sample_name}, job)"
    return _query_variable("job", "Job", query, multi=True)


def instance() -> dashboard_b.QueryVariable:
    """Instances (processes) of the selected jobs."""
    query = f"label_values({promql.series(contract.PENDING, JOB)}, instance)"
    return _query_variable("instance", "Instance", query, multi=True)


def task(*, multi: bool) -> dashboard_b.QueryVariable:
    """Task names seen on the selected instances; single-select on the per-task dashboard."""
    query = f"label_values({promql.series(contract.ENQUEUED, JOB, INSTANCE)}, task)"
    return _query_variable("task", "Task", query, multi=multi)


def all_variables(
    *, multi_task: bool
) -> list[dashboard_b.DatasourceVariable | dashboard_b.QueryVariable]:
    """The four variables, in display order."""
    return [datasource(), job(), instance(), task(multi=multi_task)]
