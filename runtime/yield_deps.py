"""Detached mode's trade-off: FastAPI closes yield dependencies before a detached task runs."""

from __future__ import annotations

import inspect
import logging
from typing import Any

_logger = logging.getLogger("tasklens.runtime")


def _uses_yield(dependant: Any) -> bool:
    call = getattr(dependant, "call", None)
    if call is not None and (inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call)):
        return True
    return any(_uses_yield(sub) for sub in getattr(dependant, "dependencies", ()))


def _uses_background(dependant: Any) -> bool:
    if getattr(dependant, "background_tasks_param_name", None):
        return True
    return any(_uses_background(sub) for sub in getattr(dependant, "dependencies", ()))


def _routes(app: Any) -> list[Any]:
    """The routes of an app or mount. FastAPI >= 0.165 keeps included routers as one entry
    of ``app.routes``; its ``iter_route_contexts`` yields their routes with the effective
    path and dependencies (the router's own included)."""
    routes = list(getattr(app, "routes", ()))
    try:
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined]
    except ImportError:  # older FastAPI (included routes are flat) or Starlette only
        return routes
    return list(iter_route_contexts(routes))


def routes_at_risk(app: Any, prefix: str = "") -> list[str]:
    """Paths of FastAPI routes that take BackgroundTasks and also have a yield dependency
    (including routes of mounted apps and of ``Host`` routes: their tasks run on this app's
    runtime too). A route under a ``Host`` is named ``host/path``."""
    risky = []
    for route in _routes(app):
        dependant = getattr(route, "dependant", None)
        # A Host has no path (None on FastAPI's route contexts, absent on Starlette's).
        path = getattr(route, "path", None) or ""
        if dependant is None:
            if getattr(route, "routes", None):  # Mount or Host: a sub-app or router
                host = getattr(route, "host", None)
                inner = f"{host}{prefix}" if isinstance(host, str) and not path else prefix
                risky.extend(routes_at_risk(route, inner + path))
        elif _uses_background(dependant) and _uses_yield(dependant):
            risky.append(prefix + (path or repr(route)))
    return risky


def warn_yield_dependencies(app: Any) -> None:
    """Log one warning naming the routes whose tasks may use already-closed resources."""
    risky = routes_at_risk(app)
    if risky:
        _logger.warning(
            "tasklens: mode='detached': routes %s use BackgroundTasks and a dependency with "
            "yield; the dependency's cleanup runs before the detached task does, so do not "
            "pass request-scoped resources (DB sessions, files) to those tasks",
            ", ".join(risky),
        )
