"""Logging in: a person's password for a token good for 8 hours, with guessing bounded.

A login is two short units of work around the argon2 check, which holds no database connection (on
SQLite the API has one connection, and argon2 takes tens of milliseconds on purpose):

1. the claim: one conditional upsert counts the attempt against the username, only while the name is
   not locked; the user's hash is read; commit. Only an attempt that claimed verifies, so concurrent
   guesses verify at most MAX_LOGIN_FAILURES passwords between them, on every replica together.
2. argon2, in a worker thread, as many at once as the gate allows (api/access/login_gate.py).
3. on success: the user's row read again under a lock (a password changed or a user disabled meanwhile
   refuses the login), the count cleared, the token added; the session dependency commits.

Every refusal reads the same and takes as long: an unknown name is verified against a dummy hash, and
is counted alike, so a lock says nothing of whether a name exists.
"""

import math
import unicodedata
from datetime import datetime, timedelta

from sqlalchemy import case, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.access.login_gate import LoginGate
from api.core.errors import TooManyRequests, Unauthorized
from api.core.repository import dialect_insert
from api.core.security import new_token, token_hmac
from api.core.unit_of_work import commit_early
from api.models import ApiToken, AuditEvent, LoginFailures, User
from api.models.base import utcnow

LOGIN_TOKEN_LIFETIME = timedelta(hours=8)
LOGIN_FAILURE_WINDOW = timedelta(minutes=15)
MAX_LOGIN_FAILURES = 10


def _refused() -> Unauthorized:
    return Unauthorized("the username or the password is not right", code="invalid_credentials")


async def _claim_attempt(session: AsyncSession, name_key: str, now: datetime) -> bool:
    """Count one more attempt for the name, unless it is locked (MAX_LOGIN_FAILURES attempts in a
    window that has not ended): one conditional upsert, so of concurrent attempts exactly as many claim
    as the limit leaves room for. A window that ended starts again from this attempt."""
    expired = LoginFailures.window_started_at <= now - LOGIN_FAILURE_WINDOW
    statement = (
        dialect_insert(session)(LoginFailures)
        .values(name_hmac=name_key, failures=1, window_started_at=now)
        .on_conflict_do_update(
            index_elements=["name_hmac"],
            set_={
                "failures": case((expired, 1), else_=LoginFailures.failures + 1),
                "window_started_at": case((expired, now), else_=LoginFailures.window_started_at),
            },
            where=or_(expired, LoginFailures.failures < MAX_LOGIN_FAILURES),
        )
        .returning(LoginFailures.failures)
    )
    return (await session.execute(statement)).first() is not None


async def _locked(session: AsyncSession, name_key: str, now: datetime) -> TooManyRequests:
    started = await session.scalar(
        select(LoginFailures.window_started_at).where(LoginFailures.name_hmac == name_key)
    )
    wait = 1 if started is None else math.ceil((started + LOGIN_FAILURE_WINDOW - now).total_seconds())
    return TooManyRequests(
        f"too many failed logins for this name; try again in {max(1, wait)} s",
        code="too_many_login_attempts",
        retry_after=wait,
    )


async def login(
    session: AsyncSession, key: bytes, gate: LoginGate, address: str, username: str, password: str
) -> tuple[User, ApiToken, str]:
    """A short-lived token for a person's password (module docstring). Refusals: 429
    `login_rate_limited` (the gate's buckets), 429 `too_many_login_attempts` (the name is locked, the
    right password included, until its window ends), 401 `invalid_credentials`."""
    name = unicodedata.normalize("NFC", username)
    name_key = token_hmac(key, f"login:{name}")
    gate.admit(address, name_key)
    if not await _claim_attempt(session, name_key, utcnow()):
        raise await _locked(session, name_key, utcnow())
    user = await session.scalar(select(User).where(User.name == name))
    password_hash = None if user is None else user.password_hash
    await commit_early(session, "the claim stands whatever follows; no connection is held over argon2")
    good = await gate.verify(password_hash, password)
    if user is None or not good or not user.enabled:
        raise _refused()

    # The row again, locked (PostgreSQL): a reset of the password or a disabling that committed
    # meanwhile refuses this login; one that comes after waits, then ends the token added here.
    current = await session.scalar(
        select(User).where(User.id == user.id).with_for_update().execution_options(populate_existing=True)
    )
    if current is None or not current.enabled or current.password_hash != password_hash:
        raise _refused()
    now = utcnow()
    await session.execute(delete(LoginFailures).where(LoginFailures.name_hmac == name_key))
    # Sessions that ended are of no use to anyone: each login clears its user's.
    await session.execute(
        delete(ApiToken).where(
            ApiToken.user_id == current.id, ApiToken.kind == "login", ApiToken.expires_at < now
        )
    )
    token = new_token()
    row = ApiToken(
        user_id=current.id,
        name="login",
        kind="login",
        token_hmac=token_hmac(key, token),
        expires_at=now + LOGIN_TOKEN_LIFETIME,
    )
    session.add(row)
    await session.flush()
    session.add(
        AuditEvent(
            actor_kind="user",
            actor_id=current.id,
            actor_name=current.name,
            token_id=row.id,
            action="auth_login",
            method="POST",
            path="/api/v1/auth/login",
        )
    )
    return current, row, token


async def forget_ended_login_failures(session: AsyncSession, now: datetime) -> None:
    """Drop the counts whose window has ended (the sweeper's, so guesses at random names do not pile
    up rows): such a count would start again from one anyway."""
    await session.execute(
        delete(LoginFailures).where(LoginFailures.window_started_at <= now - LOGIN_FAILURE_WINDOW)
    )
