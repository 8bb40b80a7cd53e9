"""Celery end to end: the issue's example app under a real uvicorn, a real redis-server
broker, real ``celery -A ... worker`` processes (prefork with 2 processes, and solo) and the
OTLP receiver. Counts are asserted exactly."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.celery_worker import celery_worker
from tests.support.metrics import Samples, scrape, try_scrape
from tests.support.net import BlackholeServer, free_port
from tests.support.otlp_receiver import OTLPReceiver, ReceivedSpan
from tests.support.polling import wait_for
from tests.support.redis_server import RedisServer
from tests.support.server import ServerProcess, clean_env

pytestmark = pytest.mark.timeout(240)

TASKS = "tests.e2e.apps.celery_tasks"
NOTIFY = f"{TASKS}.write_notification"
PAY = f"{TASKS}.capture_payment"
REPORT = f"{TASKS}.slow_report"
AUDIT = "tests.e2e.apps.celery_web.audit"
SERVER, PRODUCER, CONSUMER = 2, 4, 5  # OTLP span kinds
STATUS_ERROR = 2


@dataclass
class Shop:
    """Redis, the web app and (started by the test) a worker, all on loopback."""

    tmp: Path
    rx: OTLPReceiver
    redis: RedisServer
    outbox: Path
    web: ServerProcess | None = None
    worker: ServerProcess | None = None
    workers: list[ServerProcess] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        base = {
            "SHOP_BROKER_URL": self.redis.url,
            "SHOP_OUTBOX": str(self.outbox),
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.rx.http_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRICS_EXPORTER": "none",
        }
        return clean_env(**{**base, **extra})

    def start_web(self) -> ServerProcess:
        port = free_port()
        self.web = ServerProcess.uvicorn(
            "tests.e2e.apps.celery_web:app", self.env(), self.tmp / "web.log", port
        ).start()
        self.web.wait_ready("/health")
        return self.web

    def start_worker(
        self, pool: str = "prefork", concurrency: int = 2, **env: str
    ) -> ServerProcess:
        """A worker on a free metrics port (prefork: a multiprocess directory of its own);
        ``env`` adds to or overrides its environment."""
        port = free_port()
        extra = {"SHOP_WORKER_METRICS_PORT": str(port)}
        if pool == "prefork":
            extra["PROMETHEUS_MULTIPROC_DIR"] = str(self.tmp / f"worker-metrics-{port}")
        extra.update(env)
        log = self.tmp / f"worker-{port}.log"
        self.worker = celery_worker(TASKS, self.env(**extra), log, port, pool, concurrency)
        self.workers.append(self.worker.start())
        self.worker.wait_ready("/metrics")
        wait_for(lambda: "ready." in self.worker_log(), 30, "the worker's ready line")
        return self.worker

    def worker_log(self) -> str:
        return self.worker.log_text() if self.worker is not None else ""

    def post(self, path: str) -> httpx.Response:
        assert self.web is not None
        return httpx.post(self.web.base_url + path, timeout=10)

    def web_metrics(self) -> Samples:
        assert self.web is not None
        with httpx.Client(base_url=self.web.base_url, timeout=5) as client:
            return scrape(client)

    def worker_metrics(self) -> Samples:
        assert self.worker is not None
        with httpx.Client(base_url=self.worker.base_url, timeout=5) as client:
            return try_scrape(client)

    def wait_metric(
        self, process: str, expected: float, timeout: float, what: str, name: str, **labels: str
    ) -> Samples:
        """The ``process`` ("web" or "worker") /metrics once sample ``name`` with ``labels``
        reads ``expected``."""
        scrape_of = self.web_metrics if process == "web" else self.worker_metrics
        return wait_for(
            lambda: (s := scrape_of()).value(name, **labels) == expected and s, timeout, what
        )

    def lines(self, name: str) -> list[str]:
        path = self.outbox / name
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    with OTLPReceiver() as rx, RedisServer(tmp_path / "redis") as redis:
        stack = Shop(tmp_path, rx, redis, outbox)
        try:
            stack.start_web()
            yield stack
        finally:
            for worker in stack.workers:
                worker.stop(timeout=10)
            if stack.web is not None:
                stack.web.stop()


def spans_named(rx: OTLPReceiver, name: str, kind: int) -> list[ReceivedSpan]:
    return [s for s in rx.spans() if s.name == name and s.kind == kind]


def listening_socket_inode(port: int) -> str:
    """The inode of the socket listening on 127.0.0.1:``port`` (``/proc/net/tcp``)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            return inode
    raise AssertionError(f"nothing listens on port {port}")


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def trace_id_of(line: str) -> str:
    """The trace id of a log line, JSON (``"trace_id": "..."``) or key=value."""
    match = re.search(r'trace_id"?[=:] ?"?([0-9a-f]{32})', line)
    assert match is not None, line
    return match.group(1)


