"""Alembic environment: one synchronous connection, the URL from the API's own settings."""

from typing import Any, Literal

from alembic import context
from sqlalchemy import create_engine, pool

from api.models import Base
from api.models.base import UTCDateTime

config = context.config


def _url() -> str:
    url = config.attributes.get("url")
    if url is None:
        from api.core.config import Settings
        from api.core.db import sync_url

        url = sync_url(Settings().resolved_database_url)
    return str(url)


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _render_item(type_: str, obj: object, autogen_context: Any) -> str | Literal[False]:
    """Render our column types as plain SQLAlchemy ones, so migrations never import the app's code."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _run(connection: object) -> None:
    context.configure(
        render_item=_render_item,
        connection=connection,  # type: ignore[arg-type]
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite alters tables by copying them; batch mode does that for us
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported: run `trainyard-api migrate`")
run_migrations()
