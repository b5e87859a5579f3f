"""The Training log page and its JSON route, in process, on SQLite and PostgreSQL: lines as text, the
API's search and stream filter, follow, and the API's permission (`runs.view`) for page and route."""

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from tests.api.test_telemetry import batch, push
from tests.api.world import World, agent_client, make_world, ok, report, start_run, take_commands
from tests.console.kit import make_person, sign_in

HOSTILE = "<img src=x onerror=alert(1)><script>alert(2)</script>"


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://trainyard.test") as client:
        yield client


async def logged_run(client: AsyncClient, app: FastAPI) -> tuple[World, str]:
    """A running run that wrote five lines, one of them on stderr and one hostile."""
    world = await make_world(client)
    run = await start_run(client, world)
    async with agent_client(app, world.agent_token) as agent:
        await take_commands(agent)
        await report(agent, run["id"], "launched")
        body = batch(1, [], ["epoch 1 loss 0.9", "epoch 2 loss 0.5", HOSTILE, "done"])
        body["logs"]["stream"][2] = "stderr"
        await push(agent, run["id"], body)
    return world, str(run["id"])


async def with_role(client: AsyncClient, project: str, name: str, permissions: list[str]) -> None:
    ok(await client.post("/roles", json={"name": f"role-{name}", "permissions": permissions}), 201)
    await make_person(client, name)
    ok(await client.put(f"/projects/{project}/members/{name}", json={"role": f"role-{name}"}))


async def test_the_log_page_shows_lines_as_text_and_filters_them(
    client: AsyncClient, app: FastAPI, browser: AsyncClient
) -> None:
    world, run_id = await logged_run(client, app)
    await make_person(client, "ann", is_admin=True)
    await sign_in(browser, "ann")
    path = f"/ui/projects/{world.project}/runs/{run_id}/log"
    page = await browser.get(path)
    assert page.status_code == 200, page.text
    assert "epoch 2 loss 0.5" in page.text and HOSTILE not in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text  # the characters, escaped
    assert f'data-lines="{path}/lines"' in page.text

    searched = await browser.get(path, params={"q": "EPOCH"})
    assert "epoch 1 loss 0.9" in searched.text and ">done<" not in searched.text
    both = await browser.get(path, params={"q": "", "stream": ""})  # the form sent as it comes
    assert both.status_code == 200 and ">done<" in both.text
    errors = await browser.get(path, params={"stream": "stderr"})
    assert "&lt;script&gt;" in errors.text and "epoch 1" not in errors.text

    lines = ok(await browser.get(f"{path}/lines", params={"q": "epoch"}))
    assert [line["text"] for line in lines["lines"]] == ["epoch 1 loss 0.9", "epoch 2 loss 0.5"]
    assert lines["total"] == 4 and lines["status"] == "running"
    tail = ok(await browser.get(f"{path}/lines", params={"offset": 3, "stream": "stdout"}))
    assert [line["offset"] for line in tail["lines"]] == [3]
    # follow: a line is there, so the answer comes at once, as the API's own route answers
    held = ok(await browser.get(f"{path}/lines", params={"offset": 2, "follow": 20}))
    assert [line["text"] for line in held["lines"]] == [HOSTILE, "done"]


async def test_bad_input_is_a_problem_document_and_an_unknown_run_a_404_page(
    client: AsyncClient, app: FastAPI, browser: AsyncClient
) -> None:
    world, run_id = await logged_run(client, app)
    await make_person(client, "ann", is_admin=True)
    await sign_in(browser, "ann")
    path = f"/ui/projects/{world.project}/runs/{run_id}/log"
    refused = await browser.get(f"{path}/lines", params={"limit": 0})
    assert refused.status_code == 422
    assert refused.headers["content-type"].startswith("application/problem+json")
    missing = await browser.get(f"/ui/projects/{world.project}/runs/not-a-run/log")
    assert missing.status_code == 404 and "There is no such run" in missing.text
    other = await browser.get(f"/ui/projects/{world.project}/runs/{'0' * 8}-0000-0000-0000-{'0' * 12}/log")
    assert other.status_code == 404
    lines = await browser.get(
        f"/ui/projects/{world.project}/runs/{'0' * 8}-0000-0000-0000-{'0' * 12}/log/lines"
    )
    assert lines.status_code == 404 and lines.json()["code"] == "run_not_found"


async def test_without_runs_view_the_page_and_the_route_are_refused(
    client: AsyncClient, app: FastAPI, browser: AsyncClient
) -> None:
    world, run_id = await logged_run(client, app)
    await with_role(client, world.project, "olga", ["projects.view", "processes.view"])
    await sign_in(browser, "olga")
    path = f"/ui/projects/{world.project}/runs/{run_id}/log"
    page = await browser.get(path)
    assert page.status_code == 403 and "epoch 1" not in page.text
    lines = await browser.get(f"{path}/lines")
    assert lines.status_code == 403 and lines.json()["code"] == "forbidden"

    await make_person(client, "nobody")  # no role in the project: it does not exist for them
    browser.cookies.clear()
    await sign_in(browser, "nobody")
    assert (await browser.get(path)).status_code == 404
    lines = await browser.get(f"{path}/lines")
    assert lines.status_code == 404 and lines.json()["code"] == "project_not_found"


async def test_without_a_session_the_route_sends_to_sign_in(
    client: AsyncClient, app: FastAPI, browser: AsyncClient
) -> None:
    world, run_id = await logged_run(client, app)
    response = await browser.get(f"/ui/projects/{world.project}/runs/{run_id}/log/lines")
    assert response.status_code == 303 and response.headers["location"].startswith("/ui/sign-in")