def lost(samples: Samples) -> float:
    """What the BgTaskLost rule computes for one instance."""
    return (
        samples.total("bgtask_enqueued_total")
        - samples.total("bgtask_finished_total")
        - samples.total("bgtask_pending")
        - samples.total("bgtask_in_progress")
    )


@pytest.mark.parametrize(("pool", "concurrency"), [("prefork", 2), ("solo", 1), ("threads", 2)])
def test_requests_run_on_the_worker_in_the_requests_traces(
    shop: Shop, pool: str, concurrency: int
) -> None:
    worker = shop.start_worker(pool, concurrency)
    n = 12
    for i in range(n):
        response = shop.post(f"/send-notification/user{i}@example.com")
        assert response.status_code == 200
        assert response.json() == {"message": "Notification sent in the background"}

    wait_for(lambda: len(shop.lines("notifications.log")) == n, 30, "12 runs on the worker")
    wait_for(lambda: len(shop.lines("audit.log")) == n, 10, "12 in-process audits")
    assert shop.web is not None and shop.web.proc is not None and worker.proc is not None
    run_pids = {int(line.split()[0]) for line in shop.lines("notifications.log")}
    audit_pids = {int(line.split()[0]) for line in shop.lines("audit.log")}
    assert audit_pids == {shop.web.proc.pid}  # every other task still runs in the web process
    assert shop.web.proc.pid not in run_pids
    if pool in ("solo", "threads"):
        assert run_pids == {worker.proc.pid}
    else:
        assert worker.proc.pid not in run_pids  # the pool's processes, not the main one
        # Only the main process holds the /metrics socket (not inherited by the pool's).
        listening = listening_socket_inode(worker.port)
        assert listening in socket_inodes(worker.proc.pid)
        for pid in run_pids:
            assert listening not in socket_inodes(pid), pid

    def worker_done() -> Samples | None:
        s = shop.worker_metrics()
        done = s.value("bgtask_finished_total", task=NOTIFY, executor="celery", outcome="success")
        # Settled: a scrape reads each pool process's counter, gauge and histogram files one
        # after the other, so a run ending between the reads is in progress and finished at
        # once, or finished with its histograms not yet read.
        queued = s.value("bgtask_queue_seconds_count", task=NOTIFY, executor="celery")
        timed = s.value(
            "bgtask_duration_seconds_count", task=NOTIFY, executor="celery", outcome="success"
        )
        settled = s.total("bgtask_in_progress") == 0 and queued == timed == n
        return s if done == n and settled else None

    w = wait_for(worker_done, 20, "the worker's /metrics to count 12 runs")
    assert w.value("bgtask_enqueued_total", task=NOTIFY) == n
    assert w.total("bgtask_finished_total") == n
    assert w.total("bgtask_in_progress") == 0
    assert w.total("bgtask_failures_total") == 0
    assert w.value("bgtask_queue_seconds_count", task=NOTIFY, executor="celery") == n
    assert (
        w.value("bgtask_duration_seconds_count", task=NOTIFY, executor="celery", outcome="success")
        == n
    )
    assert lost(w) == 0

    # The audit's line is written before its finish hooks run: wait for the web's counts.
    web = wait_for(
        lambda: (
            (s := shop.web_metrics()).total("bgtask_finished_total") == 2 * n
            and s.total("bgtask_in_progress") == s.total("bgtask_pending") == 0
            and s
        ),
        10,
        "the web's /metrics to count 12 sends and 12 audits, none in progress",
    )
    assert (
        web.value("bgtask_finished_total", task=NOTIFY, executor="broker", outcome="success") == n
    )
    assert (
        web.value("bgtask_finished_total", task=AUDIT, executor="thread_pool", outcome="success")
        == n
    )
    assert web.total("bgtask_finished_total") == 2 * n
    assert lost(web) == 0

    def whole_chains() -> tuple[list[ReceivedSpan], dict[str, ReceivedSpan]] | None:
        """The n worker spans once each one's send span and that send's request span have
        arrived too (the request span ends after its tasks: a later export batch)."""
        consumers = spans_named(shop.rx, f"bgtask {NOTIFY}", CONSUMER)
        by_id = {s.span_id: s for s in shop.rx.spans()}
        sends = [by_id.get(c.parent_span_id) for c in consumers]
        whole = all(send is not None and send.parent_span_id in by_id for send in sends)
        return (consumers, by_id) if len(consumers) == n and whole else None

    consumers, by_id = wait_for(
        whole_chains, 20, "12 worker spans, each under a send span under a request span"
    )
    wait_for(
        lambda: len(spans_named(shop.rx, f"bgtask send {NOTIFY}", PRODUCER)) == n,
        20,
        "12 send spans",
    )
    traces = set()
    for consumer in consumers:
        send = by_id[consumer.parent_span_id]
        assert (send.name, send.kind) == (f"bgtask send {NOTIFY}", PRODUCER)
        request = by_id[send.parent_span_id]
        assert (request.kind, request.attributes["http.route"]) == (
            SERVER,
            "/send-notification/{email}",
        )
        assert consumer.trace_id == send.trace_id == request.trace_id
        assert consumer.resource["service.name"] == "shop-worker"
        assert send.resource["service.name"] == "shop-web"
        message_id = consumer.attributes["messaging.message.id"]
        assert send.attributes["messaging.message.id"] == message_id
        assert consumer.attributes["messaging.operation.type"] == "process"
        assert send.attributes["messaging.operation.type"] == "send"
        assert consumer.attributes["bgtask.executor"] == "celery"
        assert send.attributes["bgtask.executor"] == "broker"
        assert consumer.attributes["bgtask.outcome"] == "success"
        traces.add(consumer.trace_id)
    assert len(traces) == n

    # Logs inside worker tasks carry the task's trace and task name, as in-process ones.
    logged = [line for line in shop.worker_log().splitlines() if "notification written" in line]
    assert len(logged) == n
    assert {trace_id_of(line) for line in logged} == traces
    assert all(NOTIFY in line for line in logged)


