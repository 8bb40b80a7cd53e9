"""Run the demo app, Prometheus and Alertmanager on loopback, with the repository's rules;
and, for Celery, Redis, a Celery worker and the Celery demo's web app (tasklens.demo_celery).

    python -m deploy.local.stack            # from the repository root; Ctrl-C stops everything
    python -m deploy.local.stack --without-celery
    python deploy/local/stack.py --help

Configurations are rendered from the ``*.tmpl`` files beside this module into the state
directory (``.stack/`` by default), together with each process's log and data. The functions
below are reused by the end-to-end tests.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``deploy`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deploy.local.configs import (
    DEFAULT_RULES,
    REPO_ROOT,
    render_alertmanager_config,
    render_prometheus_config,
)
from deploy.local.processes import (
    LOOPBACK,
    Process,
    alertmanager_argv,
    celery_worker_argv,
    find_binary,
    free_port,
    prometheus_argv,
    redis_argv,
    start_process,
    stop_all,
    wait_until_ready,
    wait_until_redis,
)
from deploy.local.webhook import WebhookReceiver

__all__ = [
    "DEFAULT_APP_COMMAND",
    "CeleryOptions",
    "CeleryStack",
    "Process",
    "Stack",
    "StackOptions",
    "WebhookReceiver",
    "find_binary",
    "free_port",
    "render_alertmanager_config",
    "render_prometheus_config",
    "start_alertmanager",
    "start_app",
    "start_celery",
    "start_prometheus",
    "start_stack",
    "stop_all",
    "wait_until_ready",
]

DEFAULT_STATE_DIR = REPO_ROOT / ".stack"
#: ``{host}`` and ``{port}`` are filled in; any command serving ``/metrics`` will do.
DEFAULT_APP_COMMAND = (
    sys.executable,
    "-m",
    "tasklens",
    "demo",
    "--host",
    "{host}",
    "--port",
    "{port}",
    "--self-traffic",
)
PROMETHEUS_BINARIES = ("prometheus",)
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")
REDIS_BINARIES = ("redis-server",)
#: The Celery demo: its Celery app (what the worker loads) and its web app.
DEFAULT_CELERY_MODULE = "tasklens.demo_celery"
DEFAULT_CELERY_WEB_COMMAND = (
    sys.executable,
    "-m",
    "tasklens.demo_celery",
    "--host",
    "{host}",
    "--port",
    "{port}",
    "--self-traffic",
)


def start_app(
    command: Sequence[str],
    *,
    port: int,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    ready_path: str = "/metrics",
    timeout: float = 60.0,
) -> Process:
    """Start the application (``{host}``/``{port}`` filled in) and wait for ``ready_path``."""
    argv = [part.format(host=LOOPBACK, port=port) for part in command]
    url = f"http://{LOOPBACK}:{port}"
    process = start_process("app", argv, log_path=log_path, url=url, env=env, cwd=REPO_ROOT)
    wait_until_ready(url + ready_path, timeout=timeout, process=process)
    return process


def start_prometheus(
    config: Path,
    *,
    port: int,
    data_dir: Path,
    log_path: Path,
    binary: str | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 60.0,
) -> Process:
    """Start Prometheus on loopback and wait for ``/-/ready``."""
    argv = prometheus_argv(
        binary or find_binary(*PROMETHEUS_BINARIES),
        config,
        port=port,
        data_dir=data_dir,
        extra=extra_args,
    )
    url = f"http://{LOOPBACK}:{port}"
    process = start_process("prometheus", argv, log_path=log_path, url=url)
    wait_until_ready(url + "/-/ready", timeout=timeout, process=process)
    return process


def start_alertmanager(
    config: Path,
    *,
    port: int,
    data_dir: Path,
    log_path: Path,
    binary: str | None = None,
    timeout: float = 60.0,
) -> Process:
    """Start Alertmanager on loopback (no clustering) and wait for ``/-/ready``."""
    argv = alertmanager_argv(
        binary or find_binary(*ALERTMANAGER_BINARIES), config, port=port, data_dir=data_dir
    )
    url = f"http://{LOOPBACK}:{port}"
    process = start_process("alertmanager", argv, log_path=log_path, url=url)
    wait_until_ready(url + "/-/ready", timeout=timeout, process=process)
    return process


@dataclass
class CeleryOptions:
    """Redis, a worker (``celery -A module worker``) and a web app sending to it.

    The broker URL and the worker's metrics port reach the module through the environment
    variables named here (those of :mod:`tasklens.demo_celery` by default); ``env`` is added
    to both processes' environment, ``web_command=None`` starts no web app."""

    module: str = DEFAULT_CELERY_MODULE
    web_command: Sequence[str] | None = DEFAULT_CELERY_WEB_COMMAND
    env: Mapping[str, str] = field(default_factory=dict)
    pool: str = "prefork"
    concurrency: int = 2
    broker_url_env: str = "TASKLENS_DEMO_BROKER_URL"
    metrics_port_env: str = "TASKLENS_DEMO_WORKER_METRICS_PORT"
    web_ready_path: str = "/metrics"


