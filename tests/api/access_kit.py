"""Users with a role in a project, and their tokens, made through the public API."""

from typing import Any

from httpx import AsyncClient

from tests.api.world import ok


async def make_user(client: AsyncClient, name: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = ok(await client.post("/users", json={"name": name, **fields}), 201)
    return body


async def make_member(client: AsyncClient, project: str, user: str, role: str) -> None:
    ok(await client.put(f"/projects/{project}/members/{user}", json={"role": role}))


async def token_for(client: AsyncClient, user: str, **fields: Any) -> str:
    """An API token for `user`, made by the administrator (as for a bot)."""
    body = ok(await client.post(f"/users/{user}/tokens", json={"name": "t", **fields}), 201)
    token: str = body["token"]
    return token


async def member_token(client: AsyncClient, project: str, user: str, role: str) -> str:
    await make_user(client, user)
    await make_member(client, project, user, role)
    return await token_for(client, user)