def test_queue_time_runs_from_add_task_to_the_worker_start(shop: Shop) -> None:
    """The worker is held off: its queue time includes the wait, measured across processes."""
    n, hold = 3, 0.5
    first = time.time()
    for i in range(n):
        assert shop.post(f"/send-notification/held{i}@example.com").status_code == 200
    wait_for(
        lambda: (
            shop.web_metrics().value(
                "bgtask_finished_total", task=NOTIFY, executor="broker", outcome="success"
            )
            == n
        ),
        10,
        "3 sends",
    )
    last_sent = time.time()
    time.sleep(hold)
    assert shop.lines("notifications.log") == []
    held = time.time() - last_sent  # >= hold: nothing could start a task before this
    shop.start_worker("solo", 1)
    wait_for(lambda: len(shop.lines("notifications.log")) == n, 30, "3 runs")
    done = time.time()
    consumers = wait_for(
        lambda: len(c := spans_named(shop.rx, f"bgtask {NOTIFY}", CONSUMER)) == n and c,
        20,
        "3 worker spans",
    )
    for consumer in consumers:
        queued = float(consumer.attributes["bgtask.queue_seconds"])  # type: ignore[arg-type]
        assert hold <= held <= queued <= done - first, (held, queued)
    samples = shop.wait_metric(
        "worker",
        n,
        10,
        "3 queue times",
        "bgtask_queue_seconds_count",
        task=NOTIFY,
        executor="celery",
    )
    total = samples.value("bgtask_queue_seconds_sum", task=NOTIFY, executor="celery")
    assert n * hold <= total <= n * (done - first)
    # Not in the 0.5 s bucket or below: each waited longer than the hold.
    assert (
        samples.value("bgtask_queue_seconds_bucket", task=NOTIFY, executor="celery", le="0.5") == 0
    )
    assert samples.total("bgtask_clock_skew_total") == 0


