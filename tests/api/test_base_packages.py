"""The built-in base packages (issue 18 item 5) in the database, on SQLite and PostgreSQL: the install
is idempotent and adds a version only for new content; a template naming one gets the project's copy;
nobody uploads into it or deletes its versions; its model types are checked."""

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import select

from api.base_packages.catalogue import BASE_PACKAGES, HERE, MODEL_TYPES, package_zip
from api.base_packages.service import Installed, install_base_packages
from api.models import ModelType, Package, PackageVersion
from tests.api.access_kit import member_token
from tests.api.conftest import DatabaseDump
from tests.api.packages_kit import valid_package, zip_bytes
from tests.api.world import ok, problem

IMAGE = "image-classifier"
TABULAR = "tabular-classifier"


async def _install(app: FastAPI, root: Path | None = None) -> list[Installed]:
    async with app.state.sessionmaker() as session:
        installed = await install_base_packages(
            session, app.state.blobs, app.state.settings.archive_limits(), root=root
        )
        await session.commit()
    return installed


async def _catalogue(app: FastAPI) -> dict[str, list[tuple[int, int, str, str]]]:
    """Each catalogue package's versions: (major, minor, origin, sha256)."""
    async with app.state.sessionmaker() as session:
        rows = await session.execute(
            select(Package.name, PackageVersion.major, PackageVersion.minor, PackageVersion.origin)
            .add_columns(PackageVersion.blob_sha256)
            .join(PackageVersion, PackageVersion.package_id == Package.id)
            .where(Package.project_id.is_(None))
            .order_by(Package.name, PackageVersion.major)
        )
        found: dict[str, list[tuple[int, int, str, str]]] = {}
        for name, major, minor, origin, sha256 in rows:
            found.setdefault(name, []).append((major, minor, origin, sha256))
        return found


async def _project(client: AsyncClient, name: str = "p") -> str:
    ok(await client.post("/projects", json={"name": name}), 201)
    return name


async def _template(client: AsyncClient, project: str, name: str, **fields: Any) -> Any:
    return await client.post(f"/projects/{project}/templates", json={"name": name, **fields})


async def test_install_is_idempotent_and_ties_the_model_types(app: FastAPI) -> None:
    first = await _install(app)
    assert [(item.name, item.version, item.added) for item in first] == [
        (IMAGE, "1.0", True),
        (TABULAR, "1.0", True),
    ]
    again = await _install(app)
    assert [(item.name, item.version, item.added) for item in again] == [
        (IMAGE, "1.0", False),
        (TABULAR, "1.0", False),
    ]
    catalogue = await _catalogue(app)
    assert {name: [v[:3] for v in versions] for name, versions in catalogue.items()} == {
        IMAGE: [(1, 0, "builtin")],
        TABULAR: [(1, 0, "builtin")],
    }
    async with app.state.sessionmaker() as session:
        types = set(await session.scalars(select(ModelType.name)))
        assert {spec.name for spec in MODEL_TYPES} <= types
        tied = {
            name: types for name, types in await session.execute(select(Package.name, Package.model_types))
        }
    assert tied == {IMAGE: ["image-classification"], TABULAR: ["tabular-classification"]}
    # the version's blob is the zip of the folder: the same files make the same sha256
    for item in first:
        spec = next(spec for spec in BASE_PACKAGES if spec.name == item.name)
        assert package_zip(spec) == package_zip(spec)
        assert await app.state.blobs.exists(item.sha256)


async def test_changed_content_installs_a_new_major_version_once(app: FastAPI, tmp_path: Path) -> None:
    await _install(app)
    root = tmp_path / "base"
    shutil.copytree(HERE, root, ignore=shutil.ignore_patterns("__pycache__", "*.py[co]"))
    with (root / "tabular_classifier" / "train.py").open("a") as file:
        file.write("\n# a change\n")
    changed = await _install(app, root)
    assert [(item.name, item.version, item.added) for item in changed] == [
        (IMAGE, "1.0", False),
        (TABULAR, "2.0", True),
    ]
    assert [(item.version, item.added) for item in await _install(app, root)] == [
        ("1.0", False),
        ("2.0", False),
    ]
    catalogue = await _catalogue(app)
    assert [v[:2] for v in catalogue[TABULAR]] == [(1, 0), (2, 0)]
    assert catalogue[TABULAR][0][3] != catalogue[TABULAR][1][3]


