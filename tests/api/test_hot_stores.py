"""The hot operations' two implementations, on the same inputs, give the same answers and leave the same
rows: the poll's `PollStore` and a telemetry batch's `BatchStore`, each called directly on SQLite and on
PostgreSQL, their transcripts (answers, then the rows they touched, ids named by role) compared."""

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text, update

from api.agent_routes.poll_store import PostgresPolls, SqlitePolls, poll_store
from api.core.config import Settings
from api.core.security import token_hmac
from api.main import create_app
from api.models import Run
from api.telemetry import wire
from api.telemetry.ingest import PostgresBatches, SqliteBatches, batch_store
from tests.api.test_telemetry import batch
from tests.api.world import agent_client, make_world, report, start_run, take_commands
from tests.conftest import ADMIN_TOKEN, DATABASES, SECRET_KEY, _pg_admin_connect, _pg_url

Transcript = list[Any]


@pytest.fixture
async def apps(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[dict[str, FastAPI]]:
    """A freshly migrated app on each database."""
    if "postgresql" not in DATABASES or "sqlite" not in DATABASES:
        pytest.skip("comparing the two implementations needs both databases")
    sqlite_path = tmp_path / "trainyard.db"
    shutil.copyfile(request.getfixturevalue("sqlite_template"), sqlite_path)
    name = f"trainyard_hot_{uuid.uuid4().hex[:12]}"
    with _pg_admin_connect() as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{request.getfixturevalue("postgres_template")}"')
    urls = {"sqlite": f"sqlite:///{sqlite_path}", "postgresql": _pg_url(name)}
    made: dict[str, FastAPI] = {}
    try:
        for database, url in urls.items():
            settings = Settings(
                data_dir=tmp_path / f"data-{database}",
                database_url=url,
                bootstrap_token=ADMIN_TOKEN,  # type: ignore[arg-type]
                secret_key=SECRET_KEY,  # type: ignore[arg-type]
                sweep_interval=3600,
            )
            made[database] = create_app(settings)
        sqlite, postgres = made["sqlite"], made["postgresql"]
        async with sqlite.router.lifespan_context(sqlite), postgres.router.lifespan_context(postgres):
            yield made
    finally:
        with _pg_admin_connect() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin(app: FastAPI) -> AsyncClient:
    return AsyncClient(
        transport=ASGITransport(app=app),
        base_url="http://trainyard.test/api/v1",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )


async def _rows(app: FastAPI, query: str, **parameters: Any) -> list[tuple[Any, ...]]:
    async with app.state.engine.connect() as connection:
        return [tuple(row) for row in (await connection.execute(text(query), parameters)).all()]


async def _poll_transcript(app: FastAPI) -> Transcript:
    async with _admin(app) as client:
        world = await make_world(client)
        run = await start_run(client, world)
    machine_id = uuid.UUID(str((await _rows(app, "SELECT id FROM machines"))[0][0]))  # hex or uuid
    names = {machine_id: "machine", uuid.UUID(run["id"]): "run"}
    digest = token_hmac(app.state.token_key, world.agent_token)
    store = poll_store(app.state.engine)
    transcript: Transcript = []

    async def poll(token_digest: str, take: bool) -> None:
        taken = await store.poll(token_digest, take)
        if taken is None:
            transcript.append(None)
            return
        commands = [(c.kind.value, names[c.run_id], sorted(c.payload)) for c in taken.commands]
        transcript.append((names[taken.machine_id], commands))
        transcript.append(
            await _rows(
                app,
                "SELECT kind, state, delivery_count, delivered_at IS NOT NULL FROM agent_commands "
                "ORDER BY kind",
            )
        )
        transcript.append(await _rows(app, "SELECT last_seen_at IS NOT NULL FROM machines"))
        transcript.append(await _rows(app, "SELECT agent_offline FROM runs"))

    await poll("0" * 64, True)  # nobody's token
    await poll(digest, False)  # a poll that will be refused 422: it takes nothing, writes nothing
    await poll(digest, True)
    await poll(digest, True)  # not acknowledged: delivered again
    async with app.state.engine.begin() as connection:
        await connection.execute(update(Run).values(agent_offline=True))
    await poll(digest, True)  # clears the flag
    return transcript


async def test_the_polls_two_implementations_answer_and_write_alike(apps: dict[str, FastAPI]) -> None:
    assert isinstance(poll_store(apps["sqlite"].state.engine), SqlitePolls)
    assert isinstance(poll_store(apps["postgresql"].state.engine), PostgresPolls)
    on_sqlite = await _poll_transcript(apps["sqlite"])
    on_postgres = await _poll_transcript(apps["postgresql"])
    assert on_sqlite == on_postgres
    # And what they agree on is the poll's contract, not two equal mistakes.
    assert on_sqlite[0] is None and on_sqlite[1] == ("machine", [])
    assert on_sqlite[3] == [(False,)]  # the refused poll left the machine unseen
    assert [command[:2] for command in on_sqlite[5][1]] == [("start_run", "run")]
    assert on_sqlite[6] == [("start_run", "delivered", 1, True)] and on_sqlite[7] == [(True,)]
    assert on_sqlite[10][0] == ("start_run", "delivered", 2, True)
    assert on_sqlite[-1] == [(False,)]  # the offline flag, set, cleared by the last poll


async def _batch_transcript(app: FastAPI) -> Transcript:
    async with _admin(app) as client:
        world = await make_world(client)
        run = await start_run(client, world)
    async with agent_client(app, world.agent_token) as agent:
        await take_commands(agent)
        await report(agent, run["id"], "launched")
    run_id = uuid.UUID(run["id"])
    digest = token_hmac(app.state.token_key, world.agent_token)
    store = batch_store(app.state.engine, app.state.sessionmaker, app.state.notifier)
    points = [("loss", float(step), 1.0 / (step + 1)) for step in range(300)]
    points += [("acc", float(step), step / 300) for step in range(0, 300, 7)]
    bodies = {
        1: batch(1, points[:200], ["one", "two\x00three"]),
        2: batch(2, points[200:], ["four"], progress=0.5, stage="train", eta_seconds=12.0),
        3: batch(3, [("loss", 400.0, -1.0)]),
    }
    transcript: Transcript = []
    for token_digest, run_key, seq in [
        (digest, run_id, 1),
        (digest, run_id, 1),  # a repeat
        (digest, run_id, 3),  # from beyond a gap
        ("0" * 64, run_id, 2),  # nobody's token
        (digest, uuid.uuid4(), 2),  # not the machine's run
        (digest, run_id, 2),
        (digest, run_id, 3),
    ]:
        outcome = await store.store(token_digest, run_key, wire.from_json(orjson.dumps(bodies[seq])))
        transcript.append(tuple(outcome))
    for query in (
        "SELECT acked_through, point_count, log_count FROM run_telemetry",
        "SELECT name, count, last_step, last_value, last_time FROM metric_series ORDER BY name",
        "SELECT s.name, p.idx, p.step, p.value, p.time FROM metric_points p "
        "JOIN metric_series s ON s.id = p.series_id ORDER BY p.idx",
        "SELECT s.name, r.level, r.bucket, r.count, r.min_idx, r.min_step, r.min_value, r.min_time, "
        "r.max_idx, r.max_step, r.max_value, r.max_time FROM metric_rollups r "
        "JOIN metric_series s ON s.id = r.series_id ORDER BY s.name, r.level, r.bucket",
        "SELECT idx, stream, time, text FROM run_log_lines ORDER BY idx",
        "SELECT progress, eta_seconds, stage FROM runs",
    ):
        transcript.append(await _rows(app, query))
    return transcript


async def test_a_batchs_two_implementations_answer_and_store_alike(apps: dict[str, FastAPI]) -> None:
    sqlite, postgres = apps["sqlite"].state, apps["postgresql"].state
    assert isinstance(batch_store(sqlite.engine, sqlite.sessionmaker, sqlite.notifier), SqliteBatches)
    assert isinstance(batch_store(postgres.engine, postgres.sessionmaker, postgres.notifier), PostgresBatches)
    on_sqlite = await _batch_transcript(apps["sqlite"])
    on_postgres = await _batch_transcript(apps["postgresql"])
    assert on_sqlite == on_postgres
    running = "running"
    assert on_sqlite[:7] == [
        (True, running, None),
        (True, running, 1),
        (True, running, 1),
        (False, None, None),
        (True, None, None),
        (True, running, None),
        (True, running, None),
    ]
    assert on_sqlite[7] == [(3, 344, 3)]
    assert [row[3] for row in on_sqlite[11]] == ["one", "two\\x00three", "four"]
    assert on_sqlite[12] == [(0.5, 12.0, "train")]
