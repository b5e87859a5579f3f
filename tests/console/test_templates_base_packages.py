"""The Templates form offers the built-in base packages (docs/base-packages.md) beside the project's
own, with their declared parameters, before any template of the project named them; saving the form
gives the project its copy. In process, on SQLite and PostgreSQL."""

from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from api.base_packages.service import install_base_packages
from tests.console.kit import csrf_of, make_person, sign_in

BASE = "/ui/projects/flowers/templates/"


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://trainyard.test") as client:
        yield client


@pytest.fixture
async def seeded(app: FastAPI, client: AsyncClient) -> AsyncClient:
    """The catalogue installed (as `trainyard-api migrate` does), a project with no package, ann."""
    async with app.state.sessionmaker() as session:
        await install_base_packages(session, app.state.blobs, app.state.settings.archive_limits())
        await session.commit()
    assert (await client.post("/projects", json={"name": "flowers"})).status_code == 201
    await make_person(client, "ann", is_admin=True)
    return client


async def test_the_form_offers_the_base_packages_and_saving_adopts_one(
    browser: AsyncClient, seeded: AsyncClient
) -> None:
    await sign_in(browser, "ann")
    page = await browser.get(f"{BASE}new", params={"package": "image-classifier"})
    assert page.status_code == 200
    assert 'value="image-classifier"' in page.text and 'value="tabular-classifier"' in page.text
    assert 'name="param.image_size"' in page.text and 'value="32"' in page.text
    script = await browser.get(f"{BASE}package", params={"package": "tabular-classifier"})
    assert script.status_code == 200 and script.json()["versions"] == ["1.0"]
    assert "target_column" in [item["name"] for item in script.json()["parameters"]]

    form = {
        "csrf_token": csrf_of(page),
        "name": "flowers",
        "model_type": "image-classification",
        "description": "",
        "pipeline_type": "full",
        "augmentation": "none",
        "max_duration_seconds": "3600",
        "gpus": "0",
        "processes": "1",
        "base_package": "image-classifier",
        "base_version": "1.0",
        "param.epochs": "3",
        "action": "save",
    }
    made = await browser.post(f"{BASE}new", data=form)
    assert made.status_code == 303, made.text
    stored = (await seeded.get("/projects/flowers/templates/flowers")).json()
    assert (stored["base_package"], stored["base_version"], stored["parameters"]["epochs"]) == (
        "image-classifier",
        "1.0",
        3,
    )
    package = (await seeded.get("/projects/flowers/packages/image-classifier")).json()
    assert package["builtin"] and package["model_types"] == ["image-classification"]

    wrong = await browser.post(
        f"{BASE}new", data={**form, "name": "wrong", "model_type": "tabular-classification"}
    )
    assert wrong.status_code == 422 and "is for the model types image-classification" in wrong.text
