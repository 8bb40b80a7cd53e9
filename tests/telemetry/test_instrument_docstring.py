"""``instrument()``'s docstring names every option it accepts (it lacked six)."""

from __future__ import annotations

import dataclasses
import importlib

from tasklens.runtime import RuntimeOptions
from tasklens.telemetry import TelemetryOptions


def test_docstring_lists_every_option() -> None:
    doc = importlib.import_module("tasklens.instrument").instrument.__doc__ or ""
    options = [f.name for o in (RuntimeOptions, TelemetryOptions) for f in dataclasses.fields(o)]
    assert len(options) >= 18
    assert [name for name in options if f"``{name}``" not in doc] == []
