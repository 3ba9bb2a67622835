"""Shared fixtures: the async backend for anyio's pytest plugin, hypothesis profiles."""

import os

import pytest
from hypothesis import HealthCheck, settings

# `make test` explores a fixed set of examples so CI is repeatable; `make soak`
# explores new ones on every run.
settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "soak", max_examples=2_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("soak" if os.environ.get("CRONSTACK_SOAK") else "ci")


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="session")
def pg_server():
    """A private PostgreSQL server for the session (tests/pg_server.py); skipped only without binaries."""
    from tests.pg_server import PgServer, skip_reason

    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    server = PgServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server):
    """The URL of a new, empty database on the private server, dropped after the test.

    Dropped at once rather than with the server: a session makes a few
    hundred databases of about 8 MB each, and deleting them all at the end
    took minutes on a loaded machine (past the last test's timeout).
    """
    url = pg_server.new_database()
    yield url
    pg_server.psql(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
