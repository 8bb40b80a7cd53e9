"""tasklens telemetry: providers, exporters, metrics, spans and logs for the runtime."""

from telemetry.setup import Telemetry, flush, setup

__all__ = ["Telemetry", "flush", "setup"]
