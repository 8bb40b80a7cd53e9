"""Grafana dashboards and Prometheus rules for tasklens, generated from ``telemetry.contract``.

Run ``python -m dashboards`` from the repository root to regenerate every artefact.
"""
