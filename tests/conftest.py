"""Shared fixtures: real services, isolated tables, Celery apps for the tests.

Real-service fixtures skip a test when the service is down locally, and fail
it in CI (``CI=true``): nothing is silently skipped where it counts.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from support.connection_budget import (
    MARGIN,
    PATIENCE_SECONDS,
    ConnectionBudget,
    server_limit,
)

from celery_claim import ClaimStore

DATABASE_URL = os.environ.get(
    "CELERY_CLAIM_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CELERY_CLAIM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} is not reachable: {exc}"
    if IN_CI:
        pytest.fail(message + " (CI=true: real services are required)")
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _celery_process_state_is_left_as_found() -> Iterator[None]:
    """A test that leaves Celery's process-wide state changed fails itself.

    Building a worker in process (a prefork pool, ``WorkController``) marks
    ``result.get()`` as blocking for the whole process; left so, every later
    eager test in the same test process fails with "Never call result.get()
    within a task". The state is put back and the leaking test is named.
    """
    from celery import _state

    blocks = _state.task_join_will_block()
    yield
    if _state.task_join_will_block() != blocks:
        _state._set_task_join_will_block(blocks)
        pytest.fail("the test left Celery's task_join_will_block changed; "
                    "restore it (see worker_process_state in "
                    "tests/integration/test_worker_startup_and_time_limits.py)")


@pytest.fixture(scope="session")
def database_url() -> str:
    """The PostgreSQL server the integration tests use."""
    engine = sa.create_engine(DATABASE_URL)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        unavailable(f"PostgreSQL at {DATABASE_URL}", exc)
    finally:
        engine.dispose()
    return DATABASE_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis server the integration tests use as broker."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        unavailable(f"Redis at {REDIS_URL}", exc)
    finally:
        client.close()
    return REDIS_URL


def unique(prefix: str = "claims") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def table_name() -> str:
    """A table name no other test uses."""
    return unique()


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path}/claims.sqlite3"


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Each dialect in turn: the same semantics through the same code."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/claims.sqlite3"
    return str(request.getfixturevalue("database_url"))


def _drop(url: str, table: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}"'))
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}_fx"'))
            if conn.dialect.name == "postgresql":  # the claim's settle function
                conn.execute(sa.text(f'DROP FUNCTION IF EXISTS "{table}_settle"'))
    except sa.exc.OperationalError:
        pass  # a test of an unreachable database
    finally:
        engine.dispose()


def _fresh_store(url: str, table: str) -> Iterator[ClaimStore]:
    store = ClaimStore(url, table=table)
    store.create_schema()
    yield store
    store.dispose()
    _drop(url, table)



@pytest.fixture
def pg_store(database_url: str, table_name: str) -> Iterator[ClaimStore]:
    """A claim store on PostgreSQL with its own fresh table."""
    yield from _fresh_store(database_url, table_name)


@pytest.fixture
def store(any_url: str, table_name: str) -> Iterator[ClaimStore]:
    """A claim store on each dialect with its own fresh table."""
    yield from _fresh_store(any_url, table_name)


@pytest.fixture
def make_app(table_name: str) -> Iterator[Callable[..., Celery]]:
    """Build a Celery app whose claim store is ``url`` with this test's table."""
    made: list[tuple[Celery, str]] = []

    def make(url: str, **conf: Any) -> Celery:
        app = Celery(unique("app"), broker="memory://", backend="cache+memory://",
                     set_as_current=False)
        app.conf.update(claim_database_url=url, claim_table=table_name, **conf)
        made.append((app, url))
        return app

    yield make
    from celery_claim import task as task_module

    for app, url in made:
        for key, store in list(task_module._stores.items()):
            if key[1] == table_name:
                store.dispose()
                del task_module._stores[key]
        _drop(url, table_name)
        app.close()


#: Each directory under tests/ is one tier; a test gets its directory's marker.
TIERS = ("unit", "integration", "acceptance")
#: Directories of an optional part, with their tier and their group marker:
#: the Django app's tests use real PostgreSQL (some real workers) and Django.
GROUPS = {"django_claims": ("integration", "django")}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with exactly one tier, the directory it lives in."""
    root = config.rootpath / "tests"
    for item in items:
        try:
            tier = item.path.relative_to(root).parts[0]
        except ValueError:
            continue  # not under tests/ (a path given on the command line elsewhere)
        if tier in GROUPS:
            tier, group = GROUPS[tier]
            item.add_marker(getattr(pytest.mark, group))
        if tier not in TIERS:
            raise pytest.UsageError(
                f"{item.nodeid}: tests live in tests/{{{','.join([*TIERS, *GROUPS])}}}/")
        item.add_marker(getattr(pytest.mark, tier))


#: What a test of the acceptance tier opens at once unless it says otherwise
#: (``@pytest.mark.connections(n)``): two or three real workers, their pool
#: processes and heartbeats, the result backend, the test's own engines.
ACCEPTANCE_CONNECTIONS = 25
_budget: list[ConnectionBudget] = []


def connection_budget(config: pytest.Config) -> ConnectionBudget | None:
    """The run's shared budget, in a process of a pytest-xdist run (else None)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return None
    if not _budget:
        try:
            limit = server_limit(DATABASE_URL)
        except Exception:
            limit = 97  # PostgreSQL's default, less its reserved slots
        path = (Path(tempfile.gettempdir())
                / f"celery-claim-connections-{workerinput['testrunuid']}.json")
        _budget.append(ConnectionBudget(path, limit - MARGIN))
    return _budget[0]


def declared_connections(item: pytest.Item) -> int:
    marker = item.get_closest_marker("connections")
    if marker is not None:
        return int(marker.args[0])
    return ACCEPTANCE_CONNECTIONS if item.get_closest_marker("acceptance") else 0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item,
                            nextitem: pytest.Item | None) -> Generator[None, None, None]:
    """A test that opens many connections holds its share of the server's for
    its set-up, its run and its teardown (tests/support/connection_budget.py)."""
    count = declared_connections(item)
    budget = connection_budget(item.config) if count else None
    if budget is None:
        yield
        return
    with budget.hold(count) as waited:
        if waited >= 1.0:  # in --junitxml, beside the test's own durations
            item.user_properties.append(("connection_wait_seconds", round(waited, 1)))
        if waited > PATIENCE_SECONDS:
            warnings.warn(f"{item.nodeid} waited {waited:.0f} s for {count} PostgreSQL "
                          "connections and runs beyond the budget", stacklevel=1)
        yield


def pytest_unconfigure(config: pytest.Config) -> None:
    for budget in _budget:
        budget.remove_if_unused()
