"""tasklens telemetry: providers, exporters, metrics, spans and logs for the runtime."""

from telemetry.setup import Telemetry, setup

__all__ = ["Telemetry", "setup"]
