"""Processes in process, on SQLite and PostgreSQL: the table and its action menu (exactly what the state
and the person's permissions allow), the actions and create through the API's services, their
refusals, CSRF, a view-only person, hostile names, and the live route (version, 304, a held wait that
a change wakes)."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from tests.api.world import World, agent_client, make_world, ok, report, take_commands
from tests.console.kit import csrf_of, make_person, sign_in


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://trainyard.test") as client:
        yield client


@pytest.fixture
async def world(client: AsyncClient) -> World:
    return await make_world(client)


def page_url(world: World) -> str:
    return f"/ui/projects/{world.project}/processes/"


async def state(browser: AsyncClient, world: World, **params: Any) -> dict[str, Any]:
    response = await browser.get(f"{page_url(world)}state", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert response.headers["etag"].startswith('"')
    return body


async def the_row(browser: AsyncClient, world: World) -> dict[str, Any]:
    rows = (await state(browser, world))["rows"]
    row: dict[str, Any] = next(r for r in rows if r["id"] == world.process_id)
    return row


async def act(browser: AsyncClient, world: World, action: str, token: str) -> Any:
    return await browser.post(f"{page_url(world)}{world.process_id}/{action}", data={"csrf_token": token})


async def test_the_table_offers_what_the_state_allows_and_acts_through_the_services(
    app: FastAPI, browser: AsyncClient, client: AsyncClient, world: World
) -> None:
    await make_person(client, "ann")
    ok(await client.put(f"/projects/{world.project}/members/ann", json={"role": "trainer"}))
    await sign_in(browser, "ann")
    page = await browser.get(page_url(world))
    assert page.status_code == 200
    assert "~Until end" in page.text and world.template in page.text and world.machine in page.text
    token = csrf_of(page)
    assert (await the_row(browser, world))["actions"] == ["start", "restart", "disable", "delete"]

    started = await act(browser, world, "start", token)
    assert started.status_code == 303 and started.headers["location"] == page_url(world)
    row = await the_row(browser, world)
    assert row["status"] == "starting" and row["status_label"] == "Starting"
    assert row["actions"] == ["stop", "restart"]  # no delete, no disable while a run is active

    # The agent takes it and reports: the row shows the stage, the progress and the ETA.
    async with agent_client(app, world.agent_token) as agent:
        await take_commands(agent)
        await report(agent, row["run_id"], "launched")
        batch = {"seq": 1, "progress": 0.25, "stage": "training", "eta_seconds": 90}
        pushed = await agent.post(f"/runs/{row['run_id']}/telemetry", json=batch)
        assert pushed.status_code == 200, pushed.text
    row = await the_row(browser, world)
    assert (row["status"], row["stage"], row["progress"], row["eta"]) == (
        "running",
        "training",
        25,
        "0:01:30",
    )
    assert "launched" not in row and row["ticking"] is True

    refused = await act(browser, world, "delete", token)  # a stale page's button: the API's refusal
    assert refused.status_code == 409 and "active run" in refused.text and 'role="alert"' in refused.text
    stopped = await act(browser, world, "stop", token)
    assert stopped.status_code == 303
    assert (await the_row(browser, world))["status"] in ("stopping", "stopped")
    events = ok(await client.get(f"/projects/{world.project}/processes/{world.process_id}/events"))["items"]
    assert [e["actor_name"] for e in events if e["kind"] == "run_status"][:1] == ["ann"]
    audit = ok(await client.get("/audit-events", params={"limit": 200}))["items"]
    assert {"processes_start", "processes_stop"} <= {a["action"] for a in audit if a["actor_name"] == "ann"}


async def test_disable_enable_delete_and_create(
    browser: AsyncClient, client: AsyncClient, world: World
) -> None:
    await make_person(client, "ann", is_admin=True)
    await sign_in(browser, "ann")
    token = csrf_of(await browser.get(page_url(world)))
    assert (await act(browser, world, "disable", token)).status_code == 303
    row = await the_row(browser, world)
    assert row["enabled"] is False and row["note"] == "disabled" and row["actions"] == ["enable", "delete"]
    refused = await act(browser, world, "start", token)
    assert refused.status_code == 409 and "disabled" in refused.text
    assert (await act(browser, world, "enable", token)).status_code == 303
    assert (await act(browser, world, "delete", token)).status_code == 303
    assert (await client.get(f"/projects/{world.project}/processes/{world.process_id}")).status_code == 404

    form = {"template": world.template, "machine": world.machine, "csrf_token": token}
    made = await browser.post(page_url(world), data=form)
    assert made.status_code == 303
    listed = ok(await client.get(f"/projects/{world.project}/processes"))["items"]
    assert [(p["template"], p["machine"]) for p in listed] == [(world.template, world.machine)]
    full = await browser.post(page_url(world), data=form)  # the machine's capacity is one process
    assert full.status_code == 409 and "capacity" in full.text and 'aria-invalid="true"' in full.text
    missing = await browser.post(page_url(world), data={**form, "template": "nope"})
    assert missing.status_code == 404 and "no template named" in missing.text
    bad = await browser.post(page_url(world), data={**form, "machine": "a b"})
    assert bad.status_code == 422
    assert len(ok(await client.get(f"/projects/{world.project}/processes"))["items"]) == 1


async def test_a_viewer_sees_no_action_and_a_forged_post_is_refused(
    browser: AsyncClient, client: AsyncClient, world: World
) -> None:
    await make_person(client, "vera")
    ok(await client.put(f"/projects/{world.project}/members/vera", json={"role": "viewer"}))
    await sign_in(browser, "vera")
    page = await browser.get(page_url(world))
    assert page.status_code == 200 and world.template in page.text
    assert "data-action=" not in page.text and 'id="act"' not in page.text
    assert "Create a process" not in page.text
    assert (await the_row(browser, world))["actions"] == []
    token = csrf_of(page)  # the sign-out form's: a real session token, forging only the action
    for action in ("start", "delete"):
        assert (await act(browser, world, action, token)).status_code == 403
    made = await browser.post(
        page_url(world), data={"template": world.template, "machine": "m", "csrf_token": token}
    )
    assert made.status_code == 403
    assert (
        ok(await client.get(f"/projects/{world.project}/processes/{world.process_id}"))["status"] == "created"
    )


async def test_without_the_csrf_token_nothing_moves(
    browser: AsyncClient, client: AsyncClient, world: World
) -> None:
    await make_person(client, "ann", is_admin=True)
    await sign_in(browser, "ann")
    assert (await browser.post(f"{page_url(world)}{world.process_id}/start")).status_code == 403
    by_script = await browser.post(
        f"{page_url(world)}{world.process_id}/start", headers={"X-CSRF-Token": "forged"}
    )
    assert by_script.status_code == 403 and by_script.json()["code"] == "csrf_failed"
    assert ok(await client.get(f"/projects/{world.project}/processes/{world.process_id}"))["run_count"] == 0


async def test_a_hostile_stage_renders_as_text(
    app: FastAPI, browser: AsyncClient, client: AsyncClient
) -> None:
    """Names are held to the API's name rules; a stage is whatever the package reports."""
    hostile = "<img src=x onerror=alert(1)><script>alert(2)</script>"
    world = await make_world(client, "-ы")
    run = ok(await client.post(f"/projects/{world.project}/processes/{world.process_id}/start"), 201)
    async with agent_client(app, world.agent_token) as agent:
        await take_commands(agent)
        await report(agent, run["latest_run"]["id"], "launched")
        ok(await agent.post(f"/runs/{run['latest_run']['id']}/telemetry", json={"seq": 1, "stage": hostile}))
    await make_person(client, "ann", is_admin=True)
    await sign_in(browser, "ann")
    page = await browser.get(page_url(world))
    assert page.status_code == 200 and world.project in page.text
    assert hostile not in page.text and "&lt;img src=x onerror=alert(1)&gt;&lt;script&gt;" in page.text


