"""Projects, model types, machines and templates: names, CRUD, refusals and pagination."""

import re
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from httpx import AsyncClient

from tests.api.conftest import DatabaseDump, count_rows, text_of
from tests.api.packages_kit import upload_package, valid_package, zip_bytes
from tests.api.world import agent_client, make_machine, make_world, ok, problem

Dump = Callable[[], Awaitable[DatabaseDump]]

NAMES = [
    "Классификатор-счетов_v1.2",
    "发票分类器",
    "請求書モデル-2",
    "한국어_모델",
    "café-crème",
    "Ærøskøbing",
    "हिन्दी-मॉडल",
    "v1.2.3",
    "x" * 128,
]
# Objects people name, each created with the name under test.
KINDS = ["project", "model_type", "machine", "template"]


async def _create(client: AsyncClient, kind: str, name: str, **fields: Any) -> Any:
    if kind == "project":
        return await client.post("/projects", json={"name": name, **fields})
    if kind == "model_type":
        return await client.post("/model-types", json={"name": name, **fields})
    if kind == "machine":
        return await client.post("/machines", json={"name": name, "address": "10.0.0.1", **fields})
    return await client.post("/projects/home/templates", json={"name": name, "model_type": "clf", **fields})


def _path(kind: str, name: str) -> str:
    return {
        "project": f"/projects/{name}",
        "model_type": f"/model-types/{name}",
        "machine": f"/machines/{name}",
        "template": f"/projects/home/templates/{name}",
    }[kind]


async def _home(client: AsyncClient) -> None:
    ok(await client.post("/projects", json={"name": "home"}), 201)
    ok(await client.post("/model-types", json={"name": "clf"}), 201)


async def _inputs(client: AsyncClient) -> None:
    """What FULL_TEMPLATE and the default tests name: templates refer only to what exists."""
    package = zip_bytes(valid_package(parameters=None))
    for _ in range(2):  # 1.0 and 2.0
        ok(await upload_package(client, "home", "digits", package), 201)
    data = zip_bytes({"images/train/a.png": b"a", "images/test/b.png": b"b"})
    for dataset, versions in (("invoices", 3), ("invoices-test", 1), ("d", 1), ("dt", 1)):
        for _ in range(versions):
            ok(
                await client.post(
                    f"/projects/home/datasets/{dataset}/versions",
                    files={"file": ("d.zip", data, "application/zip")},
                ),
                201,
            )


async def pages(client: AsyncClient, path: str, limit: int, **params: Any) -> list[list[dict[str, Any]]]:
    """Every page of a listing, following next_cursor to the end."""
    found: list[list[dict[str, Any]]] = []
    cursor = None
    while True:
        query = {"limit": limit, **params} | ({"cursor": cursor} if cursor else {})
        page = ok(await client.get(path, params=query))
        found.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return found
        assert len(found) < 100, "the cursor never ends"


# -- names --------------------------------------------------------------------------------------------


async def test_names_of_any_alphabet_round_trip(client: AsyncClient) -> None:
    await _home(client)
    for kind in KINDS:
        for name in NAMES:
            created = ok(await _create(client, kind, name), 201)
            assert created["name"] == name
            assert ok(await client.get(_path(kind, name)))["name"] == name
    listed = ok(await client.get("/projects", params={"limit": 200}))["items"]
    assert {p["name"] for p in listed} == {"home", *NAMES}


async def test_decomposed_names_are_stored_composed_and_are_the_same_name(
    client: AsyncClient, dump_database: Dump
) -> None:
    await _home(client)
    names = ("café-crème", "Ærøskøbing.Ünïcödé", "한국어", "é" * 128)
    for kind in KINDS:
        for composed in names:
            decomposed = unicodedata.normalize("NFD", composed)
            assert decomposed != composed
            created = ok(await _create(client, kind, decomposed), 201)
            assert created["name"] == composed
            # Found by either spelling.
            assert ok(await client.get(_path(kind, composed)))["id"] == created["id"]
            assert ok(await client.get(_path(kind, decomposed)))["id"] == created["id"]
    before = await dump_database()
    assert unicodedata.normalize("NFD", "café-crème") not in text_of(before)
    for kind in KINDS:
        for composed in names:
            # Taken by either spelling.
            problem(await _create(client, kind, composed), 409, f"{kind}_exists")
            problem(
                await _create(client, kind, unicodedata.normalize("NFD", composed)), 409, f"{kind}_exists"
            )
    assert await dump_database() == before


