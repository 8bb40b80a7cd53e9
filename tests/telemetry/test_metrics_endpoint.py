"""The metrics endpoint's decisions, in process (the behaviour a user meets is proven on a
real uvicorn in tests/e2e/test_metrics_endpoint.py): one render for concurrent scrapes, the
auth check's verdicts, option validation."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request

import tasklens
from tasklens.telemetry.exposition import MetricsEndpoint, route_path


class SlowCollector(Collector):  # type: ignore[misc]
    """One gauge; each collect takes ``delay`` seconds and is counted."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0
        self.lock = threading.Lock()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        yield GaugeMetricFamily("slow_value", "A slow gauge.", value=1.0)


def _client(app: MetricsEndpoint) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def test_concurrent_scrapes_share_one_render() -> None:
    registry = CollectorRegistry()
    collector = SlowCollector(0.3)
    registry.register(collector)
    endpoint = MetricsEndpoint(registry)
    bodies: list[bytes] = []

    async def main() -> None:
        async with _client(endpoint) as client:

            async def scrape() -> None:
                response = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
                bodies.append(response.content)

            async with anyio.create_task_group() as group:
                for _ in range(4):
                    group.start_soon(scrape)

    anyio.run(main)
    assert collector.calls == 1
    assert len(bodies) == 4 and len(set(bodies)) == 1
    assert b"slow_value 1.0" in bodies[0]


def test_a_render_is_reused_for_as_long_as_it_took_then_renders_again() -> None:
    registry = CollectorRegistry()
    collector = SlowCollector(0.5)
    registry.register(collector)
    endpoint = MetricsEndpoint(registry)

    async def main() -> None:
        async with _client(endpoint) as client:
            await client.get("/metrics")
            await client.get("/metrics")  # within the 0.5 s the first render took
            assert collector.calls == 1
            last = endpoint.exposition._last
            assert last is not None
            await anyio.sleep(max(0.0, last[2] - time.monotonic()) + 0.05)  # reuse over
            await client.get("/metrics")
            assert collector.calls == 2
            await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
            assert collector.calls == 3  # another format is another render

    anyio.run(main)


async def _allow_async(request: Request) -> bool:
    await anyio.sleep(0)
    return request.headers.get("x-key") == "k"


def _custom(request: Request) -> bool:
    raise HTTPException(401, "who?", headers={"WWW-Authenticate": "Basic"})


def _broken(request: Request) -> bool:
    raise RuntimeError("db down")


@pytest.mark.parametrize(
    ("check", "headers", "status"),
    [
        (_allow_async, {}, 401),
        (_allow_async, {"authorization": "Basic eA=="}, 403),
        (_allow_async, {"x-key": "k"}, 200),
        (_custom, {}, 401),
        (_broken, {"x-key": "k"}, 500),
    ],
)
def test_auth_check_verdicts(check: object, headers: dict[str, str], status: int) -> None:
    endpoint = MetricsEndpoint(CollectorRegistry(), auth=check)  # type: ignore[arg-type]

    async def main() -> httpx.Response:
        async with _client(endpoint) as client:
            return await client.get("/metrics", headers=headers)

    response = anyio.run(main)
    assert response.status_code == status
    if check is _custom:
        assert response.headers["www-authenticate"] == "Basic"
        assert response.text == "who?\n"


def test_post_is_405_before_the_auth_check() -> None:
    endpoint = MetricsEndpoint(CollectorRegistry(), auth=_broken)

    async def main() -> httpx.Response:
        async with _client(endpoint) as client:
            return await client.post("/metrics")

    response = anyio.run(main)
    assert (response.status_code, response.headers["allow"]) == (405, "GET, HEAD")


@pytest.mark.parametrize(
    ("path", "root_path", "expected"),
    [
        ("/metrics", "", "/metrics"),
        ("/sub/metrics", "/sub", "/metrics"),
        ("/metrics", "/api", "/metrics"),  # a proxy stripped the prefix (older uvicorn)
        ("/subway/metrics", "/sub", "/subway/metrics"),
    ],
)
def test_route_path_is_relative_to_the_mount(path: str, root_path: str, expected: str) -> None:
    assert route_path({"path": path, "root_path": root_path}) == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"metrics_auth": "secret"}, "invalid metrics_auth='secret'; expected a callable"),
        ({"metrics_auth": _broken, "metrics_path": None}, "None when metrics_path=None"),
    ],
)
def test_invalid_metrics_auth_is_named(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tasklens.instrument(Starlette(), **options)