def test_failing_celery_task_counted_by_exception_class_on_the_worker(shop: Shop) -> None:
    shop.start_worker("prefork", 2)
    n = 4
    for order in range(n):
        assert shop.post(f"/pay/{order}").status_code == 200
    exception = f"{TASKS}.PaymentDeclinedError"
    w = shop.wait_metric(
        "worker",
        n,
        30,
        "4 failures on the worker",
        "bgtask_failures_total",
        task=PAY,
        exception=exception,
    )
    assert w.value("bgtask_finished_total", task=PAY, executor="celery", outcome="failure") == n
    assert w.value("bgtask_finished_total", task=PAY, executor="celery", outcome="success") == 0
    # The sends succeeded: the failure is the run's, counted where it ran. (A send's finish
    # hooks run after its publish returns, so the run may be counted first: wait for it.)
    web = shop.wait_metric(
        "web", n, 10, "4 sends", "bgtask_finished_total", task=PAY, executor="broker",
        outcome="success",
    )  # fmt: skip
    assert web.value("bgtask_finished_total", task=PAY, executor="broker", outcome="success") == n
    assert web.total("bgtask_failures_total") == 0
    consumers = wait_for(
        lambda: len(c := spans_named(shop.rx, f"bgtask {PAY}", CONSUMER)) == n and c, 20, "spans"
    )
    for span in consumers:
        assert span.status_code == STATUS_ERROR
        assert span.attributes["error.type"] == exception
        assert span.attributes["bgtask.outcome"] == "failure"
        events = dict(span.events)
        assert events["exception"]["exception.type"] == exception
    failed = [line for line in shop.worker_log().splitlines() if "background task failed" in line]
    assert len(failed) == n
    assert {trace_id_of(line) for line in failed} == {s.trace_id for s in consumers}


def test_broker_down_is_a_counted_failure_of_the_send_and_the_app_keeps_answering(
    shop: Shop,
) -> None:
    shop.start_worker("solo", 1)
    assert shop.post("/send-notification/before@example.com").status_code == 200
    wait_for(lambda: len(shop.lines("notifications.log")) == 1, 30, "the first run")

    shop.redis.stop()
    n = 5
    for i in range(n):
        response = shop.post(f"/send-notification/down{i}@example.com")
        assert response.status_code == 200, response.text
    assert httpx.get(shop.web.base_url + "/health", timeout=5).status_code == 200  # type: ignore[union-attr]
    wait_for(lambda: len(shop.lines("audit.log")) == 1 + n, 30, "the in-process tasks")
    broker_error = "kombu.exceptions.OperationalError"
    web = shop.wait_metric(
        "web", n, 60, "5 failed sends", "bgtask_failures_total", task=NOTIFY, exception=broker_error
    )
    assert (
        web.value("bgtask_finished_total", task=NOTIFY, executor="broker", outcome="failure") == n
    )
    assert (
        web.value("bgtask_finished_total", task=NOTIFY, executor="broker", outcome="success") == 1
    )
    assert (
        web.value("bgtask_finished_total", task=AUDIT, executor="thread_pool", outcome="success")
        == 1 + n
    )
    assert lost(web) == 0  # nothing else lost: every task has its outcome
    assert shop.web is not None
    failed = [line for line in shop.web.log_text().splitlines() if "background task failed" in line]
    assert len(failed) == n
    assert all(broker_error in line for line in failed)

    shop.redis.start()  # the broker is back: sends succeed again and the worker runs them
    assert shop.post("/send-notification/after@example.com").status_code == 200
    wait_for(lambda: len(shop.lines("notifications.log")) == 2, 60, "the run after recovery")
    web = shop.wait_metric(
        "web", 2, 10, "the send after recovery", "bgtask_finished_total", task=NOTIFY,
        executor="broker", outcome="success",
    )  # fmt: skip
    assert (
        web.value("bgtask_finished_total", task=NOTIFY, executor="broker", outcome="success") == 2
    )
    assert len(shop.lines("notifications.log")) == 2  # the failed sends never ran


