"""The console's static files are cached by browsers, and a page never gets another version's files:
pages link a versioned URL kept for a year, the stable URL revalidates each time (ETag, 304)."""

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from api.console import static_files
from api.console.static_files import STATIC_DIR, static_digest
from tests.console.kit import make_person, sign_in

_LINKED = re.compile(r'(?:href|src)="(/ui/static/[^"]+)"')


async def test_pages_link_versioned_files_kept_for_a_year(app: FastAPI, client: AsyncClient) -> None:
    await make_person(client, "ann", is_admin=True)
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://trainyard.test") as browser:
        await sign_in(browser, "ann")
        page = await browser.get("/ui/")
        assert page.headers["cache-control"] == "no-store"  # the page itself: asked again each time
        linked = _LINKED.findall(page.text)
        assert {"css/console.css", "js/console.js", "img/trainyard.svg"} <= {
            url.rsplit(f"/v/{static_digest()}/", 1)[-1] for url in linked
        }
        for url in linked:
            assert url.startswith(f"/ui/static/v/{static_digest()}/"), url
            answer = await browser.get(url)
            assert answer.status_code == 200, url
            assert answer.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert answer.headers["x-content-type-options"] == "nosniff"
            relative = url.removeprefix(f"/ui/static/v/{static_digest()}/")
            assert answer.content == (STATIC_DIR / relative).read_bytes()


async def test_another_versions_url_is_not_found(anon: AsyncClient) -> None:
    answer = await anon.get("/ui/static/v/0000000000000000/js/console.js")
    assert answer.status_code == 404
    assert answer.headers["cache-control"] == "no-store"  # a 404 is never kept


async def test_the_stable_url_revalidates_with_its_etag(anon: AsyncClient) -> None:
    url = "/ui/static/vendor/uplot/uPlot.min.css"
    first = await anon.get(url)
    assert first.status_code == 200
    assert first.headers["cache-control"] == "public, no-cache"
    etag = first.headers["etag"]
    again = await anon.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["cache-control"] == "public, no-cache" and again.headers["etag"] == etag
    changed = await anon.get(url, headers={"If-None-Match": '"not-it"'})
    assert changed.status_code == 200 and changed.content == first.content


def test_the_digest_follows_every_files_content_and_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "js").mkdir()
    (tmp_path / "js" / "a.js").write_text("export const a = 1;\n")
    monkeypatch.setattr(static_files, "STATIC_DIR", tmp_path)
    try:
        seen = []
        for change in (
            lambda: None,
            lambda: (tmp_path / "js" / "a.js").write_text("export const a = 2;\n"),
            lambda: (tmp_path / "js" / "a.js").rename(tmp_path / "js" / "b.js"),
            lambda: (tmp_path / "c.css").write_text(""),
        ):
            change()
            static_digest.cache_clear()
            seen.append(static_digest())
            assert re.fullmatch(r"[0-9a-f]{16}", seen[-1])
        assert len(set(seen)) == len(seen)
    finally:
        static_digest.cache_clear()  # the next caller digests the real folder again
