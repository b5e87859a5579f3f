"""Packages through the real API: uploads and what they report, download, deletion rules, and the
numbering and lineage of trained versions. Refused uploads are in test_package_refusals.py."""

import asyncio
import hashlib
import random
import unicodedata
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response
from sqlalchemy import select

from api.core.blobs import StoredBlob
from api.models import PackageVersion
from api.packages import service
from api.packages.inspect import PackageInfo, inspect_package
from api.projects.service import get_project
from shared.archive import ArchiveLimits
from tests.api.packages_kit import (
    MAIN_PY,
    PARAMETERS,
    train_py,
    upload_package,
    valid_package,
    versions_path,
    zip_bytes,
)
from tests.api.world import ok, problem


@pytest.fixture
async def project(client: AsyncClient) -> str:
    name: str = ok(await client.post("/projects", json={"name": "lab"}), 201)["name"]
    return name


async def upload(client: AsyncClient, project: str, name: str, content: bytes) -> dict[str, Any]:
    body: dict[str, Any] = ok(await upload_package(client, project, name, content), 201)
    return body


def no_content(response: Response) -> None:
    assert response.status_code == 204, f"{response.status_code}: {response.text}"


# -- uploads ------------------------------------------------------------------------------------------


async def test_uploads_take_the_next_major_and_create_the_package(client: AsyncClient, project: str) -> None:
    problem(await client.get(f"/projects/{project}/packages/digits"), 404, "package_not_found")
    contents = [zip_bytes(valid_package() | {"version.txt": str(n)}) for n in range(3)]

    made = [await upload(client, project, "digits", content) for content in contents]

    assert [v["version"] for v in made] == ["1.0", "2.0", "3.0"]
    assert [(v["major"], v["minor"]) for v in made] == [(1, 0), (2, 0), (3, 0)]
    for version, content in zip(made, contents, strict=True):
        assert version["project"] == project and version["package"] == "digits"
        assert version["origin"] == "upload"
        assert version["sha256"] == hashlib.sha256(content).hexdigest()
        assert version["size"] == len(content)
        assert version["parent_version"] is None and version["run_id"] is None and version["lineage"] == {}
    package = ok(await client.get(f"/projects/{project}/packages/digits"))
    assert package["latest_version"] == "3.0" and package["version_count"] == 3
    assert ok(await client.get(f"/projects/{project}/packages"))["items"] == [package]
    listed = ok(await client.get(versions_path(project, "digits")))["items"]
    assert [v["version"] for v in listed] == ["1.0", "2.0", "3.0"]
    assert ok(await client.get(f"{versions_path(project, 'digits')}/2.0")) == made[1]


async def test_concurrent_first_uploads_make_one_package_with_distinct_majors(
    client: AsyncClient, project: str
) -> None:
    contents = [zip_bytes(valid_package() | {"n.txt": str(n)}) for n in range(4)]

    made = await asyncio.gather(*(upload(client, project, "digits", content) for content in contents))

    assert sorted(v["version"] for v in made) == ["1.0", "2.0", "3.0", "4.0"]
    assert len({v["package"] for v in made}) == 1
    packages = ok(await client.get(f"/projects/{project}/packages"))["items"]
    assert [(p["name"], p["version_count"]) for p in packages] == [("digits", 4)]


async def test_what_a_package_offers_is_reported(client: AsyncClient, project: str) -> None:
    declared = [*PARAMETERS[:-1], {"name": "augment", "type": "boolean", "default": False}]
    full = await upload(client, project, "full", zip_bytes(valid_package(parameters=declared)))
    bare = await upload(
        client, project, "bare", zip_bytes({"train.py": train_py("__init__", "train", "save")})
    )

    assert (
        full["has_evaluate"],
        full["has_process_data"],
        full["has_predict"],
        full["has_requirements"],
    ) == (
        True,
        True,
        True,
        True,
    )
    assert full["declared_parameters"] == [
        {"name": "epochs", "type": "int", "default": 10, "description": "Passes over the data"},
        {"name": "learning_rate", "type": "float", "default": 0.001, "description": ""},
        {"name": "optimizer", "type": "str", "default": "adam", "description": ""},
        {"name": "augment", "type": "bool", "default": False, "description": ""},  # the canonical type
    ]
    assert (
        bare["has_evaluate"],
        bare["has_process_data"],
        bare["has_predict"],
        bare["has_requirements"],
    ) == (
        False,
        False,
        False,
        False,
    )
    assert bare["declared_parameters"] is None  # declares nothing: any parameter goes
    main_without_predict = valid_package() | {"main.py": MAIN_PY.replace("predict", "serve")}
    assert not (await upload(client, project, "no-predict", zip_bytes(main_without_predict)))["has_predict"]
    empty = await upload(client, project, "empty-declaration", zip_bytes(valid_package(parameters=[])))
    assert empty["declared_parameters"] == []  # declares that it takes none


