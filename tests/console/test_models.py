"""Models and a model version's page in process, on SQLite and PostgreSQL: the trained version listed
with its metrics, its lineage both ways, `_results.json`, artifacts and the package download through
the console; the API's permissions; hostile artifact names saved, never shown."""

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from tests.api.test_telemetry import batch, push
from tests.api.world import (
    BASE_PACKAGE_ZIP,
    World,
    agent_client,
    make_world,
    ok,
    report,
    start_run,
    take_commands,
)
from tests.console.kit import make_person, sign_in

HOSTILE = "<img src=x onerror=alert(1)>.html"


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://trainyard.test") as client:
        yield client


async def trained(client: AsyncClient, app: FastAPI, world: World) -> str:
    """One run of the world's process that reports metrics, leaves a hostile artifact and succeeds."""
    run = await start_run(client, world)
    async with agent_client(app, world.agent_token) as agent:
        await take_commands(agent, "start_run")
        await report(agent, run["id"], "launched")
        await push(
            agent, run["id"], batch(1, [("accuracy", 1, 0.5), ("accuracy", 2, 0.875), ("loss", 2, 0.25)])
        )
        artifact = await agent.put(
            f"/runs/{run['id']}/outputs/artifacts/{HOSTILE}", content=b"<script>1</script>"
        )
        assert artifact.status_code in (200, 201), artifact.text
        await report(agent, run["id"], "exited", exit_code=0)
        assert (await report(agent, run["id"], "finished"))["status"] == "succeeded"
    return str(run["id"])


async def test_models_list_and_a_versions_page(
    client: AsyncClient, app: FastAPI, browser: AsyncClient
) -> None:
    world = await make_world(client)
    run_id = await trained(client, app, world)
    # 1.1 trains on to 1.2: the lineage of 1.1 has an ancestor (1.0) and a descendant (1.2)
    ok(
        await client.patch(
            f"/projects/{world.project}/templates/{world.template}", json={"base_version": "1.1"}
        )
    )
    await trained(client, app, world)
    await make_person(client, "ann", is_admin=True)
    await sign_in(browser, "ann")

    listing = await browser.get(f"/ui/projects/{world.project}/models/")
    assert listing.status_code == 200, listing.text
    version_url = f"/ui/projects/{world.project}/models/pkg/1.1/"
    assert f'href="{version_url}"' in listing.text and "pkg/1.2/" in listing.text
    assert "0.8750" in listing.text and "0.2500" in listing.text  # final accuracy and loss

    page = await browser.get(version_url)
    assert page.status_code == 200, page.text
    text = page.text
    assert 'href="/ui/projects/proj/models/pkg/1.0/"' in text  # the ancestor
    assert 'href="/ui/projects/proj/models/pkg/1.2/"' in text  # the descendant
    assert f'href="/ui/projects/proj/runs/{run_id}/"' in text  # the run that made it
    assert "_results.json" in text and "&#34;run_summary&#34;" in text
    assert HOSTILE not in text and "&lt;img src=x onerror=alert(1)&gt;.html" in text

    download = await browser.get(f"{version_url}download")
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    assert download.headers["content-disposition"] == 'attachment; filename="pkg-1.1.zip"'
    assert download.content == BASE_PACKAGE_ZIP

    artifact = await browser.get(f"{version_url}artifacts/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.html")
    assert artifact.status_code == 200 and artifact.content == b"<script>1</script>"
    assert artifact.headers["content-type"] == "application/octet-stream"
    assert artifact.headers["content-disposition"].startswith("attachment; filename*=UTF-8''%3Cimg")
    assert artifact.headers["x-content-type-options"] == "nosniff"

    assert (await browser.get(f"/ui/projects/{world.project}/models/pkg/9.9/")).status_code == 404
    assert (await browser.get(f"/ui/projects/{world.project}/models/pkg/nonsense/")).status_code == 404
    assert (await browser.get(f"{version_url}artifacts/nothing.txt")).status_code == 404


async def test_permissions_are_the_apis(client: AsyncClient, app: FastAPI, browser: AsyncClient) -> None:
    world = await make_world(client)
    await trained(client, app, world)
    for name, permissions in (
        ("olga", ["projects.view", "runs.view", "packages.view"]),  # no models.view
        ("mila", ["projects.view", "models.view"]),  # the list and the record only
    ):
        ok(await client.post("/roles", json={"name": f"role-{name}", "permissions": permissions}), 201)
        await make_person(client, name)
        ok(await client.put(f"/projects/{world.project}/members/{name}", json={"role": f"role-{name}"}))
    version_url = f"/ui/projects/{world.project}/models/pkg/1.1/"

    await sign_in(browser, "olga")
    assert (await browser.get(f"/ui/projects/{world.project}/models/")).status_code == 403
    assert (await browser.get(version_url)).status_code == 403

    browser.cookies.clear()
    await sign_in(browser, "mila")
    page = await browser.get(version_url)
    assert page.status_code == 200
    assert "Lineage" not in page.text and "_results.json" not in page.text and "download" not in page.text
    assert (await browser.get(f"{version_url}download")).status_code == 403
    assert (await browser.get(f"{version_url}artifacts/x")).status_code == 403
