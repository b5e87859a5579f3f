"""What every request and every answer is held to before any route sees it (docs/deployment.md).

- A secret in the URL is refused, on every path (known or not, authenticated or not): URLs end up in
  access logs, proxies' logs, browser histories and `Referer` headers. A query parameter whose name,
  case-insensitively and with `-` read as `_`, is in `SECRET_QUERY_NAMES` answers 400 `token_in_url`
  whatever its value; the access log redacts such values in every line (api/core/access_log.py).
- More than `MAX_REQUEST_HEADERS` header fields answer 431 `too_many_headers`. Their total size is
  bounded by the server before the app (api/core/http_protocol.py).
- Every answer carries `X-Content-Type-Options: nosniff`, so that no browser runs a downloaded file
  as a page, and `Cache-Control: no-store` unless the route set its own: logins, new API tokens and
  agent tokens are in answers, and no answer of this API is meant for a shared cache.
"""

from urllib.parse import unquote_plus

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.core.errors import problem_response

SECRET_QUERY_NAMES = frozenset(
    {
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth",
        "auth_token",
        "authorization",
        "bearer",
        "api_key",
        "apikey",
        "key",
        "secret",
        "secret_key",
        "client_secret",
        "password",
        "passwd",
        "pwd",
        "agent_token",
        "bootstrap_token",
        "metrics_token",
    }
)
# Apache's LimitRequestFields; a real client sends about ten.
MAX_REQUEST_HEADERS = 100
REDACTED = "REDACTED"


def _name(field: str) -> str:
    name = unquote_plus(field.partition("=")[0]).strip().lower().replace("-", "_")
    return name.removesuffix("[]")


def has_secret(query_string: str) -> bool:
    return any(_name(field) in SECRET_QUERY_NAMES for field in query_string.split("&") if field)


def redact(query_string: str) -> str:
    """The query string with the value of every secret-named parameter replaced."""
    fields = query_string.split("&")
    for index, field in enumerate(fields):
        if _name(field) in SECRET_QUERY_NAMES:
            fields[index] = f"{field.partition('=')[0]}={REDACTED}"
    return "&".join(fields)


class Transport:
    """A pure ASGI middleware: the checks above before routing, the headers above on every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                if "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        if len(scope["headers"]) > MAX_REQUEST_HEADERS:
            refusal = problem_response(
                431,
                "too_many_headers",
                "Request header fields too large",
                f"a request may carry at most {MAX_REQUEST_HEADERS} header fields",
                headers={"Connection": "close"},
            )
            await refusal(scope, receive, with_headers)
            return
        if has_secret(scope["query_string"].decode("latin-1")):
            refusal = problem_response(
                400,
                "token_in_url",
                "Secret in the URL",
                "tokens, keys and passwords are accepted only in headers or bodies, never in a URL",
            )
            await refusal(scope, receive, with_headers)
            return
        await self.app(scope, receive, with_headers)
