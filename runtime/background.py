"""``runtime.BackgroundTasks``: an explicit drop-in for Starlette's and FastAPI's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec

from starlette.background import BackgroundTasks as _StarletteBackgroundTasks

P = ParamSpec("P")


class BackgroundTasks(_StarletteBackgroundTasks):
    """Starlette's ``BackgroundTasks`` that rejects a non-callable at ``add_task`` time,
    inside or outside an instrumented app; its tasks run like any other."""

    def add_task(self, func: Callable[P, Any], *args: P.args, **kwargs: P.kwargs) -> None:
        if not callable(func):
            raise TypeError(
                f"add_task() expects a callable, got {func!r} of type {type(func).__name__}"
            )
        super().add_task(func, *args, **kwargs)
