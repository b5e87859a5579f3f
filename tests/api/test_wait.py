"""Waiting without polling: `GET` a run or a process with `If-None-Match` and `wait=S`, through the real
app on both databases. The answer comes when status, stage or progress change (a report, a telemetry
batch, an action), or after the wait as 304; what moves with the clock alone never changes the tag.

A held request is checked to be held by looking at it after a pause before the change is made, as
tests/api/test_wakeups.py does; no assertion is about how fast anything is.
"""

import asyncio
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient, Response

from tests.api.test_telemetry import batch, push, running
from tests.api.world import agent_client, make_world, ok, problem, report, start_run, take_commands

PATIENCE = 60.0  # an outer bound for what must happen long before it, never a timing assertion
HELD_WAIT = 25  # seconds a held request may wait: far longer than the test takes to wake it
SETTLE = 0.3  # lets a held request reach its wait before the change is made; not a timing assertion


def run_path(project: str, run_id: str) -> str:
    return f"/projects/{project}/runs/{run_id}"


async def held(client: AsyncClient, path: str, etag: str, wait: float = HELD_WAIT) -> asyncio.Task[Response]:
    """A GET held on `etag`, checked to be waiting before it is handed back."""
    task = asyncio.create_task(client.get(path, params={"wait": wait}, headers={"If-None-Match": etag}))
    await asyncio.sleep(SETTLE)
    assert not task.done(), (await task).text
    return task


async def answered(task: asyncio.Task[Response]) -> Response:
    async with asyncio.timeout(PATIENCE):
        return await task


async def test_a_get_carries_an_etag_and_a_current_one_answers_304(client: AsyncClient, app: FastAPI) -> None:
    world, run_id, _ = await running(client, app)
    first = await client.get(run_path(world.project, run_id))
    etag = first.headers["ETag"]
    assert etag.startswith('"') and first.json()["status"] == "running"

    again = await client.get(run_path(world.project, run_id), headers={"If-None-Match": etag})
    assert (again.status_code, again.content, again.headers["ETag"]) == (304, b"", etag)
    weak = await client.get(run_path(world.project, run_id), headers={"If-None-Match": f'"x", W/{etag}'})
    assert weak.status_code == 304
    stale = await client.get(run_path(world.project, run_id), headers={"If-None-Match": '"stale"'})
    assert stale.status_code == 200 and stale.headers["ETag"] == etag
    # `wait` with no tag to hold on is an ordinary read, answered at once.
    plain = await client.get(run_path(world.project, run_id), params={"wait": HELD_WAIT})
    assert plain.status_code == 200 and plain.headers["ETag"] == etag

    # The elapsed time grows with every read; the tag stays: a waiter is not woken by the clock.
    await asyncio.sleep(0.05)
    later = await client.get(run_path(world.project, run_id))
    assert later.json()["elapsed_seconds"] != first.json()["elapsed_seconds"]
    assert later.headers["ETag"] == etag


async def test_a_waiter_on_a_run_is_answered_when_its_status_changes(
    client: AsyncClient, app: FastAPI
) -> None:
    world = await make_world(client)
    run = await start_run(client, world)
    path = run_path(world.project, run["id"])
    etag = (await client.get(path)).headers["ETag"]
    agent = agent_client(app, world.agent_token)
    await take_commands(agent)

    waiter = await held(client, path, etag)
    await report(agent, run["id"], "launched")
    woken = await answered(waiter)
    assert woken.status_code == 200 and woken.json()["status"] == "running"
    assert woken.headers["ETag"] not in (etag, None)

    # A stage report is a change too: the next waiter, on the new tag, wakes for it.
    waiter = await held(client, path, woken.headers["ETag"])
    await report(agent, run["id"], "stage", stage="evaluating", progress=0.5, eta_seconds=12)
    staged = (await answered(waiter)).json()
    assert (staged["stage"], staged["progress"], staged["eta_seconds"]) == ("evaluating", 0.5, 12)


async def test_a_waiter_wakes_for_progress_and_not_for_a_log_line(client: AsyncClient, app: FastAPI) -> None:
    world, run_id, agent = await running(client, app)
    path = run_path(world.project, run_id)
    etag = (await client.get(path)).headers["ETag"]

    # Lines and points change nothing the run's answer shows: the waiter is woken, reads, and goes on
    # waiting until its wait is over, then answers 304 with the tag it held.
    waiter = await held(client, path, etag, wait=2)
    await push(agent, run_id, batch(1, [("loss", 0, 2.0)], ["epoch 1"]))
    quiet = await answered(waiter)
    assert (quiet.status_code, quiet.headers["ETag"]) == (304, etag)

    waiter = await held(client, path, etag)
    await push(agent, run_id, batch(2, [("loss", 1, 1.5)], progress=0.25, eta_seconds=30, stage="training"))
    moved = (await answered(waiter)).json()
    assert (moved["progress"], moved["stage"], moved["eta_seconds"]) == (0.25, "training", 30)


async def test_a_waiter_on_a_process_follows_its_runs_and_actions(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    path = world.process_path
    created = await client.get(path)
    assert created.json()["status"] == "created"

    waiter = await held(client, path, created.headers["ETag"])
    run = await start_run(client, world)
    started = await answered(waiter)
    assert started.json()["latest_run"]["id"] == run["id"]

    agent = agent_client(app, world.agent_token)
    await take_commands(agent)
    await report(agent, run["id"], "launched")
    # The latest run's progress, pushed by the agent, wakes who waits on its process.
    tag = (await client.get(path)).headers["ETag"]
    waiter = await held(client, path, tag)
    await push(agent, run["id"], batch(1, [], progress=0.75, eta_seconds=5))
    progressed = (await answered(waiter)).json()
    assert progressed["latest_run"]["progress"] == 0.75

    await report(agent, run["id"], "exited", exit_code=0)
    await report(agent, run["id"], "finished")
    ended = await client.get(path)
    assert ended.json()["status"] == "succeeded"

    waiter = await held(client, path, ended.headers["ETag"])
    ok(await client.post(f"{path}/disable"))
    disabled = await answered(waiter)
    assert disabled.json()["enabled"] is False

    waiter = await held(client, path, disabled.headers["ETag"])
    assert (await client.delete(path)).status_code == 204
    gone = await answered(waiter)
    problem(gone, 404, "process_not_found")


async def test_wait_is_bounded_and_checked(client: AsyncClient, app: FastAPI) -> None:
    world, run_id, _ = await running(client, app)
    path = run_path(world.project, run_id)
    problem(await client.get(path, params={"wait": 31}), 422, "validation_error")
    problem(await client.get(path, params={"wait": -1}), 422, "validation_error")
    problem(await client.get(world.process_path, params={"wait": "soon"}), 422, "validation_error")
    long_tag = '"' + "a" * 2000 + '"'
    problem(await client.get(path, headers={"If-None-Match": long_tag}), 422, "validation_error")


async def test_a_waiter_needs_the_same_permission_as_a_reader(client: AsyncClient, app: FastAPI) -> None:
    """No token, no wait: the 401 comes before anything is held."""
    world, run_id, _ = await running(client, app)
    path = run_path(world.project, run_id)
    etag = (await client.get(path)).headers["ETag"]
    anonymous: dict[str, Any] = {"Authorization": "Bearer nope"}
    refused = await client.get(path, params={"wait": HELD_WAIT}, headers={**anonymous, "If-None-Match": etag})
    problem(refused, 401, "invalid_token")
