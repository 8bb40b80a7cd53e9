"""The observers: providers and exporters (:func:`setup`), task spans, metrics and logs, request
spans and ``/metrics``. Reads the runtime's task records; the runtime never imports this."""

from .observers import add_app_telemetry, default_observers, flush_at_shutdown
from .options import TelemetryOptions
from .setup import Telemetry, flush, setup

__all__ = [
    "Telemetry",
    "TelemetryOptions",
    "add_app_telemetry",
    "default_observers",
    "flush",
    "flush_at_shutdown",
    "setup",
]
