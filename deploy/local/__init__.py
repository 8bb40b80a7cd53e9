"""Run the demo app, Prometheus and Alertmanager on loopback (see ``stack.py``)."""
