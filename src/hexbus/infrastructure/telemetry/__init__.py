"""OpenTelemetry spans and metrics for the publish and consume pipelines.

Requires the ``[otel]`` extra (only the OpenTelemetry API at run time)."""
