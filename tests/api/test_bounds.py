"""Integers at and past the widths of their columns, and other inputs that once answered 500.

Each is a problem document (4xx) and changes nothing; the property test at the end sends every
integer each operation takes at its bounds, alone and mixed, and asserts that no answer is a 5xx.
"""

from collections.abc import Awaitable, Callable

import anyio.from_thread
import anyio.to_thread
import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.protocol import INT32_MAX, INT64_MAX
from tests.api.conftest import DatabaseDump
from tests.api.packages_kit import versions_path
from tests.api.world import (
    BASE_PACKAGE_ZIP,
    World,
    agent_client,
    make_world,
    ok,
    problem,
    report,
    start_run,
    take_commands,
)

Dump = Callable[[], Awaitable[DatabaseDump]]
BOUNDS = (0, -1, 1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**70, -(2**31), -(2**31) - 1, -(2**63) - 1)


def test_the_named_widths_are_the_columns() -> None:
    assert (INT32_MAX, INT64_MAX) == (2**31 - 1, 2**63 - 1)


async def _running(client: AsyncClient, app: FastAPI) -> tuple[World, str, AsyncClient]:
    world = await make_world(client)
    run = await start_run(client, world)
    agent = agent_client(app, world.agent_token)
    await take_commands(agent)
    await report(agent, run["id"], "launched")
    return world, run["id"], agent


# -- the 500s of finding 5, one by one ---------------------------------------------------------------


def _multipart(boundary: str) -> tuple[bytes, dict[str, str]]:
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n'
            f"Content-Type: application/zip\r\n\r\n"
        ).encode()
        + BASE_PACKAGE_ZIP
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


async def test_a_multipart_boundary_over_256_characters_is_a_malformed_upload(
    client: AsyncClient, dump_database: Dump
) -> None:
    ok(await client.post("/projects", json={"name": "p"}), 201)
    targets = [versions_path("p", "pkg"), "/projects/p/datasets/data/versions"]
    for target in targets:  # 256 is python-multipart's limit, and within it the upload works
        body, headers = _multipart("b" * 256)
        assert (await client.post(target, content=body, headers=headers)).status_code == 201, target
    before = await dump_database()
    for target in targets:
        for length in (257, 300, 4000):
            body, headers = _multipart("b" * length)
            found = problem(await client.post(target, content=body, headers=headers), 422, "malformed_upload")
            assert "boundary" in found["detail"].lower(), found
    assert await dump_database() == before


async def test_an_exit_code_no_column_holds_is_refused(
    client: AsyncClient, app: FastAPI, dump_database: Dump
) -> None:
    _world, run_id, agent = await _running(client, app)
    before = await dump_database()
    for exit_code in (2**31, 2**40, 2**63, 2**70, -(2**31) - 1, -(2**70)):
        response = await agent.post(f"/runs/{run_id}/events", json={"type": "exited", "exit_code": exit_code})
        assert problem(response, 422, "validation_error")["field"] == "exited.exit_code"
    assert await dump_database() == before
    for exit_code in (INT32_MAX, -(2**31)):  # the column's own bounds are facts an agent may report
        other_world = await make_world(client, suffix=str(exit_code).replace("-", "m"))
        run = await start_run(client, other_world)
        other = agent_client(app, other_world.agent_token)
        await take_commands(other)
        await report(other, run["id"], "launched")
        await report(other, run["id"], "exited", exit_code=exit_code)
        got = ok(await client.get(f"/projects/{other_world.project}/runs/{run['id']}"))
        assert got["exit_code"] == exit_code


async def test_a_telemetry_seq_past_the_column_is_refused(
    client: AsyncClient, app: FastAPI, dump_database: Dump
) -> None:
    _world, run_id, agent = await _running(client, app)
    before = await dump_database()
    for seq in (2**31, 2**40, 2**63, 2**70):
        response = await agent.post(f"/runs/{run_id}/telemetry", json={"seq": seq})
        assert problem(response, 422, "validation_error")["field"] == "seq"
    assert await dump_database() == before
    reply = ok(await agent.post(f"/runs/{run_id}/telemetry", json={"seq": INT32_MAX}))
    assert reply["acked_through"] == 0 and reply["missing"][0] == 1


