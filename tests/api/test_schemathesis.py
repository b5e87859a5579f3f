"""Schemathesis over every operation of the OpenAPI document, against the real app on a migrated
database, as the bootstrap administrator: no answer is a 5xx, and every answer conforms to the
document (its status code is declared, its content type and body match the declared ones).

Schemathesis draws each operation's requests from the document (hypothesis underneath, a fixed seed);
the requests go through the test's own `httpx.ASGITransport` on the test's event loop, so the app
runs exactly as in every other API test, and schemathesis only draws the cases and checks the
answers (`Case.validate_response`). Hypothesis runs in a worker thread and sends each request back to
the loop (`anyio.from_thread.run`). docs/testing.md says what runs where and how long it takes.
"""

import os
from typing import Any

import anyio.from_thread
import anyio.to_thread
import pytest
import requests
import schemathesis
from fastapi import FastAPI
from httpx import AsyncClient, Response
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.transport.serialization import serialize_binary

from tests.api.world import make_world, start_run
from tests.conftest import ADMIN_TOKEN

# Operations that would end the administrator's session, or revoke a token, for the rest of the run.
EXCLUDED = {
    "auth_logout",  # logs the bearer out
    "auth_password_change",  # a changed password revokes the user's other sessions
    "tokens_revoke",
    "users_tokens_revoke",
    "machines_revoke_token",
    "machines_rotate_token",
}


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = int(os.environ.get("TRAINYARD_SCHEMATHESIS_EXAMPLES", "25"))


@schemathesis.serializer("application/zip")
def _zip(_context: schemathesis.SerializationContext, value: Any) -> dict[str, Any]:
    """The agent's package upload: arbitrary bytes, which the archive checks must refuse cleanly."""
    return {"data": serialize_binary(value)}


def _request(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A schemathesis case's `requests`-style arguments as `httpx` takes them: `requests` itself
    encodes the body (multipart parts included), exactly as schemathesis' own transport would."""
    kwargs = {key: value for key, value in kwargs.items() if key != "cookies" or value}
    prepared = requests.Request(**kwargs).prepare()
    return {
        "method": prepared.method,
        "url": prepared.url,
        "headers": dict(prepared.headers),
        "content": prepared.body,
    }


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_every_operation_conforms_and_never_answers_5xx(
    app: FastAPI, client: AsyncClient, anon: AsyncClient, is_postgres: bool
) -> None:
    # Something in every table, so that drawn names sometimes meet real rows' neighbours.
    world = await make_world(client)
    await start_run(client, world)
    schema = schemathesis.openapi.from_dict(app.openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if op.definition.raw["operationId"] not in EXCLUDED]
    assert len(operations) > 90, [op.definition.raw["operationId"] for op in operations]
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def send(case: schemathesis.Case) -> Response:
        request = _request(case.as_transport_kwargs(base_url="http://trainyard.test", headers=auth))
        return await anon.request(**request)

    failures: list[str] = []
    for operation in operations:

        @seed(19)
        @settings(
            max_examples=EXAMPLES // 2 if is_postgres else EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.one_of(operation.as_strategy(generation_mode=mode) for mode in GenerationMode))
        def check(case: schemathesis.Case) -> None:
            response = anyio.from_thread.run(send, case)
            case.validate_response(response, checks=CHECKS)

        try:
            await anyio.to_thread.run_sync(check)
        except (Exception, BaseExceptionGroup) as error:  # one operation's failure must not hide the next
            failures.append(f"{operation.definition.raw['operationId']}: {error}")
    assert not failures, "\n\n".join(failures)
