"""Process schedules (api/schedules/): the routes, and the firing driven with an injected `now`.

The app's own firing loop is parked (the `settings` fixture below); each test calls
`ScheduleFiring.fire_due(now)` itself, so a firing a day or a season away is reached by naming the
time, never by waiting for it. The last test runs two real `trainyard-api serve` processes on one
PostgreSQL database, their loops live, and counts the runs a due schedule made.
"""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import func, select

from api.core.config import Settings
from api.core.db import create_engine, create_sessionmaker
from api.models import Run
from api.schedules.firing import ScheduleFiring
from tests.api.access_kit import member_token
from tests.api.conftest import DatabaseDump, text_of
from tests.api.test_cli import CLEAN_EXIT, http, serving, trainyard_api
from tests.api.test_permission_matrix import client_for
from tests.api.world import World, add_process, make_world, ok, problem
from tests.conftest import ADMIN_TOKEN, SECRET_KEY


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The conftest's settings with the app's firing loop parked, as the sweeper is."""
    return settings.model_copy(update={"schedule_interval": 3600})


def firing(app: FastAPI) -> ScheduleFiring:
    return ScheduleFiring(app.state.sessionmaker, app.state.notifier, app.state.settings)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


async def put_schedule(client: AsyncClient, world: World, **body: Any) -> dict[str, Any]:
    schedule: dict[str, Any] = ok(await client.put(f"{world.process_path}/schedule", json=body))
    return schedule


async def get_schedule(client: AsyncClient, world: World) -> dict[str, Any]:
    schedule: dict[str, Any] = ok(await client.get(f"{world.process_path}/schedule"))
    return schedule


async def process_events(client: AsyncClient, world: World, kind: str | None = None) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = ok(
        await client.get(f"{world.process_path}/events", params={"limit": 200})
    )["items"]
    return [e for e in events if kind is None or e["kind"] == kind]


async def run_count(client: AsyncClient, world: World) -> int:
    count: int = ok(await client.get(world.process_path))["run_count"]
    return count


# The routes.


async def test_put_get_replace_and_delete_a_schedule(client: AsyncClient) -> None:
    world = await make_world(client)
    path = f"{world.process_path}/schedule"
    problem(await client.get(path), 404, "schedule_not_found")

    before = datetime.now(UTC)
    made = await put_schedule(client, world, cron="  15   3 * *  MON-FRI ", timezone="Europe/Berlin")
    assert made["process_id"] == world.process_id
    assert (made["cron"], made["timezone"], made["missed"]) == ("15 3 * * MON-FRI", "Europe/Berlin", "skip")
    assert (made["last_fired_at"], made["last_outcome"]) == (None, None)
    next_fire_at = at(made["next_fire_at"])
    assert next_fire_at.utcoffset() == timedelta(0) and next_fire_at > before
    local = next_fire_at.astimezone(ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute, local.second) == (3, 15, 0) and local.weekday() < 5
    assert next_fire_at - before <= timedelta(days=4)  # the first weekday 03:15 to come
    assert await get_schedule(client, world) == made

    replaced = await put_schedule(client, world, cron="0 * * * *", missed="once")
    assert (replaced["cron"], replaced["timezone"], replaced["missed"]) == ("0 * * * *", "UTC", "once")
    assert replaced["created_at"] == made["created_at"]
    assert at(replaced["updated_at"]) >= at(made["updated_at"])
    hourly = at(replaced["next_fire_at"])
    assert (hourly.minute, hourly.second) == (0, 0) and timedelta(0) < hourly - before <= timedelta(hours=1)
    assert await get_schedule(client, world) == replaced
    # The process's own answer is the contract's as it was: no schedule field in it.
    assert "schedule" not in ok(await client.get(world.process_path))

    assert (await client.delete(path)).status_code == 204
    problem(await client.get(path), 404, "schedule_not_found")
    problem(await client.delete(path), 404, "schedule_not_found")

    events = await process_events(client, world)
    changes = [(e["kind"], e["actor_kind"], e["detail"]) for e in events if e["kind"].startswith("schedule")]
    assert [(kind, actor) for kind, actor, _ in changes] == [
        ("schedule_set", "user"),
        ("schedule_set", "user"),
        ("schedule_removed", "user"),
    ]
    assert changes[0][2].startswith("15 3 * * MON-FRI (Europe/Berlin), missed: skip; next at ")
    assert changes[2][2] == "0 * * * *"
    audit = ok(await client.get("/audit-events", params={"limit": 200}))["items"]
    actions = [a["action"] for a in audit if a["action"].startswith("processes_schedule")]
    assert sorted(actions) == sorted(["processes_schedule_put"] * 2 + ["processes_schedule_delete"])


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        ({"cron": "61 * * * *"}, 422, "invalid_cron", "Bad minute"),
        ({"cron": "* 24 * * *"}, 422, "invalid_cron", "Bad hour"),
        ({"cron": "0 0 31 2 *"}, 422, "invalid_cron", "Bad day-of-month"),
        ({"cron": "0 0 * * FUNDAY"}, 422, "invalid_cron", "Bad day-of-week"),
        ({"cron": "0 0 0 * * *"}, 422, "invalid_cron", "6 fields where 5"),
        ({"cron": "* * * *"}, 422, "invalid_cron", "4 fields where 5"),
        ({"cron": "   "}, 422, "invalid_cron", "0 fields where 5"),
        ({"cron": "@daily"}, 422, "invalid_cron", "1 fields where 5"),
        ({"cron": "0 0 * * *", "timezone": "Mars/Olympus_Mons"}, 422, "invalid_timezone", "IANA"),
        ({"cron": "0 0 * * *", "timezone": "europe/berlin"}, 422, "invalid_timezone", "IANA"),
        ({"cron": "0 0 * * *", "timezone": "../../../etc/passwd"}, 422, "invalid_timezone", "IANA"),
        ({"cron": "0 0 * * *", "timezone": "<script>alert(1)</script>"}, 422, "invalid_timezone", "IANA"),
        ({"cron": "0 0 * * *", "missed": "sometimes"}, 422, "validation_error", "missed"),
        ({"cron": "0 0 * * *", "every": "day"}, 422, "validation_error", "every"),
        ({"cron": "0 0 * * *\x00"}, 422, "validation_error", "NUL"),
        ({"cron": "0 " * 100}, 422, "validation_error", "cron"),
        ({}, 422, "validation_error", "cron"),
    ],
)
async def test_a_bad_schedule_is_refused_and_changes_nothing(
    client: AsyncClient, dump_database: Any, body: dict[str, Any], status: int, code: str, words: str
) -> None:
    world = await make_world(client)
    await put_schedule(client, world, cron="0 6 * * *")
    before: DatabaseDump = await dump_database()
    refused = problem(await client.put(f"{world.process_path}/schedule", json=body), status, code)
    assert words in refused["detail"], refused
    if code != "validation_error":
        assert refused["field"] == ("cron" if code == "invalid_cron" else "timezone")
    after = await dump_database()
    assert text_of(before) == text_of(after)


async def test_permissions_and_unknown_processes(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    path = f"{world.process_path}/schedule"
    viewer = await member_token(client, world.project, "vera", "viewer")
    trainer = await member_token(client, world.project, "tom", "trainer")
    ok(await client.put(path, json={"cron": "0 6 * * *"}))
    async with client_for(app, viewer) as api:
        assert ok(await api.get(f"/api/v1{path}"))["cron"] == "0 6 * * *"
        problem(await api.put(f"/api/v1{path}", json={"cron": "0 7 * * *"}), 403, "permission_denied")
        problem(await api.delete(f"/api/v1{path}"), 403, "permission_denied")
    async with client_for(app, trainer) as api:
        assert ok(await api.put(f"/api/v1{path}", json={"cron": "0 7 * * *"}))["cron"] == "0 7 * * *"
        assert (await api.delete(f"/api/v1{path}")).status_code == 204
    anonymous = await client.get(path, headers={"Authorization": "Bearer nobody"})
    problem(anonymous, 401, "invalid_token")

    elsewhere = f"/projects/{world.project}/processes/{uuid.uuid4()}/schedule"
    problem(await client.put(elsewhere, json={"cron": "0 6 * * *"}), 404, "process_not_found")
    problem(await client.get(elsewhere), 404, "process_not_found")
    problem(await client.delete(elsewhere), 404, "process_not_found")

    # A deleted process takes its schedule with it.
    ok(await client.put(path, json={"cron": "0 6 * * *"}))
    assert (await client.delete(world.process_path)).status_code == 204
    problem(await client.get(path), 404, "process_not_found")
    assert await firing(app).fire_due(datetime.now(UTC) + timedelta(days=2)) == []


# The firing.


async def test_a_due_schedule_fires_once_and_moves_to_the_next_time(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    schedule = await put_schedule(client, world, cron="0 3 * * *")
    due = at(schedule["next_fire_at"])
    fire = firing(app)

    assert await fire.fire_due(due - timedelta(seconds=1)) == []  # not yet
    assert await run_count(client, world) == 0

    late_by = timedelta(seconds=7)  # a loop's ordinary lateness: fired, not missed
    (fired,) = await fire.fire_due(due + late_by)
    assert (fired.process_id, fired.due_at, fired.outcome) == (uuid.UUID(world.process_id), due, "started")
    process = ok(await client.get(world.process_path))
    assert process["run_count"] == 1 and process["latest_run"]["id"] == str(fired.run_id)
    assert process["status"] == "starting"
    starts = [e for e in await process_events(client, world, "run_status") if e["to_status"] == "starting"]
    assert [(e["actor_kind"], e["actor_name"]) for e in starts] == [("system", "schedule")]

    after = await get_schedule(client, world)
    assert at(after["next_fire_at"]) == due + timedelta(days=1)
    assert (at(after["last_fired_at"]), after["last_outcome"]) == (due + late_by, "started")
    # The same moment looked at again, by this process or another: nothing is due any more.
    assert await fire.fire_due(due + late_by) == []
    assert await fire.fire_due(due + timedelta(minutes=1)) == []
    assert await run_count(client, world) == 1


async def test_a_firing_while_a_run_is_active_is_skipped_and_recorded(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    first = ok(await client.post(f"{world.process_path}/start"), 201)["latest_run"]
    schedule = await put_schedule(client, world, cron="*/10 * * * *")
    due = at(schedule["next_fire_at"])

    (skipped,) = await firing(app).fire_due(due)
    assert (skipped.outcome, skipped.run_id) == ("run_active", None)
    process = ok(await client.get(world.process_path))
    assert (process["run_count"], process["latest_run"]["id"]) == (1, first["id"])
    (event,) = await process_events(client, world, "schedule_skipped")
    assert (event["actor_kind"], event["actor_name"], event["reason_code"]) == (
        "system",
        "schedule",
        "run_active",
    )
    assert due.isoformat() in event["detail"]
    after = await get_schedule(client, world)
    assert (at(after["next_fire_at"]), after["last_outcome"]) == (due + timedelta(minutes=10), "run_active")

    # Once the run has ended, the next firing starts a new one.
    ok(await client.post(f"{world.process_path}/stop"), 202)
    (fired,) = await firing(app).fire_due(due + timedelta(minutes=10))
    assert fired.outcome == "started"
    assert await run_count(client, world) == 2


async def test_a_disabled_process_does_not_fire_and_its_schedule_moves_on(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    ok(await client.post(f"{world.process_path}/disable"))
    schedule = await put_schedule(client, world, cron="30 * * * *", missed="once")
    due = at(schedule["next_fire_at"])

    (skipped,) = await firing(app).fire_due(due)
    assert skipped.outcome == "process_disabled"
    (event,) = await process_events(client, world, "schedule_skipped")
    assert event["reason_code"] == "process_disabled"
    after = await get_schedule(client, world)
    assert (at(after["next_fire_at"]), after["last_outcome"]) == (
        due + timedelta(hours=1),
        "process_disabled",
    )
    assert await run_count(client, world) == 0

    ok(await client.post(f"{world.process_path}/enable"))
    (fired,) = await firing(app).fire_due(due + timedelta(hours=1))
    assert fired.outcome == "started" and await run_count(client, world) == 1


async def test_a_firing_its_machine_refuses_is_skipped_with_the_reason(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    ok(await client.post(f"/machines/{world.machine}/disable"))
    due = at((await put_schedule(client, world, cron="0 0 * * *"))["next_fire_at"])
    (skipped,) = await firing(app).fire_due(due)
    assert skipped.outcome == "machine_disabled"
    (event,) = await process_events(client, world, "schedule_skipped")
    assert event["reason_code"] == "machine_disabled" and "machine is disabled" in event["detail"]
    assert await run_count(client, world) == 0


async def test_missed_firings_are_skipped_or_run_once_as_the_schedule_says(
    client: AsyncClient, app: FastAPI
) -> None:
    skipping = await make_world(client, "-skip")
    once = await make_world(client, "-once")
    due = at((await put_schedule(client, skipping, cron="0 * * * *", missed="skip"))["next_fire_at"])
    assert at((await put_schedule(client, once, cron="0 * * * *", missed="once"))["next_fire_at"]) == due
    # The API comes back three hours and ten minutes later: four hourly firings were missed.
    back = due + timedelta(hours=3, minutes=10)

    firings = {f.process_id: f for f in await firing(app).fire_due(back)}
    assert firings[uuid.UUID(skipping.process_id)].outcome == "missed"
    assert firings[uuid.UUID(once.process_id)].outcome == "started"
    assert len(firings) == 2
    assert (await run_count(client, skipping), await run_count(client, once)) == (0, 1)
    for world, mode in ((skipping, "skip"), (once, "once")):
        (event,) = await process_events(client, world, "schedule_missed")
        assert (event["actor_name"], event["reason_code"]) == ("schedule", mode)
        assert due.isoformat() in event["detail"]
        after = await get_schedule(client, world)
        # Past now, not to the next of the missed ones: nothing more fires for the missed hours.
        assert at(after["next_fire_at"]) == due + timedelta(hours=4)
        assert at(after["last_fired_at"]) == back
    assert await firing(app).fire_due(back) == []
    assert (await run_count(client, skipping), await run_count(client, once)) == (0, 1)


async def test_a_missed_firing_a_minute_late_is_missed_and_a_few_seconds_late_is_not(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    due = at((await put_schedule(client, world, cron="0 0 * * *"))["next_fire_at"])
    (on_time,) = await firing(app).fire_due(due + timedelta(seconds=60))
    assert on_time.outcome == "started"
    ok(await client.post(f"{world.process_path}/stop"), 202)
    (late,) = await firing(app).fire_due(due + timedelta(days=1, seconds=61))
    assert late.outcome == "missed"


async def test_the_next_firing_is_read_in_the_schedules_zone_across_daylight_saving(
    client: AsyncClient, app: FastAPI
) -> None:
    """03:30 every day in Berlin: on 28 March 2027 the clocks jump from 02:00 to 03:00 and on 31 October
    from 03:00 back to 02:00. 02:30 does not exist on the first day and happens twice on the second."""
    world = await make_world(client)
    daily = await put_schedule(client, world, cron="30 2 * * *", timezone="Europe/Berlin", missed="skip")
    nine = await make_world(client, "-nine")
    await put_schedule(client, nine, cron="0 9 * * *", timezone="Europe/Berlin", missed="skip")
    assert at(daily["next_fire_at"]) < at("2027-03-27T00:00:00+00:00")
    fire = firing(app)

    # Brought forward to the day before the change (the firings until then are missed and skipped).
    await fire.fire_due(at("2027-03-27T03:00:00+01:00"))
    assert at((await get_schedule(client, world))["next_fire_at"]) == at("2027-03-28T03:00:00+02:00")
    assert at((await get_schedule(client, nine))["next_fire_at"]) == at("2027-03-27T09:00:00+01:00")
    await fire.fire_due(at("2027-03-27T09:00:00+01:00"))
    assert at((await get_schedule(client, nine))["next_fire_at"]) == at("2027-03-28T09:00:00+02:00")
    assert at("2027-03-28T09:00:00+02:00") == at("2027-03-28T07:00:00Z")  # one hour earlier in UTC
    assert (await client.delete(f"{nine.process_path}/schedule")).status_code == 204

    # 02:30 that does not exist fires at 03:00, the first minute after it; the next day is 02:30 again.
    (fired,) = await fire.fire_due(at("2027-03-28T03:00:00+02:00"))
    assert fired.outcome == "started"
    assert at((await get_schedule(client, world))["next_fire_at"]) == at("2027-03-29T02:30:00+02:00")

    # 02:30 that happens twice fires once, at the first.
    await fire.fire_due(at("2027-10-30T03:00:00+02:00"))
    assert at((await get_schedule(client, world))["next_fire_at"]) == at("2027-10-31T02:30:00+02:00")
    ok(await client.post(f"{world.process_path}/stop"), 202)
    (fired,) = await fire.fire_due(at("2027-10-31T02:30:00+02:00"))
    assert fired.outcome == "started"
    assert at((await get_schedule(client, world))["next_fire_at"]) == at("2027-11-01T02:30:00+01:00")
    assert await fire.fire_due(at("2027-10-31T02:30:00+01:00")) == []  # the repeated hour: nothing


# Exactly once.


async def test_two_firing_passes_racing_fire_each_due_schedule_once(
    client: AsyncClient, app: FastAPI, settings: Settings
) -> None:
    """Two passes on separate engines (separate connections, as two API processes have) look at the
    same due schedules at the same moment: each schedule fires once, by one of them."""
    world = await make_world(client)
    worlds = [world] + [await add_process(client, world) for _ in range(5)]
    dues = {at((await put_schedule(client, w, cron="0 12 * * *"))["next_fire_at"]) for w in worlds}
    (due,) = dues
    other_engine = create_engine(settings)
    try:
        other = ScheduleFiring(
            create_sessionmaker(other_engine, app.state.notifier), app.state.notifier, settings
        )
        mine, theirs = await asyncio.gather(firing(app).fire_due(due), other.fire_due(due))
    finally:
        await other_engine.dispose()
    fired = [f.process_id for f in mine + theirs]
    assert sorted(fired) == sorted(uuid.UUID(w.process_id) for w in worlds)
    assert all(f.outcome == "started" for f in mine + theirs)
    async with app.state.sessionmaker() as session:
        runs = await session.scalar(select(func.count()).select_from(Run))
    assert runs == len(worlds)
    for w in worlds:
        assert await run_count(client, w) == 1
        assert at((await get_schedule(client, w))["next_fire_at"]) == due + timedelta(days=1)


# Two real API processes on one PostgreSQL database, their firing loops live.

SCHEDULED_PROCESSES = 8
LOOP_INTERVAL = "0.05"
# A bound on waiting for the firings, never an assertion about speed.
FIRED_TIMEOUT_SECONDS = 60
# Passes both loops make after every schedule fired (20 intervals): a second firing would show.
SETTLE_SECONDS = 1.0


@pytest.mark.postgres
async def test_two_api_processes_fire_a_due_schedule_once(tmp_path: Path, scratch_postgres: str) -> None:
    settings = {
        "database_url": scratch_postgres,
        "secret_key": SECRET_KEY,
        "bootstrap_token": ADMIN_TOKEN,
        "schedule_interval": LOOP_INTERVAL,
    }
    migrated = trainyard_api(tmp_path, "migrate", **settings)
    assert migrated.returncode == 0, migrated.stderr
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    with (
        serving(a_dir, "--workers", "1", **settings) as server_a,
        serving(b_dir, "--workers", "1", **settings) as server_b,
    ):
        async with http(f"{server_a.base_url}/api/v1", ADMIN_TOKEN) as admin:
            ok(await admin.post("/model-types", json={"name": "classifier"}), 201)
            ok(await admin.post("/machines", json={"name": "gpu-01", "address": "10.0.3.17"}), 201)
            ok(await admin.patch("/machines/gpu-01", json={"capacity": SCHEDULED_PROCESSES}))
            ok(await admin.post("/projects", json={"name": "invoices"}), 201)
            ok(
                await admin.post(
                    "/projects/invoices/templates", json={"name": "t", "model_type": "classifier"}
                ),
                201,
            )
            ids = []
            for _ in range(SCHEDULED_PROCESSES):
                process = ok(
                    await admin.post("/projects/invoices/templates/t/processes", json={"machine": "gpu-01"}),
                    201,
                )
                # Once a year: after its firing, nothing more is due while the test runs.
                ok(
                    await admin.put(
                        f"/projects/invoices/processes/{process['id']}/schedule", json={"cron": "0 0 1 1 *"}
                    )
                )
                ids.append(process["id"])
            # Due now for both API processes at once: the schedules moved into the past, as after a
            # restart (the one write no route makes).
            with psycopg.connect(scratch_postgres, autocommit=True) as db:
                db.execute("UPDATE process_schedules SET next_fire_at = now() - interval '1 second'")
            async with asyncio.timeout(FIRED_TIMEOUT_SECONDS):
                while True:
                    counts = [
                        ok(await admin.get(f"/projects/invoices/processes/{i}"))["run_count"] for i in ids
                    ]
                    if all(counts):
                        break
                    await asyncio.sleep(0.1)
            await asyncio.sleep(SETTLE_SECONDS)
            counts = [ok(await admin.get(f"/projects/invoices/processes/{i}"))["run_count"] for i in ids]
            assert counts == [1] * SCHEDULED_PROCESSES
            for i in ids:
                schedule = ok(await admin.get(f"/projects/invoices/processes/{i}/schedule"))
                assert schedule["last_outcome"] == "started"
                assert at(schedule["next_fire_at"]) > datetime.now(UTC)
    for server in (server_a, server_b):
        assert server.process.returncode in CLEAN_EXIT, server.output()
        assert "Traceback" not in server.output(), server.output()
    fired_by = [
        sum(f"schedule of process {i}" in server.output() for server in (server_a, server_b)) for i in ids
    ]
    assert fired_by == [1] * SCHEDULED_PROCESSES, fired_by