async def test_a_dataset_version_past_the_column_is_invalid_everywhere(
    client: AsyncClient, dump_database: Dump
) -> None:
    """A viewer's GET of version 2**31 reached PostgreSQL's int4 column: now 422 `invalid_version`."""
    world = await make_world(client)
    datasets = f"/projects/{world.project}/datasets"
    upload = await client.post(
        f"{datasets}/d/versions", files={"files": ("a.txt", b"a", "application/octet-stream")}
    )
    ok(upload, 201)
    before = await dump_database()
    for number in (2**31, 2**32, 9_999_999_999, 2**40, 2**63, 2**70):
        # Up to 10 digits the path's pattern lets it through to the service's check; past that the
        # pattern refuses it: 422 either way, with the field named.
        code = "invalid_version" if number < 10**10 else "validation_error"
        for method, path in [
            ("GET", f"{datasets}/d/versions/{number}"),
            ("GET", f"{datasets}/d/versions/{number}/files"),
            ("GET", f"{datasets}/d/versions/{number}/files/a.txt"),
            ("DELETE", f"{datasets}/d/versions/{number}"),
        ]:
            found = problem(await client.request(method, path), 422, code)
            assert found["field"] == "version", (method, path, found)
        template = f"/projects/{world.project}/templates"
        for field in ("dataset_version", "test_dataset_version"):
            body = {"name": "t2", "model_type": world.model_type, "dataset": "d", field: number}
            if field == "test_dataset_version":
                body["test_dataset"] = "d"
            response = await client.post(template, json=body)
            assert problem(response, 422, "validation_error")["field"] == field, response.text
            response = await client.patch(
                f"{template}/{world.template}", json={"dataset": "d", field: number}
            )
            assert problem(response, 422, "validation_error")["field"] == field, response.text
    for number in (INT32_MAX,):  # the widest number the column holds is merely absent
        path = f"{datasets}/d/versions/{number}"
        problem(await client.get(path), 404, "dataset_version_not_found")
        problem(await client.get(f"{path}/files"), 404, "dataset_version_not_found")
        problem(await client.delete(path), 404, "dataset_version_not_found")
    assert await dump_database() == before


# -- the property: every integer an operation takes, at its bounds, is never a 5xx -----------------------


class Probes:
    """One request per integer an operation takes, that integer set to `value` and the rest valid."""

    def __init__(self, client: AsyncClient, agent: AsyncClient, world: World, run_id: str) -> None:
        self.client, self.agent, self.world, self.run_id = client, agent, world, run_id
        self.project = f"/projects/{world.project}"
        self.run = f"{self.project}/runs/{run_id}"
        self.template = f"{self.project}/templates/{world.template}"

    async def hello(self, value: int) -> Response:
        gpus = [{"index": value, "name": "g", "memory_total_mb": value}]
        return await self.agent.post("/hello", json={"agent_version": "1", "gpus": gpus})

    async def launched_pid(self, value: int) -> Response:
        return await self.agent.post(f"/runs/{self.run_id}/events", json={"type": "launched", "pid": value})

    async def exited_code(self, value: int) -> Response:
        event = {"type": "exited", "exit_code": value}
        return await self.agent.post(f"/runs/{self.run_id}/events", json=event)

    async def exited_signal(self, value: int) -> Response:
        event = {"type": "exited", "signal": value}
        return await self.agent.post(f"/runs/{self.run_id}/events", json=event)

    async def telemetry_seq(self, value: int) -> Response:
        return await self.agent.post(f"/runs/{self.run_id}/telemetry", json={"seq": value})

    async def telemetry_series(self, value: int) -> Response:
        points = {"series": [value], "step": [1.0], "value": [1.0], "time": [1.0]}
        body = {"seq": 1, "names": ["loss"], "points": points}
        return await self.agent.post(f"/runs/{self.run_id}/telemetry", json=body)

    async def snapshot_size(self, value: int) -> Response:
        files = [{"path": "a.txt", "sha256": "0" * 64, "size": value}]
        return await self.agent.put(f"/runs/{self.run_id}/outputs/snapshot", json={"files": files})

    async def machine_capacity(self, value: int) -> Response:
        await self.client.post("/machines", json={"name": "m-bounds", "address": "h", "capacity": value})
        return await self.client.patch(f"/machines/{self.world.machine}", json={"capacity": value})

    async def _template_field(self, field: str, value: object) -> Response:
        body = {"name": "t-bounds", "model_type": self.world.model_type, "dataset": "d", field: value}
        if field.startswith("test_"):
            body["test_dataset"] = "d"
        await self.client.post(f"{self.project}/templates", json=body)
        return await self.client.patch(self.template, json={k: v for k, v in body.items() if k != "name"})

    async def template_dataset_version(self, value: int) -> Response:
        return await self._template_field("dataset_version", value)

    async def template_test_dataset_version(self, value: int) -> Response:
        return await self._template_field("test_dataset_version", value)

    async def template_max_duration(self, value: int) -> Response:
        return await self._template_field("max_duration_seconds", value)

    async def template_gpus(self, value: int) -> Response:
        return await self._template_field("gpus", value)

    async def template_processes(self, value: int) -> Response:
        return await self._template_field("processes", value)

    async def template_parameter(self, value: int) -> Response:
        return await self._template_field("parameters", {"epochs": value})

    async def dataset_version_paths(self, value: int) -> Response:
        version = f"{self.project}/datasets/d/versions/{value}"
        for path in (version, f"{version}/files", f"{version}/files/a.txt", f"{version}/download"):
            response = await self.client.get(path)
            if response.status_code >= 500:
                return response
        return await self.client.delete(version)

    async def package_version_paths(self, value: int) -> Response:
        packages = f"{self.project}/packages/pkg/versions"
        for version in (f"{value}.0", f"1.{value}"):
            response = await self.client.get(f"{packages}/{version}")
            if response.status_code >= 500:
                return response
        return await self.client.get(f"{packages}/{value}.{value}/lineage")

    async def page_limits(self, value: int) -> Response:
        for path in ("/projects", f"{self.project}/runs", f"{self.project}/datasets/d/versions/1/files"):
            response = await self.client.get(path, params={"limit": value})
            if response.status_code >= 500:
                return response
        return await self.client.get("/audit-events", params={"limit": value})

    async def logs(self, value: int) -> Response:
        response = await self.client.get(f"{self.run}/logs", params={"offset": value})
        if response.status_code >= 500:
            return response
        return await self.client.get(f"{self.run}/logs", params={"limit": value})

    async def metrics(self, value: int) -> Response:
        response = await self.client.get(f"{self.run}/metrics", params={"since": value})
        if response.status_code >= 500:
            return response
        return await self.client.get(f"{self.run}/metrics", params={"max_points": value})

    async def evaluation(self, value: int) -> Response:
        response = await self.client.get(f"{self.run}/evaluation", params={"badcases_offset": value})
        if response.status_code >= 500:
            return response
        return await self.client.get(f"{self.run}/evaluation", params={"badcases_limit": value})