async def test_names_are_unique_in_their_scope_only(client: AsyncClient) -> None:
    await _home(client)
    ok(await client.post("/projects", json={"name": "away"}), 201)
    for project in ("home", "away"):
        ok(
            await client.post(f"/projects/{project}/templates", json={"name": "tpl", "model_type": "clf"}),
            201,
        )
    problem(
        await client.post("/projects/home/templates", json={"name": "tpl", "model_type": "clf"}),
        409,
        "template_exists",
    )
    # Names are case-sensitive: `Tpl` is another template.
    ok(await client.post("/projects/home/templates", json={"name": "Tpl", "model_type": "clf"}), 201)


# -- projects -----------------------------------------------------------------------------------------


async def test_project_crud(client: AsyncClient) -> None:
    created = ok(await client.post("/projects", json={"name": "invoices", "description": "Invoice OCR"}), 201)
    assert created["description"] == "Invoice OCR" and created["template_count"] == 0
    assert ok(await client.get("/projects/invoices")) == created

    updated = ok(await client.patch("/projects/invoices", json={"description": "Счета"}))
    assert updated["description"] == "Счета" and updated["id"] == created["id"]
    assert updated["created_at"] == created["created_at"] and updated["updated_at"] >= created["updated_at"]
    assert ok(await client.patch("/projects/invoices", json={}))["description"] == "Счета"

    ok(await client.post("/model-types", json={"name": "clf"}), 201)
    ok(await client.post("/projects/invoices/templates", json={"name": "t", "model_type": "clf"}), 201)
    assert ok(await client.get("/projects/invoices"))["template_count"] == 1
    assert ok(await client.get("/projects"))["items"][0]["template_count"] == 1

    problem(await client.delete("/projects/invoices"), 409, "project_not_empty")
    assert (await client.delete("/projects/invoices/templates/t")).status_code == 204
    assert (await client.delete("/projects/invoices")).status_code == 204
    problem(await client.get("/projects/invoices"), 404, "project_not_found")
    assert ok(await client.get("/projects"))["items"] == []


async def test_a_project_with_a_process_is_not_empty(client: AsyncClient, dump_database: Dump) -> None:
    world = await make_world(client)
    before = await dump_database()
    problem(await client.delete(f"/projects/{world.project}"), 409, "project_not_empty")
    problem(
        await client.delete(f"/projects/{world.project}/templates/{world.template}"), 409, "template_in_use"
    )
    problem(await client.delete(f"/model-types/{world.model_type}"), 409, "model_type_in_use")
    problem(await client.delete(f"/machines/{world.machine}"), 409, "machine_in_use")
    assert await dump_database() == before

    assert (await client.delete(world.process_path)).status_code == 204
    problem(await client.delete(f"/model-types/{world.model_type}"), 409, "model_type_in_use")
    assert (await client.delete(f"/projects/{world.project}/templates/{world.template}")).status_code == 204
    problem(await client.delete(f"/projects/{world.project}"), 409, "project_not_empty")  # its package
    for path in (
        f"/projects/{world.project}/packages/pkg/versions/1.0",
        f"/projects/{world.project}/packages/pkg",
        f"/projects/{world.project}",
        f"/model-types/{world.model_type}",
        f"/machines/{world.machine}",
    ):
        assert (await client.delete(path)).status_code == 204, path
    # Blobs stay (a later collector's job), and so do the built-in roles and the audit trail; every row
    # that named anything is gone.
    assert count_rows(await dump_database()) | {
        "users": 0,
        "api_tokens": 0,
        "alembic_version": 0,
        "blobs": 0,
        "roles": 0,
        "audit_events": 0,
    } == dict.fromkeys(count_rows(before), 0)


# -- model types --------------------------------------------------------------------------------------


