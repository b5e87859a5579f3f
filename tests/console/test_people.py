"""The People page in process, on SQLite and PostgreSQL: people and bots, roles per project, API tokens
shown once (and working), what each person may see and do, refusals, CSRF, hostile names."""

import re
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient, Response

from tests.api.world import ok
from tests.console.kit import PASSWORD, csrf_of, make_person, sign_in

HOSTILE = "<img src=x onerror=alert(1)><script>alert(2)</script>"
_TOKEN = re.compile(r'<code id="api-token">([^<]+)</code>')


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://trainyard.test") as client:
        yield client


async def _as(browser: AsyncClient, client: AsyncClient, name: str, **fields: object) -> str:
    await make_person(client, name, **fields)
    await sign_in(browser, name)
    return csrf_of(await browser.get("/ui/people/"))


def _token(page: Response) -> str:
    found = _TOKEN.search(page.text)
    assert found is not None, page.text[:2000]
    return found.group(1)


async def _changes_by(client: AsyncClient, name: str) -> list[str]:
    events = ok(await client.get("/audit-events", params={"user": name}))["items"]
    return [event["action"] for event in events if event["action"] != "auth_login"]


async def test_create_a_person_and_a_bot(browser: AsyncClient, client: AsyncClient) -> None:
    csrf = await _as(browser, client, "ann", is_admin=True)
    made = await browser.post(
        "/ui/people",
        data={"name": "Пётр", "display_name": "Пётр И.", "password": PASSWORD, "csrf_token": csrf},
    )
    assert made.status_code == 303 and made.headers["location"] == "/ui/people/%D0%9F%D1%91%D1%82%D1%80/"
    page = await browser.get(made.headers["location"])
    assert page.status_code == 200 and "<h1>Пётр" in page.text
    async with AsyncClient(transport=browser._transport, base_url="http://trainyard.test") as peter:
        assert (await sign_in(peter, "Пётр")).status_code == 303  # signs in with the password set
    bot = await browser.post(
        "/ui/people", data={"name": "rpa", "bot": "true", "password": "x", "csrf_token": csrf}
    )
    assert bot.status_code == 303
    assert ok(await client.get("/users/rpa"))["has_password"] is False
    listed = await browser.get("/ui/people/")
    assert "Bot (API tokens only)" in listed.text and "Пётр И." in listed.text
    assert await _changes_by(client, "ann") == ["users_create", "users_create"]


async def test_refused_people_show_the_apis_words_and_make_nothing(
    browser: AsyncClient, client: AsyncClient
) -> None:
    csrf = await _as(browser, client, "ann", is_admin=True)
    short = await browser.post("/ui/people", data={"name": "bob", "password": "short", "csrf_token": csrf})
    assert short.status_code == 422 and "at least 12 characters" in short.text
    bad = await browser.post("/ui/people", data={"name": "a b", "bot": "true", "csrf_token": csrf})
    assert bad.status_code == 422 and "must not contain" in bad.text and 'aria-invalid="true"' in bad.text
    taken = await browser.post("/ui/people", data={"name": "ann", "bot": "true", "csrf_token": csrf})
    assert taken.status_code == 409 and "exists already" in taken.text
    assert [u["name"] for u in ok(await client.get("/users"))["items"]] == ["admin", "ann"]


async def test_disable_enable_admin_password(browser: AsyncClient, client: AsyncClient) -> None:
    csrf = await _as(browser, client, "ann", is_admin=True)
    await make_person(client, "bob")
    assert (await browser.post("/ui/people/bob/disable", data={"csrf_token": csrf})).status_code == 303
    assert ok(await client.get("/users/bob"))["enabled"] is False
    assert (await browser.post("/ui/people/bob/enable", data={"csrf_token": csrf})).status_code == 303
    made = await browser.post("/ui/people/bob/admin", data={"is_admin": "true", "csrf_token": csrf})
    assert made.status_code == 303 and ok(await client.get("/users/bob"))["is_admin"] is True
    short = await browser.post("/ui/people/bob/password", data={"password": "short", "csrf_token": csrf})
    assert short.status_code == 422 and "at least 12 characters" in short.text
    new = "a new password of bob"
    assert (
        await browser.post("/ui/people/bob/password", data={"password": new, "csrf_token": csrf})
    ).status_code == 303
    async with AsyncClient(transport=browser._transport, base_url="http://trainyard.test") as bob:
        assert (await sign_in(bob, "bob", new)).status_code == 303

    # The last enabled administrator cannot be disabled: ann unmakes bob, disables the bootstrap
    # administrator, then tries herself.
    unmade = await browser.post("/ui/people/bob/admin", data={"is_admin": "false", "csrf_token": csrf})
    assert unmade.status_code == 303
    assert (await browser.post("/ui/people/admin/disable", data={"csrf_token": csrf})).status_code == 303
    refused = await browser.post("/ui/people/ann/disable", data={"csrf_token": csrf})
    assert refused.status_code == 409 and "last enabled administrator" in refused.text
    assert "Refused:" in refused.text and (await browser.get("/ui/people/ann/")).status_code == 200


