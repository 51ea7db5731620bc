"""Governance: local validation, monitoring, metrics, charts and the admin console."""
