"""Placeholder while the prometheus extra is being built."""