async def test_roles_in_projects(browser: AsyncClient, client: AsyncClient) -> None:
    csrf = await _as(browser, client, "ann", is_admin=True)
    await make_person(client, "bob")
    ok(await client.post("/projects", json={"name": "Счета"}), 201)
    given = await browser.post(
        "/ui/people/bob/roles", data={"project": "Счета", "role": "trainer", "csrf_token": csrf}
    )
    assert given.status_code == 303
    members = ok(await client.get("/projects/Счета/members"))["items"]
    assert [(m["user"], m["role"]) for m in members] == [("bob", "trainer")]
    page = await browser.get("/ui/people/bob/")
    assert '<th scope="row">Счета</th>' in page.text and "<td>trainer</td>" in page.text
    unknown = await browser.post(
        "/ui/people/bob/roles", data={"project": "Счета", "role": "nope", "csrf_token": csrf}
    )
    assert unknown.status_code == 404 and "nope" in unknown.text
    gone = await browser.post("/ui/people/bob/roles/remove", data={"project": "Счета", "csrf_token": csrf})
    assert gone.status_code == 303
    assert ok(await client.get("/projects/Счета/members"))["items"] == []
    assert await _changes_by(client, "ann") == ["members_set", "members_delete"]
    events = ok(await client.get("/audit-events", params={"user": "ann"}))["items"]
    assert events[-1]["project_id"] is not None  # the row names the project, as the API's does


async def test_a_project_admin_gives_only_roles_they_hold(browser: AsyncClient, client: AsyncClient) -> None:
    """users.view is not needed for one's own page; projects.admin gives roles in that project only,
    and never one with a permission the giver lacks there (the service's rule, in its words)."""
    ok(await client.post("/projects", json={"name": "mine"}), 201)
    ok(await client.post("/projects", json={"name": "theirs"}), 201)
    await make_person(client, "bob")
    await make_person(client, "pat")
    ok(await client.put("/projects/mine/members/pat", json={"role": "project-admin"}))
    ok(await client.put("/projects/theirs/members/pat", json={"role": "viewer"}))
    await sign_in(browser, "pat")
    own = await browser.get("/ui/people/pat/")
    offered = own.text.split('<select id="role-project" name="project">')[1].split("</select>")[0]
    assert own.status_code == 200 and 'value="mine"' in offered and 'value="theirs"' not in offered
    csrf = csrf_of(own)
    assert (await browser.get("/ui/people/bob/")).status_code == 403  # no users.view
    over = await browser.post(
        "/ui/people/pat/roles", data={"project": "mine", "role": "administrator", "csrf_token": csrf}
    )
    assert over.status_code == 403 and "which you do not hold here" in over.text
    elsewhere = await browser.post(
        "/ui/people/pat/roles", data={"project": "theirs", "role": "viewer", "csrf_token": csrf}
    )
    assert elsewhere.status_code == 403
    hidden = await browser.post(
        "/ui/people/pat/roles", data={"project": "nowhere", "role": "viewer", "csrf_token": csrf}
    )
    assert hidden.status_code == 404
    assert [m["role"] for m in ok(await client.get("/projects/mine/members"))["items"]] == ["project-admin"]


async def test_own_tokens_shown_once_work_and_revoke(
    app: FastAPI, browser: AsyncClient, client: AsyncClient
) -> None:
    ok(await client.post("/projects", json={"name": "p"}), 201)
    await make_person(client, "vera")
    ok(await client.put("/projects/p/members/vera", json={"role": "viewer"}))
    await sign_in(browser, "vera")
    csrf = csrf_of(await browser.get("/ui/people/vera/"))
    made = await browser.post(
        "/ui/people/vera/tokens",
        data={
            "name": "script",
            "expires": "1",
            "scope": "some",
            "permissions": ["projects.view"],
            "csrf_token": csrf,
        },
    )
    assert made.status_code == 201 and made.headers["cache-control"] == "no-store"
    token = _token(made)
    me = await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and ok(me)["token"]["permissions"] == ["projects.view"]
    assert ok(me)["token"]["expires_at"] is not None
    page = await browser.get("/ui/people/vera/")
    assert token not in page.text and "script" in page.text and "this session" in page.text
    token_id = ok(me)["token"]["id"]
    revoked = await browser.post(f"/ui/people/vera/tokens/{token_id}/revoke", data={"csrf_token": csrf})
    assert revoked.status_code == 303
    assert (await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})).status_code == 401
    assert await _changes_by(client, "vera") == ["tokens_create", "tokens_revoke"]

    beyond = await browser.post(
        "/ui/people/vera/tokens",
        data={"name": "more", "scope": "some", "permissions": ["machines.admin"], "csrf_token": csrf},
    )
    assert beyond.status_code == 422 and "does not hold" in beyond.text
    odd = await browser.post("/ui/people/vera/tokens", data={"name": "x", "expires": "3", "csrf_token": csrf})
    assert odd.status_code == 422
    unknown = await browser.post(
        "/ui/people/vera/tokens",
        data={"name": "x", "scope": "some", "permissions": ["nope"], "csrf_token": csrf},
    )
    assert unknown.status_code == 422 and "unknown permission" in unknown.text
    names = [t["name"] for t in ok(await client.get("/users/vera/tokens"))["items"] if t["kind"] == "api"]
    assert names == ["script"]


