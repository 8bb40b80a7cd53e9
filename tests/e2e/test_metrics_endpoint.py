"""/metrics on a real uvicorn: it cannot stall the app, answers GET and HEAD only, can be
protected, and follows an app mounted under a prefix."""

from __future__ import annotations

import gzip
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.metrics import Samples
from tests.support.net import free_port
from tests.support.polling import wait_for
from tests.support.server import ServerProcess, clean_env

APP = "tests.e2e.apps.metrics_app:app"
TASK_NAMES = 500
SCRAPERS = 4
LOAD_SECONDS = 5.0


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The app after 500 distinct tasks ran once (a fifth of them failing)."""
    log = tmp_path_factory.mktemp("metrics") / "server.log"
    with ServerProcess.uvicorn(APP, clean_env(), log, free_port()) as server:
        server.wait_ready("/health")
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            assert client.post("/seed").status_code == 200

            def all_finished() -> bool:
                samples = Samples.parse(client.get("/metrics").text)
                return samples.total("bgtask_finished_total") >= TASK_NAMES

            wait_for(all_finished, 60, "the 500 seeded tasks to finish", interval=0.5)
        yield server


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def test_health_answers_while_four_clients_scrape_500_task_names(
    seeded: ServerProcess,
) -> None:
    with httpx.Client(base_url=seeded.base_url, timeout=30) as client:
        exposition = client.get("/metrics")
    samples = Samples.parse(exposition.text)
    names = {dict(items)["task"] for items in samples.series("bgtask_enqueued_total")}
    assert len(names) == TASK_NAMES
    print(f"\nexposition: {len(samples.values)} samples, {len(exposition.content)} bytes")

    stop = threading.Event()
    scrapes: list[float] = []
    errors: list[BaseException] = []

    def scrape_continuously() -> None:
        with httpx.Client(base_url=seeded.base_url, timeout=60) as scraper:
            while not stop.is_set():
                started = time.monotonic()
                try:  # gzip, as Prometheus asks; read raw, so this process does not unzip
                    with scraper.stream("GET", "/metrics") as response:
                        response.raise_for_status()
                        size = sum(len(chunk) for chunk in response.iter_raw())
                    assert size > 0
                except httpx.HTTPError as exc:
                    errors.append(exc)
                    return
                scrapes.append(time.monotonic() - started)

    threads = [threading.Thread(target=scrape_continuously) for _ in range(SCRAPERS)]
    for thread in threads:
        thread.start()
    health: list[float] = []
    try:
        with httpx.Client(base_url=seeded.base_url, timeout=30) as client:
            time.sleep(0.2)  # the scrapers are in flight
            deadline = time.monotonic() + LOAD_SECONDS
            while time.monotonic() < deadline:
                started = time.monotonic()
                assert client.get("/health").status_code == 200
                health.append(time.monotonic() - started)
                time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(90)
    print(
        f"/health under {SCRAPERS} scrapers: {len(health)} answers, "
        f"p50 {statistics.median(health) * 1000:.1f} ms, p95 {_p95(health) * 1000:.1f} ms, "
        f"max {max(health) * 1000:.1f} ms; {len(scrapes)} scrapes, "
        f"median {statistics.median(scrapes) * 1000:.0f} ms"
    )
    assert errors == []
    assert len(scrapes) >= SCRAPERS
    # 5 s of polling at a 10 ms pace: a loop blocked by rendering answers a handful of times.
    assert len(health) >= 50
    assert _p95(health) < 0.25


def test_content_negotiation_and_compression(seeded: ServerProcess) -> None:
    with httpx.Client(base_url=seeded.base_url, timeout=30) as client:
        plain = client.get("/metrics", headers={"Accept-Encoding": "identity"})
        openmetrics = client.get(
            "/metrics",
            headers={"Accept": "application/openmetrics-text", "Accept-Encoding": "identity"},
        )
        zipped = client.send(
            client.build_request("GET", "/metrics", headers={"Accept-Encoding": "gzip"}),
            stream=True,
        )
        raw = b"".join(zipped.iter_raw())
        zipped.close()
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "content-encoding" not in plain.headers
    assert "bgtask_enqueued_total{" in plain.text
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")
    assert zipped.headers["content-encoding"] == "gzip"
    assert b"bgtask_enqueued_total{" in gzip.decompress(raw)


def test_only_get_and_head(seeded: ServerProcess) -> None:
    with httpx.Client(base_url=seeded.base_url, timeout=30) as client:
        head = client.head("/metrics")
        posted = client.post("/metrics", content=b"x")
        deleted = client.delete("/metrics")
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/plain")
    assert head.content == b""
    for response in (posted, deleted):
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"


def test_metrics_auth_check(tmp_path: Path) -> None:
    env = clean_env(METRICS_TOKEN="s3cret")
    with ServerProcess.uvicorn(APP, env, tmp_path / "server.log", free_port()) as server:
        server.wait_ready("/health")
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            anonymous = client.get("/metrics")
            wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
            right = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
            head = client.head("/metrics")
    assert anonymous.status_code == 401
    assert "bgtask" not in anonymous.text
    assert wrong.status_code == 403
    assert head.status_code == 401
    assert right.status_code == 200
    assert "bgtask_pending" in right.text


def test_mounted_app_serves_metrics_under_its_prefix(tmp_path: Path) -> None:
    app = "tests.e2e.apps.metrics_app:mounted"
    with ServerProcess.uvicorn(app, clean_env(), tmp_path / "server.log", free_port()) as server:
        server.wait_ready("/sub/health")
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            mounted = client.get("/sub/metrics")
            top = client.get("/metrics")
    assert mounted.status_code == 200
    assert "bgtask_pending" in mounted.text
    assert top.status_code == 404


def _unaccounted(samples: Samples) -> float:
    """enqueued - finished - pending - in progress: what the BgTaskLost rule records."""
    return (
        samples.total("bgtask_enqueued_total")
        - samples.total("bgtask_finished_total")
        - samples.total("bgtask_pending")
        - samples.total("bgtask_in_progress")
    )


def test_a_scrape_under_load_never_shows_phantom_lost_tasks(tmp_path: Path) -> None:
    """Tasks move on while a scrape reads metric after metric; read in registration order, a
    draining backlog showed +1,130 "lost" tasks. Now it errs low, but for an observer call
    caught between its two increments (+1 each, a handful of calls run at a time); it is 0
    exactly once the app is quiet."""
    with ServerProcess.uvicorn(APP, clean_env(), tmp_path / "server.log", free_port()) as server:
        server.wait_ready("/health")
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            assert client.post("/seed").status_code == 200  # 500 task names' series
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=server.base_url, timeout=30) as client:
                while not stop.is_set():
                    client.post("/burst")

        loaders = [threading.Thread(target=load)]
        for thread in loaders:
            thread.start()
        seen: list[tuple[float, float]] = []  # (difference, pending)
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            try:
                deadline = time.monotonic() + 2.5
                while time.monotonic() < deadline:
                    samples = Samples.parse(client.get("/metrics").text)
                    seen.append((_unaccounted(samples), samples.total("bgtask_pending")))
            finally:
                stop.set()
                for thread in loaders:
                    thread.join(60)

            def drained() -> Samples | None:
                samples = Samples.parse(client.get("/metrics").text)
                seen.append((_unaccounted(samples), samples.total("bgtask_pending")))
                quiet = samples.total("bgtask_pending") + samples.total("bgtask_in_progress")
                return samples if quiet == 0 else None

            quiet = wait_for(drained, 120, "the backlog to drain", interval=0.5)
    print(f"\ndifference under load and drain: min {min(d for d, _ in seen):g}, "
          f"max {max(d for d, _ in seen):g} over {len(seen)} scrapes, "
          f"peak pending {max(p for _, p in seen):g}")  # fmt: skip
    assert max(p for _, p in seen) > 1000  # there was a backlog to drain
    assert all(difference <= 3 for difference, _ in seen), seen
    assert _unaccounted(quiet) == 0
    assert quiet.total("bgtask_enqueued_total") > 10 * TASK_NAMES
