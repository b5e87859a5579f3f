"""The command's only way to the API: HTTP with a bearer token, answers checked in one place.

Nothing here knows the API's internals: paths, JSON and problem documents, as any REST client sees
them (`/openapi.json` is the contract). An error status becomes an `ApiError` carrying the problem
document; a transport failure an `Unreachable` naming the URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from cli import __version__
from cli.config import API_PREFIX
from cli.errors import ApiError, Unreachable, UsageProblem

TIMEOUT = httpx.Timeout(30.0, connect=10.0)
PAGE_SIZE = 200  # the list routes' largest page: fewer round trips for `list`
Params = Mapping[str, Any] | list[tuple[str, Any]] | None


def segment(value: str) -> str:
    """One path segment, whatever a hostile name holds (`/`, `..`, `?`, `#`, `%`)."""
    return quote(value, safe="")


class Api:
    def __init__(self, url: str, token: str | None, *, timeout: httpx.Timeout = TIMEOUT) -> None:
        self.url = url
        headers = {"User-Agent": f"trainyard-cli/{__version__}", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(base_url=url + API_PREFIX, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def send(
        self,
        method: str,
        path: str,
        *,
        expect: tuple[int, ...] = (200, 201, 202, 204),
        **kwargs: Any,
    ) -> httpx.Response:
        """One request; an `ApiError` unless the status is in `expect`."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise Unreachable(f"{self.url} did not answer in time") from None
        except httpx.TransportError as error:
            raise Unreachable(f"cannot reach {self.url}: {error or type(error).__name__}") from None
        if response.status_code not in expect:
            raise api_error(response)
        return response

    def get(self, path: str, params: Params = None, **kwargs: Any) -> Any:
        return self.send("GET", path, params=params, **kwargs).json()

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        response = self.send("POST", path, json=body, **kwargs)
        return response.json() if response.content else None

    def delete(self, path: str) -> None:
        self.send("DELETE", path)

    def items(self, path: str, params: Params = None, limit: int | None = None) -> list[Any]:
        """Every item of a paged list (following `next_cursor`), or the first `limit`."""
        found: list[Any] = []
        cursor: str | None = None
        base = dict(params or {})
        while limit is None or len(found) < limit:
            size = PAGE_SIZE if limit is None else min(PAGE_SIZE, limit - len(found))
            page = self.get(path, {**base, "limit": size, **({"cursor": cursor} if cursor else {})})
            found.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return found


def api_error(response: httpx.Response) -> ApiError:
    """The problem document of an error answer; one made from the status line when it is not JSON."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and ("title" in body or "code" in body):
        return ApiError(response.status_code, body)
    return ApiError(response.status_code, {"title": f"HTTP {response.status_code} {response.reason_phrase}"})


def connect(url: str | None, token: str | None, *, need_token: bool = True) -> Api:
    if not url:
        raise UsageProblem("no API to talk to: run `trainyard login URL`, or set TRAINYARD_URL")
    if need_token and not token:
        raise UsageProblem(f"not logged in to {url}: run `trainyard login`, or set TRAINYARD_TOKEN")
    return Api(url, token)
