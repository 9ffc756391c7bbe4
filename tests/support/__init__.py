"""Test agents and helpers shared by the test suite (importable by module path)."""
