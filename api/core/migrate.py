"""Schema migrations from code: upgrade, downgrade, and the start-up check that the schema is current.

Serving never imports alembic (with mako and pygments, ~10 MiB in every API process): the check reads
the revisions from the migration files and the database's `alembic_version` table itself.
`tests/api/test_migrations.py` holds the two readings equal to alembic's own.
"""

import ast
import functools
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, NullPool, create_engine, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations
from api.core.db import sync_url

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATE_COMMAND = "trainyard-api migrate"
VERSIONS_DIR = Path(migrations.__file__).parent / "versions"
VERSION_TABLE = "alembic_version"


def alembic_config(database_url: str) -> "Config":
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["url"] = sync_url(database_url)
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(database_url), revision)


def _revision_links(source: str) -> tuple[str, set[str]]:
    """A migration file's `revision` and the revisions it follows (`down_revision`, str or tuple)."""
    values: dict[str, object] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            for target in targets:
                if isinstance(target, ast.Name) and node.value is not None:
                    values[target.id] = node.value
    revision = values.get("revision")
    if not isinstance(revision, ast.expr):
        raise ValueError("a migration without `revision`")
    down = values.get("down_revision")
    parents = ast.literal_eval(down) if isinstance(down, ast.expr) else None
    if parents is None:
        return str(ast.literal_eval(revision)), set()
    return str(ast.literal_eval(revision)), {parents} if isinstance(parents, str) else set(parents)


def head_revisions(versions_dir: Path = VERSIONS_DIR) -> set[str]:
    """The revisions no other migration follows: what `alembic heads` prints."""
    return set(_heads(versions_dir))


@functools.cache  # parsing every revision took ~30 ms of a CPU, at each app's start
def _heads(versions_dir: Path) -> frozenset[str]:
    revisions: set[str] = set()
    followed: set[str] = set()
    for path in versions_dir.glob("*.py"):
        revision, parents = _revision_links(path.read_text(encoding="utf-8"))
        revisions.add(revision)
        followed |= parents
    return frozenset(revisions - followed)


def current_revisions(connection: Connection) -> set[str]:
    """The database's revisions as alembic records them; none for a database it never touched."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return set()
    return {row[0] for row in connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))}


async def schema_problem(engine: AsyncEngine, heads: set[str]) -> str | None:
    """None when the database is at the code's head revision, else what is wrong and how to fix it."""
    async with engine.connect() as connection:
        current = await connection.run_sync(current_revisions)
    return _describe(current, heads)


def schema_problem_now(database_url: str) -> str | None:
    """The same check, synchronously, for the command line before it starts a server."""
    engine = create_engine(sync_url(database_url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            current = current_revisions(connection)
    finally:
        engine.dispose()
    return _describe(current, head_revisions())


def _describe(current: set[str], heads: set[str]) -> str | None:
    if current == heads:
        return None
    if not current:
        return f"the database has no schema yet: run `{MIGRATE_COMMAND}`"
    return (
        f"the database schema is at {', '.join(sorted(current))} but this version needs "
        f"{', '.join(sorted(heads))}: run `{MIGRATE_COMMAND}`"
    )
