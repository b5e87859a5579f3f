"""The OpenAPI document: problem documents instead of FastAPI's default 422, and each route's permission."""

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic.json_schema import models_json_schema
from starlette.routing import BaseRoute

from api.core.errors import PROBLEM_CONTENT_TYPE
from api.core.security import Permission, current_user
from shared.protocol import TelemetryBatch

_DEFAULT_VALIDATION = "#/components/schemas/HTTPValidationError"
_PROBLEM = "#/components/schemas/Problem"
# Bodies their routes parse themselves (the telemetry batch: `api/telemetry/router.py`); the routes
# name them by `$ref` in `openapi_extra`, and their schemas join the components here.
HAND_PARSED_BODIES = (TelemetryBatch,)


_JSON_BODY_ERRORS = {"400": "Malformed JSON (`malformed_json`)", "413": "Body too large (`body_too_large`)"}


def _problem_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": _PROBLEM}}}}


def _problem_content_only(response: dict[str, Any]) -> None:
    """FastAPI files a `responses=` model under application/json; errors are served as problem+json.

    Move the schema to the media type the client actually receives, so generated SDKs parse errors.
    """
    content = response.get("content", {})
    if content.get("application/json", {}).get("schema", {}).get("$ref") == _PROBLEM:
        response["content"] = {PROBLEM_CONTENT_TYPE: content["application/json"]}


_BINARY = {"type": "string", "format": "binary"}


def _is_binary(media_type: str) -> bool:
    return not (media_type.endswith(("/json", "+json")) or media_type.startswith(("text/", "multipart/")))


def _binary_content(operation: dict[str, Any]) -> None:
    """Zips, blobs and artifacts are bytes, and text is a string: say so (SDK generators type a media
    type with no schema as `Any`), and drop the empty `application/json` FastAPI files beside a
    route's own binary one."""
    bodies = [operation.get("requestBody", {}), *operation.get("responses", {}).values()]
    for body in bodies:
        content = body.get("content", {})
        binary = [media for media in content if _is_binary(media)]
        if binary and content.get("application/json", {}).get("schema") == {}:
            del content["application/json"]
        for media in binary:
            if not content[media].get("schema"):
                content[media]["schema"] = dict(_BINARY)
        for media in content:
            if media.startswith("text/") and not content[media].get("schema"):
                content[media]["schema"] = {"type": "string"}


def _permission(dependant: Dependant) -> Permission | None:
    for dependency in dependant.dependencies:
        found = getattr(dependency.call, "permission", None) or _permission(dependency)
        if found is not None:
            return found
    return None


def _signed_in(dependant: Dependant) -> bool:
    return any(d.call is current_user or _signed_in(d) for d in dependant.dependencies)


SELF_SERVICE_NOTE = "Open to any signed-in user: it needs no permission."


def self_service_operations(app: FastAPI) -> set[str]:
    """operationIds any signed-in user may call: their own tokens, password and identity."""
    return {
        route.operation_id
        for route in api_routes(app.routes)
        if route.operation_id and _permission(route.dependant) is None and _signed_in(route.dependant)
    }


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every APIRoute, also inside included routers (however this FastAPI version nests them)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from api_routes(inner.routes)


def route_permissions(app: FastAPI) -> dict[str, Permission | None]:
    """operationId -> the permission its route declares (None: any authenticated caller, or public)."""
    return {
        route.operation_id: _permission(route.dependant)
        for route in api_routes(app.routes)
        if route.operation_id
    }


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        permissions = route_permissions(app)
        self_service = self_service_operations(app)
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                responses = operation.get("responses", {})
                validation = responses.get("422", {}).get("content", {}).get("application/json", {})
                if validation.get("schema", {}).get("$ref") == _DEFAULT_VALIDATION:
                    responses["422"] = _problem_response("Invalid input")
                if "application/json" in operation.get("requestBody", {}).get("content", {}):
                    # Any JSON body may be malformed or too large (api/core/limits.py): say so, so that
                    # clients and schemathesis (tests/api/test_schemathesis.py) expect these answers.
                    for status, description in _JSON_BODY_ERRORS.items():
                        responses.setdefault(status, _problem_response(description))
                for response in responses.values():
                    _problem_content_only(response)
                _binary_content(operation)
                permission = permissions.get(operation.get("operationId"))
                if permission is not None:
                    operation["x-permission"] = permission.value
                    operation["description"] = (
                        operation.get("description", "")
                        + f"\n\nRequires the permission `{permission.value}`."
                    ).strip()
                elif operation.get("operationId") in self_service:
                    operation["description"] = (
                        operation.get("description", "") + f"\n\n{SELF_SERVICE_NOTE}"
                    ).strip()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        _, hand_parsed = models_json_schema(
            [(model, "validation") for model in HAND_PARSED_BODIES],
            ref_template="#/components/schemas/{model}",
        )
        for name, definition in hand_parsed.get("$defs", {}).items():
            components.setdefault(name, definition)
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
