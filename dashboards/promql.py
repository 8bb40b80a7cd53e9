"""PromQL fragments built from the telemetry contract, so no metric name is spelled by hand."""

from __future__ import annotations

from collections.abc import Sequence

from telemetry.contract import MetricSpec


def series(spec: MetricSpec, *matchers: str, suffix: str = "") -> str:
    """``name{m1, m2}``: the sample name of ``spec`` (plus a histogram suffix) with matchers."""
    name = f"{spec.name}{suffix}" if suffix else spec.sample_name
    wanted = [m for m in matchers if m]
    return f"{name}{{{', '.join(wanted)}}}" if wanted else name


def bucket(spec: MetricSpec, *matchers: str) -> str:
    """The ``_bucket`` series of a histogram."""
    return series(spec, *matchers, suffix="_bucket")


def count(spec: MetricSpec, *matchers: str) -> str:
    """The ``_count`` series of a histogram."""
    return series(spec, *matchers, suffix="_count")


def rate(selector: str, window: str) -> str:
    """``rate(selector[window])``."""
    return f"rate({selector}[{window}])"


def increase(selector: str, window: str) -> str:
    """``increase(selector[window])``."""
    return f"increase({selector}[{window}])"


def sum_by(labels: Sequence[str], expr: str) -> str:
    """``sum by (labels) (expr)``, or ``sum(expr)`` when ``labels`` is empty."""
    return f"sum by ({', '.join(labels)}) ({expr})" if labels else f"sum({expr})"


def quantile(
    q: float, spec: MetricSpec, matchers: Sequence[str], by: Sequence[str], window: str
) -> str:
    """The ``q`` quantile of histogram ``spec``, aggregated by ``by``."""
    buckets = rate(bucket(spec, *matchers), window)
    return f"histogram_quantile({q:g}, {sum_by([*by, 'le'], buckets)})"


def eq(label: str, value: str) -> str:
    """An equality matcher."""
    return f'{label}="{value}"'


def regex(label: str, value: str) -> str:
    """A regex matcher."""
    return f'{label}=~"{value}"'
