"""A stand-in application for the stack smoke test: serves every contract metric on /metrics.

    python tests/dashboards/fake_app.py --port 8000

Two tasks run ten times a second: ``demo.tasks.send_email`` (event loop, every 10th run fails)
and ``demo.tasks.flaky_sync`` (thread pool, every other run fails with ``ValueError``).
"""

from __future__ import annotations

import argparse
import random
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tasklens.telemetry import contract

TASKS = (
    ("demo.tasks.send_email", contract.EXECUTOR_EVENT_LOOP),
    ("demo.tasks.flaky_sync", contract.EXECUTOR_THREAD_POOL),
)


def build(registry: CollectorRegistry) -> dict[str, Counter | Gauge | Histogram]:
    """One prometheus_client metric per contract metric."""
    metrics: dict[str, Counter | Gauge | Histogram] = {}
    for spec in contract.ALL_METRICS:
        if spec.type == "counter":
            metrics[spec.name] = Counter(spec.name, spec.help, spec.labels, registry=registry)
        elif spec.type == "gauge":
            metrics[spec.name] = Gauge(spec.name, spec.help, spec.labels, registry=registry)
        else:
            metrics[spec.name] = Histogram(
                spec.name,
                spec.help,
                spec.labels,
                buckets=contract.DURATION_BUCKETS,
                registry=registry,
            )
    return metrics


def run_once(m: dict[str, Counter | Gauge | Histogram], index: int) -> None:
    """Record one run of each task, touching every metric and label the dashboards read."""
    exemplar = {"trace_id": f"{random.getrandbits(128):032x}"}
    for task, executor in TASKS:
        failed = index % (2 if task.endswith("flaky_sync") else 10) == 0
        outcome = contract.OUTCOME_FAILURE if failed else contract.OUTCOME_SUCCESS
        m[contract.ENQUEUED.name].labels(task).inc()
        m[contract.FINISHED.name].labels(task, executor, outcome).inc()
        if failed:
            m[contract.FAILURES.name].labels(task, "ValueError").inc()
        queue = m[contract.QUEUE_SECONDS.name].labels(task, executor)
        queue.observe(random.uniform(0, 0.05), exemplar)
        duration = m[contract.DURATION_SECONDS.name].labels(task, executor, outcome)
        duration.observe(random.uniform(0.01, 0.5), exemplar)
        m[contract.IN_PROGRESS.name].labels(task, executor).set(index % 3)
        wait = m[contract.THREADPOOL_WAIT_SECONDS.name].labels(task)
        wait.observe(random.uniform(0, 0.01), exemplar)
        blocking = m[contract.LOOP_BLOCKING_SECONDS.name].labels(task)
        blocking.observe(random.uniform(0, 0.002), exemplar)
    m[contract.PENDING.name].set(index % 5)
    m[contract.THREADPOOL_TOKENS.name].labels("borrowed").set(index % 4)
    m[contract.THREADPOOL_TOKENS.name].labels("total").set(40)
    m[contract.EVENT_LOOP_LAG_SECONDS.name].observe(random.uniform(0, 0.003))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    registry = CollectorRegistry()
    metrics = build(registry)
    run_once(metrics, 0)
    start_http_server(args.port, addr=args.host, registry=registry)
    index = 1
    while True:
        time.sleep(0.1)
        run_once(metrics, index)
        index += 1


if __name__ == "__main__":
    main()
