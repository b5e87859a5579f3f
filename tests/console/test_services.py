"""Services in process, on SQLite and PostgreSQL: the list and its create form (pickers, refusals at
their field), the service page's buttons as the person's permissions and the state allow, start, stop
and delete through the API's services, the live routes, and the service-test form against a real HTTP
server on loopback standing for the serving process (tests/api/serving_stand_in.py), with hostile
answers and agent output rendered as text."""

import html
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient, Response

from tests.api.serving_stand_in import serving
from tests.api.test_services import event, publish, take
from tests.api.world import BASE_PACKAGE, World, agent_client, make_world, ok
from tests.console.kit import csrf_of, make_person, sign_in

HOSTILE = '<img src=x onerror="alert(1)">'


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://trainyard.test") as client:
        yield client


@pytest.fixture
async def world(client: AsyncClient) -> World:
    return await make_world(client)


def list_url(world: World) -> str:
    return f"/ui/projects/{world.project}/services/"


def page_url(world: World, name: str = "svc") -> str:
    return f"{list_url(world)}{name}/"


async def member(client: AsyncClient, browser: AsyncClient, world: World, name: str, role: str) -> None:
    await make_person(client, name)
    ok(await client.put(f"/projects/{world.project}/members/{name}", json={"role": role}))
    await sign_in(browser, name)


async def page_state(browser: AsyncClient, world: World, name: str = "svc") -> dict[str, Any]:
    response = await browser.get(f"{page_url(world, name)}state")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def buttons(page: Response) -> set[str]:
    """The action buttons the page shows (rendered without `hidden`)."""
    found = set()
    for action in ("start", "stop", "delete"):
        marker = f'data-action="{action}"'
        at = page.text.find(marker)
        if at >= 0 and not page.text[at : page.text.find(">", at)].count(" hidden"):
            found.add(action)
    return found


async def test_list_create_and_the_page(browser: AsyncClient, client: AsyncClient, world: World) -> None:
    await member(client, browser, world, "tom", "trainer")
    listing = await browser.get(list_url(world))
    assert listing.status_code == 200
    assert "There is no service in this project yet." in listing.text
    assert f'href="{list_url(world)}"' in listing.text  # in the nav
    token = csrf_of(listing)
    # The pickers: the versions that can serve, the enabled machines.
    assert f'value="{BASE_PACKAGE}/1.0"' in listing.text and f'value="{world.machine}"' in listing.text

    form = {"name": "svc", "served": f"{BASE_PACKAGE}/1.0", "machine": world.machine, "hours": "0.5"}
    made = await browser.post(list_url(world), data={**form, "instances": "2", "csrf_token": token})
    assert made.status_code == 303 and made.headers["location"] == page_url(world)
    found = ok(await client.get(f"/projects/{world.project}/services/svc"))
    assert (found["package"], found["version"], found["machine"]) == (BASE_PACKAGE, "1.0", world.machine)
    assert (found["max_run_seconds"], found["instances"], found["status"]) == (1800, 2, "created")
    audit = ok(await client.get("/audit-events", params={"limit": 200}))["items"]
    assert "services_create" in {a["action"] for a in audit if a["actor_name"] == "tom"}

    listing = await browser.get(list_url(world))
    assert f'<a href="{page_url(world)}">svc</a>' in listing.text
    assert (
        "status-created" in listing.text
        and "0 of 2" in listing.text
        and f"{BASE_PACKAGE} 1.0" in listing.text
    )
    page = await browser.get(page_url(world))
    assert page.status_code == 200 and "0:30:00" in page.text  # the maximum run time
    assert buttons(page) == {"start", "delete"}
    assert '<fieldset id="test-fields" disabled>' in page.text and "The service is not serving" in page.text
    assert "published" in page.text  # the history's first row

    async def refused(status: int, field: str, **changes: str) -> str:
        answer = await browser.post(list_url(world), data={**form, **changes, "csrf_token": token})
        assert answer.status_code == status, answer.text
        assert f'id="service-{field}-error"' in answer.text and 'aria-invalid="true"' in answer.text
        return answer.text

    assert "already" in await refused(409, "name")
    await refused(422, "name", name="a b")
    await refused(404, "machine", name="other", machine="nowhere")
    await refused(404, "served", name="other", served=f"{BASE_PACKAGE}/9.0")
    await refused(422, "hours", name="other", hours="soon")
    await refused(422, "hours", name="other", hours="0")
    await refused(422, "hours", name="other", hours="nan")
    await refused(422, "instances", name="other", instances="0")
    assert [s["name"] for s in ok(await client.get(f"/projects/{world.project}/services"))["items"]] == [
        "svc"
    ]

    # A name in another alphabet: its link is quoted, its page found, the name shown as given.
    other = {**form, "name": "Сервис_1.v2", "csrf_token": token}
    made = await browser.post(list_url(world), data=other)
    assert made.status_code == 303 and made.headers["location"] == page_url(world, quote("Сервис_1.v2"))
    page = await browser.get(made.headers["location"])
    assert page.status_code == 200 and "<h1>Сервис_1.v2</h1>" in page.text

    missing = await browser.get(page_url(world, "nope"))
    assert missing.status_code == 404 and "no such service" in missing.text
    no_action = await browser.post(f"{page_url(world)}launch", data={"csrf_token": token})
    assert no_action.status_code == 404


