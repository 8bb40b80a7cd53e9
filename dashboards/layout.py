"""Assemble rows of panels into a dashboard and serialise it as stable JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence

from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dashboard_m

from dashboards.panels import PanelBuilder
from dashboards.variables import all_variables

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
        .variables(all_variables(multi_task=multi_task))
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