async def test_model_type_crud(client: AsyncClient) -> None:
    created = ok(
        await client.post("/model-types", json={"name": "ocr", "description": "Text in images"}), 201
    )
    assert ok(await client.get("/model-types/ocr")) == created
    assert ok(await client.patch("/model-types/ocr", json={"description": "OCR"}))["description"] == "OCR"
    problem(await client.post("/model-types", json={"name": "ocr"}), 409, "model_type_exists")

    ok(await client.post("/projects", json={"name": "p"}), 201)
    ok(await client.post("/projects/p/templates", json={"name": "t", "model_type": "ocr"}), 201)
    problem(await client.delete("/model-types/ocr"), 409, "model_type_in_use")
    ok(await client.post("/model-types", json={"name": "detector"}), 201)
    ok(await client.patch("/projects/p/templates/t", json={"model_type": "detector"}))
    assert (await client.delete("/model-types/ocr")).status_code == 204
    problem(await client.get("/model-types/ocr"), 404, "model_type_not_found")
    assert [m["name"] for m in ok(await client.get("/model-types"))["items"]] == ["detector"]


# -- machines -----------------------------------------------------------------------------------------

TOKEN_SHAPE = re.compile(r"ty_[0-9a-f]{12}_[A-Za-z0-9]{43}")


async def test_registering_a_machine_shows_its_token_once(client: AsyncClient) -> None:
    machine, token = await make_machine(client, "gpu-01", description="A100 box", capacity=2)
    assert TOKEN_SHAPE.fullmatch(token), token
    assert machine["name"] == "gpu-01" and machine["address"] == "10.0.0.1" and machine["capacity"] == 2
    assert machine["enabled"] is True and machine["online"] is False and machine["process_count"] == 0
    assert machine["gpus"] == [] and machine["last_seen_at"] is None

    seen = [
        await client.get("/machines/gpu-01"),
        await client.get("/machines"),
        await client.patch("/machines/gpu-01", json={"address": "10.0.0.2"}),
        await client.post("/machines/gpu-01/disable"),
        await client.post("/machines/gpu-01/enable"),
    ]
    for response in seen:
        assert response.status_code == 200, response.text
        assert token not in response.text and "agent_token" not in response.text
    _, other = await make_machine(client, "gpu-02")
    assert other != token


async def test_a_machine_comes_online_when_its_agent_calls(client: AsyncClient, app: FastAPI) -> None:
    _, token = await make_machine(client, "gpu-01")
    async with agent_client(app, token) as agent:
        hello = {
            "agent_version": "0.1.0",
            "gpus": [{"index": 0, "name": "NVIDIA A100", "memory_total_mb": 81920}],
        }
        assert ok(await agent.post("/hello", json=hello))["machine"] == "gpu-01"
    machine = ok(await client.get("/machines/gpu-01"))
    assert machine["online"] is True and machine["agent_version"] == "0.1.0"
    assert machine["gpus"][0]["name"] == "NVIDIA A100"


async def test_rotating_the_token_retires_the_old_one_at_once(client: AsyncClient, app: FastAPI) -> None:
    _, old = await make_machine(client, "gpu-01")
    async with agent_client(app, old) as agent:
        ok(await agent.get("/commands"))
    rotated = ok(await client.post("/machines/gpu-01/rotate-token"))
    new = rotated["agent_token"]
    assert TOKEN_SHAPE.fullmatch(new) and new != old and rotated["name"] == "gpu-01"
    async with agent_client(app, old) as agent:
        problem(await agent.get("/commands"), 401, "invalid_token")
        problem(await agent.post("/hello", json={"agent_version": "1"}), 401, "invalid_token")
    async with agent_client(app, new) as agent:
        assert ok(await agent.get("/commands")) == []
        assert ok(await agent.post("/hello", json={"agent_version": "1"}))["machine"] == "gpu-01"
    assert new not in (await client.get("/machines/gpu-01")).text


async def test_machine_update_enable_disable(client: AsyncClient) -> None:
    await make_machine(client, "gpu-01")
    updated = ok(
        await client.patch("/machines/gpu-01", json={"address": "gpu-01.lan", "description": "rack 3"})
    )
    assert (
        updated["address"] == "gpu-01.lan" and updated["description"] == "rack 3" and updated["capacity"] == 1
    )
    assert ok(await client.patch("/machines/gpu-01", json={"capacity": 4}))["capacity"] == 4
    assert ok(await client.post("/machines/gpu-01/disable"))["enabled"] is False
    assert ok(await client.get("/machines/gpu-01"))["enabled"] is False
    assert ok(await client.post("/machines/gpu-01/disable"))["enabled"] is False  # idempotent
    assert ok(await client.post("/machines/gpu-01/enable"))["enabled"] is True