async def test_a_template_names_a_base_package_and_the_project_gets_its_copy(
    app: FastAPI, client: AsyncClient
) -> None:
    await _install(app)
    project = await _project(client)
    ok(await client.post("/model-types", json={"name": "classifier"}), 201)
    created = ok(
        await _template(
            client,
            project,
            "digits",
            model_type="image-classification",
            base_package=IMAGE,
            parameters={"epochs": 2},
        ),
        201,
    )
    assert created["base_version"] == "1.0"
    assert created["parameters"]["epochs"] == 2 and created["parameters"]["image_size"] == 32
    listed = ok(await client.get(f"/projects/{project}/packages"))
    assert [(item["name"], item["latest_version"]) for item in listed["items"]] == [(IMAGE, "1.0")]
    version = ok(await client.get(f"/projects/{project}/packages/{IMAGE}/versions/1.0"))
    assert version["origin"] == "builtin" and version["has_predict"] and version["has_evaluate"]
    download = await client.get(f"/projects/{project}/packages/{IMAGE}/versions/1.0/download")
    spec = next(spec for spec in BASE_PACKAGES if spec.name == IMAGE)
    assert download.status_code == 200 and download.content == package_zip(spec)

    # a second template reuses the copy; another project gets its own
    ok(await _template(client, project, "again", model_type="image-classification", base_package=IMAGE), 201)
    other = await _project(client, "other")
    ok(await _template(client, other, "tab", model_type="tabular-classification", base_package=TABULAR), 201)
    assert [item["name"] for item in ok(await client.get(f"/projects/{other}/packages"))["items"]] == [
        TABULAR
    ]

    # the model type must be one the base package is for
    body = problem(
        await _template(client, project, "wrong", model_type="classifier", base_package=IMAGE),
        422,
        "model_type_mismatch",
    )
    assert body["field"] == "model_type"
    problem(
        await client.patch(f"/projects/{project}/templates/digits", json={"model_type": "classifier"}),
        422,
        "model_type_mismatch",
    )
    # a name neither the project nor the catalogue has is still a 404
    problem(
        await _template(client, project, "none", model_type="classifier", base_package="nothing"),
        404,
        "package_not_found",
    )


async def test_nobody_uploads_into_a_base_package_and_a_project_deletes_only_its_copy(
    app: FastAPI, client: AsyncClient
) -> None:
    await _install(app)
    project = await _project(client)
    files = {"file": ("p.zip", zip_bytes(valid_package()), "application/zip")}
    # before any template named it (the catalogue's name) and after (the project's copy)
    upload = f"/projects/{project}/packages/{TABULAR}/versions"
    problem(await client.post(upload, files=files), 409, "package_builtin")
    tab = {"model_type": "tabular-classification", "base_package": TABULAR}
    ok(await _template(client, project, "tab", **tab), 201)
    problem(await client.post(upload, files=files), 409, "package_builtin")
    # the copy is the project's: deleted under the usual rules
    problem(await client.delete(f"{upload}/1.0"), 409, "package_version_in_use")
    assert (await client.delete(f"/projects/{project}/templates/tab")).status_code == 204
    assert (await client.delete(f"{upload}/1.0")).status_code == 204
    assert ok(await client.get(f"/projects/{project}/packages/{TABULAR}"))["version_count"] == 0
    # a template write does not bring a deleted version back (its number is not given again) ...
    problem(await _template(client, project, "again", **tab), 422, "package_empty")
    assert (await client.delete(f"/projects/{project}/packages/{TABULAR}")).status_code == 204
    # ... and with the copy gone, the next template makes a new one; the project can go once empty
    ok(await _template(client, project, "fresh", **tab), 201)
    assert (await client.delete(f"/projects/{project}/templates/fresh")).status_code == 204
    assert (await client.delete(f"{upload}/1.0")).status_code == 204
    assert (await client.delete(f"/projects/{project}/packages/{TABULAR}")).status_code == 204
    assert (await client.delete(f"/projects/{project}")).status_code == 204
    # the catalogue is untouched
    assert [v[:3] for v in (await _catalogue(app))[TABULAR]] == [(1, 0, "builtin")]


async def test_a_new_catalogue_version_reaches_the_copy_at_the_next_template_write(
    app: FastAPI, client: AsyncClient, tmp_path: Path
) -> None:
    await _install(app)
    project = await _project(client)
    ok(
        await _template(client, project, "tab", model_type="tabular-classification", base_package=TABULAR),
        201,
    )
    root = tmp_path / "base"
    shutil.copytree(HERE, root, ignore=shutil.ignore_patterns("__pycache__", "*.py[co]"))
    with (root / "tabular_classifier" / "main.py").open("a") as file:
        file.write("\n# a change\n")
    await _install(app, root)
    pinned = ok(await client.get(f"/projects/{project}/templates/tab"))
    assert pinned["base_version"] == "1.0"  # a template keeps the version it pinned
    latest = ok(
        await _template(client, project, "latest", model_type="tabular-classification", base_package=TABULAR),
        201,
    )
    assert latest["base_version"] == "2.0"
    versions = ok(await client.get(f"/projects/{project}/packages/{TABULAR}/versions"))
    assert sorted(item["version"] for item in versions["items"]) == ["1.0", "2.0"]


