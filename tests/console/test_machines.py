"""The Machines page in process, on SQLite and PostgreSQL: what a viewer and an administrator see, the
agent token shown once (and working), enable, disable, rotate, revoke, refusals, CSRF, hostile text."""

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from tests.api.world import agent_client, make_machine, make_world, ok, start_run
from tests.console.kit import csrf_of, make_person, sign_in

HOSTILE = "<img src=x onerror=alert(1)><script>alert(2)</script>"


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://trainyard.test") as client:
        yield client


async def _admin(browser: AsyncClient, client: AsyncClient) -> str:
    await make_person(client, "ann", is_admin=True)
    await sign_in(browser, "ann")
    return csrf_of(await browser.get("/ui/machines/"))


async def _changes_by(client: AsyncClient, name: str) -> list[str]:
    """The audit trail's actions of `name`, beyond signing in."""
    events = ok(await client.get("/audit-events", params={"user": name}))["items"]
    return [event["action"] for event in events if event["action"] != "auth_login"]


async def _agent_hello(app: FastAPI, token: str, **fields: object) -> int:
    async with agent_client(app, token) as agent:
        return (await agent.post("/hello", json={"agent_version": "1.4.0", **fields})).status_code


async def test_register_shows_the_agent_token_once_and_it_works(
    app: FastAPI, browser: AsyncClient, client: AsyncClient
) -> None:
    token = await _admin(browser, client)
    form = {"name": "gpu-01", "address": "10.0.3.17", "capacity": "2", "csrf_token": token}
    made = await browser.post("/ui/machines", data=form)
    assert made.status_code == 201
    assert made.headers["cache-control"] == "no-store"
    agent_token = made.text.split('<code id="agent-token">')[1].split("</code>")[0]
    assert agent_token.startswith("ty_")
    assert "Machine gpu-01 registered" in made.text and "TRAINYARD_AGENT_TOKEN_FILE" in made.text
    assert await _agent_hello(app, agent_token) == 200  # the token shown is the machine's
    listed = await browser.get("/ui/machines/")
    assert "gpu-01" in listed.text and "10.0.3.17" in listed.text and "Processes: 0 of 2" in listed.text
    assert agent_token not in listed.text  # shown once: never again
    assert await _changes_by(client, "ann") == ["machines_create"]


async def test_a_refused_registration_shows_the_apis_words_and_makes_nothing(
    browser: AsyncClient, client: AsyncClient
) -> None:
    token = await _admin(browser, client)
    await make_machine(client, "taken")
    bad = await browser.post("/ui/machines", data={"name": "a b", "address": "x", "csrf_token": token})
    assert bad.status_code == 422 and "must not contain" in bad.text and 'aria-invalid="true"' in bad.text
    taken = await browser.post("/ui/machines", data={"name": "taken", "address": "x", "csrf_token": token})
    assert taken.status_code == 409 and "exists already" in taken.text
    few = await browser.post(
        "/ui/machines", data={"name": "ok", "address": "x", "capacity": "0", "csrf_token": token}
    )
    assert few.status_code == 422 and "greater than or equal to 1" in few.text
    empty = await browser.post("/ui/machines", data={"name": "ok", "address": "", "csrf_token": token})
    assert empty.status_code == 422
    names = [m["name"] for m in ok(await client.get("/machines"))["items"]]
    assert names == ["taken"]


async def test_enable_disable_rotate_revoke(app: FastAPI, browser: AsyncClient, client: AsyncClient) -> None:
    token = await _admin(browser, client)
    _, old = await make_machine(client, "Станок-1")
    base = "/ui/machines/%D0%A1%D1%82%D0%B0%D0%BD%D0%BE%D0%BA-1"
    assert (await browser.post(f"{base}/disable", data={"csrf_token": token})).status_code == 303
    assert ok(await client.get("/machines/Станок-1"))["enabled"] is False
    page = await browser.get("/ui/machines/")
    assert "Disabled" in page.text and f'action="{base}/enable"' in page.text
    assert (await browser.post(f"{base}/enable", data={"csrf_token": token})).status_code == 303
    assert ok(await client.get("/machines/Станок-1"))["enabled"] is True

    rotated = await browser.post(f"{base}/rotate-token", data={"csrf_token": token})
    assert rotated.status_code == 200 and rotated.headers["cache-control"] == "no-store"
    new = rotated.text.split('<code id="agent-token">')[1].split("</code>")[0]
    assert new != old and "The old token stopped working at once." in rotated.text
    assert await _agent_hello(app, old) == 401
    assert await _agent_hello(app, new) == 200

    revoke = await browser.post(f"{base}/revoke-token", data={"csrf_token": token})
    assert revoke.status_code == 303 and revoke.headers["location"] == "/ui/machines/"
    assert await _agent_hello(app, new) == 401
    page = await browser.get("/ui/machines/")
    assert "No agent token" in page.text and f'action="{base}/revoke-token"' not in page.text
    assert await _changes_by(client, "ann") == [
        "machines_disable",
        "machines_enable",
        "machines_rotate_token",
        "machines_revoke_token",
    ]

    gone = await browser.post("/ui/machines/nobody/disable", data={"csrf_token": token})
    assert gone.status_code == 404 and "There is no such machine" in gone.text


