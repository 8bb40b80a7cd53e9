"""Grafana dashboards and Prometheus rules for tasklens, generated from the telemetry contract
(``tasklens.telemetry.contract``). Repository tooling, not installed: run ``python -m dashboards``
from the repository root to regenerate every artefact.
"""