async def test_buttons_follow_permissions_and_a_viewer_changes_nothing(
    browser: AsyncClient, client: AsyncClient, world: World
) -> None:
    await publish(client, world)
    await member(client, browser, world, "vera", "viewer")
    listing = await browser.get(list_url(world))
    assert listing.status_code == 200 and "Publish a version" not in listing.text
    page = await browser.get(page_url(world))
    assert page.status_code == 200 and buttons(page) == set() and 'data-action="' not in page.text
    russian = await browser.get(page_url(world), headers={"Accept-Language": "ru"})
    assert "Проверить сервис" in russian.text and "0 из 1" in russian.text and "Создан" in russian.text
    assert "You do not hold services.predict" in page.text and 'id="test-form"' not in page.text
    token = csrf_of(page)
    for action in ("start", "delete", "predict"):
        forged = await browser.post(
            f"{page_url(world)}{action}", data={"csrf_token": token, "input_json": "1"}
        )
        assert forged.status_code == 403, action
    forged = await browser.post(list_url(world), data={"csrf_token": token, "name": "x"})
    assert forged.status_code == 403
    assert ok(await client.get(f"/projects/{world.project}/services/svc"))["status"] == "created"
    no_token = await browser.post(f"{page_url(world)}start")
    assert no_token.status_code == 403
    assert ok(await client.get(f"/projects/{world.project}/services"))["items"][0]["status"] == "created"


