"""Read the PromQL back out of a dashboard, and substitute variables the way Grafana does.

The stack and live tests use these to run every panel query against a real Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dashboards.config import OVERVIEW_JSON, REPO_ROOT, TASK_JSON

#: Pass this (or the list of every value) for a multi-value variable set to "All".
ALL = "$__all"

#: What a multi-value variable set to "All" becomes (the dashboards' ``allValue``).
ALL_REGEX = ".*"

#: Grafana's built-in interval variables, overridable through ``values``.
BUILTINS: dict[str, str] = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}

_VARIABLE = re.compile(
    r"\$(?P<plain>\w+)|\$\{(?P<braced>\w+)(?::(?P<fmt>[\w]+))?\}|\[\[(?P<bracket>\w+)(?::\w+)?\]\]"
)
_REGEX_SPECIAL = re.compile(r"([\\^$.|?*+()\[\]{}])")

Value = str | Sequence[str]


def load(relative: str) -> dict[str, Any]:
    """A generated dashboard, e.g. ``load(OVERVIEW_JSON)``."""
    return json.loads((REPO_ROOT / relative).read_text(encoding="utf-8"))


def generated_dashboards(root: Path = REPO_ROOT) -> dict[str, dict[str, Any]]:
    """uid -> dashboard JSON of every generated dashboard under ``root``."""
    boards = [
        json.loads((root / path).read_text(encoding="utf-8")) for path in (OVERVIEW_JSON, TASK_JSON)
    ]
    return {board["uid"]: board for board in boards}


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that is not a row, including panels nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, expr)`` for every Prometheus target of every panel, in layout order."""
    return [
        (panel.get("title", ""), target["expr"])
        for panel in iter_panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def _regex_escape(value: str) -> str:
    return _REGEX_SPECIAL.sub(r"\\\\\1", value)


def format_value(value: Value) -> str:
    """A variable value as Grafana's Prometheus data source writes it into a query.

    A string is used as is; a list (multi-value) becomes ``(a|b)`` with regex characters
    escaped (a one-element list becomes the escaped element); ``ALL`` becomes ``.*``.
    """
    if isinstance(value, str):
        return ALL_REGEX if value == ALL else value
    values = list(value)
    if not values or ALL in values:
        return ALL_REGEX
    escaped = [_regex_escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute_variables(expr: str, values: Mapping[str, Value]) -> str:
    """Replace ``$var``, ``${var}``, ``${var:fmt}`` and ``[[var]]`` in ``expr``.

    ``values`` maps variable names (without ``$``) to a string or a list of strings;
    Grafana's ``__rate_interval``, ``__interval`` and ``__range`` default to
    :data:`BUILTINS`. An unknown variable raises :class:`KeyError`, so a typo cannot pass.
    """
    merged: dict[str, Value] = {**BUILTINS, **values}

    def replace(match: re.Match[str]) -> str:
        name = match.group("plain") or match.group("braced") or match.group("bracket")
        if name not in merged:
            raise KeyError(f"no value for dashboard variable ${name} in {expr!r}")
        return format_value(merged[name])

    return _VARIABLE.sub(replace, expr)
