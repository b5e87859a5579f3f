"""Telemetry through the real app: exactly once under repeats, reordering and gaps; the chart's
downsampling; logs with paging, search and follow; /metrics."""

import asyncio
import json
import math
import random
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient

from shared.protocol import MAX_TELEMETRY_POINTS, PackedPoints
from tests.api.world import World, agent_client, make_world, ok, problem, report, start_run, take_commands
from tests.conftest import ADMIN_TOKEN

PATIENCE = 60.0  # an outer bound for what must happen long before it, never a timing assertion


async def running(client: AsyncClient, app: FastAPI) -> tuple[World, str, AsyncClient]:
    world = await make_world(client)
    run = await start_run(client, world)
    agent = agent_client(app, world.agent_token)
    await take_commands(agent)
    await report(agent, run["id"], "launched")
    return world, run["id"], agent


def batch(
    seq: int, points: list[tuple[str, float, float]], lines: Sequence[str] = (), **extra: Any
) -> dict[str, Any]:
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
        "logs": {
            "stream": ["stdout"] * len(lines),
            "time": [1_700_000_000.0] * len(lines),
            "text": list(lines),
        },
        **extra,
    }


def packed(seq: int, points: list[tuple[str, float, float]], lines: Sequence[str] = ()) -> dict[str, Any]:
    """`batch`, its points packed as the agent sends them."""
    body = batch(seq, points, lines)
    columns = body.pop("points")
    body["packed"] = PackedPoints.pack(columns["series"], columns["step"], columns["value"], columns["time"])
    body["packed"] = body["packed"].model_dump()
    return body


