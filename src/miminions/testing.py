"""Placeholder while the pytest plugin is being built."""
