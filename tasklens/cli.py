"""The ``tasklens`` command: ``tasklens export`` writes the shipped dashboards, rules and
gunicorn config; ``tasklens demo`` runs the demo service (extra ``tasklens[demo]``)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

DEMO_NEEDS = ("fastapi", "uvicorn", "httpx")


def _demo(args: argparse.Namespace) -> int:
    missing = [name for name in DEMO_NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"tasklens demo needs {', '.join(missing)}: pip install 'tasklens[demo]'",
            file=sys.stderr,
        )
        return 2
    import uvicorn

    os.environ["TASKLENS_DEMO_HOST"] = args.host
    os.environ["TASKLENS_DEMO_PORT"] = str(args.port)
    os.environ["TASKLENS_DEMO_MODE"] = args.mode
    os.environ["TASKLENS_DEMO_RATE"] = str(args.rate)
    os.environ["TASKLENS_DEMO_FAIL_RATIO"] = str(args.fail_ratio)
    os.environ["TASKLENS_DEMO_TRAFFIC_SECONDS"] = str(args.traffic_seconds)
    os.environ["TASKLENS_DEMO_UI_PATH"] = "" if args.no_ui else args.ui_path
    if args.trace_url:
        os.environ["TASKLENS_DEMO_TRACE_URL"] = args.trace_url
    if args.self_traffic:
        os.environ["TASKLENS_DEMO_SELF_TRAFFIC"] = "1"
    if args.span_logs:
        os.environ["TASKLENS_DEMO_SPAN_LOGS"] = "1"
    if args.workers > 1:  # each worker would print its own; print once, here
        from tasklens.demo import urls_banner

        os.environ["TASKLENS_DEMO_BANNER"] = "0"
        ui_path = None if args.no_ui else args.ui_path
        print(urls_banner(ui_path, args.self_traffic, args.span_logs), file=sys.stderr)
        if ui_path:
            print("  (several workers: each page shows the worker that answers)\n", file=sys.stderr)
    uvicorn.run(
        "tasklens.demo:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from tasklens.artefacts import export

    for path in export(args.out):
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tasklens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser(
        "export",
        help="write the Grafana dashboards, Prometheus rules (file and PrometheusRule) and "
        "gunicorn config",
        description="Write the shipped artefacts under --out: dashboards/*.json, "
        "prometheus/tasklens-alerts.yml, k8s/prometheusrule.yaml, gunicorn.conf.py. They are "
        "generated with the defaults (SLO 0.99, scrape job 'tasklens'); for other values "
        "regenerate from a clone of the repository: python -m dashboards --help.",
    )
    export.add_argument("--out", type=Path, required=True, help="directory to write into")
    demo = sub.add_parser("demo", help="run the demo service (needs tasklens[demo])")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--self-traffic", action="store_true", help="send requests to itself")
    demo.add_argument("--rate", type=float, default=20.0, help="self-traffic requests/s")
    demo.add_argument("--traffic-seconds", type=float, default=3600.0, help="self-traffic bound")
    demo.add_argument("--fail-ratio", type=float, default=0.2, help="share of failing payments")
    demo.add_argument("--mode", choices=["inline", "detached"], default="inline")
    demo.add_argument("--workers", type=int, default=1)
    demo.add_argument("--ui-path", default="/tasks", help="path of the live page")
    demo.add_argument("--no-ui", action="store_true", help="no live page")
    demo.add_argument(
        "--trace-url", default=None, help="link from the page to a trace: a URL with {trace_id}"
    )
    demo.add_argument(
        "--span-logs",
        action="store_true",
        help="print spans as log lines and every log line (default: warnings only)",
    )
    args = parser.parse_args(argv)
    if args.command == "export":
        return _export(args)
    return _demo(args)


if __name__ == "__main__":
    sys.exit(main())
