"""A ``miminions_machine_load`` plugin whose load the test sets."""

from __future__ import annotations

from miminions import hookimpl


class FixedLoad:
    """A plugin answering ``miminions_machine_load`` with a value the test sets."""

    def __init__(self, load: float) -> None:
        self.load = load

    @hookimpl
    def miminions_machine_load(self) -> float:
        """The load per CPU the test set."""
        return self.load
