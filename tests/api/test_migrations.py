"""The migrations, on SQLite and PostgreSQL: up from nothing, equal to the models, down to nothing, up again.

Each test makes a scratch database of its own (not the per-test copy of the migrated template), since
what is tested here is the way from an empty database.
"""

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from httpx import ASGITransport, AsyncClient
from sqlalchemy import Engine, create_engine, inspect, text

from api.cli import main as cli_main
from api.core.config import Settings
from api.core.db import sync_url
from api.core.migrate import (
    MIGRATE_COMMAND,
    alembic_config,
    current_revisions,
    downgrade,
    head_revisions,
    upgrade,
)
from api.main import SchemaNotCurrent, create_app
from api.models import Base
from tests.api.world import ok
from tests.conftest import ADMIN_TOKEN, DATABASES, SECRET_KEY, _pg_admin_connect, _pg_url


@pytest.fixture(params=DATABASES)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with nothing in it at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"trainyard_mig_{uuid.uuid4().hex[:12]}"
    with _pg_admin_connect() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield _pg_url(name)
    with _pg_admin_connect() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def engine(empty_database: str) -> Iterator[Engine]:
    engine = create_engine(sync_url(empty_database))
    yield engine
    engine.dispose()


def _settings(database_url: str, data_dir: Path, **extra: Any) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        bootstrap_token=ADMIN_TOKEN,
        secret_key=SECRET_KEY,
        sweep_interval=3600,
        **extra,
    )


def _schema_differences(engine: Engine) -> list[Any]:
    """What `alembic check` would find: the migrated schema against the models."""
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, Base.metadata))


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def _current(engine: Engine) -> set[str]:
    """alembic's reading of the database's revisions, held equal to the app's own (which serves
    without importing alembic)."""
    with engine.connect() as connection:
        theirs = set(MigrationContext.configure(connection).get_current_heads())
        assert current_revisions(connection) == theirs
    return theirs


def _leftover_types(engine: Engine) -> list[str]:
    """Enum types and sequences a downgrade forgot (PostgreSQL only)."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as connection:
        types = connection.execute(
            text(
                "SELECT typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                "WHERE n.nspname = 'public' AND t.typtype = 'e'"
            )
        ).scalars()
        sequences = connection.execute(
            text("SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema = 'public'")
        ).scalars()
        return [*types, *sequences]


def test_upgrade_matches_the_models_and_downgrade_removes_everything(
    empty_database: str, engine: Engine
) -> None:
    heads = head_revisions()
    assert len(heads) == 1, f"the migrations have several heads: {heads}"
    model_tables = set(Base.metadata.tables)

    upgrade(empty_database)
    assert _current(engine) == heads
    assert _tables(engine) == model_tables | {"alembic_version"}
    assert _schema_differences(engine) == []

    downgrade(empty_database, "base")
    assert _tables(engine) == {"alembic_version"}
    assert _current(engine) == set()
    assert _leftover_types(engine) == []

    upgrade(empty_database)
    assert _current(engine) == heads
    assert _schema_differences(engine) == []
    upgrade(empty_database)  # a second upgrade at head does nothing
    assert _current(engine) == heads


def test_the_heads_read_without_alembic_are_alembics(empty_database: str) -> None:
    theirs = set(ScriptDirectory.from_config(alembic_config(empty_database)).get_heads())
    assert head_revisions() == theirs


def test_heads_of_a_branched_history(tmp_path: Path) -> None:
    """Two branches off one root, merged, then a third branch: the heads are the merge and the third."""
    graph = {"a1": None, "b2": "'a1'", "c3": "'a1'", "d4": "('b2', 'c3')", "e5": "'a1'"}
    for revision, down in graph.items():
        (tmp_path / f"{revision}.py").write_text(
            f'"""{revision}"""\nrevision: str = "{revision}"\ndown_revision = {down}\n'
        )
    assert head_revisions(tmp_path) == {"d4", "e5"}


def test_every_revision_downgrades_and_upgrades_step_by_step(empty_database: str, engine: Engine) -> None:
    assert _current(engine) == set()  # no alembic_version table at all
    upgrade(empty_database)
    steps = 0
    while _current(engine):
        downgrade(empty_database, "-1")
        steps += 1
        assert steps < 1000
    assert _tables(engine) == {"alembic_version"}
    for _ in range(steps):
        upgrade(empty_database, "+1")
    assert _current(engine) == head_revisions()
    assert _schema_differences(engine) == []


async def test_the_app_refuses_an_unmigrated_database(
    empty_database: str, engine: Engine, tmp_path: Path
) -> None:
    app = create_app(_settings(empty_database, tmp_path / "data"))
    with pytest.raises(SchemaNotCurrent, match=f"run `{MIGRATE_COMMAND}`") as refused:
        async with app.router.lifespan_context(app):
            pytest.fail("the app started on an empty database")
    assert MIGRATE_COMMAND == "trainyard-api migrate"
    assert "no schema" in str(refused.value)
    assert _tables(engine) <= {"alembic_version"}  # it created nothing, not even the admin


async def test_the_app_refuses_a_schema_of_another_version(
    empty_database: str, engine: Engine, tmp_path: Path
) -> None:
    upgrade(empty_database)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed0000'"))
    app = create_app(_settings(empty_database, tmp_path / "data"))
    with pytest.raises(SchemaNotCurrent, match="trainyard-api migrate") as refused:
        async with app.router.lifespan_context(app):
            pytest.fail("the app started on a schema of another version")
    assert "f00dfeed0000" in str(refused.value)
    assert next(iter(head_revisions())) in str(refused.value)


async def test_migrate_then_the_app_starts_and_is_ready(
    empty_database: str, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`trainyard-api migrate` with the settings from the environment, then a start on that database.
    Migrate installs the built-in base packages too (its own event loop: in a thread, off this one)."""
    monkeypatch.setenv("TRAINYARD_DATABASE_URL", empty_database)
    monkeypatch.setenv("TRAINYARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TRAINYARD_SECRET_KEY", SECRET_KEY)
    # the base packages' own command refuses a database that is not at its schema
    assert await asyncio.to_thread(cli_main, ["base-packages", "install"]) == 2
    assert await asyncio.to_thread(cli_main, ["migrate"]) == 0
    assert _current(engine) == head_revisions()
    assert await asyncio.to_thread(cli_main, ["migrate"]) == 0  # idempotent
    assert await asyncio.to_thread(cli_main, ["base-packages", "install"]) == 0
    with engine.connect() as connection:
        catalogue = connection.execute(
            text("SELECT name, highest_major FROM packages WHERE project_id IS NULL ORDER BY name")
        ).all()
    assert [tuple(row) for row in catalogue] == [("image-classifier", 1), ("tabular-classifier", 1)]

    app = create_app(_settings(empty_database, tmp_path / "data"))
    async with (
        app.router.lifespan_context(app),
        AsyncClient(transport=ASGITransport(app=app), base_url="http://trainyard.test") as anon,
    ):
        assert ok(await anon.get("/readyz")) == {"status": "ready"}
        listed = ok(await anon.get("/api/v1/projects", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}))
        assert listed == {"items": [], "next_cursor": None}
