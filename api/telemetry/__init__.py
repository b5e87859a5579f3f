"""A run's telemetry: ingest of the agent's batches, and the chart and log reads (docs/telemetry.md)."""