async def test_the_live_route_answers_changes_and_holds_otherwise(
    app: FastAPI, browser: AsyncClient, client: AsyncClient, world: World
) -> None:
    await make_person(client, "ann", is_admin=True)
    await sign_in(browser, "ann")
    url = f"{page_url(world)}state"
    version = (await browser.get(url)).headers["etag"]
    page = await browser.get(page_url(world))
    assert version.strip('"') in page.text  # the page's data-version: the route's tag for the same rows
    unchanged = await browser.get(url, headers={"If-None-Match": version})
    assert unchanged.status_code == 304  # no wait: at once
    held = asyncio.create_task(browser.get(url, params={"wait": 20}, headers={"If-None-Match": version}))
    await asyncio.sleep(0.3)
    assert not held.done()  # held: nothing changed
    ok(await client.post(f"/projects/{world.project}/processes/{world.process_id}/start"), 201)
    answer = await asyncio.wait_for(held, 15)  # woken by the start's commit, long before the 20 s
    assert answer.status_code == 200
    assert answer.json()["rows"][0]["status"] == "starting" and answer.headers["etag"] != version
    run_id = answer.json()["rows"][0]["run_id"]
    async with agent_client(app, world.agent_token) as agent:
        await take_commands(agent)
        await report(agent, run_id, "launched")
        version = (await browser.get(url)).headers["etag"]
        held = asyncio.create_task(browser.get(url, params={"wait": 20}, headers={"If-None-Match": version}))
        await asyncio.sleep(0.3)
        assert not held.done()
        # Progress alone (no status change) wakes the route through the running run's id, and the
        # second read sees the row as committed, not as the first read left it in the session.
        ok(await agent.post(f"/runs/{run_id}/telemetry", json={"seq": 1, "progress": 0.5}))
    answer = await asyncio.wait_for(held, 15)
    assert answer.status_code == 200 and answer.json()["rows"][0]["progress"] == 50
    stale = await browser.get(url, params={"wait": 20}, headers={"If-None-Match": '"stale"'})
    assert stale.status_code == 200  # a version the page does not hold: at once
    assert (await browser.get(url, params={"wait": 31})).status_code == 422