async def test_a_trainer_names_a_base_package_and_a_viewer_sees_it_but_adopts_nothing(
    app: FastAPI, client: AsyncClient, dump_database: Callable[[], Awaitable[DatabaseDump]]
) -> None:
    """Naming a base package needs templates.create only (no packages.upload: nothing is uploaded);
    a viewer's refused template adopts nothing."""
    await _install(app)
    project = await _project(client)
    trainer = await member_token(client, project, "tom", "trainer")
    viewer = await member_token(client, project, "vera", "viewer")
    headers = {"Authorization": f"Bearer {viewer}"}
    before = await dump_database()
    refused = await client.post(
        f"/projects/{project}/templates",
        json={"name": "v", "model_type": "image-classification", "base_package": IMAGE},
        headers=headers,
    )
    problem(refused, 403, "permission_denied")
    assert await dump_database() == before
    made = await client.post(
        f"/projects/{project}/templates",
        json={"name": "t", "model_type": "image-classification", "base_package": IMAGE},
        headers={"Authorization": f"Bearer {trainer}"},
    )
    assert ok(made, 201)["base_version"] == "1.0"
    seen = ok(await client.get(f"/projects/{project}/packages/{IMAGE}/versions/1.0", headers=headers))
    assert seen["origin"] == "builtin"


async def test_the_catalogue_is_listed_for_anyone_who_sees_the_model_types(
    app: FastAPI, client: AsyncClient
) -> None:
    assert ok(await client.get("/base-packages")) == {"items": [], "next_cursor": None}
    await _install(app)
    listed = ok(await client.get("/base-packages"))["items"]
    assert [(item["name"], item["latest_version"], item["versions"]) for item in listed] == [
        (IMAGE, "1.0", ["1.0"]),
        (TABULAR, "1.0", ["1.0"]),
    ]
    image = listed[0]
    assert image["model_types"] == ["image-classification"] and image["has_predict"] and image["has_evaluate"]
    assert "image_size" in [parameter["name"] for parameter in image["declared_parameters"]]
    only = ok(await client.get("/base-packages", params={"model_type": "tabular-classification"}))
    assert [item["name"] for item in only["items"]] == [TABULAR]
    assert ok(await client.get("/base-packages", params={"model_type": "nothing"}))["items"] == []
    project = await _project(client)
    viewer = await member_token(client, project, "vera", "viewer")
    seen = ok(await client.get("/base-packages", headers={"Authorization": f"Bearer {viewer}"}))
    assert len(seen["items"]) == 2


async def test_two_installs_at_once_make_one_version(app: FastAPI, is_postgres: bool, tmp_path: Path) -> None:
    """Two `trainyard-api migrate`s at once (two replicas starting) with a changed package: one new
    version. The first holds its transaction open while the second starts; on PostgreSQL the second
    waits on the catalogue row the first changed (its INSERT ... ON CONFLICT, then SELECT ... FOR
    UPDATE), then finds the first's version. (SQLite has one writer: the second would wait on the
    database instead, which is not what is shown here.)"""
    if not is_postgres:
        pytest.skip("row locks: PostgreSQL's concern")
    await _install(app)
    root = tmp_path / "base"
    shutil.copytree(HERE, root, ignore=shutil.ignore_patterns("__pycache__", "*.py[co]"))
    with (root / "tabular_classifier" / "train.py").open("a") as file:
        file.write("\n# a change\n")
    async with app.state.sessionmaker() as first:
        limits = app.state.settings.archive_limits()
        made = await install_base_packages(first, app.state.blobs, limits, root=root)
        second = asyncio.create_task(_install(app, root))
        await asyncio.sleep(0.5)  # lets the second reach the row if it can; the claim holds either way
        await first.commit()
    assert [(item.version, item.added) for item in made] == [("1.0", False), ("2.0", True)]
    assert [(item.version, item.added) for item in await second] == [("1.0", False), ("2.0", False)]
    assert [v[:2] for v in (await _catalogue(app))[TABULAR]] == [(1, 0), (2, 0)]