async def _root_prefix(app: FastAPI, version_id: str) -> str:
    async with app.state.sessionmaker() as session:
        prefix: str = await session.scalar(
            select(PackageVersion.root_prefix).where(PackageVersion.id == uuid.UUID(version_id))
        )
    return prefix


async def test_a_package_zipped_from_its_parent_folder_is_accepted(
    client: AsyncClient, app: FastAPI, project: str
) -> None:
    at_root = await upload(client, project, "flat", zip_bytes(valid_package()))
    wrapped = await upload(client, project, "wrapped", zip_bytes(valid_package(), prefix="мой_пакет/"))

    assert await _root_prefix(app, at_root["id"]) == ""
    assert await _root_prefix(app, wrapped["id"]) == "мой_пакет/"
    assert wrapped["has_predict"] and wrapped["has_requirements"] and wrapped["declared_parameters"]
    # macOS's junk beside the folder does not hide it.
    junk = valid_package() | {"__MACOSX/._train.py": b"\x00\x05"}
    assert (await upload(client, project, "mac", zip_bytes(junk, prefix="pkg/")))["version"] == "1.0"


async def test_main_may_inherit_its_methods(client: AsyncClient, project: str) -> None:
    local_base = (
        "class Base:\n    def train(self, data_directory):\n        pass\n\n"
        "class Middle(Base):\n    def save(self):\n        pass\n\n"
        "class Main(Middle, object):\n    def evaluate(self, data_directory):\n        return 1.0\n"
    )
    local = await upload(client, project, "local-base", zip_bytes({"train.py": local_base}))
    assert (local["has_evaluate"], local["has_process_data"]) == (True, False)

    imported = "from mylib.models import Trainer\n\nclass Main(Trainer):\n    pass\n"
    members = {"train.py": imported, "mylib/__init__.py": "", "mylib/models.py": "class Trainer: ..."}
    found = await upload(client, project, "imported-base", zip_bytes(members))
    # What an imported base offers cannot be known without running it: reported as possibly there.
    assert found["version"] == "1.0" and found["has_evaluate"] and found["has_process_data"]

    dotted = "import mylib\n\nclass Main(mylib.Trainer):\n    pass\n"
    assert (await upload(client, project, "dotted-base", zip_bytes({"train.py": dotted})))["version"] == "1.0"

    diamond = (
        "class Base:\n    def train(self, data_directory): pass\n\n"
        "class Left(Base):\n    def save(self): pass\n\n"
        "class Right(Base):\n    pass\n\n"
        "class Main(Left, Right):\n    pass\n"
    )
    found = await upload(client, project, "diamond", zip_bytes({"train.py": diamond}))
    assert (found["has_evaluate"], found["has_process_data"]) == (False, False)  # known: read, not guessed


async def test_a_chain_of_thousands_of_local_bases_is_read_not_recursed(
    client: AsyncClient, project: str
) -> None:
    chain = "class C0:\n    def train(self, d): pass\n    def save(self): pass\n" + "".join(
        f"class C{n}(C{n - 1}): pass\n" for n in range(1, 20_000)
    )
    found = await upload(
        client, project, "deep", zip_bytes({"train.py": chain + "class Main(C19999): pass\n"})
    )
    assert (found["version"], found["has_evaluate"]) == ("1.0", False)


async def test_a_name_spelled_decomposed_is_the_same_package(client: AsyncClient, project: str) -> None:
    composed = "café"
    await upload(client, project, unicodedata.normalize("NFD", composed), zip_bytes(valid_package()))
    second = await upload(client, project, composed, zip_bytes(valid_package()))

    assert second["package"] == composed and second["version"] == "2.0"
    assert ok(await client.get(f"/projects/{project}/packages"))["items"][0]["name"] == composed


# -- download -----------------------------------------------------------------------------------------


