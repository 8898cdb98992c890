"""Observability: client metrics (Prometheus), traces (OpenTelemetry), the scrape of a
deployment and its exporter. Internal.
"""