async def test_the_test_form_round_trip(
    app: FastAPI, browser: AsyncClient, client: AsyncClient, world: World
) -> None:
    created = await publish(client, world)
    await member(client, browser, world, "tom", "trainer")
    page = await browser.get(page_url(world))
    token = csrf_of(page)
    version = (await browser.get(f"{page_url(world)}state")).headers["etag"]
    held = await browser.get(f"{page_url(world)}state", headers={"If-None-Match": version})
    assert held.status_code == 304

    started = await browser.post(f"{page_url(world)}start", data={"csrf_token": token})
    assert started.status_code == 303 and started.headers["location"] == page_url(world)
    state = await page_state(browser, world)
    assert (state["service"]["status"], state["serving"]) == ("starting", False)
    assert state["service"]["actions"] == ["stop", "delete"]
    assert (
        await browser.get(f"{page_url(world)}state", headers={"If-None-Match": version})
    ).status_code == 200

    async with agent_client(app, world.agent_token) as agent:
        secret = (await take(agent, "start_service"))["payload"]["start"]["secret"]
        with serving(secret) as instance:
            await event(agent, created["id"], "serving", address=instance.address)
            state = await page_state(browser, world)
            assert (state["service"]["status"], state["serving"]) == ("serving", True)
            assert state["addresses"] == [instance.address] and state["service"]["time_left"]
            page = await browser.get(page_url(world))
            assert '<fieldset id="test-fields">' in page.text and f"{instance.address}/predict" in page.text
            assert "status-serving" in page.text and "1 of 1" in page.text

            async def predict(**fields: Any) -> Response:
                files = fields.pop("files", None)
                data = {"csrf_token": token, **fields}
                return await browser.post(f"{page_url(world)}predict", data=data, files=files)

            answer = await predict(
                input_json='{"pixels": [1, 2, 3], "label": "' + HOSTILE.replace('"', "'") + '"}'
            )
            assert answer.status_code == 200, answer.text
            shown = html.unescape(answer.text)
            assert '"instance": 0' in shown and '"pixels": [\n      1,' in shown  # pretty-printed
            assert "<img src=x" not in answer.text and "&lt;img src=x" in answer.text
            assert " ms" in answer.text and "application/json" in answer.text

            image = {"input_file": ("digit.png", b"\x89PNG\r\n\x1a\n-bytes", "image/png")}
            answer = await predict(files=image)
            assert answer.status_code == 200 and 'class="answer-body answer-text"' in answer.text
            assert ">14</pre>" in answer.text  # the stand-in answers the bytes' length as text

            failed = await predict(input_json=f'{{"raise": "{HOSTILE.replace(chr(34), "")}"}}')
            assert failed.status_code == 422 and "Prediction failed" in failed.text
            assert "ValueError: &lt;img src=x" in failed.text and "<img src=x" not in failed.text
            assert 'role="alert"' in failed.text

            bad = await predict(input_json="{not json")
            assert bad.status_code == 422 and "The JSON is not valid" in bad.text
            assert "{not json</textarea>" in bad.text  # kept for the person to fix
            empty = await predict(input_json="   ")
            assert empty.status_code == 422 and "Nothing to send" in empty.text
            assert instance.calls == 3

            # The instance exits, its stderr hostile: the page shows it as text, the form disabled.
            await event(
                agent,
                created["id"],
                "exited",
                instance=0,
                exit_code=1,
                error_tail=f"Traceback {HOSTILE}",
                restarting=True,
            )
            page = await browser.get(page_url(world))
            assert "Traceback &lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in page.text
            assert HOSTILE not in page.text and '<fieldset id="test-fields" disabled>' in page.text
            refused = await predict(input_json="1")
            assert refused.status_code == 409 and "service_not_serving" in refused.text

            stopped = await browser.post(f"{page_url(world)}stop", data={"csrf_token": token})
            assert stopped.status_code == 303
            assert (await page_state(browser, world))["service"]["status"] == "stopping"
            again = await browser.post(f"{page_url(world)}start", data={"csrf_token": token})
            assert again.status_code == 409 and "Refused:" in again.text
            await take(agent, "stop_service")
            await event(agent, created["id"], "stopped", instance=0)

    state = await page_state(browser, world)
    assert state["service"]["status"] == "stopped" and state["service"]["reason"] == "user_stop"
    moves = [e["move"] for e in state["history"] if e["what"] == "status"]
    assert moves == [
        "created → starting",
        "starting → serving",
        "serving → starting",
        "starting → stopping",
        "stopping → stopped",
    ]
    gone = await browser.post(f"{page_url(world)}delete", data={"csrf_token": token})
    assert gone.status_code == 303 and gone.headers["location"] == list_url(world)
    assert ok(await client.get(f"/projects/{world.project}/services"))["items"] == []
    audit = {a["action"] for a in ok(await client.get("/audit-events", params={"limit": 200}))["items"]}
    assert {"services_start", "services_stop", "services_delete"} <= audit


async def test_the_list_state_is_held_until_a_service_moves(
    browser: AsyncClient, client: AsyncClient, world: World
) -> None:
    await publish(client, world)
    await member(client, browser, world, "tom", "trainer")
    first = await browser.get(f"{list_url(world)}state")
    assert first.status_code == 200 and [r["name"] for r in first.json()["rows"]] == ["svc"]
    tag = first.headers["etag"]
    assert (await browser.get(f"{list_url(world)}state", headers={"If-None-Match": tag})).status_code == 304
    ok(await client.post(f"/projects/{world.project}/services/svc/start"), 202)
    moved = await browser.get(f"{list_url(world)}state", headers={"If-None-Match": tag})
    assert moved.status_code == 200 and moved.json()["rows"][0]["status"] == "starting"
    assert moved.json()["rows"][0]["status_label"] == "Starting"
