"""The one place where the runtime's lifecycle events meet the telemetry observers."""

from __future__ import annotations

import anyio.to_thread

from runtime.observer import TaskObserver
from runtime.options import RuntimeOptions
from telemetry.exposition import metrics_asgi_app
from telemetry.logs import LogObserver
from telemetry.metrics import MetricsObserver
from telemetry.spans import SpanObserver

__all__ = ["default_observers", "flush_telemetry", "metrics_asgi_app"]


def default_observers(options: RuntimeOptions) -> list[TaskObserver]:
    """Spans, metrics and logs, in that order: ``started`` runs them in order and
    ``finished`` in reverse, so the task span is current while metrics and logs record."""
    return [
        SpanObserver(
            record_args=options.record_args, loop_block_threshold=options.loop_block_threshold
        ),
        MetricsObserver(),
        LogObserver(
            record_args=options.record_args, loop_block_threshold=options.loop_block_threshold
        ),
    ]


async def flush_telemetry() -> None:
    """At the end of the app's lifespan: export what :func:`telemetry.setup` buffered
    (bounded, see :func:`telemetry.setup.flush`), off the event loop."""
    from telemetry.setup import flush

    await anyio.to_thread.run_sync(flush, abandon_on_cancel=True)
