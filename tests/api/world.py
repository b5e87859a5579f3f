"""Build objects through the public API, as a user would: no hand-written SQL in tests."""

from dataclasses import dataclass, replace
from typing import Any

from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient, Response

from tests.api.packages_kit import upload_package, valid_package, zip_bytes


def ok(response: Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    return response.json()


def problem(response: Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["status"] == status and body["title"] and body["detail"], body
    return body


@dataclass
class World:
    project: str
    model_type: str
    template: str
    machine: str
    agent_token: str
    process_id: str

    @property
    def process_path(self) -> str:
        return f"/projects/{self.project}/processes/{self.process_id}"


async def make_machine(client: AsyncClient, name: str, **fields: Any) -> tuple[dict[str, Any], str]:
    body = ok(await client.post("/machines", json={"name": name, "address": "10.0.0.1", **fields}), 201)
    return body, body["agent_token"]


BASE_PACKAGE = "pkg"
# The smallest runnable package, declaring no parameters (so a template may pass any).
BASE_PACKAGE_ZIP = zip_bytes(valid_package(parameters=None))


async def make_world(client: AsyncClient, suffix: str = "", **template_fields: Any) -> World:
    """A project, a model type, a base package (1.0), a template, a machine and a process on it."""
    project = ok(await client.post("/projects", json={"name": f"proj{suffix}"}), 201)["name"]
    model_type = f"classifier{suffix}"
    if (await client.get(f"/model-types/{model_type}")).status_code == 404:
        ok(await client.post("/model-types", json={"name": model_type}), 201)
    ok(await upload_package(client, project, BASE_PACKAGE, BASE_PACKAGE_ZIP), 201)
    template = ok(
        await client.post(
            f"/projects/{project}/templates",
            json={
                "name": "tpl",
                "model_type": model_type,
                "base_package": BASE_PACKAGE,
                "parameters": {"epochs": 2},
                **template_fields,
            },
        ),
        201,
    )["name"]
    machine, token = await make_machine(client, f"machine{suffix}")
    process = ok(
        await client.post(
            f"/projects/{project}/templates/{template}/processes", json={"machine": machine["name"]}
        ),
        201,
    )
    return World(project, model_type, template, machine["name"], token, process["id"])


def agent_client(app: FastAPI, token: str) -> AsyncClient:
    return AsyncClient(
        transport=ASGITransport(app=app),
        base_url="http://trainyard.test/api/v1/agent",
        headers={"Authorization": f"Bearer {token}"},
    )


# Small helpers for driving a run's life (added with the lifecycle, agent-protocol and sweeper tests).


async def add_process(client: AsyncClient, world: World) -> World:
    """Another process of the world's template on the world's machine, raising its capacity by one."""
    machine = ok(await client.get(f"/machines/{world.machine}"))
    ok(await client.patch(f"/machines/{world.machine}", json={"capacity": machine["capacity"] + 1}))
    process = ok(
        await client.post(
            f"/projects/{world.project}/templates/{world.template}/processes", json={"machine": world.machine}
        ),
        201,
    )
    return replace(world, process_id=process["id"])


async def start_run(client: AsyncClient, world: World) -> dict[str, Any]:
    """Start the world's process; returns its new run."""
    run: dict[str, Any] = ok(await client.post(f"{world.process_path}/start"), 201)["latest_run"]
    return run


async def take_commands(agent: AsyncClient, kind: str | None = None) -> list[dict[str, Any]]:
    """Poll once and acknowledge every command received (optionally only those of `kind`)."""
    commands: list[dict[str, Any]] = ok(await agent.get("/commands"))
    taken = [c for c in commands if kind is None or c["kind"] == kind]
    for command in taken:
        assert ok(await agent.post(f"/commands/{command['id']}/ack"))["state"] == "acknowledged"
    return taken


async def report(agent: AsyncClient, run_id: str, type: str, **fields: Any) -> dict[str, Any]:
    """Report one run event as the agent; returns the reply. Before `finished`, the trained package
    is uploaded as a real agent does (refused, and so skipped, once the run takes no outputs)."""
    if type == "finished":
        uploaded = await agent.put(f"/runs/{run_id}/outputs/package", content=BASE_PACKAGE_ZIP)
        assert uploaded.status_code in (200, 409), uploaded.text
    reply: dict[str, Any] = ok(await agent.post(f"/runs/{run_id}/events", json={"type": type, **fields}))
    return reply


async def get_run(client: AsyncClient, world: World, run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = ok(await client.get(f"/projects/{world.project}/runs/{run_id}"))
    return run


async def run_events(client: AsyncClient, world: World, run_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = ok(
        await client.get(f"/projects/{world.project}/runs/{run_id}/events", params={"limit": 200})
    )["items"]
    return events


def transitions(events: list[dict[str, Any]]) -> list[tuple[str, str | None, str | None, str | None]]:
    """The run_status rows of an event log as (actor_kind, from, to, reason)."""
    return [
        (e["actor_kind"], e["from_status"], e["to_status"], e["reason_code"])
        for e in events
        if e["kind"] == "run_status"
    ]
