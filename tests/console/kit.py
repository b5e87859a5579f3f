"""Helpers of the console's tests: a person with a password, signing in as a browser does, and a project
with an administrator and a viewer."""

import re
from typing import Any

from httpx import AsyncClient, Response

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(page: Response) -> str:
    found = _CSRF.search(page.text)
    assert found is not None, f"no csrf_token on the page:\n{page.text[:2000]}"
    return found.group(1)


async def make_person(admin: AsyncClient, name: str, **fields: Any) -> None:
    """A person who signs in with PASSWORD (`admin` is the REST client of the bootstrap administrator)."""
    response = await admin.post("/users", json={"name": name, "password": PASSWORD, **fields})
    assert response.status_code == 201, response.text


async def sign_in(browser: AsyncClient, name: str, password: str = PASSWORD, next: str = "/ui/") -> Response:
    """Sign in through the form: GET it (its pre-session cookie and token), then POST it."""
    form = await browser.get("/ui/sign-in", params={"next": next})
    assert form.status_code == 200, form.text
    data = {"username": name, "password": password, "next": next, "csrf_token": csrf_of(form)}
    return await browser.post("/ui/sign-in", data=data)


async def seed_project(admin: AsyncClient, project: str = "digits") -> AsyncClient:
    """`project`, with ann (an administrator) and vera (its viewer); `admin` returned for a fixture."""
    assert (await admin.post("/projects", json={"name": project})).status_code == 201
    await make_person(admin, "ann", is_admin=True)
    await make_person(admin, "vera")
    assert (await admin.put(f"/projects/{project}/members/vera", json={"role": "viewer"})).status_code == 200
    return admin
