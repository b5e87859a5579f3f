"""Fixtures: every test gets its own freshly migrated database, on SQLite and on PostgreSQL.

The schema is built by the real migrations once per session (a template database on PostgreSQL, a
file on SQLite) and copied per test, so tests are isolated even when they race requests on purpose.
Set TRAINYARD_TEST_DATABASES=sqlite to run on one database only while developing; CI runs both.
PostgreSQL is TRAINYARD_TEST_POSTGRES_URL's server, else the default address's, else a private server
this session starts and removes (`pytest_configure` below, docs/testing.md).
"""

import gc
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from api.core.config import Settings
from api.core.migrate import upgrade
from api.main import create_app
from tests.private_postgres import PrivatePostgres, answers

ADMIN_TOKEN = "bootstrap-token-for-tests-0123456789abcdef"
SECRET_KEY = "secret-key-for-tests-0123456789abcdefghijkl"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
# Final once pytest_configure ran, before any test module is imported (they import it by value).
POSTGRES_URL = os.environ.get("TRAINYARD_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL
DATABASES = os.environ.get("TRAINYARD_TEST_DATABASES", "sqlite,postgresql").split(",")
_private_postgres: PrivatePostgres | None = None


def pytest_configure(config: pytest.Config) -> None:
    """With TRAINYARD_TEST_POSTGRES_URL unset and nothing answering at the default address, start a
    PostgreSQL of the session's own, stopped and removed at the end. Its URL goes into the environment
    too: the `trainyard-api` processes tests start are handed URLs built from it, and pytest-xdist's
    workers (started after this hook, with the controller's environment) find it set and share it."""
    global POSTGRES_URL, _private_postgres
    if "postgresql" not in DATABASES or os.environ.get("TRAINYARD_TEST_POSTGRES_URL"):
        return
    if answers(DEFAULT_POSTGRES_URL):
        return
    _private_postgres = PrivatePostgres.start()
    config.add_cleanup(_private_postgres.stop)
    POSTGRES_URL = os.environ["TRAINYARD_TEST_POSTGRES_URL"] = _private_postgres.url
    config.add_cleanup(lambda: os.environ.pop("TRAINYARD_TEST_POSTGRES_URL", None))


# Dispatched first (pytest-xdist hands files out in collection order, `--dist loadfile`): the longest
# files, so that none of them starts last and runs on alone while the other workers are idle.
_LONGEST_FIRST = (
    "tests/e2e/test_slurm.py",
    "tests/api/test_package_refusals.py",
    "tests/api/test_schemathesis.py",
    "tests/e2e/",
    "tests/console/",
    "tests/cli/",
)


def _dispatch_rank(item: pytest.Item) -> int:
    path = item.path.relative_to(item.config.rootpath).as_posix()
    return next(
        (rank for rank, prefix in enumerate(_LONGEST_FIRST) if path.startswith(prefix)), len(_LONGEST_FIRST)
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_dispatch_rank)  # stable: a file's tests keep their order


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection built (every module, the app's models, FastAPI's and pydantic's schemas) frozen
    out of the garbage collector's reach, and young objects collected less often: a full collection
    walked that whole heap every few tests, a fifth of tests/api/test_package_refusals.py's time on
    SQLite (111 s, 98 s with the freeze, 85 s with both). Cycles still get collected, just less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def pytest_report_header() -> str:
    if _private_postgres is not None:
        return (
            f"postgresql: a private server at {POSTGRES_URL} in {_private_postgres.root} (removed at the end)"
        )
    return f"postgresql: {POSTGRES_URL}"


def _pg_admin_connect() -> psycopg.Connection:
    return psycopg.connect(POSTGRES_URL, autocommit=True)


def _pg_url(database: str) -> str:
    base, _, _ = POSTGRES_URL.rpartition("/")
    return f"{base}/{database}"


@pytest.fixture(autouse=True)
def _umask_kept() -> Iterator[None]:
    """The umask as it was before each test, after it. A test that runs `trainyard-api` in this process
    (api.cli.main) leaves the service's private umask (077) behind, and what this worker wrote next was
    unreadable to other users: a session's slurm.conf, started later, refused TRAINYARD_RUN_AS's sbatch."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("schema") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    name = f"trainyard_tpl_{os.getpid()}"
    try:
        admin = _pg_admin_connect()
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL}: {error}")
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    upgrade(_pg_url(name))
    yield name
    with _pg_admin_connect() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database of its own for this test."""
    if request.param == "sqlite":
        path = tmp_path / "trainyard.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    template = request.getfixturevalue("postgres_template")
    name = f"trainyard_t_{uuid.uuid4().hex[:12]}"
    with _pg_admin_connect() as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield _pg_url(name)
    with _pg_admin_connect() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def scratch_postgres() -> Iterator[str]:
    """An empty PostgreSQL database, not migrated: for tests that run `trainyard-api` processes."""
    if "postgresql" not in DATABASES:
        pytest.skip("TRAINYARD_TEST_DATABASES leaves PostgreSQL out")
    name = f"trainyard_cli_{uuid.uuid4().hex[:12]}"
    with _pg_admin_connect() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield _pg_url(name)
    with _pg_admin_connect() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settings_for(database_url: str, tmp_path: Path, **fields: Any) -> Settings:
    """The tests' settings: a data dir in `tmp_path`, the admin's token, the sweeper parked (tests that
    need the clock call Sweeper.sweep_once() themselves), then `fields` (a module's own)."""
    fields = {"sweep_interval": 3600, **fields}
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        bootstrap_token=ADMIN_TOKEN,  # type: ignore[arg-type]
        secret_key=SECRET_KEY,  # type: ignore[arg-type]
        **fields,
    )


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return settings_for(database_url, tmp_path)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def anon(app: FastAPI) -> AsyncIterator[AsyncClient]:
    """A client with no token."""
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://trainyard.test") as client:
        yield client


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[AsyncClient]:
    """The bootstrap administrator."""
    async with AsyncClient(
        transport=ASGITransport(app=app),
        base_url="http://trainyard.test/api/v1",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as client:
        yield client


@pytest.fixture
def is_postgres(database_url: str) -> bool:
    return database_url.startswith("postgresql")
