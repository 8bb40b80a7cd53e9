"""Panel factories: every panel gets a title, a description, the ``${datasource}`` and queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.builders import heatmap, stat, table, timeseries
from grafana_foundation_sdk.builders import prometheus as prometheus_b
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_m
from grafana_foundation_sdk.models import heatmap as heatmap_m
from grafana_foundation_sdk.models import prometheus as prometheus_m

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
) -> list[prometheus_b.Dataquery]:
    targets = []
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