PROBES = [name for name in vars(Probes) if not name.startswith("_")]
# The bounds, then any integer: hypothesis shrinks a failure to the smallest value that shows it.
INTEGERS = st.sampled_from(BOUNDS) | st.integers()


def _no_5xx(probe: str, value: int, response: Response) -> None:
    assert response.status_code < 500, f"{probe}({value}): {response.status_code} {response.text}"
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json"), (probe, value)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_every_integer_at_its_bounds_is_never_a_5xx(client: AsyncClient, app: FastAPI) -> None:
    world, run_id, agent = await _running(client, app)
    upload = await client.post(
        f"/projects/{world.project}/datasets/d/versions",
        files={"files": ("a.txt", b"a", "application/octet-stream")},
    )
    ok(upload, 201)
    probes = Probes(client, agent, world, run_id)
    for probe in PROBES:  # each integer at each bound, alone
        for value in BOUNDS:
            _no_5xx(probe, value, await getattr(probes, probe)(value))

    # Then sequences of them, any integer mixed in, as hypothesis draws them: one run's life
    # reaching its columns in any order. Hypothesis runs its examples in a worker thread, each
    # request back on this event loop.
    @settings(
        max_examples=40,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(st.tuples(st.sampled_from(PROBES), INTEGERS), min_size=1, max_size=4))
    def sequences(calls: list[tuple[str, int]]) -> None:
        for probe, value in calls:
            response = anyio.from_thread.run(getattr(probes, probe), value)
            _no_5xx(probe, value, response)

    await anyio.to_thread.run_sync(sequences)


async def test_nul_in_any_text_is_refused_on_both_databases(
    anon: AsyncClient, client: AsyncClient, dump_database: Dump
) -> None:
    """PostgreSQL's text and JSONB cannot hold NUL: a login name holding one answered 500 there."""
    world = await make_world(client)
    before = await dump_database()
    for body in ({"username": "ad\x00min", "password": "x"}, {"username": "admin", "password": "x\x00"}):
        found = problem(await anon.post("/api/v1/auth/login", json=body), 422, "validation_error")
        assert "NUL" in found["detail"], found
    problem(
        await client.post("/projects", json={"name": "p2", "description": "a\x00b"}), 422, "validation_error"
    )
    problem(
        await client.post("/users", json={"name": "bob", "display_name": "\x00"}), 422, "validation_error"
    )
    templates = f"/projects/{world.project}/templates"
    for parameters in ({"epochs\x00": 1}, {"epochs": "1\x00"}, {"layers": [{"name": "\x00"}]}):
        body = {"name": "t-nul", "model_type": world.model_type, "parameters": parameters}
        problem(await client.post(templates, json=body), 422, "validation_error")
    assert await dump_database() == before
