"""The Templates page in process, on SQLite and PostgreSQL: the form renders the package's declared
parameters, refuses with the API's own messages and changes nothing then, creates, edits and deletes
as the REST routes do, and refuses a viewer's forged POST and a POST without its CSRF token."""

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from tests.console.kit import csrf_of, make_person, sign_in
from tests.examples.conftest import EXAMPLES, PACKAGES, load_module

zip_package = load_module(EXAMPLES / "zip_package.py", "trainyard_example_zip_package")
HOSTILE = "<img src=x onerror=alert(1)>"
BASE = "/ui/projects/digits/templates/"


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://trainyard.test") as client:
        yield client


@pytest.fixture
async def seeded(client: AsyncClient) -> AsyncClient:
    """A project with the digits package (its parameters.json declares five), a model type and ann."""
    assert (await client.post("/model-types", json={"name": "classifier"})).status_code in (201, 409)
    assert (await client.post("/projects", json={"name": "digits"})).status_code == 201
    data = zip_package.zip_folder(PACKAGES / "digits-classifier")
    files = {"file": ("digits.zip", data, "application/zip")}
    assert (await client.post("/projects/digits/packages/digits/versions", files=files)).status_code == 201
    await make_person(client, "ann", is_admin=True)
    await make_person(client, "vera")
    assert (await client.put("/projects/digits/members/vera", json={"role": "viewer"})).status_code == 200
    return client


def _form(csrf: str, **changes: str) -> dict[str, str]:
    form = {
        "csrf_token": csrf,
        "name": "digits-cnn",
        "model_type": "classifier",
        "description": "",
        "pipeline_type": "training",
        "augmentation": "none",
        "max_duration_seconds": "3600",
        "gpus": "0",
        "processes": "1",
        "base_package": "digits",
        "base_version": "1.0",
        "param.epochs": "3",
        "param.learning_rate": "0.01",
        "action": "save",
    }
    form.update(changes)
    return form


async def test_the_form_renders_the_declared_parameters_with_their_defaults(
    browser: AsyncClient, seeded: AsyncClient
) -> None:
    await sign_in(browser, "ann")
    page = await browser.get(f"{BASE}new", params={"package": "digits"})
    assert page.status_code == 200
    for name in ("epochs", "batch_size", "learning_rate", "learning_rate_decay", "seed"):
        assert f'name="param.{name}"' in page.text
    assert 'value="0.003"' in page.text  # learning_rate's default
    script = await browser.get(f"{BASE}package", params={"package": "digits"})
    assert script.status_code == 200
    assert script.json()["versions"] == ["1.0"]
    assert [item["name"] for item in script.json()["parameters"]][:2] == ["epochs", "batch_size"]


async def test_a_bad_parameter_is_refused_with_the_apis_message_and_nothing_is_made(
    browser: AsyncClient, seeded: AsyncClient
) -> None:
    await sign_in(browser, "ann")
    form = await browser.get(f"{BASE}new", params={"package": "digits"})
    refused = await browser.post(f"{BASE}new", data=_form(csrf_of(form), **{"param.epochs": "many"}))
    assert refused.status_code == 422
    assert "parameter &#39;epochs&#39; must be an integer" in refused.text
    assert 'value="many"' in refused.text  # the form keeps what was typed
    hostile = await browser.post(f"{BASE}new", data=_form(csrf_of(form), name=HOSTILE))
    assert hostile.status_code == 422
    assert HOSTILE not in hostile.text and "&lt;img" in hostile.text
    assert (await seeded.get("/projects/digits/templates")).json()["items"] == []


async def test_create_edit_delete_as_the_api_does(browser: AsyncClient, seeded: AsyncClient) -> None:
    await sign_in(browser, "ann")
    form = await browser.get(f"{BASE}new")
    csrf = csrf_of(form)
    made = await browser.post(f"{BASE}new", data=_form(csrf, name="Классификатор"))
    assert made.status_code == 303, made.text
    stored = (await seeded.get("/projects/digits/templates/Классификатор")).json()
    assert stored["parameters"] == {
        "epochs": 3,
        "batch_size": 32,
        "learning_rate": 0.01,
        "learning_rate_decay": 0.7,
        "seed": 0,
    }
    listing = await browser.get(BASE)
    assert "Классификатор" in listing.text and "classifier" in listing.text
    url = f"{BASE}%D0%9A%D0%BB%D0%B0%D1%81%D1%81%D0%B8%D1%84%D0%B8%D0%BA%D0%B0%D1%82%D0%BE%D1%80/"
    edited = await browser.post(url, data=_form(csrf, name="Классификатор", description="v2"))
    assert edited.status_code == 303, edited.text
    assert (await seeded.get("/projects/digits/templates/Классификатор")).json()["description"] == "v2"
    gone = await browser.post(f"{url}delete", data={"csrf_token": csrf})
    assert gone.status_code == 303
    assert (await seeded.get("/projects/digits/templates/Классификатор")).status_code == 404


async def test_without_script_the_form_is_drawn_again_for_the_package_chosen(
    browser: AsyncClient, seeded: AsyncClient
) -> None:
    await sign_in(browser, "ann")
    form = await browser.get(f"{BASE}new")
    assert 'name="param.epochs"' not in form.text  # no package chosen yet: free JSON parameters
    again = await browser.post(f"{BASE}new", data=_form(csrf_of(form), action="refresh", base_version=""))
    assert again.status_code == 200
    assert 'name="param.epochs"' in again.text and 'value="3"' in again.text  # what was typed, kept
    assert (await seeded.get("/projects/digits/templates")).json()["items"] == []


async def test_a_viewer_sees_no_action_and_a_forged_post_is_refused(
    browser: AsyncClient, seeded: AsyncClient
) -> None:
    template = {"name": "shown", "model_type": "classifier", "base_package": "digits"}
    assert (await seeded.post("/projects/digits/templates", json=template)).status_code == 201
    await sign_in(browser, "vera")
    listing = await browser.get(BASE)
    assert listing.status_code == 200 and "New template" not in listing.text
    shown = await browser.get(f"{BASE}shown/")
    assert shown.status_code == 200 and '<fieldset class="plain" disabled>' in shown.text
    assert "Delete the template" not in shown.text and ">Save<" not in shown.text
    edit = await browser.post(f"{BASE}shown/", data=_form(csrf_of(listing), name="shown", description="x"))
    assert edit.status_code == 403
    gone = await browser.post(f"{BASE}shown/delete", data={"csrf_token": csrf_of(listing)})
    assert gone.status_code == 403
    assert (await browser.get(f"{BASE}new")).status_code == 403
    forged = await browser.post(f"{BASE}new", data=_form(csrf_of(listing)))
    assert forged.status_code == 403
    stored = (await seeded.get("/projects/digits/templates")).json()["items"]
    assert [(item["name"], item["description"]) for item in stored] == [("shown", "")]


async def test_a_post_without_the_csrf_token_is_refused(browser: AsyncClient, seeded: AsyncClient) -> None:
    await sign_in(browser, "ann")
    refused = await browser.post(f"{BASE}new", data=_form(""))
    assert refused.status_code == 403
    assert (await seeded.get("/projects/digits/templates")).json()["items"] == []
