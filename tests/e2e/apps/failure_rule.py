"""Which tasks of ``reliability_app`` fail: shared by the app and the tests that count."""

from __future__ import annotations


def fails(order: int, index: int, every: int) -> bool:
    """Task ``index`` of order ``order`` fails when ``every`` > 0 and
    ``(7 * order + index) % every == 0``: with ``every`` tasks per request, exactly one
    task per request fails, at a position that moves from request to request (so sync
    and async tasks both fail)."""
    return every > 0 and (7 * order + index) % every == 0