async def test_an_administrator_makes_a_bots_token(browser: AsyncClient, client: AsyncClient) -> None:
    csrf = await _as(browser, client, "ann", is_admin=True)
    ok(await client.post("/users", json={"name": "rpa"}), 201)
    made = await browser.post("/ui/people/rpa/tokens", data={"name": "invoices", "csrf_token": csrf})
    assert made.status_code == 201
    me = await client.get("/auth/me", headers={"Authorization": f"Bearer {_token(made)}"})
    assert ok(me)["user"]["name"] == "rpa" and ok(me)["token"]["permissions"] is None
    assert await _changes_by(client, "ann") == ["users_tokens_create"]
    # No expiry asked: it ends with ann's session, as the API caps a token made by a login token.
    session = next(t for t in ok(await client.get("/users/ann/tokens"))["items"] if t["kind"] == "login")
    assert ok(me)["token"]["expires_at"] == session["expires_at"]
    page = await browser.get("/ui/people/rpa/")
    assert "When your session ends" in page.text and 'value="8760"' not in page.text


async def test_a_viewer_sees_no_action_and_forged_posts_are_refused(
    browser: AsyncClient, client: AsyncClient
) -> None:
    ok(await client.post("/projects", json={"name": "p"}), 201)
    ok(
        await client.post("/roles", json={"name": "auditor", "permissions": ["users.view", "projects.view"]}),
        201,
    )
    await make_person(client, "ivy")
    await make_person(client, "bob")
    ok(await client.post("/users", json={"name": "rpa"}), 201)
    ok(await client.put("/projects/p/members/ivy", json={"role": "auditor"}))
    await sign_in(browser, "ivy")
    listed = await browser.get("/ui/people/")
    assert listed.status_code == 200 and "bob" in listed.text and 'action="/ui/people"' not in listed.text
    bob = await browser.get("/ui/people/bob/")
    assert bob.status_code == 200 and '<form method="post" action="/ui/people/bob/' not in bob.text
    csrf = csrf_of(bob)
    forged = [
        ("/ui/people", {"name": "x", "bot": "true"}),
        ("/ui/people/bob/disable", {}),
        ("/ui/people/bob/admin", {"is_admin": "true"}),
        ("/ui/people/bob/password", {"password": "a long enough password"}),
        ("/ui/people/rpa/tokens", {"name": "stolen"}),
        ("/ui/people/bob/roles", {"project": "p", "role": "viewer"}),
    ]
    for path, data in forged:
        assert (await browser.post(path, data={**data, "csrf_token": csrf})).status_code == 403, path
    assert (
        ok(await client.get("/users/bob"))["enabled"] is True
        and ok(await client.get("/users/bob"))["is_admin"] is False
    )
    assert ok(await client.get("/users/rpa/tokens"))["items"] == []
    assert (await client.get("/users/x")).status_code == 404
    assert [m["user"] for m in ok(await client.get("/projects/p/members"))["items"]] == ["ivy"]


async def test_without_users_view_only_ones_own_page(browser: AsyncClient, client: AsyncClient) -> None:
    await make_person(client, "bob")
    await sign_in(browser, "bob")
    listed = await browser.get("/ui/people/")
    assert listed.status_code == 200 and "needs the permission users.view" in listed.text
    assert 'href="/ui/people/bob/"' in listed.text
    assert (await browser.get("/ui/people/admin/")).status_code == 403
    assert (await browser.get("/ui/people/nobody/")).status_code == 404


async def test_a_post_without_the_csrf_token_changes_nothing(
    browser: AsyncClient, client: AsyncClient
) -> None:
    await _as(browser, client, "ann", is_admin=True)
    await make_person(client, "bob")
    assert (await browser.post("/ui/people/bob/disable")).status_code == 403
    assert (await browser.post("/ui/people/ann/tokens", data={"name": "t"})).status_code == 403
    assert ok(await client.get("/users/bob"))["enabled"] is True
    assert [t for t in ok(await client.get("/users/ann/tokens"))["items"] if t["kind"] == "api"] == []


async def test_hostile_names_render_as_text(browser: AsyncClient, client: AsyncClient) -> None:
    ok(await client.post("/users", json={"name": "rpa", "display_name": HOSTILE}), 201)
    ok(
        await client.post(
            "/roles", json={"name": "r", "description": HOSTILE, "permissions": ["projects.view"]}
        ),
        201,
    )
    csrf = await _as(browser, client, "ann", is_admin=True)
    made = await browser.post("/ui/people/rpa/tokens", data={"name": HOSTILE, "csrf_token": csrf})
    assert made.status_code == 201 and HOSTILE not in made.text
    for url in ("/ui/people/", "/ui/people/rpa/"):
        page = await browser.get(url)
        assert HOSTILE not in page.text
        assert "&lt;img src=x onerror=alert(1)&gt;&lt;script&gt;" in page.text
