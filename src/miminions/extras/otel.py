"""Placeholder while the otel extra is being built."""