async def push(agent: AsyncClient, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
    reply: dict[str, Any] = ok(await agent.post(f"/runs/{run_id}/telemetry", json=body))
    return reply


async def chart(client: AsyncClient, world: World, run_id: str, **params: Any) -> dict[str, Any]:
    path = f"/projects/{world.project}/runs/{run_id}/metrics"
    body: dict[str, Any] = ok(await client.get(path, params=params))
    return body


def stored(body: dict[str, Any]) -> dict[str, list[tuple[float, float]]]:
    return {s["name"]: list(zip(s["step"], s["value"], strict=True)) for s in body["series"]}


async def test_batches_are_stored_once_whatever_the_order_and_repeats(
    client: AsyncClient, app: FastAPI
) -> None:
    world, run_id, agent = await running(client, app)
    batches = [
        batch(seq, [("loss", seq * 10 + i, 1.0 / (seq * 10 + i + 1)) for i in range(10)], [f"line {seq}"])
        for seq in range(1, 7)
    ]
    assert (await push(agent, run_id, batches[0]))["acked_through"] == 1
    assert (await push(agent, run_id, batches[0]))["acked_through"] == 1  # a retry: a no-op
    gap = await push(agent, run_id, batches[3])  # 2 and 3 never arrived
    assert gap["acked_through"] == 1 and gap["missing"] == [2, 3]
    for seq in (3, 2, 3, 4, 2, 6, 5, 6):  # out of order, repeated: only the next one in order is taken
        await push(agent, run_id, batches[seq - 1])
    assert (await push(agent, run_id, batches[0]))["acked_through"] == 6

    expected = [(seq * 10 + i, 1.0 / (seq * 10 + i + 1)) for seq in range(1, 7) for i in range(10)]
    assert stored(await chart(client, world, run_id)) == {"loss": expected}
    logs = ok(await client.get(f"/projects/{world.project}/runs/{run_id}/logs"))
    assert [line["text"] for line in logs["lines"]] == [f"line {seq}" for seq in range(1, 7)]


async def test_progress_stage_and_eta_land_on_the_run(client: AsyncClient, app: FastAPI) -> None:
    world, run_id, agent = await running(client, app)
    await push(agent, run_id, batch(1, [("loss", 0, 2.0)], progress=0.25, stage="training", eta_seconds=30))
    body = await chart(client, world, run_id)
    assert (body["progress"], body["stage"], body["eta_seconds"]) == (0.25, "training", 30)
    assert body["elapsed_seconds"] is not None and body["series"][0]["latest"]["value"] == 2.0
    run = ok(await client.get(f"/projects/{world.project}/runs/{run_id}"))
    assert (run["progress"], run["stage"], run["eta_seconds"]) == (0.25, "training", 30)

    await report(agent, run_id, "exited", exit_code=3, error_tail="boom")
    late = await push(agent, run_id, batch(2, [("loss", 1, 1.0)], ["late"], progress=0.5, stage="saving"))
    assert late == {"acked_through": 2, "missing": [], "stop": True}
    body = await chart(client, world, run_id)
    assert (body["progress"], body["stage"]) == (0.25, "training")  # stored, but no state changed
    assert stored(body) == {"loss": [(0, 2.0), (1, 1.0)]}


async def test_bad_batches_are_refused_and_change_nothing(client: AsyncClient, app: FastAPI) -> None:
    world, run_id, agent = await running(client, app)
    uneven = batch(1, [("loss", 0, 1.0)])
    uneven["points"]["value"].append(2.0)
    problem(await agent.post(f"/runs/{run_id}/telemetry", json=uneven), 422, "invalid_telemetry")
    unnamed = batch(1, [("loss", 0, 1.0)])
    unnamed["points"]["series"] = [3]
    problem(await agent.post(f"/runs/{run_id}/telemetry", json=unnamed), 422, "invalid_telemetry")
    problem(await agent.post(f"/runs/{run_id}/telemetry", json={"seq": 0}), 422, "validation_error")
    problem(await agent.post(f"/runs/{run_id}/telemetry", content=b'{"seq": 1,'), 400, "malformed_json")
    other = await make_world(client, "b")
    stranger = agent_client(app, other.agent_token)
    problem(await stranger.post(f"/runs/{run_id}/telemetry", json=batch(1, [])), 404, "run_not_found")
    assert (await push(agent, run_id, batch(1, [("loss", 0, 1.0)])))["acked_through"] == 1
    assert stored(await chart(client, world, run_id)) == {"loss": [(0, 1.0)]}


async def test_downsampling_keeps_the_extremes_and_exact_ends(client: AsyncClient, app: FastAPI) -> None:
    world, run_id, agent = await running(client, app)
    rng = random.Random(5)
    values = {
        "loss": [math.sin(i / 300) + rng.gauss(0, 0.1) for i in range(12_000)],
        "accuracy": [rng.random() for i in range(5_000)],
    }
    values["loss"][7_777] = 50.0  # one spike
    values["loss"][4_321] = -50.0
    points = [(name, float(i), v) for name, series in values.items() for i, v in enumerate(series)]
    for seq, start in enumerate(range(0, len(points), 4_000), start=1):
        await push(agent, run_id, batch(seq, points[start : start + 4_000]))
    for max_points in (10, 100, 1_000):
        body = await chart(client, world, run_id, max_points=max_points)
        for series in body["series"]:
            expected = values[series["name"]]
            assert series["count"] == len(expected) and series["downsampled"]
            assert len(series["value"]) <= max_points
            assert min(series["value"]) == min(expected) and max(series["value"]) == max(expected)
            assert (series["step"][0], series["value"][0]) == (0, expected[0])
            assert (series["step"][-1], series["value"][-1]) == (len(expected) - 1, expected[-1])
            assert series["step"] == sorted(series["step"])
            pairs = zip(series["step"], series["value"], strict=True)
            assert all(expected[step] == value for step, value in pairs)
    only = await chart(client, world, run_id, series="accuracy", max_points=20_000)
    assert stored(only) == {"accuracy": list(enumerate(values["accuracy"]))}
    assert only["next_since"] == len(points)


async def test_a_backlog_batch_of_50000_points_is_taken_whole(client: AsyncClient, app: FastAPI) -> None:
    world, run_id, agent = await running(client, app)
    rng = random.Random(7)
    values = {name: [rng.gauss(0, 1) for _ in range(12_500)] for name in ("a", "b", "c", "d")}
    points = [(name, float(i), values[name][i]) for i in range(12_500) for name in values]
    body = batch(1, points)
    assert len(json.dumps(body)) > 1024 * 1024  # over the limit of other JSON bodies
    assert (await push(agent, run_id, body))["acked_through"] == 1
    read = await chart(client, world, run_id, max_points=100)  # from the rollups
    for series in read["series"]:
        expected = values[series["name"]]
        assert series["count"] == len(expected) and series["downsampled"]
        assert (min(series["value"]), max(series["value"])) == (min(expected), max(expected))
        assert all(
            expected[step] == value for step, value in zip(series["step"], series["value"], strict=True)
        )


async def test_since_reads_only_what_is_new(client: AsyncClient, app: FastAPI) -> None:
    world, run_id, agent = await running(client, app)
    await push(agent, run_id, batch(1, [("loss", 0, 1.0), ("lr", 0, 0.1)]))
    first = await chart(client, world, run_id)
    await push(agent, run_id, batch(2, [("loss", 1, 0.5), ("loss", 2, 0.25)]))
    newer = await chart(client, world, run_id, since=first["next_since"])
    assert stored(newer) == {"loss": [(1, 0.5), (2, 0.25)], "lr": []}
    assert newer["next_since"] == 4


async def test_logs_page_search_and_follow(client: AsyncClient, app: FastAPI) -> None:
    world, run_id, agent = await running(client, app)
    lines = [f"epoch {i} loss {i / 10}" for i in range(25)] + ["CUDA out of memory", "100%_done"]
    await push(agent, run_id, batch(1, [], lines))
    path = f"/projects/{world.project}/runs/{run_id}/logs"
    page = ok(await client.get(path, params={"limit": 10}))
    assert [line["offset"] for line in page["lines"]] == list(range(10)) and page["next_offset"] == 10
    page = ok(await client.get(path, params={"offset": 20, "limit": 10}))
    assert len(page["lines"]) == 7 and page["next_offset"] == 27 and page["total"] == 27
    found = ok(await client.get(path, params={"q": "cuda OUT"}))
    assert [line["text"] for line in found["lines"]] == ["CUDA out of memory"] and found["next_offset"] == 27
    assert ok(await client.get(path, params={"q": "0%_"}))["lines"][0]["text"] == "100%_done"
    literal = ok(await client.get(path, params={"q": "%"}))["lines"]  # a literal, not a wildcard
    assert [line["text"] for line in literal] == ["100%_done"]

    # Follow: a long wait, and a line stored meanwhile answers it at once.
    follower = asyncio.create_task(client.get(path, params={"offset": 27, "follow": 30}))
    await asyncio.sleep(0.2)
    assert not follower.done()
    await push(agent, run_id, batch(2, [], ["a new line"]))
    answer = ok(await asyncio.wait_for(follower, PATIENCE))
    assert [line["text"] for line in answer["lines"]] == ["a new line"] and answer["next_offset"] == 28


async def test_metrics_endpoint(client: AsyncClient, app: FastAPI, anon: AsyncClient) -> None:
    _, run_id, agent = await running(client, app)
    await push(agent, run_id, batch(1, [("loss", 0, 1.0), ("loss", 1, 0.5)]))
    text = (await anon.get("/metrics")).text
    assert 'trainyard_runs{status="running"} 1.0' in text
    assert "trainyard_metric_points_ingested_total" in text and "trainyard_machines_online 1.0" in text
    assert 'route="/agent/runs/{run_id}/telemetry",status="200"' in text
    assert "trainyard_telemetry_lag_seconds_bucket" in text and "trainyard_long_polls_waiting" in text


async def test_packed_points_are_stored_as_lists_are(client: AsyncClient, app: FastAPI) -> None:
    """Packed columns, batches of sizes that leave partial chunks of rows, interleaved series, lines."""
    world, run_id, agent = await running(client, app)
    rng = random.Random(11)
    names = ("loss", "accuracy", "lr")
    points = [(names[i % 3], float(i // 3), rng.gauss(0, 1)) for i in range(3_703)]
    lines = [f"line {i}" for i in range(130)]
    sizes = [1, 499, 500, 1_203, 1_500]
    start = 0
    for seq, size in enumerate(sizes, start=1):
        body = packed(seq, points[start : start + size], lines[(seq - 1) * 26 : seq * 26])
        assert (await push(agent, run_id, body))["acked_through"] == seq
        start += size
    assert (await push(agent, run_id, packed(len(sizes), points[:1])))["acked_through"] == len(
        sizes
    )  # a retry
    read = await chart(client, world, run_id, max_points=20_000)
    expected = {name: [(step, value) for n, step, value in points if n == name] for name in names}
    assert stored(read) == expected
    assert {s["name"]: s["latest"]["value"] for s in read["series"]} == {
        name: expected[name][-1][1] for name in names
    }
    logs = ok(await client.get(f"/projects/{world.project}/runs/{run_id}/logs", params={"limit": 500}))
    assert [line["text"] for line in logs["lines"]] == lines


async def test_bad_packed_points_are_refused_and_change_nothing(client: AsyncClient, app: FastAPI) -> None:
    world, run_id, agent = await running(client, app)
    good = packed(1, [("loss", 0, 1.0), ("loss", 1, 0.5)])
    nan = packed(1, [("loss", 0, 1.0), ("loss", 1, math.nan)])
    inf = packed(1, [("loss", 0, math.inf)])
    beyond = packed(1, [("loss", 0, 1.0)])
    beyond["packed"]["series"] = "0100"  # series 1 of one name
    for body in (
        nan,
        inf,
        beyond,
        {**good, "packed": {**good["packed"], "value": "zz" * 16}},  # not hex
        {**good, "packed": {**good["packed"], "step": good["packed"]["step"][:-2]}},  # 15 bytes
        {**good, "packed": {**good["packed"], "time": good["packed"]["time"][:16]}},  # one time of two
        {**good, "points": {"series": [0], "step": [0.0], "value": [1.0], "time": [1.0]}},  # both forms
    ):
        problem(await agent.post(f"/runs/{run_id}/telemetry", json=body), 422, "invalid_telemetry")
    too_many = {**good, "packed": {**good["packed"], "series": "00" * 2 * (MAX_TELEMETRY_POINTS + 1)}}
    problem(await agent.post(f"/runs/{run_id}/telemetry", json=too_many), 422, "validation_error")
    problem(
        await agent.post(f"/runs/{run_id}/telemetry", json={**good, "packed": {"x": ""}}),
        422,
        "validation_error",
    )
    assert (await push(agent, run_id, good))["acked_through"] == 1
    assert stored(await chart(client, world, run_id)) == {"loss": [(0, 1.0), (1, 0.5)]}


async def test_who_may_not_post_learns_that_before_what_is_wrong_with_the_batch(
    client: AsyncClient, app: FastAPI
) -> None:
    _, run_id, agent = await running(client, app)
    path = f"/runs/{run_id}/telemetry"
    nobody = agent_client(app, "not-a-token-of-anyone-0123456789abcdef")
    problem(await nobody.post(path, json=batch(1, [])), 401, "invalid_token")
    problem(await nobody.post(path, json={"seq": 0}), 401, "invalid_token")
    user = agent_client(app, ADMIN_TOKEN)
    problem(await user.post(path, json=batch(1, [])), 403, "agent_token_required")
    problem(await user.post(path, content=b"{"), 403, "agent_token_required")
    problem(await agent.post(path, json={"seq": 0}), 422, "validation_error")
    problem(
        await agent.post("/runs/00000000-0000-0000-0000-000000000000/telemetry", json=batch(1, [])),
        404,
        "run_not_found",
    )
    assert (await push(agent, run_id, batch(1, [("loss", 0, 1.0)])))["acked_through"] == 1