async def test_another_project_is_not_found_and_the_live_route_needs_a_session(
    browser: AsyncClient, client: AsyncClient, world: World
) -> None:
    unsigned = await browser.get(f"{page_url(world)}state")
    assert unsigned.status_code == 303 and unsigned.headers["location"].startswith("/ui/sign-in")
    await make_person(client, "bob")
    await sign_in(browser, "bob")
    assert (await browser.get(page_url(world))).status_code == 404
    assert (await browser.get(f"{page_url(world)}state")).status_code == 404


async def test_the_menu_form_sends_the_process_and_the_action(
    browser: AsyncClient, client: AsyncClient, world: World
) -> None:
    await make_person(client, "ann", is_admin=True)
    await sign_in(browser, "ann")
    page = await browser.get(page_url(world))
    assert (
        f'name="do" value="{world.process_id}/start"' in page.text
        and f'action="{page_url(world)}act"' in page.text
    )
    token = csrf_of(page)
    menu = f"{page_url(world)}act"
    for bad in ("", "not-an-id/start", f"{world.process_id}/explode", f"{world.process_id}"):
        assert (await browser.post(menu, data={"do": bad, "csrf_token": token})).status_code == 404, bad
    assert (await browser.post(menu, data={"do": f"{world.process_id}/start"})).status_code == 403  # no token
    started = await browser.post(menu, data={"do": f"{world.process_id}/start", "csrf_token": token})
    assert started.status_code == 303
    assert (
        ok(await client.get(f"/projects/{world.project}/processes/{world.process_id}"))["status"]
        == "starting"
    )