async def test_gpus_and_the_runs_on_a_machine_as_each_person_may_see_them(
    app: FastAPI, browser: AsyncClient, client: AsyncClient
) -> None:
    world = await make_world(client)
    assert (
        await _agent_hello(
            app, world.agent_token, gpus=[{"index": 0, "name": f"H100 {HOSTILE}", "memory_total_mb": 81559}]
        )
        == 200
    )
    await start_run(client, world)
    ok(await client.post("/projects", json={"name": "other"}), 201)
    await make_person(client, "vera")
    ok(await client.put("/projects/other/members/vera", json={"role": "viewer"}))
    await make_person(client, "ann", is_admin=True)

    await sign_in(browser, "ann")
    page = await browser.get("/ui/machines/")
    assert page.status_code == 200
    assert "Online" in page.text and "Agent 1.4.0" in page.text
    assert "0: H100 &lt;img src=x onerror=alert(1)&gt;" in page.text and HOSTILE not in page.text
    assert "79.6 GB" in page.text
    assert f"{world.project}</span> / {world.template} #1" in page.text and "Starting" in page.text

    browser.cookies.clear()
    await sign_in(browser, "vera")  # machines.view through her role elsewhere; not this project's runs
    page = await browser.get("/ui/machines/")
    assert page.status_code == 200 and world.machine in page.text
    assert f"{world.project}</span>" not in page.text and "Runs in projects you cannot see: 1" in page.text


async def test_a_viewer_sees_no_action_and_a_forged_post_is_refused(
    app: FastAPI, browser: AsyncClient, client: AsyncClient
) -> None:
    _, agent_token = await make_machine(client, "gpu-01")
    ok(await client.post("/projects", json={"name": "p"}), 201)
    await make_person(client, "vera")
    ok(await client.put("/projects/p/members/vera", json={"role": "viewer"}))
    await sign_in(browser, "vera")
    page = await browser.get("/ui/machines/")
    assert page.status_code == 200 and "gpu-01" in page.text
    assert '<form method="post" action="/ui/machines' not in page.text
    assert "Register a machine" not in page.text
    token = csrf_of(page)  # the sign-out form's: a valid session token, only the permission lacks
    for path in (
        "/ui/machines/gpu-01/disable",
        "/ui/machines/gpu-01/rotate-token",
        "/ui/machines/gpu-01/revoke-token",
    ):
        assert (await browser.post(path, data={"csrf_token": token})).status_code == 403
    forged = await browser.post("/ui/machines", data={"name": "x", "address": "y", "csrf_token": token})
    assert forged.status_code == 403
    assert ok(await client.get("/machines/gpu-01"))["enabled"] is True
    assert await _agent_hello(app, agent_token) == 200
    assert [m["name"] for m in ok(await client.get("/machines"))["items"]] == ["gpu-01"]


async def test_without_machines_view_the_page_is_refused(browser: AsyncClient, client: AsyncClient) -> None:
    await make_person(client, "nobody")
    await sign_in(browser, "nobody")
    page = await browser.get("/ui/machines/")
    assert page.status_code == 403 and "You do not hold the permission" in page.text


async def test_a_post_without_the_csrf_token_changes_nothing(
    browser: AsyncClient, client: AsyncClient
) -> None:
    await _admin(browser, client)
    await make_machine(client, "gpu-01")
    assert (await browser.post("/ui/machines/gpu-01/disable")).status_code == 403
    assert (await browser.post("/ui/machines", data={"name": "x", "address": "y"})).status_code == 403
    assert ok(await client.get("/machines/gpu-01"))["enabled"] is True
    assert (await client.get("/machines/x")).status_code == 404


async def test_hostile_address_and_description_render_as_text(
    browser: AsyncClient, client: AsyncClient
) -> None:
    token = await _admin(browser, client)
    form = {"name": "m", "address": HOSTILE, "description": HOSTILE, "csrf_token": token}
    assert (await browser.post("/ui/machines", data=form)).status_code == 201
    page = await browser.get("/ui/machines/")
    assert HOSTILE not in page.text and page.text.count("&lt;img src=x onerror=alert(1)&gt;") == 2
