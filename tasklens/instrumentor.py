"""Zero-code: ``opentelemetry-instrument uvicorn app:app`` observes every background task.

The ``opentelemetry_instrumentor`` entry point ``tasklens`` names :class:`TasklensInstrumentor`,
which ``opentelemetry-instrument`` loads after its auto-configuration set the global
providers. ``instrument()`` hooks the one step every Starlette and FastAPI app takes before
its first lifespan or request event, building its middleware stack: the app is passed to
:func:`tasklens.instrument` there (Starlette's own build then runs unchanged), and
:func:`tasklens.setup` runs once, keeping the global providers (no second set) and adding
tasklens's metrics export. ``uninstrument()`` restores the hooked methods; apps built in
between stay instrumented (as with every instrumentor, their middleware is in place).

``/metrics`` is not mounted in this mode, where metrics go out over OTLP: an app that never
asked for a public endpoint does not get one. ``TASKLENS_METRICS_PATH=/metrics`` mounts it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from starlette.applications import Starlette
from starlette.types import ASGIApp

from tasklens.instrument import _STATE_ATTR, instrument
from tasklens.runtime import RuntimeOptions
from tasklens.runtime.options import split_options
from tasklens.runtime.scope import current_scope
from tasklens.telemetry import TelemetryOptions, setup
from tasklens.telemetry.setup import installed

#: Mounts the Prometheus endpoint at this path in zero-code mode (unset or empty: none).
METRICS_PATH_ENV = "TASKLENS_METRICS_PATH"
_ORIGINAL_ATTR = "_tasklens_original"
Build = Callable[[Starlette], ASGIApp]


def _app_classes() -> list[type[Starlette]]:
    """Starlette, and FastAPI when installed and it builds its middleware stack itself
    (recent releases do, without calling Starlette's)."""
    classes: list[type[Starlette]] = [Starlette]
    if importlib.util.find_spec("fastapi") is not None:
        from fastapi.applications import FastAPI

        if "build_middleware_stack" in FastAPI.__dict__:
            classes.append(FastAPI)
    return classes


class TasklensInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """``instrument(**options)``: every Starlette/FastAPI app built from now on runs its
    background tasks through tasklens; ``options`` are :func:`tasklens.instrument`'s
    (validated here), over ``TASKLENS_METRICS_PATH``."""

    _originals: dict[type[Starlette], Build]
    _options: dict[str, Any]
    _telemetry: Any = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("starlette >= 0.40",)

    def _instrument(self, **kwargs: Any) -> None:
        options = {"metrics_path": os.environ.get(METRICS_PATH_ENV) or None}
        options.update(kwargs)
        runtime, telemetry = split_options(options, RuntimeOptions, TelemetryOptions)
        RuntimeOptions(**runtime)  # a bad option is an error now, not at the first request
        TelemetryOptions(**telemetry)
        self._options = options
        self._originals = {}
        for cls in _app_classes():
            original: Build = cls.__dict__["build_middleware_stack"]
            self._originals[cls] = original
            cls.build_middleware_stack = self._hook(original)  # type: ignore[method-assign, assignment]

    def _uninstrument(self, **kwargs: Any) -> None:
        for cls, original in self._originals.items():
            cls.build_middleware_stack = original  # type: ignore[method-assign, assignment]
        self._originals = {}
        if self._telemetry is not None:
            self._telemetry.shutdown()
            self._telemetry = None

    def _hook(self, original: Build) -> Build:
        def build_middleware_stack(app: Starlette) -> ASGIApp:
            if self.is_instrumented_by_opentelemetry:
                self._instrument_app(app)
            return original(app)

        setattr(build_middleware_stack, _ORIGINAL_ATTR, original)
        return build_middleware_stack

    def _instrument_app(self, app: Starlette) -> None:
        # A sub-app built during a request of an instrumented app: its tasks are already
        # the outer app's (they are created inside its request scope).
        if current_scope.get() is not None or hasattr(app.state, _STATE_ATTR):
            return
        if installed() is None:
            self._telemetry = setup()
        instrument(app, **self._options)
