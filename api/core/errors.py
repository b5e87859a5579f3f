"""The domain-error tree and its one `application/problem+json` handler.

Services raise these and never import HTTP; every error a client sees carries a stable `code`.
"""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"


class TrainyardError(Exception):
    status_code = 500
    code = "internal_error"
    title = "Internal server error"

    def __init__(
        self, detail: str, *, code: str | None = None, field: str | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.field = field
        self.extra = extra
        self.headers: dict[str, str] = {}


class InvalidInput(TrainyardError):
    status_code = 422
    code = "invalid_input"
    title = "Invalid input"


class Unauthorized(TrainyardError):
    status_code = 401
    code = "unauthorized"
    title = "Unauthorized"


class Forbidden(TrainyardError):
    status_code = 403
    code = "forbidden"
    title = "Forbidden"


class NotFound(TrainyardError):
    status_code = 404
    code = "not_found"
    title = "Not found"


class Conflict(TrainyardError):
    """The request is valid but the current state refuses it (a name taken, a run active, ...)."""

    status_code = 409
    code = "conflict"
    title = "Conflict"


class PayloadTooLarge(TrainyardError):
    status_code = 413
    code = "body_too_large"
    title = "Request body too large"


class TooManyRequests(TrainyardError):
    """Refused for a while; `Retry-After` says how long."""

    status_code = 429
    code = "too_many_requests"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(detail, code=code)
        self.headers = {"Retry-After": str(max(1, retry_after))}


class ServiceUnavailable(TrainyardError):
    status_code = 503
    code = "unavailable"
    title = "Service unavailable"


class FieldError(BaseModel):
    field: str
    message: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details, with Trainyard's stable machine-readable `code`."""

    type: str = Field(examples=["urn:trainyard:problem:run_active"])
    title: str = Field(examples=["Conflict"])
    status: int = Field(examples=[409])
    detail: str = Field(examples=["process 0193... already has an active run"])
    code: str = Field(examples=["run_active"])
    field: str | None = Field(default=None, description="The offending field, where there is one.")
    errors: list[FieldError] | None = None


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:trainyard:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if field is not None:
        body["field"] = field
    body.update(extra)
    headers = {**({"WWW-Authenticate": "Bearer"} if status == 401 else {}), **(headers or {})}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_CONTENT_TYPE, headers=headers or None)


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(part) for part in loc]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:] or parts
    return ".".join(parts)


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TrainyardError)
    return problem_response(
        exc.status_code, exc.code, exc.title, exc.detail, field=exc.field, headers=exc.headers, **exc.extra
    )


def _offending_field(errors: list[Any]) -> str | None:
    """The field the first error is about, without pydantic's union-member labels.

    A value that fits no member of a union (`1 | "latest"`) yields one error per member, each located
    under the member's label (`dataset_version.constrained-int`): the field is their common parent.
    """
    if not errors:
        return None
    first = tuple(errors[0].get("loc", ()))
    members = {
        loc[-1]
        for loc in (tuple(error.get("loc", ())) for error in errors)
        if len(loc) == len(first) and loc[:-1] == first[:-1]
    }
    return _location(first[:-1] if len(members) > 1 and len(first) > 2 else first) or None


def _malformed_json() -> JSONResponse:
    return problem_response(400, "malformed_json", "Malformed JSON", "The request body is not valid JSON.")


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        return _malformed_json()
    fields = [
        {
            "field": _location(tuple(e.get("loc", ()))),
            "message": str(e.get("msg", "")),
            "type": e.get("type", ""),
        }
        for e in errors
    ]
    field = _offending_field(errors)
    message = str(fields[0]["message"]) if fields else "invalid request"
    return problem_response(
        422,
        "validation_error",
        "Invalid request",
        f"{field}: {message}" if field else message,
        field=field,
        errors=fields,
    )


def _is_json(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return not content_type or content_type == "application/json" or content_type.endswith("+json")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and _is_json(request):
        # FastAPI's "error parsing the body": JSON that is not UTF-8, or nested past the parser's depth.
        return _malformed_json()
    codes = {
        404: "not_found",
        405: "method_not_allowed",
        401: "unauthorized",
        403: "forbidden",
        413: "body_too_large",
    }
    # One title per code, whichever path raised it (api/core/limits.py refuses 413s with this title too).
    titles = {413: PayloadTooLarge.title}
    code = codes.get(exc.status_code, f"http_{exc.status_code}")
    title = titles.get(exc.status_code, str(exc.detail))
    return problem_response(exc.status_code, code, title, str(exc.detail))


async def _unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error", exc_info=exc)
    response = problem_response(
        500, TrainyardError.code, TrainyardError.title, "An unexpected error occurred."
    )
    # Starlette's outermost middleware sends this one past api/core/transport.py: its headers are set here.
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    return response


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TrainyardError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: its declared problem documents, for the OpenAPI document."""
    descriptions = {
        400: "Malformed request",
        401: "Missing or invalid token",
        403: "Not permitted",
        404: "Not found",
        409: "Conflict with the current state",
        413: "Body too large",
        422: "Invalid input",
        429: "Too many attempts; Retry-After says when to try again",
    }
    return {
        status: {
            "model": Problem,
            "description": descriptions.get(status, "Error"),
            "content": {PROBLEM_CONTENT_TYPE: {}},
        }
        for status in statuses
    }
