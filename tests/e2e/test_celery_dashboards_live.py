"""Issue 12: the dashboards and alerts, unchanged in shape, working for Celery tasks: live.

The Celery part of ``make stack`` (deploy/local/stack.py): Debian's ``redis-server`` on a free
loopback port, a real prefork worker (``celery -A tasklens.demo_celery worker``, 2 processes,
metrics summed through its own ``PROMETHEUS_MULTIPROC_DIR``) and the Celery demo's web app
under uvicorn, with every card declined (``--fail-ratio 1``), no self-traffic; Debian's
Prometheus scraping the web app and the worker as two instances of job ``tasklens`` (1s
scrape and evaluation), rules from ``write_rules`` with only BgTaskFailureRatioHigh's ``for``
shortened, Alertmanager delivering to a webhook.

One order (warm-up), then ``N`` orders: each sends ``charge_card`` (always fails on the worker)
and ``send_receipt`` to the broker and runs ``audit`` in the web process. Then:

1. BgTaskFailureRatioHigh fires for ``task=tasklens.demo_celery.charge_card,
   executor=celery`` at 100% (the N successful sends beside the N failing runs do not make it
   50%), reaches Alertmanager and the webhook; nothing alerts for the sends (broker).
2. The dashboards' own queries, run as Grafana runs them for one instance, over a window from
   the last scrape before the burst to a scrape after it (the window's edges on the instance's
   own samples: Prometheus extrapolates nothing, so rate x window is the exact count), give
   exact numbers: N failing ``celery`` runs, N successful ``broker`` sends, failure ratio 1 for
   the runs and 0 for the sends, N ``CardDeclinedError``, each process balanced.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from dashboards import config
from dashboards.config import Params
from dashboards.rules import write_rules
from deploy.local import stack
from tests.dashboards import queries
from tests.dashboards.tools import require_tool
from tests.e2e.test_dashboards_live import AlertWatcher, Budget, api, epoch, eventually, get_json

MODULE_BUDGET = 150.0
pytestmark = pytest.mark.timeout(200)

JOB = "tasklens"
#: Orders of the burst (each: one failing Celery run, one successful one, one in-process task).
N = 30
MODULE = "tasklens.demo_celery"
FAILING = f"{MODULE}.charge_card"
RECEIPT = f"{MODULE}.send_receipt"
AUDIT = f"{MODULE}.audit"
EXCEPTION = f"{MODULE}.CardDeclinedError"
ALERT = "BgTaskFailureRatioHigh"
TEST_PARAMS = Params(failure_for="10s")
FOR_SECONDS = 10.0


@dataclass
class Window:
    """One instance's samples bracketing the burst: ``start`` is its last scrape before the
    burst, ``end`` a scrape after everything finished (epoch seconds, millisecond precision)."""

    instance: str
    start: float
    end: float

    @property
    def duration(self) -> str:
        return f"{round((self.end - self.start) * 1000)}ms"

    @property
    def seconds(self) -> float:
        return round((self.end - self.start) * 1000) / 1000


@dataclass
class Live:
    stack: stack.Stack
    webhook: stack.WebhookReceiver
    watcher: AlertWatcher
    budget: Budget
    burst_started: float = 0.0
    windows: dict[str, Window] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def prometheus(self) -> str:
        return self.stack.prometheus_url

    @property
    def worker(self) -> str:
        assert self.stack.celery is not None
        return self.stack.celery.worker_target

    @property
    def web(self) -> str:
        assert self.stack.celery is not None and self.stack.celery.web_target
        return self.stack.celery.web_target


def instant(live: Live, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    return api(live.prometheus, "/api/v1/query", **params)["result"]


def total(live: Live, instance: str, task: str, executor: str, outcome: str) -> float:
    selector = (
        f'bgtask_finished_total{{job="{JOB}", instance="{instance}", task="{task}", '
        f'executor="{executor}", outcome="{outcome}"}}'
    )
    result = instant(live, selector)
    return float(result[0]["value"][1]) if result else -1.0


#: (instance attribute, task, executor, outcome) -> count per order, the settled state.
PER_ORDER = (
    ("worker", FAILING, "celery", "failure"),
    ("worker", RECEIPT, "celery", "success"),
    ("web", FAILING, "broker", "success"),
    ("web", RECEIPT, "broker", "success"),
    ("web", AUDIT, "thread_pool", "success"),
)


def settled(live: Live, orders: int) -> bool:
    """Prometheus has scraped every task of ``orders`` orders as finished."""
    return all(
        total(live, getattr(live, side), task, executor, outcome) == orders
        for side, task, executor, outcome in PER_ORDER
    )


def per_order_selectors(live: Live, instance: str) -> list[str]:
    """The instance's series that each order moves by one: its PER_ORDER finished series
    and the enqueued series of the same tasks."""
    side = "worker" if instance == live.worker else "web"
    base = f'job="{JOB}", instance="{instance}"'
    rows = [(task, executor, outcome) for s, task, executor, outcome in PER_ORDER if s == side]
    finished = [
        f'bgtask_finished_total{{{base}, task="{t}", executor="{e}", outcome="{o}"}}'
        for t, e, o in rows
    ]
    return finished + [f'bgtask_enqueued_total{{{base}, task="{task}"}}' for task, _, _ in rows]


def last_sample_at(live: Live, instance: str, value: float) -> float:
    """Timestamp of the instance's last scrape at which EVERY per-order series equalled
    ``value`` (a scrape's samples share its timestamp). Not one series alone: the worker's
    pool processes run an order's two tasks apart, so a scrape with charge_card at ``value``
    can have send_receipt already past it, inside the next order."""
    selectors = per_order_selectors(live, instance)
    at: dict[float, list[float]] = {}
    for selector in selectors:
        (series,) = instant(live, f"{selector}[2m]")
        for t, v in series["values"]:
            at.setdefault(float(t), []).append(float(v))
    stamps = [t for t, vs in at.items() if len(vs) == len(selectors) and set(vs) == {value}]
    assert stamps, (instance, value, sorted(at.items()))
    return max(stamps)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    require_tool("prometheus", "prometheus")
    require_tool("prometheus-alertmanager", "prometheus-alertmanager")
    require_tool("redis-server", "redis-server")
    budget = Budget(MODULE_BUDGET)
    state = tmp_path_factory.mktemp("celery-live")
    rules = write_rules(state / "rules" / "tasklens-alerts.yml", TEST_PARAMS)
    quiet = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
             "OTEL_LOGS_EXPORTER": "none", "TASKLENS_DEMO_DIR": str(state / "outbox")}  # fmt: skip
    celery = stack.CeleryOptions(
        module=MODULE,
        web_command=[
            sys.executable,
            "-m",
            MODULE,
            "--host",
            "{host}",
            "--port",
            "{port}",
            "--fail-ratio",
            "1",
        ],
        env=quiet,
    )
    with contextlib.ExitStack() as cleanup:
        webhook = cleanup.enter_context(stack.WebhookReceiver())
        started = cleanup.enter_context(
            stack.start_stack(
                stack.StackOptions(
                    state_dir=state / "stack",
                    app_command=None,
                    celery=celery,
                    rules=[rules],
                    webhook_url=webhook.url,
                    job=JOB,
                    scrape_interval="1s",
                    evaluation_interval="1s",
                    group_wait="1s",
                    ready_timeout=budget.left(40),
                )
            )
        )
        watcher = cleanup.enter_context(AlertWatcher(started.prometheus_url))
        live = Live(started, webhook, watcher, budget)
        eventually(
            lambda: len(instant(live, f'up{{job="{JOB}"}} == 1')) == 2,
            budget, 30, "Prometheus scrapes the web app and the worker",
        )  # fmt: skip
        live.report["stack ready after s"] = round(budget.elapsed(), 1)
        with httpx.Client(base_url=f"http://{live.web}", timeout=10) as client:
            assert client.post("/orders/0").status_code == 200  # warm-up: every series exists
            eventually(lambda: settled(live, 1), budget, 30, "the warm-up order is scraped")
            time.sleep(2.5)  # scrapes at the warm-up level on both instances
            live.burst_started = time.time()
            for order in range(1, N + 1):
                assert client.post(f"/orders/{order}").status_code == 200
        eventually(lambda: settled(live, N + 1), budget, 60, f"the {N} orders are scraped")
        time.sleep(2.5)  # a scrape or two after everything settled
        for instance in (live.worker, live.web):
            live.windows[instance] = Window(
                instance, last_sample_at(live, instance, 1), last_sample_at(live, instance, N + 1)
            )
        live.report["orders"] = {"warm-up": 1, "burst": N}
        yield live
        live.report["module s"] = round(budget.elapsed(), 1)
        print("\ncelery live-stack report:", json.dumps(live.report, indent=2))
        (state / "report.json").write_text(json.dumps(live.report, indent=2))
        dead = [p for p in started.processes if not p.alive()]
        if dead:
            logs = "\n".join(f"--- {p.name} ({p.log_path})\n{p.log_tail()}" for p in dead)
            pytest.fail(f"processes died during the run:\n{logs}")


# --------------------------------------------------------------------------- 1. the alert


def test_failure_alert_fires_for_the_celery_runs_at_100_percent(live: Live) -> None:
    def both_states() -> dict[str, float]:
        seen = live.watcher.states(ALERT, FAILING)
        return seen if {"pending", "firing"} <= set(seen) else {}

    seen = eventually(both_states, live.budget, 60, f"{ALERT} for {FAILING} pending, then firing")
    assert seen["pending"] < seen["firing"], seen
    active_at = epoch(live.watcher.active_at[(ALERT, FAILING)])
    assert seen["firing"] >= active_at + FOR_SECONDS - 0.5, (seen, active_at)

    alerts = api(live.prometheus, "/api/v1/alerts")["alerts"]
    failure = [a for a in alerts if a["labels"]["alertname"] == ALERT]
    # Only the runs alert: the sends of the same task succeeded, and no other task fails.
    assert [(a["labels"]["task"], a["labels"]["executor"]) for a in failure] == [
        (FAILING, "celery")
    ], failure
    (alert,) = failure
    assert float(alert["value"]) == 1.0  # 100%: N+1 failed runs of N+1, sends not mixed in
    assert alert["state"] == "firing"

    def in_alertmanager() -> list[dict[str, Any]]:
        return [
            a
            for a in get_json(f"{live.stack.alertmanager_url}/api/v2/alerts")
            if a["labels"].get("alertname") == ALERT and a["status"]["state"] == "active"
        ]

    (am_alert,) = eventually(in_alertmanager, live.budget, 30, f"{ALERT} in Alertmanager")
    assert (am_alert["labels"]["task"], am_alert["labels"]["executor"]) == (FAILING, "celery")

    delivered = live.webhook.wait_for(
        lambda a: a["labels"].get("alertname") == ALERT, timeout=live.budget.left(30)
    )
    delivered_at = time.time()
    assert delivered["status"] == "firing"
    labels = delivered["labels"]
    assert (labels["job"], labels["task"], labels["executor"], labels["severity"]) == (
        JOB, FAILING, "celery", "critical",
    )  # fmt: skip
    notes = delivered["annotations"]
    assert notes["description"] == (
        f"100% of the runs of {FAILING} (executor celery) in job {JOB} failed over the last "
        "5m (threshold 5%, while more than 0.02 tasks/s finish)."
    )
    assert notes["dashboard_url"] == f"/d/tasklens-task?var-job={JOB}&var-task={FAILING}"
    assert (config.REPO_ROOT / notes["runbook_url"]).is_file()
    live.report["alert"] = {
        "labels": {k: labels[k] for k in ("alertname", "task", "executor", "severity")},
        "value": float(alert["value"]),
        "pending after burst start s": round(seen["pending"] - live.burst_started, 1),
        "firing after burst start s": round(seen["firing"] - live.burst_started, 1),
        "webhook after burst start s": round(delivered_at - live.burst_started, 1),
        "for s": FOR_SECONDS,
    }


# --------------------------------------------------------------------------- 2. dashboards


def panel_query(relative: str, title: str, index: int = 0) -> str:
    found = [expr for t, expr in queries.panel_queries(queries.load(relative)) if t == title]
    assert len(found) > index, f"{relative} has no panel {title!r} (target {index})"
    return found[index]


def run_panel(live: Live, relative: str, title: str, instance: str, task: queries.Value,
              index: int = 0) -> dict[tuple[tuple[str, str], ...], float]:  # fmt: skip
    """The panel's query for one instance (as Grafana fills the variables), instant at the
    end of that instance's window, with the window as ``$__rate_interval`` and ``$__range``:
    series labels -> value."""
    window = live.windows[instance]
    values = {"job": [JOB], "instance": [instance], "task": task,
              "__rate_interval": window.duration, "__range": window.duration}  # fmt: skip
    expr = queries.substitute_variables(panel_query(relative, title, index), values)
    return {
        tuple(sorted(series["metric"].items())): float(series["value"][1])
        for series in instant(live, expr, window.end)
    }


def key(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def counts(live: Live, instance: str, rates: dict[Any, float]) -> dict[Any, float]:
    """Per-second rates over the window back to counts (exact: no extrapolation)."""
    seconds = live.windows[instance].seconds
    return {labels: round(value * seconds, 6) for labels, value in rates.items()}


OVERVIEW, TASK = config.OVERVIEW_JSON, config.TASK_JSON


def test_windows_bracket_the_burst(live: Live) -> None:
    for window in live.windows.values():
        assert window.start < live.burst_started < window.end, (window, live.burst_started)
    live.report["windows s"] = {w.instance: w.seconds for w in live.windows.values()}


def test_overview_counts_runs_and_sends_apart(live: Live) -> None:
    worker, web = live.worker, live.web
    all_tasks = queries.ALL
    finished = counts(
        live, worker, run_panel(live, OVERVIEW, "Tasks finished / s", worker, all_tasks)
    )
    assert finished == {key(executor="celery"): 2 * N}
    finished_web = counts(
        live, web, run_panel(live, OVERVIEW, "Tasks finished / s", web, all_tasks)
    )
    assert finished_web == {key(executor="broker"): 2 * N, key(executor="thread_pool"): N}

    ratio = run_panel(live, OVERVIEW, "Failure ratio", worker, all_tasks)
    assert ratio == {key(executor="celery"): 0.5}  # N failing charge_card of 2N runs
    assert run_panel(live, OVERVIEW, "Failure ratio", web, all_tasks) == {
        key(executor="broker"): 0.0, key(executor="thread_pool"): 0.0,
    }  # fmt: skip

    by_task = run_panel(live, OVERVIEW, "Failure ratio by task", worker, all_tasks)
    assert by_task == {
        key(task=FAILING, executor="celery"): 1.0,  # every run failed: 100%, not 50%
        key(task=RECEIPT, executor="celery"): 0.0,
    }
    assert run_panel(live, OVERVIEW, "Failure ratio by task", web, all_tasks) == {
        key(task=FAILING, executor="broker"): 0.0,
        key(task=RECEIPT, executor="broker"): 0.0,
        key(task=AUDIT, executor="thread_pool"): 0.0,
    }

    throughput = counts(
        live, worker, run_panel(live, OVERVIEW, "Throughput by task and outcome", worker, all_tasks)
    )
    nonzero = {labels: value for labels, value in throughput.items() if value}
    assert nonzero == {
        key(task=FAILING, executor="celery", outcome="failure"): N,
        key(task=RECEIPT, executor="celery", outcome="success"): N,
    }

    table = run_panel(live, OVERVIEW, "Top failing tasks and exception types", worker, all_tasks)
    assert {k: round(v, 6) for k, v in table.items()} == {key(task=FAILING, exception=EXCEPTION): N}
    assert run_panel(live, OVERVIEW, "Top failing tasks and exception types", web, all_tasks) == {}

    # Each process balances itself: the web process's sends and in-process task, the worker's runs.
    for instance, per_order in ((worker, 2), (web, 3)):
        enqueued = counts(
            live,
            instance,
            run_panel(live, OVERVIEW, "Enqueued vs finished", instance, all_tasks, 0),
        )
        done = counts(
            live,
            instance,
            run_panel(live, OVERVIEW, "Enqueued vs finished", instance, all_tasks, 1),
        )
        assert enqueued == done == {key(instance=instance): per_order * N}

    # Runs only: the worker's are all celery; the web process's runs are its in-process task.
    share = "Event loop vs thread pool share"
    assert run_panel(live, OVERVIEW, share, worker, all_tasks) == {key(executor="celery"): 1.0}
    assert run_panel(live, OVERVIEW, share, web, all_tasks) == {key(executor="thread_pool"): 1.0}
    live.report["overview (worker, burst window)"] = {
        "Tasks finished / s x window": {"celery": 2 * N},
        "Failure ratio by task": {f"{FAILING} celery": 1.0, f"{RECEIPT} celery": 0.0},
        "Top failing tasks": {f"{FAILING} {EXCEPTION}": N},
    }
    live.report["overview (web, burst window)"] = {
        "Tasks finished / s x window": {"broker": 2 * N, "thread_pool": N},
        "Failure ratio by task": {f"{FAILING} broker": 0.0},
    }


def test_task_dashboard_for_the_celery_task(live: Live) -> None:
    worker, web = live.worker, live.web
    runs = counts(live, worker, run_panel(live, TASK, "Runs finished / s", worker, FAILING))
    sends = counts(live, web, run_panel(live, TASK, "Runs finished / s", web, FAILING))
    assert runs == {key(executor="celery"): N}
    assert sends == {key(executor="broker"): N}
    assert run_panel(live, TASK, "Failure ratio over time", worker, FAILING) == {
        key(executor="celery"): 1.0
    }
    assert run_panel(live, TASK, "Failure ratio over time", web, FAILING) == {
        key(executor="broker"): 0.0
    }
    exceptions = counts(
        live, worker, run_panel(live, TASK, "Failures by exception", worker, FAILING)
    )
    assert exceptions == {key(exception=EXCEPTION): N}
    for instance in (worker, web):
        enqueued = counts(live, instance, run_panel(live, TASK, "Enqueued / s", instance, FAILING))
        assert enqueued == {key(instance=instance): N}
    live.report["task dashboard (charge_card, burst window)"] = {
        "Runs finished / s x window": {"celery (worker)": N, "broker (web)": N},
        "Failure ratio over time": {"celery": 1.0, "broker": 0.0},
        "Failures by exception": {EXCEPTION: N},
        "Enqueued / s x window": {"worker": N, "web": N},
    }


def test_worker_counts_and_queue_time_on_its_own_metrics(live: Live) -> None:
    """The raw totals behind the panels, and the worker's queue time for every run."""
    worker = live.worker
    assert total(live, worker, FAILING, "celery", "failure") == N + 1
    assert total(live, worker, FAILING, "celery", "success") == 0
    assert total(live, live.web, FAILING, "broker", "success") == N + 1
    assert total(live, live.web, FAILING, "broker", "failure") == 0
    (queued,) = instant(
        live,
        f'bgtask_queue_seconds_count{{job="{JOB}", instance="{worker}", task="{FAILING}", '
        'executor="celery"}',
    )
    assert float(queued["value"][1]) == N + 1
    (lost,) = instant(live, f'job_instance:bgtask_lost:sum{{instance="{worker}"}}')
    assert float(lost["value"][1]) == 0
    live.report["raw totals"] = {
        f"{FAILING} celery failure (worker)": N + 1,
        f"{FAILING} broker success (web)": N + 1,
        "worker queue-time observations": N + 1,
    }
