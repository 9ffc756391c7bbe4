"""nox sessions: the test matrix, the README's check, lint, types, demo, bench.

``tests`` is the matrix: every Python in PYTHONS that is installed (missing ones are
skipped, not failed) x the core package alone, each extra alone, and all extras together.
``check`` is what the README's test command (and so ``.ci/run``) runs: the core alone, then
all extras together, on the interpreter nox itself runs on. Tests that need an extra's
package skip where it is not installed (``pytest.importorskip``).

    nox -s check                              # the README's test command
    nox -s tests                              # the whole matrix
    nox -s "tests-3.12(extra='uvloop')"       # one cell; nox -l lists them
    nox -s lint types                         # ruff; mypy on src/ and tests/
    nox -s bench -- --quick
"""

from __future__ import annotations

import tomllib

import nox

nox.options.sessions = ["check", "lint", "types"]
nox.options.reuse_existing_virtualenvs = True
# A developer rarely has every interpreter: the matrix runs on those that exist.
nox.options.error_on_missing_interpreters = False

PYTHONS = ["3.11", "3.12", "3.13"]


def dev_requirement(name: str) -> str:
    """The dev extra's requirement for ``name`` (pyproject.toml pins the linters there)."""
    with open("pyproject.toml", "rb") as file:
        dev = tomllib.load(file)["project"]["optional-dependencies"]["dev"]
    return next(req for req in dev if req.split("=")[0].split(">")[0].strip() == name)


CORE = "core"
EXTRAS = [CORE, "uvloop", "prometheus", "otel", "all"]


def install(session: nox.Session, extra: str) -> None:
    """Install the project (editable) with the dev tools and ``extra`` (``core``: none)."""
    extras = "dev" if extra == CORE else f"dev,{extra}"
    session.install("-e", f".[{extras}]")


def run_tests(session: nox.Session, extra: str) -> None:
    """The test suite with ``extra`` installed; pytest's arguments follow ``--``."""
    install(session, extra)
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHONS)
@nox.parametrize("extra", EXTRAS)
def tests(session: nox.Session, extra: str) -> None:
    """The test suite: the core alone, each extra alone, all extras together."""
    run_tests(session, extra)


@nox.session
@nox.parametrize("extra", [CORE, "all"])
def check(session: nox.Session, extra: str) -> None:
    """The README's test command: the core alone, then all extras, on nox's own Python."""
    run_tests(session, extra)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff format --check and ruff check."""
    session.install(dev_requirement("ruff"))
    session.run("ruff", "format", "--check", ".")
    session.run("ruff", "check", ".")


@nox.session
def types(session: nox.Session) -> None:
    """mypy --strict on src/, then on tests/ (with every extra installed, so their imports
    are checked)."""
    install(session, "all")
    session.run("mypy")  # the files pyproject.toml names: src/miminions
    session.run("mypy", "tests")


@nox.session
def demo(session: nox.Session) -> None:
    """Run the demo workload on a throw-away database."""
    session.install("-e", ".")
    session.run("miminions", "demo", "--db", f"{session.create_tmp()}/demo.db")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (pytest-benchmark), on uvloop and on the standard asyncio loop.

    Medians are printed and saved under .benchmarks/. ``nox -s bench -- --quick`` runs a
    short form with generous sanity bounds, on the default loop only (uvloop here).
    """
    install(session, "all")
    session.run("pytest", "benchmarks", "-p", "no:randomly", "--benchmark-only", *session.posargs)
