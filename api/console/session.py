"""The console's session: the `login` token of `api/access/login.py`, held in an HttpOnly cookie.

The cookie authenticates the console's routes only, looked up as a bearer token is (the same HMAC and
the same row, so expiry, revocation and a disabled user end it alike); `/api/v1` still takes the
Authorization header only, so the REST API cannot be driven by a cross-site form. A request without a
valid session is sent to Sign in with the page it asked for as `next`, which is honoured only as a path
on this site.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request, Response

from api.console import csrf
from api.core.db import SessionDep
from api.core.errors import Unauthorized
from api.core.security import Principal, audit_event, token_hmac, user_for_token
from api.models.base import utcnow

COOKIE = "trainyard_session"
HOME = "/ui/"
SIGN_IN = "/ui/sign-in"


class SignInRequired(Exception):
    """No session, or one that ended: 303 to Sign in, coming back to `next` afterwards."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


@dataclass(frozen=True)
class ConsoleSession:
    principal: Principal
    csrf: str  # the token every form of the page carries

    @property
    def user_id(self) -> uuid.UUID:
        return self.principal.id


def safe_next(value: str | None) -> str:
    """`value` if it is a path on this site (`/...`), else the console's home: never `//host`,
    `/\\host`, a scheme, or anything a browser could read as another origin."""
    if not value or not value.startswith("/") or value.startswith("//"):
        return HOME
    if "\\" in value or any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        return HOME
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return HOME
    return value


def sign_in_url(next_path: str) -> str:
    return f"{SIGN_IN}?next={quote(safe_next(next_path), safe='/')}"


def _asked_for(request: Request) -> str:
    if request.method != "GET":
        return HOME  # a form posted with an ended session: back to the home, not to a POST-only path
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


async def _signed_in(request: Request, session: SessionDep) -> ConsoleSession:
    token = request.cookies.get(COOKIE)
    if not token:
        raise SignInRequired(_asked_for(request))
    key: bytes = request.app.state.token_key
    try:
        principal = await user_for_token(session, token_hmac(key, token))
    except Unauthorized:  # revoked, expired, or its user disabled
        principal = None
    if principal is None:
        raise SignInRequired(_asked_for(request))
    return ConsoleSession(principal, csrf.session_csrf(key, token))


async def _signed_in_changing(
    request: Request, signed_in: Annotated[ConsoleSession, Depends(_signed_in)]
) -> ConsoleSession:
    """A state-changing request: the session, and its CSRF token checked."""
    await csrf.check(request, signed_in.csrf)
    return signed_in


SignedIn = Annotated[ConsoleSession, Depends(_signed_in)]
SignedInChanging = Annotated[ConsoleSession, Depends(_signed_in_changing)]


def audit(session: SessionDep, request: Request, principal: Principal, action: str) -> None:
    """The audit row a change leaves, as the API's `current_user` writes it for its own routes; added
    to the request's unit of work, so a change that fails leaves none."""
    session.add(audit_event(request, principal, action))


def set_session_cookie(response: Response, request: Request, token: str, expires_at: datetime) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=max(0, int((expires_at - utcnow()).total_seconds())),
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="lax",
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE, path="/", secure=request.url.scheme == "https", httponly=True, samesite="lax"
    )