def test_worker_process_killed_mid_task_shows_as_lost(shop: Shop) -> None:
    shop.start_worker("prefork", 2)
    assert shop.post("/report?seconds=120").status_code == 200
    started = wait_for(lambda: list(shop.outbox.glob("slow-*.started")), 30, "the slow task")
    pid = int(started[0].name.split("-")[1].split(".")[0])
    running = shop.wait_metric(
        "worker",
        1,
        10,
        "the task in progress",
        "bgtask_in_progress",
        task=REPORT,
        executor="celery",
    )
    assert lost(running) == 0
    os.kill(pid, signal.SIGKILL)
    w = shop.wait_metric(
        "worker",
        0,
        20,
        "the dead process's gauge dropped",
        "bgtask_in_progress",
        task=REPORT,
        executor="celery",
    )
    assert w.value("bgtask_enqueued_total", task=REPORT) == 1
    assert w.total("bgtask_finished_total", task=REPORT) == 0
    assert lost(w) == 1


def test_prefork_without_a_multiprocess_directory_stops_the_worker_naming_it(
    shop: Shop,
) -> None:
    port = free_port()
    env = shop.env(SHOP_WORKER_METRICS_PORT=str(port))
    worker = celery_worker(TASKS, env, shop.tmp / "bad-worker.log", port, "prefork", 2)
    with worker:
        assert worker.proc is not None
        assert worker.proc.wait(60) != 0
    log = worker.log_text()
    assert "PROMETHEUS_MULTIPROC_DIR" in log
    assert "--pool solo" in log


def test_worker_metrics_also_go_out_over_otlp_from_every_pool_process(shop: Shop) -> None:
    """OTLP metrics from each prefork process (its own ``service.instance.id``): the
    receiver's latest cumulative points, summed over instances, count every run."""
    shop.start_worker("prefork", 2, OTEL_METRICS_EXPORTER="otlp", OTEL_METRIC_EXPORT_INTERVAL="300")
    n = 10
    for i in range(n):
        assert shop.post(f"/send-notification/otlp{i}@example.com").status_code == 200
    wait_for(lambda: len(shop.lines("notifications.log")) == n, 30, "10 runs")

    def exported_runs() -> float:
        latest: dict[object, float] = {}
        for point in shop.rx.metrics():
            if (
                point.name == "bgtask_finished_total"
                and point.resource.get("service.name") == "shop-worker"
                and point.attributes.get("executor") == "celery"
                and point.attributes.get("outcome") == "success"
                and point.attributes.get("task") == NOTIFY
            ):
                latest[point.resource["service.instance.id"]] = point.value or 0.0
        return sum(latest.values())

    wait_for(lambda: exported_runs() == n, 20, "10 runs exported over OTLP")
    instances = {
        p.resource["service.instance.id"]
        for p in shop.rx.metrics()
        if p.resource.get("service.name") == "shop-worker"
    }
    run_pids = {int(line.split()[0]) for line in shop.lines("notifications.log")}
    assert len(instances) >= len(run_pids)  # one instance id per process that ran tasks


def test_worker_metrics_port_taken_stops_the_worker_naming_it(shop: Shop) -> None:
    first = shop.start_worker("solo", 1)
    env = shop.env(SHOP_WORKER_METRICS_PORT=str(first.port))
    second = celery_worker(TASKS, env, shop.tmp / "second.log", first.port, "solo", 1)
    with second:
        assert second.proc is not None
        assert second.proc.wait(60) != 0
    log = second.log_text()
    assert f"cannot serve /metrics on 127.0.0.1:{first.port}" in log
    assert "metrics_port=" in log


def test_broker_that_stops_answering_times_out_as_counted_failures(tmp_path: Path) -> None:
    """A broker that accepts connections and never answers (the test app sets a 1 s socket
    timeout): each send fails after its timeout and retries, counted; /health and the
    requests' own connection keep working meanwhile."""
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    with BlackholeServer() as hole:
        env = clean_env(
            SHOP_BROKER_URL=f"redis://127.0.0.1:{hole.port}/0",
            SHOP_OUTBOX=str(outbox),
            OTEL_TRACES_EXPORTER="none",
            OTEL_METRICS_EXPORTER="none",
        )
        web = ServerProcess.uvicorn(
            "tests.e2e.apps.celery_web:app", env, tmp_path / "web.log", free_port()
        )
        with web:
            web.wait_ready("/health")
            n = 3
            with httpx.Client(base_url=web.base_url, timeout=10) as client:
                started = time.monotonic()
                for i in range(n):
                    assert client.post(f"/send-notification/hole{i}@example.com").status_code == 200
                    # the same keep-alive connection answers while its sends hang
                    assert client.get("/health").status_code == 200
                answered = time.monotonic() - started
                samples = wait_for(
                    lambda: (s := scrape(client)).total("bgtask_finished_total") == 2 * n and s,
                    90,
                    "3 timed-out sends and the 3 audits that follow them",
                )
            assert hole.accepted >= 1
            assert (
                samples.value(
                    "bgtask_finished_total", task=NOTIFY, executor="broker", outcome="failure"
                )
                == n
            )
            errors = samples.series("bgtask_failures_total")
            assert sum(errors.values()) == n
            assert lost(samples) == 0
            assert (
                samples.value(
                    "bgtask_finished_total", task=AUDIT, executor="thread_pool", outcome="success"
                )
                == n
            )
    assert answered < 30  # inline tasks run after the response is sent: no request waited


