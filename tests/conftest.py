from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ocho.gateway.store import Store
from tests import infra

# The output cap of the store tests' stores: small, so that capping is easy to reach.
STORE_CAP = 2048


@pytest.fixture(scope="module")
def amqp_url() -> Iterator[str]:
    """A RabbitMQ vhost of this test module's own, deleted afterwards."""
    name, url = infra.create_vhost()
    yield url
    infra.delete_vhost(name)


@pytest.fixture
def fresh_amqp_url() -> Iterator[str]:
    """A vhost for one test, for tests that must start from empty queues."""
    name, url = infra.create_vhost()
    yield url
    infra.delete_vhost(name)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own, dropped afterwards."""
    name, url = infra.create_pg_database()
    yield url
    infra.drop_pg_database(name)


@pytest.fixture
def tools_dir(tmp_path: Path) -> Path:
    """The shipped tools and the test tools, copied so that a test may add its own."""
    return infra.clone_tools_dir(tmp_path / "tools")


@pytest.fixture
def tool_start(request: pytest.FixtureRequest) -> str:
    """OCHO_TOOL_START for a test's stack: warm (the default), or each way in
    turn for a test marked with infra.BOTH_STARTS."""
    return getattr(request, "param", "warm")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A job store of this test's own, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    else:
        url = request.getfixturevalue("pg_url")
    opened = Store(url, output_cap=STORE_CAP, pool_size=8)
    yield opened
    opened.close()
