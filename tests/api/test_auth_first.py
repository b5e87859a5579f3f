"""Authentication comes before anything else: a request with no token, or a token that is not one, is
answered 401 whatever its path, query and body hold. Who may not call an operation learns nothing from
it, not even which body it would take.

Every operation of the OpenAPI document is walked, so a new route cannot validate before it
authenticates without this test failing; only the public operations are left out.
"""

import re

from fastapi import FastAPI
from httpx import AsyncClient

from tests.api.test_permission_matrix import Operation, all_operations
from tests.api.world import agent_client, make_machine, problem

# No token needed: health, login, and /metrics while TRAINYARD_METRICS_TOKEN is unset.
PUBLIC = {"health_live", "health_ready", "auth_login", "operations_metrics"}
GARBAGE = b'\x00{"not": json,,, \xff'
# Bodies a route could read before it authenticates: not JSON, JSON of the wrong shape, a zip that is
# not one, an empty multipart, and a body that declares more than any limit.
BODIES: dict[str, tuple[bytes, dict[str, str]]] = {
    "garbage-json": (GARBAGE, {"Content-Type": "application/json"}),
    "wrong-shape-json": (b'[1, {"type": "nope"}, null]', {"Content-Type": "application/json"}),
    "garbage-zip": (GARBAGE, {"Content-Type": "application/zip"}),
    "garbage-multipart": (GARBAGE, {"Content-Type": "multipart/form-data; boundary=x"}),
    "no-content-type": (GARBAGE, {}),
}
# Path placeholders filled with what no route takes: not an id, not a name, not a version.
PATH_GARBAGE = "%00not-valid%ff"
TOKENS = {
    "no-token": {},
    "unknown-token": {"Authorization": "Bearer " + "x" * 43},
    "not-bearer": {"Authorization": "Basic Zm9vOmJhcg=="},
}


def _url(operation: Operation, fill: str) -> str:
    return re.sub(r"\{[^}]+\}", fill, operation.path) + "?wait=-5&limit=abc&since=x&max_points=0"


async def test_every_operation_authenticates_before_it_reads_its_input(
    app: FastAPI, anon: AsyncClient
) -> None:
    operations = [o for o in all_operations(app) if o.operation_id not in PUBLIC]
    assert len(operations) > 50
    wrong: list[str] = []
    for operation in operations:
        for token_name, token in TOKENS.items():
            for body_name, (content, headers) in BODIES.items():
                for fill in ("0193f0c4-1a2b-7c3d-8e4f-0123456789ab", PATH_GARBAGE):
                    response = await anon.request(
                        operation.method, _url(operation, fill), content=content, headers={**headers, **token}
                    )
                    if response.status_code != 401 or not response.headers["content-type"].startswith(
                        "application/problem+json"
                    ):
                        wrong.append(
                            f"{operation.operation_id} {token_name} {body_name} {fill}:"
                            f" {response.status_code} {response.text[:120]}"
                        )
    assert not wrong, "\n".join(wrong)


async def test_a_token_of_the_wrong_kind_is_refused_before_the_input(
    app: FastAPI, client: AsyncClient
) -> None:
    _, agent_token = await make_machine(client, "gpu-01")
    garbage = {"content": GARBAGE, "headers": {"Content-Type": "application/json"}}
    # A user's token on an agent route, garbage in the body or in the run id.
    for path in (
        "/hello",
        f"/runs/{PATH_GARBAGE}/telemetry",
        "/runs/0193f0c4-1a2b-7c3d-8e4f-0123456789ab/events",
    ):
        problem(await client.post(f"/agent{path}", **garbage), 403, "agent_token_required")  # type: ignore[arg-type]
    # A machine's token on a user route.
    async with agent_client(app, agent_token) as agent:
        problem(await agent.post("/../projects", **garbage), 403, "agent_token_not_allowed")  # type: ignore[arg-type]
        # With its own token, the agent's garbage is what is refused.
        problem(await agent.post("/hello", **garbage), 400, "malformed_json")  # type: ignore[arg-type]
        problem(await agent.post(f"/runs/{PATH_GARBAGE}/telemetry", content=b"{}"), 422, "validation_error")


async def test_the_public_operations_still_say_what_is_wrong_with_the_input(anon: AsyncClient) -> None:
    response = await anon.post(
        "/api/v1/auth/login", content=GARBAGE, headers={"Content-Type": "application/json"}
    )
    problem(response, 400, "malformed_json")