async def test_a_disabled_machine_takes_no_new_process(client: AsyncClient, dump_database: Dump) -> None:
    await _home(client)
    ok(await client.post("/projects/home/templates", json={"name": "t", "model_type": "clf"}), 201)
    await make_machine(client, "gpu-01")
    ok(await client.post("/machines/gpu-01/disable"))
    before = await dump_database()
    processes = "/projects/home/templates/t/processes"
    problem(await client.post(processes, json={"machine": "gpu-01"}), 409, "machine_disabled")
    assert await dump_database() == before
    ok(await client.post("/machines/gpu-01/enable"))
    ok(await client.post(processes, json={"machine": "gpu-01"}), 201)
    assert ok(await client.get("/machines/gpu-01"))["process_count"] == 1
    problem(await client.post(processes, json={"machine": "gpu-01"}), 409, "machine_full")
    problem(await client.patch("/machines/gpu-01", json={"capacity": 0}), 422, "validation_error")


async def test_deleting_a_machine(client: AsyncClient, app: FastAPI) -> None:
    world = await make_world(client)
    problem(await client.delete(f"/machines/{world.machine}"), 409, "machine_in_use")
    async with agent_client(app, world.agent_token) as agent:
        ok(await agent.get("/commands"))  # still registered, still polling
    assert (await client.delete(world.process_path)).status_code == 204
    assert ok(await client.get(f"/machines/{world.machine}"))["process_count"] == 0
    assert (await client.delete(f"/machines/{world.machine}")).status_code == 204
    problem(await client.get(f"/machines/{world.machine}"), 404, "machine_not_found")
    async with agent_client(app, world.agent_token) as agent:
        problem(await agent.get("/commands"), 401, "invalid_token")


# -- templates ----------------------------------------------------------------------------------------

FULL_TEMPLATE: dict[str, Any] = {
    "name": "Классификатор-счетов_v1.2",
    "model_type": "clf",
    "description": "Every field DESIGN.md names",
    "pipeline_type": "full",
    "base_package": "digits",
    "base_version": "2.0",
    "dataset": "invoices",
    "dataset_version": 3,
    "dataset_path": "images/train",
    "test_dataset": "invoices-test",
    "test_dataset_version": "latest",
    "test_dataset_path": "images/test",
    "augmentation": "rotations+exposure+noise",
    "parameters": {
        "epochs": 20,
        "batch_size": 64,
        "learning_rate": 0.001,
        "dropout": 0.5,
        "optimizer": "adam",
        "shuffle": True,
        "pretrained": False,
        "seed": "42",
    },
    "max_duration_seconds": 7200,
    "save_training_data": True,
    "gpus": 2,
    "processes": 4,
}


async def test_every_template_field_round_trips(client: AsyncClient) -> None:
    await _home(client)
    await _inputs(client)
    created = ok(await client.post("/projects/home/templates", json=FULL_TEMPLATE), 201)
    read = ok(await client.get(f"/projects/home/templates/{FULL_TEMPLATE['name']}"))
    listed = ok(await client.get("/projects/home/templates"))["items"]
    assert created == read == listed[0]
    for field, value in FULL_TEMPLATE.items():
        assert read[field] == value, field
        assert type(read[field]) is type(value), field
    for field, value in FULL_TEMPLATE["parameters"].items():
        assert type(read["parameters"][field]) is type(value), field  # True stays true, "42" stays text
    assert read["project"] == "home"
    for field in ("id", "created_at", "updated_at"):
        assert read[field]


