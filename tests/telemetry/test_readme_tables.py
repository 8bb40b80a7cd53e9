"""The README's metric and span tables are the contract's, word for word."""

from __future__ import annotations

import re
from pathlib import Path

from tasklens.telemetry import contract

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _table(marker: str) -> list[list[str]]:
    block = re.search(rf"<!-- {marker}:start -->\n(.*?)<!-- {marker}:end -->", README, re.S)
    assert block, f"README has no {marker} block"
    rows = [line.strip("|").split("|") for line in block.group(1).strip().splitlines()[2:]]
    return [[cell.strip() for cell in row] for row in rows]


def test_metrics_table_matches_contract() -> None:
    expected = [
        [f"`{m.sample_name}`", m.type, ", ".join(m.labels) or "—", m.help]
        for m in contract.ALL_METRICS
    ]
    assert _table("metrics-table") == expected


def test_spans_table_matches_contract() -> None:
    expected = [[f"`{name}`", meaning] for name, meaning in contract.SPAN_ATTRIBUTES.items()]
    assert _table("spans-table") == expected
