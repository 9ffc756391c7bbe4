"""Waiting on state that changes in another task or process, with a bound: the pytest
plugin's :func:`miminions.testing.wait_until` (polls every 10 ms, fails the test naming what
it waited for after ``within`` seconds)."""

from __future__ import annotations

from miminions.testing import DEFAULT_TIMEOUT_SECONDS as WAIT_SECONDS
from miminions.testing import wait_until

__all__ = ["WAIT_SECONDS", "wait_until"]