async def test_template_defaults(client: AsyncClient) -> None:
    await _home(client)
    await _inputs(client)
    bare = ok(await client.post("/projects/home/templates", json={"name": "bare", "model_type": "clf"}), 201)
    assert bare["pipeline_type"] == "training"
    assert bare["max_duration_seconds"] == 3600
    assert bare["save_training_data"] is False
    assert bare["gpus"] == 0 and bare["processes"] == 1
    assert bare["augmentation"] == "none" and bare["parameters"] == {} and bare["description"] == ""
    for field in (
        "base_package",
        "base_version",
        "dataset",
        "dataset_version",
        "test_dataset",
        "test_dataset_version",
    ):
        assert bare[field] is None, field

    with_data = ok(
        await client.post(
            "/projects/home/templates",
            json={"name": "with-data", "model_type": "clf", "dataset": "d", "test_dataset": "dt"},
        ),
        201,
    )
    assert with_data["dataset_version"] == "latest" and with_data["test_dataset_version"] == "latest"
    assert with_data["dataset_path"] is None
    pinned = ok(
        await client.post(
            "/projects/home/templates",
            json={"name": "pinned", "model_type": "clf", "dataset": "d", "dataset_version": 1},
        ),
        201,
    )
    assert pinned["dataset_version"] == 1 and pinned["test_dataset_version"] is None


async def test_template_patch_changes_only_the_fields_sent(client: AsyncClient) -> None:
    await _home(client)
    await _inputs(client)
    ok(await client.post("/model-types", json={"name": "ocr"}), 201)
    path = f"/projects/home/templates/{FULL_TEMPLATE['name']}"
    original = ok(await client.post("/projects/home/templates", json=FULL_TEMPLATE), 201)

    steps: list[dict[str, Any]] = [
        {"gpus": 1},
        {"description": "changed", "save_training_data": False},
        {"parameters": {"epochs": 5}},
        {"dataset_version": "latest", "dataset_path": "images"},
        {"model_type": "ocr"},
        {"test_dataset": None, "test_dataset_version": None, "test_dataset_path": None},
        {"pipeline_type": "evaluation", "augmentation": "none", "max_duration_seconds": 60, "processes": 1},
        {"base_package": None, "base_version": None},
        {},
    ]
    expected = dict(original)
    for change in steps:
        patched = ok(await client.patch(path, json=change))
        expected |= change
        for field in (*FULL_TEMPLATE, "id", "project", "created_at"):
            assert patched[field] == expected[field], (change, field)
        assert patched["updated_at"] >= expected["updated_at"]
        expected["updated_at"] = patched["updated_at"]
        assert ok(await client.get(path)) == patched


async def test_renaming_a_template(client: AsyncClient) -> None:
    await _home(client)
    for name in ("a", "b"):
        ok(await client.post("/projects/home/templates", json={"name": name, "model_type": "clf"}), 201)
    renamed = ok(await client.patch("/projects/home/templates/a", json={"name": "Шаблон"}))
    assert renamed["name"] == "Шаблон"
    problem(await client.get("/projects/home/templates/a"), 404, "template_not_found")
    ok(await client.get("/projects/home/templates/Шаблон"))
    problem(await client.patch("/projects/home/templates/b", json={"name": "Шаблон"}), 409, "template_exists")
    nfd = unicodedata.normalize("NFD", "é")
    ok(await client.patch("/projects/home/templates/b", json={"name": nfd}))
    assert ok(await client.get("/projects/home/templates/é"))["name"] == "é"


async def test_valid_parameter_names_are_kept(client: AsyncClient) -> None:
    await _home(client)
    parameters = {"epochs": 1, "RANKING": "x", "path": "lower-case is not PATH", "LD": 1, "_seed": 7}
    body = {"name": "t", "model_type": "clf", "parameters": parameters}
    assert ok(await client.post("/projects/home/templates", json=body), 201)["parameters"] == parameters


async def test_a_template_with_processes_cannot_be_deleted(client: AsyncClient) -> None:
    world = await make_world(client)
    template = f"/projects/{world.project}/templates/{world.template}"
    problem(await client.delete(template), 409, "template_in_use")
    assert (await client.delete(world.process_path)).status_code == 204
    assert (await client.delete(template)).status_code == 204
    problem(await client.get(template), 404, "template_not_found")


# -- pagination ---------------------------------------------------------------------------------------


