"""``python -m bench [--smoke]``: run every case side by side and write the results.

Every variant runs in a subprocess of its own (global tracer providers can be set once per
process). Task-cost cases are repeated in rounds that alternate the variants, so a burst
of background load on the machine hits them all alike, and the best round is kept;
end-to-end cases keep the median round.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import (
    CASES,
    E2E_VARIANTS,
    MEMORY_VARIANTS,
    RETAINED_SCENARIOS,
    SUSTAINED_VARIANTS,
    TASK_VARIANTS,
    case_sustained,
    machine,
    subproc,
)
from bench import report as report_mod

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Config:
    rounds: int
    requests: int  # async case: requests per repetition
    sync_requests: int  # sync case: requests per repetition
    tasks: int  # tasks per request
    reps: int  # timed repetitions per process
    e2e_rounds: int
    e2e_warmup: float
    e2e_duration: float
    e2e_connections: int
    pending_tasks: int
    retained_tasks: int
    sustained_seconds: int = 30
    sustained_connections: int = 16


FULL = Config(
    rounds=3,
    requests=200,
    sync_requests=50,
    tasks=100,
    reps=5,
    e2e_rounds=3,
    e2e_warmup=1.0,
    e2e_duration=5.0,
    e2e_connections=16,
    pending_tasks=100_000,
    retained_tasks=2_000,
)
SMOKE = Config(
    rounds=1,
    requests=10,
    sync_requests=5,
    tasks=50,
    reps=1,
    e2e_rounds=1,
    e2e_warmup=0.3,
    e2e_duration=1.0,
    e2e_connections=8,
    pending_tasks=2_000,
    retained_tasks=200,
)


_env = subproc.env
_pin = subproc.pin


def _run_json(args: list[str], timeout: float, cpu: int | None = None) -> dict[str, Any]:
    """Run ``python -m <args>`` and return the JSON object of its last stdout line."""
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_pin(cpu),
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1])


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- task-cost cases --------------------------------------------------------------------------
def run_task_cases(cfg: Config) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{kind: {variant: [result of each round]}}"""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {"async": {}, "sync": {}}
    for round_ in range(cfg.rounds):
        for variant in TASK_VARIANTS:
            for kind, requests in (("async", cfg.requests), ("sync", cfg.sync_requests)):
                _log(f"[bench] round {round_ + 1}/{cfg.rounds}: {kind}.{variant}")
                out = _run_json(
                    [
                        "bench.case_tasks",
                        variant,
                        "--kinds",
                        kind,
                        "--requests",
                        str(requests),
                        "--tasks",
                        str(cfg.tasks),
                        "--reps",
                        str(cfg.reps),
                    ],
                    timeout=600,
                )
                results[kind].setdefault(variant, []).append(out["results"][kind])
    return results


# --- end to end -------------------------------------------------------------------------------
def _e2e_once(variant: str, cfg: Config, cpus: list[int]) -> dict[str, Any]:
    server_cpu, client_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.server", variant],
        cwd=ROOT,
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_pin(server_cpu),
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            if line.startswith("PORT "):
                port = int(line.split()[1])
        if port is None:
            raise RuntimeError(f"server {variant} did not start: {server.stderr.read()[-3000:]}")
        load = _run_json(
            [
                "bench.loadgen",
                str(port),
                "--connections",
                str(cfg.e2e_connections),
                "--warmup",
                str(cfg.e2e_warmup),
                "--duration",
                str(cfg.e2e_duration),
            ],
            timeout=cfg.e2e_warmup + cfg.e2e_duration + 60,
            cpu=client_cpu,
        )
        # communicate() closes the server's stdin: it shuts down (lifespan too) and reports.
        out, err = server.communicate(timeout=90)
    except BaseException:
        server.kill()
        server.wait()
        raise
    if server.returncode != 0:
        raise RuntimeError(f"server {variant} exited {server.returncode}: {err[-3000:]}")
    ran = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    return {**load, **ran}


def run_e2e(cfg: Config) -> dict[str, list[dict[str, Any]]]:
    cpus = machine.usable_cpus()
    results: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(cfg.e2e_rounds):
        for variant in E2E_VARIANTS:
            _log(f"[bench] round {round_ + 1}/{cfg.e2e_rounds}: e2e.{variant}")
            results.setdefault(variant, []).append(_e2e_once(variant, cfg, cpus))
    return results


# --- memory -----------------------------------------------------------------------------------
def run_memory(cfg: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    pending, retained = {}, {}
    for variant in MEMORY_VARIANTS:
        _log(f"[bench] memory.{variant}")
        pending[variant] = _run_json(
            ["bench.case_memory", "pending", variant, "--tasks", str(cfg.pending_tasks)],
            timeout=900,
        )
    for scenario in RETAINED_SCENARIOS:
        _log(f"[bench] retained.{scenario}")
        retained[scenario] = _run_json(
            ["bench.case_memory", "retained", scenario, "--tasks", str(cfg.retained_tasks)],
            timeout=900,
        )
    return pending, retained


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks, not numbers")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results path without suffix (default bench/results/latest, or smoke with --smoke)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="override the rounds")
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated subset of {','.join(CASES)} (default: all)",
    )
    args = parser.parse_args(argv)
    cases = tuple(args.cases.split(","))
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"--cases: unknown {', '.join(unknown)} (choose from {', '.join(CASES)})")
    cfg = SMOKE if args.smoke else FULL
    try:
        seconds = case_sustained.duration(args.smoke)
    except ValueError as exc:
        parser.error(str(exc))
    cfg = Config(**{**cfg.__dict__, "sustained_seconds": seconds})
    if args.rounds is not None:
        cfg = Config(**{**cfg.__dict__, "rounds": args.rounds, "e2e_rounds": args.rounds})
    out = args.out or RESULTS / ("smoke" if args.smoke else "latest")

    started = time.time()
    info = machine.info()
    tasks = run_task_cases(cfg) if "tasks" in cases else None
    e2e = run_e2e(cfg) if "e2e" in cases else None
    pending, retained = run_memory(cfg) if "memory" in cases else (None, None)
    sustained = None
    if "sustained" in cases:
        sustained = case_sustained.run(
            SUSTAINED_VARIANTS, cfg.sustained_seconds, cfg.sustained_connections, _log
        )
    info["load_average_end"] = machine.load_average()
    info["seconds"] = round(time.time() - started, 1)

    result = report_mod.build(
        mode="smoke" if args.smoke else "full",
        config=cfg.__dict__,
        machine=info,
        tasks=tasks,
        e2e=e2e,
        pending=pending,
        retained=retained,
        sustained=sustained,
    )
    markdown = report_mod.markdown(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
    _log(f"[bench] wrote {out.with_suffix('.md')} and .json in {info['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
