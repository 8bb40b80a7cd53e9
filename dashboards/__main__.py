"""``python -m dashboards``: regenerate dashboards, alert rules and Grafana provisioning."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dashboards.build import REPO_ROOT, render, stale, write
from dashboards.params import Params


def parse_params(argv: Sequence[str] | None = None) -> tuple[Params, Path, bool]:
    """Command-line options -> (parameters, output root, check-only)."""
    defaults = Params()
    parser = argparse.ArgumentParser(prog="python -m dashboards", description=__doc__)
    parser.add_argument(
        "--slo",
        type=float,
        default=defaults.slo,
        help="task success SLO, e.g. 0.995 (default %(default)s)",
    )
    parser.add_argument(
        "--job", default=defaults.job, help="Prometheus job label (default %(default)s)"
    )
    parser.add_argument(
        "--failure-ratio",
        type=float,
        default=defaults.failure_ratio,
        help="BgTaskFailureRatioHigh threshold (default %(default)s)",
    )
    parser.add_argument(
        "--failure-min-rate",
        type=float,
        default=defaults.failure_min_rate,
        help="tasks/s a task must finish for failure alerts to fire (default %(default)s)",
    )
    parser.add_argument(
        "--failure-window",
        default=defaults.failure_window,
        help="rate window of BgTaskFailureRatioHigh (default %(default)s)",
    )
    parser.add_argument(
        "--failure-for",
        default=defaults.failure_for,
        help="'for' of BgTaskFailureRatioHigh (default %(default)s)",
    )
    parser.add_argument(
        "--runbook-base-url",
        default=defaults.runbook_base_url,
        help="prefix of runbook_url annotations (default %(default)s)",
    )
    parser.add_argument(
        "--grafana-url",
        default=defaults.grafana_url,
        help="prefix of dashboard_url annotations (default: a Grafana path)",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT, help="root to write under (default: the repository)"
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a generated file is stale"
    )
    args = parser.parse_args(argv)
    params = Params(
        slo=args.slo,
        job=args.job,
        failure_ratio=args.failure_ratio,
        failure_min_rate=args.failure_min_rate,
        failure_window=args.failure_window,
        failure_for=args.failure_for,
        runbook_base_url=args.runbook_base_url,
        grafana_url=args.grafana_url,
    )
    return params, args.out, args.check


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    params, root, check = parse_params(argv)
    files = render(params)
    if check:
        outdated = stale(files, root)
        for relative in outdated:
            print(f"stale: {relative}", file=sys.stderr)
        return 1 if outdated else 0
    for path in write(files, root):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