async def test_pagination_walks_every_item_once_in_creation_order(client: AsyncClient) -> None:
    names = [f"p{i}" for i in range(7)]
    for name in names:
        ok(await client.post("/projects", json={"name": name}), 201)
    walked = await pages(client, "/projects", 3)
    assert [len(page) for page in walked] == [3, 3, 1]
    assert [p["name"] for page in walked for p in page] == names
    assert [len(page) for page in await pages(client, "/projects", 7)] == [7]
    assert [len(page) for page in await pages(client, "/projects", 200)] == [7]
    assert [len(page) for page in await pages(client, "/projects", 1)] == [1] * 7

    default = ok(await client.get("/projects"))
    assert len(default["items"]) == 7 and default["next_cursor"] is None


async def test_a_page_that_ends_exactly_has_no_cursor(client: AsyncClient) -> None:
    for i in range(6):
        ok(await client.post("/model-types", json={"name": f"type{i}"}), 201)
    walked = await pages(client, "/model-types", 3)
    assert [len(page) for page in walked] == [3, 3]  # no empty third page


async def test_every_listing_pages(client: AsyncClient) -> None:
    await _home(client)
    for i in range(5):
        ok(await client.post("/projects/home/templates", json={"name": f"t{i}", "model_type": "clf"}), 201)
        await make_machine(client, f"m{i}")
        ok(await client.post(f"/projects/home/templates/t{i % 2}/processes", json={"machine": f"m{i}"}), 201)
    for path, total in (
        ("/machines", 5),
        ("/projects/home/templates", 5),
        ("/projects/home/processes", 5),
        ("/projects/home/templates/t0/processes", 3),
    ):
        walked = await pages(client, path, 2)
        ids = [item["id"] for page in walked for item in page]
        assert len(ids) == total == len(set(ids)), path
        assert [len(page) for page in walked] == [2] * (total // 2) + [total % 2] * (total % 2), path


async def test_a_cursor_survives_deletions_and_additions(client: AsyncClient) -> None:
    for i in range(5):
        ok(await client.post("/projects", json={"name": f"p{i}"}), 201)
    first = ok(await client.get("/projects", params={"limit": 2}))
    assert (await client.delete("/projects/p1")).status_code == 204  # the cursor's own item
    ok(await client.post("/projects", json={"name": "p5"}), 201)
    rest = await pages(client, "/projects", 2, cursor=first["next_cursor"])
    assert [p["name"] for page in rest for p in page] == ["p2", "p3", "p4", "p5"]


# -- filters ------------------------------------------------------------------------------------------


async def test_process_listing_filters_on_status(client: AsyncClient) -> None:
    await _home(client)
    ok(await client.post("/projects/home/templates", json={"name": "t", "model_type": "clf"}), 201)
    ids = {}
    for name in ("idle", "busy", "halted"):
        await make_machine(client, name)
        ids[name] = ok(
            await client.post("/projects/home/templates/t/processes", json={"machine": name}), 201
        )["id"]
    ok(await client.post(f"/projects/home/processes/{ids['busy']}/start"), 201)
    ok(await client.post(f"/projects/home/processes/{ids['halted']}/start"), 201)
    stopped = ok(await client.post(f"/projects/home/processes/{ids['halted']}/stop"), 202)
    assert stopped["status"] == "stopped"  # no agent took it yet: stopped at once

    expected = {"created": ["idle"], "starting": ["busy"], "stopped": ["halted"], "running": [], "failed": []}
    by_id = {v: k for k, v in ids.items()}
    for path in ("/projects/home/processes", "/projects/home/templates/t/processes"):
        for status, names in expected.items():
            items = ok(await client.get(path, params={"status": status}))["items"]
            assert sorted(by_id[p["id"]] for p in items) == names, (path, status)
            assert all(p["status"] == status for p in items)
        assert len(ok(await client.get(path))["items"]) == 3

    runs = "/projects/home/runs"
    assert [r["status"] for r in ok(await client.get(runs, params={"status": "starting"}))["items"]] == [
        "starting"
    ]
    assert [r["status"] for r in ok(await client.get(runs, params={"status": "stopped"}))["items"]] == [
        "stopped"
    ]
    assert ok(await client.get(runs, params={"status": "succeeded"}))["items"] == []
    halted_runs = ok(
        await client.get(f"/projects/home/processes/{ids['halted']}/runs", params={"status": "stopped"})
    )
    assert len(halted_runs["items"]) == 1
