"""The telemetry service: Heartbeat and metrics ingestion, time series, latest-metrics cache."""
