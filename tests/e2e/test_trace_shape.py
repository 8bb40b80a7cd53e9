"""``task_trace``: ``"child"`` (default) puts each task span under the request's server span,
in its trace; ``"link"`` makes each task the root of a trace of its own with a span link to
the request span. Real uvicorn, exported over OTLP/HTTP and gRPC to the test receiver."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_one_server_span import TASK, run

PROTOCOLS = ["http/protobuf", "grpc"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_child_tasks_share_the_request_trace(tmp_path: Path, protocol: str) -> None:
    result = run(tmp_path, "plain", protocol=protocol, SPAN_APP_OPTIONS='{"task_trace": "child"}')
    (server,) = result.servers("/users/")
    (task,) = [s for s in result.spans if s.name == TASK and s.trace_id == server.trace_id]
    assert task.parent_span_id == server.span_id
    assert result.links[task.span_id] == []
    assert task.transport == ("grpc" if protocol == "grpc" else "http")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_linked_tasks_are_roots_of_their_own_traces(tmp_path: Path, protocol: str) -> None:
    result = run(
        tmp_path,
        "plain",
        protocol=protocol,
        SPAN_APP_OPTIONS='{"task_trace": "link", "enqueue_events": true}',
    )
    servers = {s.span_id: s for s in result.servers("/users/") + result.servers("/health")}
    tasks = [s for s in result.spans if s.name == TASK]
    assert len(tasks) == 2 and len(servers) == 2
    for task in tasks:
        assert task.parent_span_id == ""
        (link,) = result.links[task.span_id]
        server = servers[link[1]]
        assert link == (server.trace_id, server.span_id)
        assert task.trace_id != server.trace_id
        assert task.transport == ("grpc" if protocol == "grpc" else "http")
    assert result.recording == [True, True]
    # The request span still records each task it scheduled.
    assert all(("bgtask.enqueued", {"bgtask.name": TASK[7:]}) in s.events for s in servers.values())
