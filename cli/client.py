"""The command's only way to the API: HTTP with a bearer token, answers checked in one place.

Nothing here knows the API's internals: paths, JSON and problem documents, as any REST client sees
them (`/openapi.json` is the contract). An error status becomes an `ApiError` carrying the problem
document; a transport failure an `Unreachable` naming the URL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from cli import __version__
from cli.config import API_PREFIX
from cli.errors import ApiError, Unreachable, UsageProblem

TIMEOUT = httpx.Timeout(30.0, connect=10.0)
RECONNECT_FOR_SECONDS = 300.0
RETRIED_STATUSES = frozenset({502, 503, 504})  # a proxy's word for an API that is restarting
PAGE_SIZE = 200  # the list routes' largest page: fewer round trips for `list`
T = TypeVar("T")
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


@dataclass
class Patience:
    """Retries of reads while the API is unreachable or its proxy answers 502, 503 or 504, with
    backoff, for up to RECONNECT_FOR_SECONDS since the first failure: a follow that lasts hours
    outlives an API restart. Only for reads (a GET repeated changes nothing)."""

    waiting: Callable[[str], None] | None = None  # hears why, before each retry
    deadline: float | None = None
    delay: float = 0.5

    def bear(self, error: Unreachable | ApiError) -> None:
        """Sleep before the next try; raise `error` when it is no outage or patience ran out."""
        if isinstance(error, ApiError) and error.status not in RETRIED_STATUSES:
            raise error
        now = time.monotonic()
        self.deadline = self.deadline if self.deadline is not None else now + RECONNECT_FOR_SECONDS
        if now >= self.deadline:
            raise error
        if self.waiting is not None:
            self.waiting(error.line())
        time.sleep(min(self.delay, self.deadline - now))
        self.delay = min(self.delay * 2, 10.0)


def patiently(read: Callable[[], T], waiting: Callable[[str], None] | None = None) -> T:
    """`read()`, retried through an outage (`Patience`)."""
    patience = Patience(waiting)
    while True:
        try:
            return read()
        except (Unreachable, ApiError) as error:
            patience.bear(error)


def connect(url: str | None, token: str | None, *, need_token: bool = True) -> Api:
    if not url:
        raise UsageProblem("no API to talk to: run `trainyard login URL`, or set TRAINYARD_URL")
    if need_token and not token:
        raise UsageProblem(f"not logged in to {url}: run `trainyard login`, or set TRAINYARD_TOKEN")
    return Api(url, token)
