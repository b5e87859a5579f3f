"""One API process sweeps at a time (api/runs/sweeper.py `SweepClaim`): on PostgreSQL the holder of the
sweep's advisory lock, and another takes over when it stops or dies; on SQLite the only process.

These tests build their own engine rather than use the `app` fixture: the app's own sweeper takes the
claim at start-up and holds it for its parked hour (advisory locks are per database, and each test has
a database of its own). Every wait is a bound on waiting for a loop's tick, never a claim about speed.
"""

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.core.config import Settings
from api.core.db import create_engine, create_sessionmaker
from api.core.notify import Notifier
from api.runs.sweeper import SweepClaim, Sweeper
from tests.conftest import _pg_admin_connect

WAIT_SECONDS = 30.0
TICK = 0.02


class CountingSweeper(Sweeper):
    """A real sweeper that counts its sweeps."""

    sweeps = 0

    async def sweep_once(self) -> None:
        self.sweeps += 1
        await super().sweep_once()


@pytest.fixture
def fast(settings: Settings) -> Settings:
    return settings.model_copy(update={"sweep_interval": TICK})


@pytest.fixture
async def sessionmaker(fast: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(fast)
    try:
        yield create_sessionmaker(engine, Notifier())
    finally:
        await engine.dispose()


def _lock_holders(database_url: str) -> list[int]:
    """The backends holding an advisory lock in this test's database."""
    with _pg_admin_connect() as admin:
        rows = admin.execute(
            "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE l.locktype = 'advisory' AND l.granted AND d.datname = %s",
            (database_url.rpartition("/")[2],),
        ).fetchall()
    return [row[0] for row in rows]


def _terminate(pid: int) -> None:
    with _pg_admin_connect() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_SECONDS):
        while True:
            if condition():
                return
            await asyncio.sleep(TICK)


async def test_on_sqlite_the_one_process_always_sweeps(fast: Settings, is_postgres: bool) -> None:
    if is_postgres:
        pytest.skip("the SQLite half; PostgreSQL's is below")
    first, second = SweepClaim(fast), SweepClaim(fast)
    assert await first.held() and await second.held() and await first.held()


async def test_one_claim_at_a_time_passed_on_when_released_or_its_holder_dies(
    fast: Settings, database_url: str, is_postgres: bool
) -> None:
    if not is_postgres:
        pytest.skip("the claim is PostgreSQL's")
    a, b = SweepClaim(fast), SweepClaim(fast)
    try:
        assert await a.held()
        assert not await b.held()
        assert await a.held() and not await b.held()  # kept at every check, and still refused
        (holder,) = _lock_holders(database_url)

        await a.release()  # a replica shutting down
        assert await b.held()
        assert not await a.held()
        (second_holder,) = _lock_holders(database_url)
        assert second_holder != holder

        _terminate(second_holder)  # b's replica dies: its connection and the lock go with it
        await _until(lambda: _lock_holders(database_url) == [])
        assert await a.held()
        assert not await b.held()  # b finds its connection dead, reconnects, and is refused
        assert len(_lock_holders(database_url)) == 1
    finally:
        await a.release()
        await b.release()
    assert _lock_holders(database_url) == []


async def test_two_sweepers_racing_only_one_sweeps_and_another_takes_over(
    fast: Settings,
    database_url: str,
    is_postgres: bool,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    if not is_postgres:
        pytest.skip("one API process on SQLite: nothing to race")
    sweepers = [CountingSweeper(sessionmaker, Notifier(), fast) for _ in range(2)]
    tasks = [asyncio.create_task(s.run_forever()) for s in sweepers]
    try:
        await _until(lambda: sum(s.sweeps for s in sweepers) >= 20)
        leader, other = sorted(sweepers, key=lambda s: s.sweeps, reverse=True)
        assert other.sweeps == 0, [s.sweeps for s in sweepers]

        # The leader's replica dies: its connection ends and its loop never runs again (both in one
        # synchronous step, so the loop gets no tick in between).
        (holder,) = _lock_holders(database_url)
        _terminate(holder)
        tasks[sweepers.index(leader)].cancel()
        stopped_at = leader.sweeps
        await _until(lambda: other.sweeps >= 5)
        assert leader.sweeps == stopped_at
        (new_holder,) = _lock_holders(database_url)
        assert new_holder != holder
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert _lock_holders(database_url) == []  # each loop gave its claim up when it stopped
