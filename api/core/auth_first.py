"""Authentication before input: a caller without a valid token learns nothing of what a route takes.

FastAPI parses a JSON body before it runs a route's dependencies, and validates the path and query
in the same pass, so a malformed body or a path that is not an id would be answered 400 or 422 to a
caller whose token is missing or wrong: a map of the API's inputs for anyone, and a wrong answer
for a client that must first fix its token. So every 400 and 422 that FastAPI raises on a route that
takes a token (one whose dependencies include `bearer_scheme`) is held back until the token has been
checked: no token, a malformed header or a token that is nobody's answers 401 first, a user's token
on an agent route (or a machine's on a user route) 403, as the route's own dependencies would. The
check costs a lookup only on requests that are refused anyway; the session it opens is rolled back.
"""

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.core.errors import Forbidden, TrainyardError, problem_response
from api.core.security import agent_for, authenticate, bearer_digest, bearer_scheme

Handler = Callable[[Request, Any], Response | Awaitable[Response]]
AGENT_PATHS = "/api/v1/agent/"
_INPUT_STATUSES = frozenset({400, 422})


def _takes_token(dependant: Dependant) -> bool:
    return any(d.call is bearer_scheme or _takes_token(d) for d in dependant.dependencies)


async def check_caller(request: Request) -> None:
    """Raise what the route's own authentication would: 401 for no valid token, 403 for the wrong kind."""
    digest = bearer_digest(request)
    async with request.app.state.sessionmaker() as session:
        try:
            if request.url.path.startswith(AGENT_PATHS):
                await agent_for(session, digest)
            elif (await authenticate(request, session, None)).kind != "user":
                raise Forbidden(
                    "agent tokens are accepted on /api/v1/agent/... only", code="agent_token_not_allowed"
                )
        finally:
            await session.rollback()  # nothing the lookup touched (a token's last use) is kept


def _authenticated_first(inner: Handler) -> Handler:
    async def handler(request: Request, exc: Any) -> Response:
        route = request.scope.get("route")
        input_error = isinstance(exc, RequestValidationError) or (
            isinstance(exc, StarletteHTTPException) and exc.status_code in _INPUT_STATUSES
        )
        if input_error and isinstance(route, APIRoute) and _takes_token(route.dependant):
            try:
                await check_caller(request)
            except TrainyardError as refused:
                return problem_response(
                    refused.status_code, refused.code, refused.title, refused.detail, field=refused.field
                )
        answer = inner(request, exc)
        return await answer if isinstance(answer, Awaitable) else answer

    return handler


def install_auth_first(app: FastAPI) -> None:
    """Wrap the input-error handlers `api.core.errors` installed (call it after `install_error_handlers`)."""
    for exc_class in (RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(exc_class, _authenticated_first(app.exception_handlers[exc_class]))
