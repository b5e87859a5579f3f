"""Monitoring and Compare in process, on SQLite and PostgreSQL: the run's header and audit trail, the
chart's overview and a zoom's window at full resolution, the live route (version, 304, a held wait that
telemetry wakes, the points since a mark), hostile texts, and who may look."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from tests.api.world import World, agent_client, make_world, ok, report, take_commands
from tests.console.kit import make_person, sign_in

HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://trainyard.test") as client:
        yield client


def batch(seq: int, points: list[tuple[str, float, float]], **extra: Any) -> dict[str, Any]:
    names = sorted({name for name, _, _ in points})
    return {
        "seq": seq,
        "names": names,
        "points": {
            "series": [names.index(name) for name, _, _ in points],
            "step": [step for _, step, _ in points],
            "value": [value for _, _, value in points],
            "time": [1_700_000_000.0 + step for _, step, _ in points],
        },
        **extra,
    }


async def running(app: FastAPI, client: AsyncClient, world: World) -> str:
    """The world's process started, launched, and 100 steps of Primo's three series reported."""
    run_id: str = ok(await client.post(f"{world.process_path}/start"), 201)["latest_run"]["id"]
    points = [
        (name, float(step), value)
        for step in range(100)
        for name, value in (
            ("learning_rate", 0.1 / (step + 1)),
            ("loss", 2.0 - step / 100),
            ("accuracy", step / 100),
        )
    ]
    async with agent_client(app, world.agent_token) as agent:
        await take_commands(agent)
        await report(agent, run_id, "launched")
        body = batch(1, [*points, (HOSTILE, 1.0, 5.0)], progress=0.5, stage=HOSTILE, eta_seconds=3725)
        ok(await agent.post(f"/runs/{run_id}/telemetry", json=body))
    return run_id


@pytest.fixture
async def world(client: AsyncClient) -> World:
    world = await make_world(client)
    await make_person(client, "ann")
    ok(await client.put(f"/projects/{world.project}/members/ann", json={"role": "viewer"}))
    return world


async def test_monitoring_shows_the_header_the_trail_and_the_chart_data(
    app: FastAPI, browser: AsyncClient, client: AsyncClient, world: World
) -> None:
    run_id = await running(app, client, world)
    await sign_in(browser, "ann")
    base = f"/ui/projects/{world.project}/runs/{run_id}/"
    page = await browser.get(base)
    assert page.status_code == 200
    text = page.text
    assert "Running" in text and "50 %" in text and "~1:02:05" in text and "Maximum duration" in text
    assert "1:00:00" in text  # the template's default maximum duration
    assert "run_status: starting → running" in text and "Audit trail" in text
    assert f'href="{base}log"' in text  # the Training log page, another engineer's
    assert HOSTILE not in text and "&lt;img src=x onerror=alert(1)&gt;" in text

    overview = (await browser.get(f"{base}metrics")).json()
    assert [s["name"] for s in overview["series"]] == sorted(["accuracy", "learning_rate", "loss", HOSTILE])
    loss = next(s for s in overview["series"] if s["name"] == "loss")
    assert loss["count"] == 100 and len(loss["step"]) == 100

    small = (await browser.get(f"{base}metrics", params={"series": "loss", "max_points": 10})).json()
    assert len(small["series"][0]["step"]) <= 10 and small["series"][0]["downsampled"] is True
    window = (
        await browser.get(
            f"{base}metrics", params={"series": "loss", "max_points": 10, "low": 40, "high": 45}
        )
    ).json()
    assert window["series"][0]["step"] == [40, 41, 42, 43, 44, 45]  # the window at full resolution
    assert window["series"][0]["downsampled"] is False
    bad = await browser.get(f"{base}metrics", params={"low": "nan", "high": 1})
    assert bad.status_code == 422

    russian = await browser.get(base, headers={"Accept-Language": "ru"})
    assert russian.status_code == 200 and "Мониторинг" in russian.text and "Журнал аудита" in russian.text
    assert "Выполняется" in russian.text and "~До конца" in russian.text


async def test_the_live_route_holds_until_telemetry_and_sends_the_new_points(
    app: FastAPI, browser: AsyncClient, client: AsyncClient, world: World
) -> None:
    run_id = await running(app, client, world)
    await sign_in(browser, "ann")
    live = f"/ui/projects/{world.project}/runs/{run_id}/live"
    answered = await browser.get(live)
    first, version = answered.json(), answered.headers["etag"]
    assert first["fields"]["status"] == "running" and first["next_since"] == 301
    assert len(first["series"]) == 4  # since 0: everything
    assert (
        await browser.get(live, params={"since": 301}, headers={"If-None-Match": version})
    ).status_code == 304
    held = asyncio.create_task(
        browser.get(live, params={"since": 301, "wait": 20}, headers={"If-None-Match": version})
    )
    await asyncio.sleep(0.3)
    assert not held.done()
    async with agent_client(app, world.agent_token) as agent:
        ok(
            await agent.post(
                f"/runs/{run_id}/telemetry", json=batch(2, [("loss", 100.0, 0.5)], progress=0.75)
            )
        )
    answer = await asyncio.wait_for(held, 15)
    assert answer.status_code == 200
    body = answer.json()
    assert body["fields"]["progress"] == 75 and body["next_since"] == 302
    assert [(s["name"], s["step"], s["value"]) for s in body["series"]] == [("loss", [100], [0.5])]


async def test_compare_overlays_the_chosen_runs(
    app: FastAPI, browser: AsyncClient, client: AsyncClient, world: World
) -> None:
    run_id = await running(app, client, world)
    await sign_in(browser, "ann")
    base = f"/ui/projects/{world.project}/runs/"
    listing = await browser.get(base)
    assert (
        listing.status_code == 200
        and f'value="{run_id}"' in listing.text
        and 'id="compare"' not in listing.text
    )
    page = await browser.get(base, params={"run": [run_id, run_id], "metric": "accuracy"})
    assert page.status_code == 200
    assert page.text.count(f'data-url="{base}{run_id}/metrics"') == 1  # each run once
    assert 'data-metric="accuracy"' in page.text and f"{world.template} #1" in page.text
    assert HOSTILE not in page.text  # a series name offered as a metric renders as text
    other = await browser.get(base, params={"run": "00000000-0000-0000-0000-000000000000"})
    assert other.status_code == 404


async def test_who_may_not_see_the_project_finds_no_run(
    app: FastAPI, browser: AsyncClient, client: AsyncClient, world: World
) -> None:
    run_id = await running(app, client, world)
    unsigned = await browser.get(f"/ui/projects/{world.project}/runs/{run_id}/live")
    assert unsigned.status_code == 303 and unsigned.headers["location"].startswith("/ui/sign-in")
    await make_person(client, "bob")
    await sign_in(browser, "bob")
    for path in ("", "metrics", "live"):
        assert (await browser.get(f"/ui/projects/{world.project}/runs/{run_id}/{path}")).status_code == 404
    await sign_in(browser, "ann")
    missing = await browser.get(f"/ui/projects/{world.project}/runs/00000000-0000-0000-0000-000000000000/")
    assert missing.status_code == 404 and "no such run" in missing.text
