"""Deployment configuration; ``deploy.local.stack`` runs Prometheus and Alertmanager locally."""
