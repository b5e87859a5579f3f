"""CSRF: every state-changing console request carries a token the cookie alone cannot supply.

A signed-in person's token is a synchronizer token bound to their session: the HMAC, under the API's
secret key, of the session token (labelled, so it is never the HMAC the token is stored as). Forms carry
it in the hidden field `csrf_token`, scripts in the header `X-CSRF-Token`. The sign-in form, which has no
session yet, gets a pre-session cookie holding a random value, and the form the HMAC of that value
(double submit, signed): a page on another site can neither read the cookie nor forge the HMAC, so it
cannot sign a person in to an account of its choosing (login CSRF). Compared with `hmac.compare_digest`.
"""

import hmac
import secrets

from fastapi import Request

from api.core.security import token_hmac

FIELD = "csrf_token"
HEADER = "x-csrf-token"
PRESESSION_COOKIE = "trainyard_presession"


class CsrfRefused(Exception):
    """A state-changing request without the right token: 403 (a page, or `csrf_failed` for a script)."""


def session_csrf(key: bytes, session_token: str) -> str:
    return token_hmac(key, f"console-csrf:{session_token}")


def presession_csrf(key: bytes, presession: str) -> str:
    return token_hmac(key, f"console-presession-csrf:{presession}")


def new_presession() -> str:
    return secrets.token_urlsafe(32)


async def sent_token(request: Request) -> str:
    """The token the request carries: the header for a script, else the form field."""
    header = request.headers.get(HEADER)
    if header is not None:
        return header
    form = await request.form()  # Starlette keeps it: the route's Form(...) parameters read it again
    value = form.get(FIELD)
    return value if isinstance(value, str) else ""


async def check(request: Request, expected: str) -> None:
    sent = await sent_token(request)
    if not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise CsrfRefused()
