"""The first administrator, and how briefly the bootstrap token stays in the API's environment.

`TRAINYARD_BOOTSTRAP_TOKEN` is an administrator's token that never expires. A process's initial
environment stays readable in `/proc/<pid>/environ` for its whole life (removing the variable from
`os.environ` changes nothing there), so `trainyard-api serve` uses the token before it serves (the
administrator is created if nobody exists yet), then replaces itself (`execve`) with the same command
in an environment without it. The serving process, and every worker it starts, never holds the token;
it lives on only as its HMAC in the database. The server is also made not dumpable, so a process of
the same user cannot read its memory or environment (the secret key, the database's password).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from typing import NoReturn

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.access.catalogue import ensure_builtin_roles
from api.core.config import Settings
from api.core.db import create_engine, create_sessionmaker
from api.core.notify import Notifier
from api.core.security import ensure_bootstrap_admin

BOOTSTRAP_VARIABLE = "TRAINYARD_BOOTSTRAP_TOKEN"
PR_SET_DUMPABLE = 4


async def prepare_database(
    sessionmaker: async_sessionmaker[AsyncSession], key: bytes, token: str | None
) -> bool:
    """The built-in roles, and the first administrator holding `token` when nobody exists yet; whether
    the administrator was created."""
    async with sessionmaker() as session:
        await ensure_builtin_roles(session)
        created = token is not None and await ensure_bootstrap_admin(session, key, token)
        await session.commit()
    return created


async def use_bootstrap_token(settings: Settings) -> bool:
    """Before serving: what the token is for, done once, on a database already at its schema."""
    assert settings.bootstrap_token is not None
    engine = create_engine(settings)
    try:
        sessionmaker = create_sessionmaker(engine, Notifier())
        return await prepare_database(
            sessionmaker, settings.secret_key_bytes(), settings.bootstrap_token.get_secret_value()
        )
    finally:
        await engine.dispose()


def serve_without_bootstrap_token(argv: list[str]) -> NoReturn:
    """The same command again, its environment without the token."""
    environment = {name: value for name, value in os.environ.items() if name != BOOTSTRAP_VARIABLE}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "api.cli", *argv], environment)


def not_dumpable() -> None:
    """PR_SET_DUMPABLE 0 (Linux): no ptrace, no /proc/<pid>/environ or mem for the same uid."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
