"""nox sessions: tests, lint, types, demo, bench (see README for the quick start)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "types"]
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.11", "3.12", "3.13"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite on the core package (no extras)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff format --check and ruff check."""
    session.install("ruff>=0.6")
    session.run("ruff", "format", "--check", ".")
    session.run("ruff", "check", ".")


@nox.session
def types(session: nox.Session) -> None:
    """mypy --strict on src/."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def demo(session: nox.Session) -> None:
    """Run the demo workload on a throw-away database."""
    session.install("-e", ".")
    session.run("miminions", "demo", "--db", f"{session.create_tmp()}/demo.db")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (pytest-benchmark); medians are printed and saved under .benchmarks/.

    ``nox -s bench -- --quick`` runs a short form with generous sanity bounds (used by CI).
    """
    session.install("-e", ".[dev]")
    session.run("pytest", "benchmarks", "-p", "no:randomly", "--benchmark-only", *session.posargs)