@dataclass
class CeleryStack:
    """Where the Celery part runs: broker URL, worker and web ``host:port`` targets."""

    broker_url: str
    worker_target: str
    web_target: str | None

    @property
    def targets(self) -> list[str]:
        """What Prometheus scrapes: the web app (if any), then the worker."""
        return [t for t in (self.web_target, self.worker_target) if t]


def start_celery(
    options: CeleryOptions, state: Path, timeout: float = 60.0
) -> tuple[CeleryStack, list[Process]]:
    """Start Redis, the worker (prefork's processes summed through its own
    ``PROMETHEUS_MULTIPROC_DIR``) and the web app; whatever started is stopped on failure."""
    processes: list[Process] = []
    try:
        redis_port = free_port()
        redis_dir = state / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        redis = start_process(
            "redis",
            redis_argv(find_binary(*REDIS_BINARIES), port=redis_port, data_dir=redis_dir),
            log_path=state / "redis.log",
            url=f"redis://{LOOPBACK}:{redis_port}/0",
        )
        processes.append(redis)
        wait_until_redis(redis_port, timeout=timeout, process=redis)

        multiproc = state / "worker-metrics"
        shutil.rmtree(multiproc, ignore_errors=True)
        multiproc.mkdir(parents=True)
        worker_port = free_port()
        env = {**options.env, options.broker_url_env: redis.url}
        worker_env = {
            **env,
            options.metrics_port_env: str(worker_port),
            "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        }
        argv = celery_worker_argv(
            sys.executable,
            options.module,
            pool=options.pool,
            concurrency=options.concurrency,
            hostname=f"tasklens-stack-{worker_port}@%h",
        )
        worker_url = f"http://{LOOPBACK}:{worker_port}"
        worker = start_process(
            "celery-worker",
            argv,
            log_path=state / "worker.log",
            url=worker_url,
            env=worker_env,
            cwd=REPO_ROOT,
        )
        processes.append(worker)
        wait_until_ready(worker_url + "/metrics", timeout=timeout, process=worker)

        web_target = None
        if options.web_command is not None:
            web_port = free_port()
            web = start_app(
                options.web_command,
                port=web_port,
                log_path=state / "celery-web.log",
                env=env,
                ready_path=options.web_ready_path,
                timeout=timeout,
            )
            web.name = "celery-web"
            processes.append(web)
            web_target = f"{LOOPBACK}:{web_port}"
    except BaseException:
        stop_all(processes)
        raise
    return CeleryStack(redis.url, f"{LOOPBACK}:{worker_port}", web_target), processes


@dataclass
class StackOptions:
    """What to run. ``app_command=None`` starts no app and scrapes ``app_target`` instead (or
    only the Celery part, when ``celery`` is given)."""

    state_dir: Path = DEFAULT_STATE_DIR
    app_command: Sequence[str] | None = DEFAULT_APP_COMMAND
    app_target: str | None = None
    app_env: Mapping[str, str] = field(default_factory=dict)
    app_ready_path: str = "/metrics"
    rules: Sequence[Path] = DEFAULT_RULES
    webhook_url: str = "http://127.0.0.1:9/"
    job: str = "tasklens"
    scrape_interval: str = "5s"
    evaluation_interval: str = "5s"
    group_wait: str = "1s"
    ready_timeout: float = 60.0
    celery: CeleryOptions | None = None


@dataclass
class Stack:
    """The running processes and their URLs; ``stop()`` (or leaving ``with``) ends them all."""

    state_dir: Path
    app_target: str
    prometheus_url: str
    alertmanager_url: str
    processes: list[Process]
    celery: CeleryStack | None = None

    @property
    def targets(self) -> list[str]:
        """Every ``host:port`` Prometheus scrapes as the job."""
        extra = self.celery.targets if self.celery is not None else []
        return [t for t in (self.app_target, *extra) if t]

    @property
    def app_url(self) -> str:
        """Base URL of the scraped application."""
        return f"http://{self.app_target}"

    def stop(self) -> None:
        """Stop every process this stack started."""
        stop_all(self.processes)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_stack(options: StackOptions | None = None) -> Stack:
    """Render configs into ``state_dir`` and start app (and the Celery part), Alertmanager and
    Prometheus on free ports.

    Data directories are wiped first. On any failure, whatever was started is stopped again.
    """
    options = options or StackOptions()
    state = options.state_dir.resolve()
    for sub in ("prometheus-data", "alertmanager-data"):
        shutil.rmtree(state / sub, ignore_errors=True)
    state.mkdir(parents=True, exist_ok=True)
    processes: list[Process] = []
    celery: CeleryStack | None = None
    try:
        if options.celery is not None:
            celery, started = start_celery(options.celery, state, options.ready_timeout)
            processes += started
        app_target = ""
        if options.app_command is not None:
            app_port = free_port()
            processes.append(
                start_app(
                    options.app_command,
                    port=app_port,
                    log_path=state / "app.log",
                    env=options.app_env,
                    ready_path=options.app_ready_path,
                    timeout=options.ready_timeout,
                )
            )
            app_target = f"{LOOPBACK}:{app_port}"
        elif options.app_target:
            app_target = options.app_target
        elif celery is None:
            raise ValueError("give app_command, app_target or celery")
        targets = [t for t in (app_target, *(celery.targets if celery else [])) if t]

        am_port = free_port()
        am_config = state / "alertmanager.yml"
        am_config.write_text(
            render_alertmanager_config(
                webhook_url=options.webhook_url, group_wait=options.group_wait
            )
        )
        processes.append(
            start_alertmanager(
                am_config,
                port=am_port,
                data_dir=state / "alertmanager-data",
                log_path=state / "alertmanager.log",
                timeout=options.ready_timeout,
            )
        )

        prom_port = free_port()
        prom_config = state / "prometheus.yml"
        prom_config.write_text(
            render_prometheus_config(
                app_target=targets[0],
                extra_targets=targets[1:],
                alertmanager=f"{LOOPBACK}:{am_port}",
                rules=[Path(rule).resolve() for rule in options.rules],
                job=options.job,
                scrape_interval=options.scrape_interval,
                evaluation_interval=options.evaluation_interval,
            )
        )
        processes.append(
            start_prometheus(
                prom_config,
                port=prom_port,
                data_dir=state / "prometheus-data",
                log_path=state / "prometheus.log",
                timeout=options.ready_timeout,
            )
        )
    except BaseException:
        stop_all(processes)
        raise
    return Stack(state, app_target, processes[-1].url, processes[-2].url, processes, celery)


def _parse(argv: Sequence[str] | None) -> StackOptions:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local.stack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument(
        "--app-command",
        default=shlex.join(DEFAULT_APP_COMMAND),
        help="command starting the app; {host} and {port} are filled in",
    )
    parser.add_argument("--app-target", help="scrape this host:port instead of starting an app")
    parser.add_argument(
        "--without-celery",
        action="store_true",
        help="no Redis, Celery worker and Celery demo (tasklens.demo_celery)",
    )
    parser.add_argument("--scrape-interval", default="5s")
    parser.add_argument("--evaluation-interval", default="5s")
    parser.add_argument(
        "--rules",
        type=Path,
        action="append",
        help="rules file (repeatable; default: the generated tasklens rules)",
    )
    args = parser.parse_args(argv)
    return StackOptions(
        state_dir=args.state_dir,
        app_command=None if args.app_target else shlex.split(args.app_command),
        app_target=args.app_target,
        rules=args.rules or DEFAULT_RULES,
        scrape_interval=args.scrape_interval,
        evaluation_interval=args.evaluation_interval,
        celery=None if args.without_celery else CeleryOptions(),
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Start everything, print the URLs, print alert notifications until Ctrl-C (or SIGTERM)."""
    options = _parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    with WebhookReceiver(echo=True) as receiver:
        options.webhook_url = receiver.url
        with start_stack(options) as stack:
            if stack.app_target:
                print(f"app:          {stack.app_url}/metrics")
            if stack.celery is not None:
                if stack.celery.web_target:
                    print(f"celery demo:  http://{stack.celery.web_target}/metrics")
                print(f"celery worker: http://{stack.celery.worker_target}/metrics")
                print(f"broker:       {stack.celery.broker_url}")
            print(f"prometheus:   {stack.prometheus_url}  (alerts: {stack.prometheus_url}/alerts)")
            print(f"alertmanager: {stack.alertmanager_url}")
            print(f"configs and logs: {stack.state_dir}   Ctrl-C stops everything.", flush=True)
            try:
                while all(process.alive() for process in stack.processes):
                    time.sleep(0.5)
                dead = [p for p in stack.processes if not p.alive()]
                for process in dead:
                    print(f"{process.name} exited:\n{process.log_tail()}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print("stopping", flush=True)
                return 0


if __name__ == "__main__":
    sys.exit(main())