async def test_download_is_the_upload_byte_for_byte(client: AsyncClient, project: str) -> None:
    name = "Классификатор-счетов"
    content = zip_bytes(valid_package() | {"weights.bin": random.Random(7).randbytes(300_000)})
    version = await upload(client, project, name, content)
    path = f"{versions_path(project, name)}/1.0/download"

    response = await client.get(path)

    assert response.status_code == 200 and response.content == content
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-length"] == str(len(content))
    assert response.headers["etag"] == f'"{version["sha256"]}"' == f'"{hashlib.sha256(content).hexdigest()}"'
    disposition = response.headers["content-disposition"]
    assert disposition == f"attachment; filename*=UTF-8''{quote(f'{name}-1.0.zip')}"
    assert disposition.isascii()

    cached = await client.get(path, headers={"If-None-Match": response.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""
    assert cached.headers["etag"] == response.headers["etag"]
    listed = await client.get(path, headers={"If-None-Match": f'"{"0" * 64}", {response.headers["etag"]}'})
    assert listed.status_code == 304
    stale = await client.get(path, headers={"If-None-Match": f'"{"0" * 64}"'})
    assert stale.status_code == 200 and stale.content == content


@pytest.mark.parametrize("version", ["9.0", "1.1", "1", "01.0", "0.1", "1.0.0", "latest"])
async def test_download_of_a_version_that_does_not_exist(
    client: AsyncClient, project: str, version: str
) -> None:
    await upload(client, project, "digits", zip_bytes(valid_package()))

    problem(
        await client.get(f"{versions_path(project, 'digits')}/{version}/download"),
        404,
        "package_version_not_found",
    )
    problem(
        await client.get(f"{versions_path(project, 'digits')}/{version}"), 404, "package_version_not_found"
    )


# -- deletion -----------------------------------------------------------------------------------------


async def test_a_version_a_template_names_cannot_be_deleted(client: AsyncClient, project: str) -> None:
    await upload(client, project, "digits", zip_bytes(valid_package()))
    await upload(client, project, "digits", zip_bytes(valid_package()))
    ok(await client.post("/model-types", json={"name": "clf"}), 201)
    template = {"name": "tpl", "model_type": "clf", "base_package": "digits", "base_version": "1.0"}
    ok(await client.post(f"/projects/{project}/templates", json=template), 201)

    problem(await client.delete(f"{versions_path(project, 'digits')}/1.0"), 409, "package_version_in_use")
    assert ok(await client.get(f"{versions_path(project, 'digits')}/1.0"))["version"] == "1.0"
    no_content(await client.delete(f"{versions_path(project, 'digits')}/2.0"))  # not named: goes

    no_content(await client.delete(f"/projects/{project}/templates/tpl"))
    no_content(await client.delete(f"{versions_path(project, 'digits')}/1.0"))
    problem(await client.get(f"{versions_path(project, 'digits')}/1.0"), 404, "package_version_not_found")


async def test_numbers_of_deleted_versions_are_never_given_again(client: AsyncClient, project: str) -> None:
    for _ in range(2):
        await upload(client, project, "digits", zip_bytes(valid_package()))
    no_content(await client.delete(f"{versions_path(project, 'digits')}/2.0"))

    assert (await upload(client, project, "digits", zip_bytes(valid_package())))["version"] == "3.0"
    no_content(await client.delete(f"{versions_path(project, 'digits')}/3.0"))
    no_content(await client.delete(f"{versions_path(project, 'digits')}/1.0"))
    assert (await upload(client, project, "digits", zip_bytes(valid_package())))["version"] == "4.0"
    package = ok(await client.get(f"/projects/{project}/packages/digits"))
    assert (package["latest_version"], package["version_count"]) == ("4.0", 1)


async def test_a_package_with_versions_cannot_be_deleted(client: AsyncClient, project: str) -> None:
    await upload(client, project, "digits", zip_bytes(valid_package()))

    problem(await client.delete(f"/projects/{project}/packages/digits"), 409, "package_not_empty")
    no_content(await client.delete(f"{versions_path(project, 'digits')}/1.0"))
    no_content(await client.delete(f"/projects/{project}/packages/digits"))
    problem(await client.get(f"/projects/{project}/packages/digits"), 404, "package_not_found")
    problem(await client.delete(f"/projects/{project}/packages/digits"), 404, "package_not_found")


async def test_a_project_holding_a_package_cannot_be_deleted(client: AsyncClient, project: str) -> None:
    await upload(client, project, "digits", zip_bytes(valid_package()))

    problem(await client.delete(f"/projects/{project}"), 409, "project_not_empty")
    no_content(await client.delete(f"{versions_path(project, 'digits')}/1.0"))
    problem(await client.delete(f"/projects/{project}"), 409, "project_not_empty")  # the package is there
    no_content(await client.delete(f"/projects/{project}/packages/digits"))
    no_content(await client.delete(f"/projects/{project}"))


# -- trained versions: numbering and lineage -----------------------------------------------------------


@pytest.fixture
async def trained_output(app: FastAPI, tmp_path: Path) -> tuple[StoredBlob, PackageInfo]:
    """A run's output package, in the blob store, as the agent's upload would leave it."""
    content = zip_bytes(valid_package() | {"model.txt": "weights"})
    path = tmp_path / "output.zip"
    path.write_bytes(content)
    info = inspect_package(path, ArchiveLimits())

    async def chunks() -> Any:
        yield content

    stored: StoredBlob = await app.state.blobs.put(chunks(), max_bytes=len(content))
    return stored, info


async def train(
    app: FastAPI,
    output: tuple[StoredBlob, PackageInfo],
    parent: str,
    *,
    lineage: dict[str, Any] | None = None,
    pause: float = 0.0,
) -> str:
    """What a successful run's commit does: the next minor from `parent` of lab/digits, committed."""
    async with app.state.sessionmaker() as session:
        project = await get_project(session, "lab")
        package = await service.get_package(session, project, "digits")
        base = await service.get_version(session, package, parent)
        made = await service.add_trained_version(session, base, *output, uuid.uuid4(), lineage or {})
        await asyncio.sleep(pause)  # hold the transaction open, so a concurrent one must wait for it
        await session.commit()
    return f"{made.major}.{made.minor}"


async def test_two_runs_finishing_at_once_get_distinct_minors(
    client: AsyncClient, app: FastAPI, project: str, trained_output: tuple[StoredBlob, PackageInfo]
) -> None:
    await upload(client, project, "digits", zip_bytes(valid_package()))
    await upload(client, project, "digits", zip_bytes(valid_package()))

    made = await asyncio.gather(
        train(app, trained_output, "1.0", pause=0.2), train(app, trained_output, "1.0", pause=0.2)
    )

    assert sorted(made) == ["1.1", "1.2"]
    no_content(await client.delete(f"{versions_path(project, 'digits')}/1.2"))
    assert await train(app, trained_output, "1.0") == "1.3"
    assert await train(app, trained_output, "2.0") == "2.1"  # each major line counts on its own
    assert (await upload(client, project, "digits", zip_bytes(valid_package())))["version"] == "3.0"
    listed = ok(await client.get(versions_path(project, "digits")))["items"]
    assert sorted(v["version"] for v in listed) == ["1.0", "1.1", "1.3", "2.0", "2.1", "3.0"]


async def test_lineage_answers_where_a_model_came_from_and_what_was_made_from_it(
    client: AsyncClient, app: FastAPI, project: str, trained_output: tuple[StoredBlob, PackageInfo]
) -> None:
    await upload(client, project, "digits", zip_bytes(valid_package()))
    await upload(client, project, "other", zip_bytes(valid_package()))
    record = {"template": "tpl", "parameters": {"epochs": 3}, "metrics": {"accuracy": 0.97}}
    assert await train(app, trained_output, "1.0") == "1.1"
    assert await train(app, trained_output, "1.1", lineage=record) == "1.2"
    assert await train(app, trained_output, "1.0") == "1.3"
    base = versions_path(project, "digits")

    grandchild = ok(await client.get(f"{base}/1.2/lineage"))
    assert [(n["version"], n["origin"]) for n in grandchild["ancestors"]] == [
        ("1.1", "trained"),
        ("1.0", "upload"),
    ]
    assert grandchild["descendants"] == [] and grandchild["record"] == record
    root = ok(await client.get(f"{base}/1.0/lineage"))
    assert root["ancestors"] == [] and root["record"] == {}
    assert shape(root["descendants"]) == [("1.1", [("1.2", [])]), ("1.3", [])]
    middle = ok(await client.get(f"{base}/1.1/lineage"))
    assert [n["version"] for n in middle["ancestors"]] == ["1.0"]
    assert shape(middle["descendants"]) == [("1.2", [])]

    version = ok(await client.get(f"{base}/1.2"))
    assert (version["origin"], version["parent_version"], version["lineage"]) == ("trained", "1.1", record)
    assert version["run_id"] is not None and version["run_id"] == middle["descendants"][0]["run_id"]
    models = ok(await client.get(f"/projects/{project}/models"))["items"]
    assert sorted((m["package"], m["version"]) for m in models) == [
        ("digits", "1.1"),
        ("digits", "1.2"),
        ("digits", "1.3"),
    ]

    problem(await client.delete(f"{base}/1.1"), 409, "package_version_has_descendants")
    problem(await client.delete(f"{base}/1.0"), 409, "package_version_has_descendants")
    no_content(await client.delete(f"{base}/1.2"))
    no_content(await client.delete(f"{base}/1.1"))
    assert shape(ok(await client.get(f"{base}/1.0/lineage"))["descendants"]) == [("1.3", [])]


def shape(nodes: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(node["version"], shape(node["children"])) for node in nodes]
