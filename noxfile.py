"""Developer tasks.  `nox -l` lists them; `nox` runs tests, lint and typecheck."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite (PostgreSQL tests are skipped when it is not installed)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff: style, imports, bugbear and async rules."""
    session.install("ruff")
    session.run("ruff", "check", "trio_periodic", "tests", "bench", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".", "mypy")
    session.run("mypy")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Load tests beside beanstalkd, gearmand and redis (`-- --quick`: a short run)."""
    session.install("-e", ".[bench,postgres]")
    session.run("python", "-m", "bench", *session.posargs)