def test_a_retry_is_a_failed_run_then_another_run(shop: Shop) -> None:
    shop.start_worker("solo", 1)
    assert shop.post("/sync/7").status_code == 200
    wait_for(lambda: len(shop.lines("synced.log")) == 1, 30, "the retried run")
    flaky = f"{TASKS}.flaky_sync"
    w = wait_for(
        lambda: (s := shop.worker_metrics()).total("bgtask_finished_total", task=flaky) == 2 and s,
        10,
        "two runs",
    )
    assert w.value("bgtask_enqueued_total", task=flaky) == 2
    assert w.value("bgtask_finished_total", task=flaky, executor="celery", outcome="failure") == 1
    assert w.value("bgtask_finished_total", task=flaky, executor="celery", outcome="success") == 1
    assert w.value("bgtask_failures_total", task=flaky, exception="celery.exceptions.Retry") == 1
    assert lost(w) == 0
    web = shop.web_metrics()
    assert web.value("bgtask_finished_total", task=flaky, executor="broker", outcome="success") == 1
    runs = wait_for(
        lambda: len(c := spans_named(shop.rx, f"bgtask {flaky}", CONSUMER)) == 2 and c, 20, "spans"
    )
    assert len({s.trace_id for s in runs}) == 1  # the retry stays in the request's trace


def test_a_solo_worker_with_a_multiprocess_directory_counts_its_tasks(shop: Shop) -> None:
    """The variable set for every process (a container's environment): the solo worker's
    own files, made at import, survive the start's clean-up of a previous run's."""
    stale = shop.tmp / "solo-metrics"
    stale.mkdir()
    (stale / "counter_999999.db").write_bytes(b"\0" * 16)  # a previous run's file
    shop.start_worker("solo", 1, PROMETHEUS_MULTIPROC_DIR=str(stale))
    n = 3
    for i in range(n):
        assert shop.post(f"/send-notification/mp{i}@example.com").status_code == 200
    w = shop.wait_metric(
        "worker",
        n,
        30,
        "3 runs counted",
        "bgtask_finished_total",
        task=NOTIFY,
        executor="celery",
        outcome="success",
    )
    assert lost(w) == 0
    assert not (stale / "counter_999999.db").exists()


def test_a_second_worker_on_the_same_directory_is_refused_and_the_first_keeps_counting(
    shop: Shop,
) -> None:
    first = shop.start_worker("prefork", 2)
    assert shop.post("/send-notification/one@example.com").status_code == 200
    wait_for(lambda: len(shop.lines("notifications.log")) == 1, 30, "the first run")
    directory = first.env["PROMETHEUS_MULTIPROC_DIR"]
    port = free_port()
    env = shop.env(SHOP_WORKER_METRICS_PORT=str(port), PROMETHEUS_MULTIPROC_DIR=directory)
    second = celery_worker(TASKS, env, shop.tmp / "same-dir.log", port, "prefork", 2)
    with second:
        assert second.proc is not None
        assert second.proc.wait(60) != 0
    assert "holds the metric files of running process" in second.log_text()
    assert "a directory of its own" in second.log_text()
    assert shop.post("/send-notification/two@example.com").status_code == 200
    w = shop.wait_metric(
        "worker",
        2,
        30,
        "both runs still counted by the first worker",
        "bgtask_finished_total",
        task=NOTIFY,
        executor="celery",
        outcome="success",
    )
    assert w.value("bgtask_enqueued_total", task=NOTIFY) == 2
