"""The console's static files (its own scripts and styles, and the vendored libraries), cached by
browsers without ever serving a page the files of another version.

Two URLs serve the same folder:
- `/ui/static/v/<digest>/<path>`: what pages link (`{{ static }}` in every template). The digest is of
  every file's path and content, so an upgrade that changes any file changes every URL: the answer is
  `public, max-age=<a year>, immutable`, and a browser asks again only for a page (pages are
  `no-store`). A digest not the running code's is a 404: that URL's files are not these.
- `/ui/static/<path>`: the stable URL (the API docs' Swagger UI and ReDoc, a test's axe-core): `public,
  no-cache`, so a browser keeps the file but revalidates it each time, with the `ETag` and
  `Last-Modified` StaticFiles gives (304, no body, when unchanged).
"""

import hashlib
import os
from functools import cache
from pathlib import Path

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PATH = "/ui/static"
VERSIONED_CACHE = "public, max-age=31536000, immutable"
STABLE_CACHE = "public, no-cache"


@cache
def static_digest() -> str:
    """The first 16 hex digits of the SHA-256 over every static file's path and content (about 4 MB,
    read once a process: milliseconds)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in STATIC_DIR.rglob("*") if p.is_file()):
        digest.update(path.relative_to(STATIC_DIR).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def versioned_static_path() -> str:
    """The prefix pages link their files under: `/ui/static/v/<digest>`."""
    return f"{STATIC_PATH}/v/{static_digest()}"


class CachedStaticFiles(StaticFiles):
    """StaticFiles whose answers (200 and 304 alike) say how long a browser may keep them."""

    def __init__(self, *, directory: Path, cache_control: str) -> None:
        super().__init__(directory=directory)
        self.cache_control = cache_control

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = self.cache_control
        return response
