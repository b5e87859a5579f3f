"""The console's session and CSRF over HTTP, in process, on SQLite and PostgreSQL: the cookie, its
reach (the console only), sign-out on the server, `next`, the tokens every POST needs."""

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from api.console.session import COOKIE, safe_next
from tests.console.kit import PASSWORD, csrf_of, make_person, sign_in


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[AsyncClient]:
    """A client that keeps cookies, as a browser does, and follows no redirect by itself."""
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://trainyard.test") as client:
        yield client


async def test_root_redirects_to_the_console(browser: AsyncClient) -> None:
    response = await browser.get("/")
    assert response.status_code == 307
    assert response.headers["location"] == "/ui/"


async def test_without_a_session_a_page_sends_to_sign_in_with_next(browser: AsyncClient) -> None:
    response = await browser.get("/ui/projects/x/", params={"a": "1"})
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/sign-in?next=/ui/projects/x/%3Fa%3D1"


async def test_sign_in_sets_an_httponly_samesite_cookie_and_goes_to_next(
    browser: AsyncClient, client: AsyncClient
) -> None:
    await make_person(client, "ann", is_admin=True)
    response = await sign_in(browser, "ann", next="/ui/?from=test")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/?from=test"
    cookie = next(h for h in response.headers.get_list("set-cookie") if h.startswith(f"{COOKIE}="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http here; https gets Secure (request.url.scheme)
    token = cookie.split(";")[0].split("=", 1)[1]
    page = await browser.get("/ui/")
    assert page.status_code == 200 and "Signed in as ann" in page.text
    assert token not in page.text  # the session token never reaches a page


async def test_the_cookie_does_not_authenticate_the_rest_api(
    browser: AsyncClient, client: AsyncClient
) -> None:
    await make_person(client, "ann", is_admin=True)
    await sign_in(browser, "ann")
    assert browser.cookies.get(COOKIE)
    response = await browser.get("/api/v1/projects")
    assert response.status_code == 401
    assert response.json()["code"] == "missing_token"


async def test_a_wrong_password_shows_the_form_again(browser: AsyncClient, client: AsyncClient) -> None:
    await make_person(client, "ann")
    response = await sign_in(browser, "ann", password="not it")
    assert response.status_code == 401
    assert "The username or the password is not right." in response.text
    assert COOKIE not in browser.cookies


async def test_sign_in_without_the_pre_session_token_is_refused(
    browser: AsyncClient, client: AsyncClient
) -> None:
    """Login CSRF: a form posted from another site has neither the cookie's value nor its HMAC."""
    await make_person(client, "ann")
    form = await browser.get("/ui/sign-in")
    data = {"username": "ann", "password": PASSWORD, "csrf_token": "forged"}
    assert (await browser.post("/ui/sign-in", data=data)).status_code == 403
    browser.cookies.clear()
    data["csrf_token"] = csrf_of(form)  # the right field, but no cookie: another site's form
    assert (await browser.post("/ui/sign-in", data=data)).status_code == 403


async def test_sign_out_revokes_the_session_on_the_server(
    app: FastAPI, browser: AsyncClient, client: AsyncClient
) -> None:
    await make_person(client, "ann", is_admin=True)
    await sign_in(browser, "ann")
    stolen = browser.cookies[COOKIE]
    page = await browser.get("/ui/")
    out = await browser.post("/ui/sign-out", data={"csrf_token": csrf_of(page)})
    assert out.status_code == 303 and out.headers["location"] == "/ui/sign-in"
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://trainyard.test") as thief:
        thief.cookies.set(COOKIE, stolen)
        again = await thief.get("/ui/")
    assert again.status_code == 303 and again.headers["location"].startswith("/ui/sign-in")
    # ...and as a bearer token, the same token is refused by the API too: one revocation.
    refused = await client.get("/auth/me", headers={"Authorization": f"Bearer {stolen}"})
    assert refused.status_code == 401


async def test_a_post_without_the_csrf_token_is_refused(browser: AsyncClient, client: AsyncClient) -> None:
    await make_person(client, "ann", is_admin=True)
    await sign_in(browser, "ann")
    refused = await browser.post("/ui/projects", data={"name": "nope"})
    assert refused.status_code == 403
    assert "security token" in refused.text
    by_script = await browser.post("/ui/projects", data={"name": "nope"}, headers={"X-CSRF-Token": "wrong"})
    assert by_script.status_code == 403 and by_script.json()["code"] == "csrf_failed"
    assert (await client.get("/projects/nope")).status_code == 404


async def test_create_a_project_and_its_refusals(browser: AsyncClient, client: AsyncClient) -> None:
    await make_person(client, "ann", is_admin=True)
    await sign_in(browser, "ann")
    token = csrf_of(await browser.get("/ui/"))
    made = await browser.post("/ui/projects", data={"name": "Счета", "description": "d", "csrf_token": token})
    assert (
        made.status_code == 303 and made.headers["location"] == "/ui/projects/%D0%A1%D1%87%D0%B5%D1%82%D0%B0/"
    )
    assert (await client.get("/projects/Счета")).json()["description"] == "d"
    home = await browser.get(made.headers["location"])
    assert home.status_code == 200 and "<h1>Счета</h1>" in home.text

    taken = await browser.post("/ui/projects", data={"name": "Счета", "csrf_token": token})
    assert taken.status_code == 409 and "exists already" in taken.text
    bad = await browser.post("/ui/projects", data={"name": "a b", "csrf_token": token})
    assert bad.status_code == 422 and "must not contain" in bad.text  # the API's own message
    assert 'aria-invalid="true"' in bad.text


async def test_a_hostile_text_renders_as_text(browser: AsyncClient, client: AsyncClient) -> None:
    hostile = "<img src=x onerror=alert(1)><script>alert(2)</script>\"'"
    await client.post("/projects", json={"name": "p", "description": hostile})
    await make_person(client, "ann", is_admin=True)
    await sign_in(browser, "ann")
    for url in ("/ui/", "/ui/projects/p/"):
        page = await browser.get(url)
        assert hostile not in page.text
        assert "&lt;img src=x onerror=alert(1)&gt;&lt;script&gt;" in page.text


async def test_a_person_sees_only_their_projects_and_no_create_form(
    browser: AsyncClient, client: AsyncClient
) -> None:
    for name in ("mine", "theirs"):
        await client.post("/projects", json={"name": name})
    await make_person(client, "bob")
    await client.put("/projects/mine/members/bob", json={"role": "viewer"})
    await sign_in(browser, "bob")
    page = await browser.get("/ui/")
    assert "mine" in page.text and "theirs" not in page.text
    assert 'action="/ui/projects"' not in page.text
    assert (await browser.get("/ui/projects/theirs/")).status_code == 404
    forged = await browser.post("/ui/projects", data={"name": "x", "csrf_token": csrf_of(page)})
    assert forged.status_code == 403
    assert (await client.get("/projects/x")).status_code == 404


async def test_console_pages_carry_the_security_headers(browser: AsyncClient) -> None:
    page = await browser.get("/ui/sign-in")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "same-origin"
    assert "<script>" not in page.text and " style=" not in page.text


async def test_the_language_follows_accept_language_then_the_switch(browser: AsyncClient) -> None:
    page = await browser.get("/ui/sign-in", headers={"Accept-Language": "ru-RU,ru;q=0.9,en;q=0.5"})
    assert '<html lang="ru">' in page.text and "Вход" in page.text
    switched = await browser.get("/ui/lang/en", params={"next": "/ui/sign-in"})
    assert switched.status_code == 303 and switched.headers["location"] == "/ui/sign-in"
    page = await browser.get("/ui/sign-in", headers={"Accept-Language": "ru"})
    assert '<html lang="en">' in page.text


async def test_docs_and_redoc_use_the_packaged_files(browser: AsyncClient) -> None:
    for url, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        page = await browser.get(url)
        assert page.status_code == 200 and asset in page.text
        assert "cdn." not in page.text and "googleapis" not in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        src = page.text.split(asset)[0].rsplit('"', 1)[1] + asset
        assert (await browser.get(src)).status_code == 200


@pytest.mark.parametrize(
    ("given", "honoured"),
    [
        ("/ui/projects/a/", "/ui/projects/a/"),
        ("/ui/?x=1", "/ui/?x=1"),
        ("//evil.example/", "/ui/"),
        ("/\\evil.example", "/ui/"),
        ("https://evil.example/", "/ui/"),
        ("javascript:alert(1)", "/ui/"),
        ("ui/", "/ui/"),
        ("/ui/\r\nSet-Cookie: x", "/ui/"),
        ("", "/ui/"),
    ],
)
def test_next_is_honoured_only_as_a_path_of_this_site(given: str, honoured: str) -> None:
    assert safe_next(given) == honoured
