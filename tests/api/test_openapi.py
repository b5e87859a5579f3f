"""The OpenAPI document: the contract SDK generators, REST clients and bots are written against."""

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from openapi_spec_validator import validate

from api.core.config import Settings
from api.core.openapi import SELF_SERVICE_NOTE, api_routes, self_service_operations
from api.core.security import Permission
from api.main import create_app

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
# DESIGN.md: the one public route under /api/v1 (a token is what it gives out).
PUBLIC_API_PATHS = {"/api/v1/auth/login"}
PROBLEM_REF = "#/components/schemas/Problem"
# Any signed-in user, for themselves: no permission (docs/auth.md). Written out, so a route that
# forgot its permission does not pass for one of these.
SELF_SERVICE = {
    "auth_me",
    "auth_logout",
    "auth_password_change",
    "permissions_list",
    "tokens_create",
    "tokens_list",
    "tokens_get",
    "tokens_revoke",
}


@pytest.fixture(scope="module")
def openapi_app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    """The document needs no database: the app is built, never started."""
    data_dir = tmp_path_factory.mktemp("openapi")
    return create_app(Settings(data_dir=data_dir, database_url=f"sqlite:///{data_dir}/unused.db"))


@pytest.fixture
async def spec(openapi_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """The document as a client downloads it."""
    async with AsyncClient(
        transport=ASGITransport(app=openapi_app), base_url="http://trainyard.test"
    ) as anon:
        response = await anon.get("/openapi.json")
    assert response.status_code == 200
    yield response.json()


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def test_the_document_is_valid_openapi(spec: dict[str, Any]) -> None:
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    assert spec["info"]["title"] == "Trainyard" and spec["info"]["version"]


def test_every_route_declares_its_operation_id(openapi_app: FastAPI) -> None:
    """Explicit on the route, not FastAPI's generated `create_project_api_v1_projects_post`."""
    routes = list(api_routes(openapi_app.routes))
    assert routes
    for route in routes:
        if route.include_in_schema:
            assert route.operation_id, f"{route.path} {route.methods} has no explicit operation_id"


def test_operation_ids_are_unique_and_readable(spec: dict[str, Any]) -> None:
    assert all(o.get("operationId") for _, _, o in operations(spec))
    ids: list[str] = [operation["operationId"] for _, _, operation in operations(spec)]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    for operation_id in ids:
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", operation_id), operation_id
        assert "api_v1" not in operation_id, operation_id


def test_the_operations_clients_rely_on_are_there(spec: dict[str, Any]) -> None:
    ids = {operation["operationId"] for _, _, operation in operations(spec)}
    for expected in (
        "projects_create",
        "projects_list",
        "model_types_create",
        "machines_create",
        "machines_rotate_token",
        "templates_create",
        "templates_update",
        "processes_create",
        "processes_start",
        "processes_stop",
        "processes_restart",
        "processes_disable",
        "processes_enable",
        "processes_delete",
        "runs_get",
        "health_live",
        "health_ready",
    ):
        assert expected in ids


def test_every_operation_has_a_declared_tag(spec: dict[str, Any]) -> None:
    declared = {tag["name"]: tag for tag in spec.get("tags", [])}
    for path, method, operation in operations(spec):
        tags = operation.get("tags", [])
        assert tags, f"{method} {path} has no tag"
        for tag in tags:
            assert tag in declared and declared[tag].get("description"), f"{method} {path}: tag {tag!r}"


ADMIN_READS = {"webhooks_list", "webhooks_get", "webhooks_deliveries_list"}
# Reads that hand out a credential: a service's direct addresses with its secret (docs/serving.md).
PREDICT_READS = {"services_endpoint_get"}


def test_every_api_operation_but_the_agents_names_its_permission(spec: dict[str, Any]) -> None:
    known = {permission.value for permission in Permission}
    checked = 0
    for path, method, operation in operations(spec):
        permission = operation.get("x-permission")
        if not path.startswith("/api/v1/") or path.startswith("/api/v1/agent/") or path in PUBLIC_API_PATHS:
            assert permission is None, f"{method} {path} should not carry x-permission"
            continue
        if operation["operationId"] in SELF_SERVICE:
            assert permission is None, f"{method} {path} is self-service"
            assert SELF_SERVICE_NOTE in operation.get("description", ""), f"{method} {path}"
            continue
        checked += 1
        assert permission in known, f"{method} {path}: x-permission {permission!r}"
        # Reading needs a `.view` permission; changing anything needs more than that. Except reading
        # a project's webhooks: their URLs may hold a receiver's credentials, so only its
        # administrators read them; and a service's direct endpoint, which holds its secret.
        if operation["operationId"] in ADMIN_READS:
            assert permission == Permission.PROJECTS_ADMIN, f"{method} {path}: {permission}"
            continue
        if operation["operationId"] in PREDICT_READS:
            assert permission == Permission.SERVICES_PREDICT, f"{method} {path}: {permission}"
            continue
        assert permission.endswith(".view") == (method == "get"), f"{method} {path}: {permission}"
        assert f"`{permission}`" in operation.get("description", "")
    assert checked >= 30


def test_agent_operations_are_tagged_agent(spec: dict[str, Any]) -> None:
    agent_operations = [op for path, _, op in operations(spec) if path.startswith("/api/v1/agent/")]
    assert agent_operations
    assert all(op["tags"] == ["agent"] for op in agent_operations)


def test_the_bearer_scheme_is_declared_and_required_by_the_api(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    bearer = [
        name for name, scheme in schemes.items() if scheme == scheme | {"type": "http", "scheme": "bearer"}
    ]
    assert len(bearer) == 1, schemes
    for path, method, operation in operations(spec):
        requirements = operation.get("security", spec.get("security", []))
        if path.startswith("/api/v1/") and path not in PUBLIC_API_PATHS:
            assert {bearer[0]: []} in requirements, f"{method} {path} does not declare the bearer token"
            assert "401" in operation["responses"], f"{method} {path} does not declare its 401"
        else:
            assert not requirements, f"{method} {path} is public"


def test_422_responses_are_problem_documents(spec: dict[str, Any]) -> None:
    with_422 = 0
    for path, method, operation in operations(spec):
        has_input = bool(operation.get("parameters")) or "requestBody" in operation
        response = operation["responses"].get("422")
        if has_input:
            assert response is not None, f"{method} {path} takes input but declares no 422"
        if response is None:
            continue
        with_422 += 1
        assert response["content"] == {"application/problem+json": {"schema": {"$ref": PROBLEM_REF}}}, (
            f"{method} {path}: {response['content']}"
        )
    assert with_422 >= 30


def test_every_error_response_is_a_problem_document(spec: dict[str, Any]) -> None:
    """Errors are served as application/problem+json; the document must say so, with the schema."""
    for path, method, operation in operations(spec):
        for status, response in operation["responses"].items():
            if not status.startswith(("4", "5")):
                continue
            assert response.get("content") == {
                "application/problem+json": {"schema": {"$ref": PROBLEM_REF}}
            }, f"{method} {path} {status}: {response.get('content')}"


def test_the_problem_schema_replaces_fastapis_default(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    problem = schemas["Problem"]
    assert {"type", "title", "status", "detail", "code"} <= set(problem["required"])
    assert {"field", "errors"} <= set(problem["properties"])
    refs = re.findall(r'"\$ref": "(#/components/schemas/[^"]+)"', str(spec).replace("'", '"'))
    assert refs and all(ref.rsplit("/", 1)[1] in schemas for ref in refs)


def test_the_name_rule_is_documented_on_named_objects(spec: dict[str, Any]) -> None:
    name = spec["components"]["schemas"]["ProjectCreate"]["properties"]["name"]
    assert "NFC" in name["description"] and "128" in name["description"]
    assert "Классификатор-счетов_v1.2" in name.get("examples", [])


def test_the_document_is_the_same_on_every_request(openapi_app: FastAPI, tmp_path: Path) -> None:
    first = openapi_app.openapi()
    assert openapi_app.openapi() is first
    other = create_app(Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/x.db")).openapi()
    assert other == first


def test_self_service_operations_are_exactly_the_known_ones(openapi_app: FastAPI) -> None:
    assert self_service_operations(openapi_app) == SELF_SERVICE
