"""Integrations with other frameworks: ``pytest`` (a plugin and a test harness), ``fastapi``,
``django``, ``otel`` (OpenTelemetry tracing). Each is optional and imports its framework only
when used."""
