"""Bad input through the API: each refusal is a problem document, and nothing in the database changes.

The checks are small functions grouped into a few tests, so that each group builds one world and
compares one dump of the whole database before and after (see `unchanged`).
"""

import unicodedata
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from httpx import AsyncClient, Response

from api.core.config import Settings
from shared.names import RESERVED_PARAMETER_NAMES
from tests.api.conftest import DatabaseDump, count_rows
from tests.api.world import World, make_world, ok, problem
from tests.shared.test_names import DESIGN_RESERVED_NAMES, RESERVED_PREFIXED

Dump = Callable[[], Awaitable[DatabaseDump]]
JSON = {"content-type": "application/json"}
MIB = 1024 * 1024


@pytest.fixture
async def world(client: AsyncClient) -> World:
    """Something in every table: project, model type, template, machine, process, a run and its command."""
    world = await make_world(client)
    ok(await client.post(f"{world.process_path}/start"), 201)
    return world


@pytest.fixture
async def unchanged(world: World, dump_database: Dump) -> AsyncIterator[None]:
    """Asserts, after the test, that the database holds exactly what it held before it."""
    before = await dump_database()
    assert all(
        count_rows(before)[t] for t in ("projects", "templates", "processes", "runs", "agent_commands")
    )
    yield
    assert await dump_database() == before


def invalid(response: Response, field: str, error_type: str | None = None) -> dict[str, Any]:
    body = problem(response, 422, "validation_error")
    assert body["field"] == field, body
    assert body["detail"].startswith(f"{field}: "), body
    about_field = [e for e in body["errors"] if e["field"] == field or e["field"].startswith(f"{field}.")]
    assert about_field, body
    if error_type is not None:
        assert error_type in {e["type"] for e in about_field}, body
    return body


# -- malformed JSON -----------------------------------------------------------------------------------

MALFORMED_BODIES = [
    b"{",
    b'{"name": }',
    b"not json",
    b'{"name": "a",}',
    b"{'name': 'a'}",
    b'{"name": "a"} trailing',
    b'{"name": "\xff\xfe"}',  # not UTF-8
    b"[" * 50_000 + b"]" * 50_000,  # deeper than any parser should follow
]


async def _malformed_json_is_400_malformed_json(
    client: AsyncClient, world: World, settings: Settings
) -> None:
    targets = [
        ("POST", "/projects"),
        ("PATCH", f"/projects/{world.project}"),
        ("POST", "/model-types"),
        ("POST", "/machines"),
        ("PATCH", f"/machines/{world.machine}"),
        ("POST", f"/projects/{world.project}/templates"),
        ("PATCH", f"/projects/{world.project}/templates/{world.template}"),
        ("POST", f"/projects/{world.project}/templates/{world.template}/processes"),
    ]
    for method, path in targets:
        for body in MALFORMED_BODIES:
            response = await client.request(method, path, content=body, headers=JSON)
            found = problem(response, 400, "malformed_json")
            assert found["title"] == "Malformed JSON", (method, path, body[:20], found)


async def _json_without_a_media_type_or_with_another_is_still_checked(
    client: AsyncClient, world: World, settings: Settings
) -> None:
    problem(
        await client.post("/projects", content=b"{", headers={"content-type": "text/plain"}),
        422,
        "validation_error",
    )
    invalid(await client.post("/projects", content=b"", headers=JSON), "body", "missing")
    invalid(await client.post("/projects"), "body", "missing")


async def _non_finite_numbers_are_refused(client: AsyncClient, world: World, settings: Settings) -> None:
    """Python reads NaN and Infinity, JSON has neither: they must not reach the database."""
    path = f"/projects/{world.project}/templates"
    for number in (b"NaN", b"Infinity", b"-Infinity", b"1e400"):
        body = b'{"name": "t2", "model_type": "%s", "parameters": {"lr": %s}}' % (
            world.model_type.encode(),
            number,
        )
        invalid(await client.post(path, content=body, headers=JSON), "parameters.lr")
        body = b'{"parameters": {"lr": %s}}' % number
        invalid(await client.patch(f"{path}/{world.template}", content=body, headers=JSON), "parameters.lr")
        body = b'{"name": "m2", "address": "h", "capacity": %s}' % number
        invalid(await client.post("/machines", content=body, headers=JSON), "capacity")


# -- wrong types, unknown fields, missing fields --------------------------------------------------------


async def _wrong_types_are_422_naming_the_field(
    client: AsyncClient, world: World, settings: Settings
) -> None:
    templates = f"/projects/{world.project}/templates"
    template = f"{templates}/{world.template}"
    base = {"name": "t2", "model_type": world.model_type}
    cases: list[tuple[str, str, dict[str, Any] | list[Any] | str, str]] = [
        ("POST", "/projects", {"name": 5}, "name"),
        ("POST", "/projects", {"name": ["a"]}, "name"),
        ("POST", "/projects", {"name": None}, "name"),
        ("POST", "/projects", {"name": "p2", "description": {"text": "x"}}, "description"),
        ("POST", "/projects", {"name": "p2", "description": "x" * 5000}, "description"),
        ("PATCH", f"/projects/{world.project}", {"description": 12}, "description"),
        ("POST", "/model-types", {"name": True}, "name"),
        ("POST", "/machines", {"name": "m2", "address": 10}, "address"),
        ("POST", "/machines", {"name": "m2", "address": ""}, "address"),
        ("POST", "/machines", {"name": "m2", "address": "h", "capacity": 0}, "capacity"),
        ("POST", "/machines", {"name": "m2", "address": "h", "capacity": "many"}, "capacity"),
        ("PATCH", f"/machines/{world.machine}", {"capacity": -1}, "capacity"),
        ("POST", templates, base | {"gpus": "two"}, "gpus"),
        ("POST", templates, base | {"gpus": -1}, "gpus"),
        ("POST", templates, base | {"processes": 0}, "processes"),
        ("POST", templates, base | {"max_duration_seconds": 0}, "max_duration_seconds"),
        ("POST", templates, base | {"save_training_data": "maybe"}, "save_training_data"),
        ("POST", templates, base | {"pipeline_type": "magic"}, "pipeline_type"),
        ("POST", templates, base | {"augmentation": "blur"}, "augmentation"),
        ("POST", templates, base | {"base_version": "1"}, "base_version"),
        ("POST", templates, base | {"base_version": "0.1"}, "base_version"),
        ("POST", templates, base | {"dataset": "d", "dataset_version": 0}, "dataset_version"),
        ("POST", templates, base | {"dataset": "d", "dataset_version": "newest"}, "dataset_version"),
        ("POST", templates, base | {"dataset_path": "../outside"}, "dataset_path"),
        ("POST", templates, base | {"test_dataset_path": "/etc"}, "test_dataset_path"),
        ("POST", templates, base | {"parameters": ["epochs"]}, "parameters"),
        ("POST", templates, base | {"parameters": {"epochs": [1, 2]}}, "parameters.epochs"),
        ("POST", templates, base | {"parameters": {"epochs": {"n": 1}}}, "parameters.epochs"),
        ("PATCH", template, {"gpus": "all"}, "gpus"),
        ("PATCH", template, {"dataset_version": -3}, "dataset_version"),
        ("POST", f"{template}/processes", {"machine": 3}, "machine"),
        ("POST", f"{template}/processes", {"machine": world.machine, "enabled": "yes please"}, "enabled"),
        ("POST", "/projects", ["name"], "body"),
        ("POST", "/projects", "name", "body"),
    ]
    for method, path, body, field in cases:
        invalid(await client.request(method, path, json=body), field)


async def _unknown_fields_are_refused_by_name(client: AsyncClient, world: World, settings: Settings) -> None:
    template = f"/projects/{world.project}/templates/{world.template}"
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("POST", "/projects", {"name": "p2", "colour": "red"}, "colour"),
        ("PATCH", f"/projects/{world.project}", {"name": "renamed"}, "name"),
        ("POST", "/model-types", {"name": "ocr", "descripton": "typo"}, "descripton"),
        ("POST", "/machines", {"name": "m2", "address": "h", "agent_token": "ty_mine"}, "agent_token"),
        ("PATCH", f"/machines/{world.machine}", {"enabled": False}, "enabled"),
        (
            "POST",
            f"/projects/{world.project}/templates",
            {"name": "t2", "model_type": world.model_type, "epochs": 3},
            "epochs",
        ),
        ("PATCH", template, {"gpu": 1}, "gpu"),
        ("PATCH", template, {"project": "elsewhere"}, "project"),
        ("POST", f"{template}/processes", {"machine": world.machine, "template": "other"}, "template"),
    ]
    for method, path, body, field in cases:
        invalid(await client.request(method, path, json=body), field, "extra_forbidden")


async def _missing_required_fields_are_named(client: AsyncClient, world: World, settings: Settings) -> None:
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/projects", {}, "name"),
        ("/projects", {"description": "no name"}, "name"),
        ("/model-types", {}, "name"),
        ("/machines", {"name": "m2"}, "address"),
        ("/machines", {"address": "10.0.0.9"}, "name"),
        (f"/projects/{world.project}/templates", {"name": "t2"}, "model_type"),
        (f"/projects/{world.project}/templates", {"model_type": world.model_type}, "name"),
        (f"/projects/{world.project}/templates/{world.template}/processes", {}, "machine"),
    ]
    for path, body, field in cases:
        invalid(await client.post(path, json=body), field, "missing")


async def _a_required_template_field_cannot_be_cleared(
    client: AsyncClient, world: World, settings: Settings
) -> None:
    template = f"/projects/{world.project}/templates/{world.template}"
    for field in (
        "name",
        "model_type",
        "pipeline_type",
        "parameters",
        "gpus",
        "processes",
        "max_duration_seconds",
    ):
        response = await client.patch(template, json={field: None})
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["field"] == field, response.text


# -- names and parameter names ------------------------------------------------------------------------

BAD_NAMES = ["a b", "a/b", "..", ".", "", "x" * 129, "a\x00b", "a\nb", "a\x1bb", "a\u200bb", "\u0301a"]


async def _bad_names_are_422_naming_the_field(client: AsyncClient, world: World, settings: Settings) -> None:
    templates = f"/projects/{world.project}/templates"
    for bad in BAD_NAMES:
        invalid(await client.post("/projects", json={"name": bad}), "name")
        invalid(await client.post("/model-types", json={"name": bad}), "name")
        invalid(await client.post("/machines", json={"name": bad, "address": "h"}), "name")
        invalid(await client.post(templates, json={"name": bad, "model_type": world.model_type}), "name")
        invalid(await client.post(templates, json={"name": "t2", "model_type": bad}), "model_type")
        invalid(
            await client.post(templates, json={"name": "t2", "model_type": world.model_type, "dataset": bad}),
            "dataset",
        )
        invalid(await client.patch(f"{templates}/{world.template}", json={"name": bad}), "name")
        invalid(
            await client.patch(f"{templates}/{world.template}", json={"base_package": bad}), "base_package"
        )
        invalid(
            await client.post(f"{templates}/{world.template}/processes", json={"machine": bad}), "machine"
        )


async def _a_decomposed_name_over_the_limit_is_refused(
    client: AsyncClient, world: World, settings: Settings
) -> None:
    """129 characters once composed (258 code points as sent); 128 composed is accepted (test_catalog)."""
    too_long = unicodedata.normalize("NFD", "é" * 129)
    invalid(await client.post("/projects", json={"name": too_long}), "name")


async def _parameter_names_are_checked_at_create_and_patch(
    client: AsyncClient, world: World, settings: Settings
) -> None:
    templates = f"/projects/{world.project}/templates"
    reserved = sorted({*RESERVED_PARAMETER_NAMES, *DESIGN_RESERVED_NAMES, *RESERVED_PREFIXED})
    bad = [*reserved, "1epochs", "batch-size", "learning.rate", "a b", "", "époques"]
    for name in bad:
        parameters = {"epochs": 3, name: "1"}
        body = invalid(
            await client.post(
                templates, json={"name": "t2", "model_type": world.model_type, "parameters": parameters}
            ),
            "parameters",
        )
        assert repr(name) in body["detail"], body
        invalid(
            await client.patch(f"{templates}/{world.template}", json={"parameters": parameters}), "parameters"
        )


async def _too_many_parameters_are_refused(client: AsyncClient, world: World, settings: Settings) -> None:
    parameters = {f"p{i}": i for i in range(257)}
    invalid(
        await client.patch(
            f"/projects/{world.project}/templates/{world.template}", json={"parameters": parameters}
        ),
        "parameters",
    )


# -- bodies over the limit ----------------------------------------------------------------------------


def _json_of_size(size: int) -> bytes:
    """A valid JSON body of exactly `size` bytes (a project with an over-long description)."""
    head, tail = b'{"name": "big", "description": "', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


async def _chunks(body: bytes, chunk: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), chunk):
        yield body[start : start + chunk]


async def _a_body_over_the_limit_is_413(client: AsyncClient, world: World, settings: Settings) -> None:
    limit = settings.max_json_body_bytes
    assert limit == MIB
    over = _json_of_size(limit + 1)
    titles = set()
    for method, path in (
        ("POST", "/projects"),
        ("PATCH", f"/projects/{world.project}/templates/{world.template}"),
    ):
        declared = await client.request(method, path, content=over, headers=JSON)
        assert "content-length" in {k.lower() for k in declared.request.headers}
        titles.add(problem(declared, 413, "body_too_large")["title"])

        streamed = await client.request(method, path, content=_chunks(over), headers=JSON)
        assert "content-length" not in {k.lower() for k in streamed.request.headers}
        assert streamed.request.headers.get("transfer-encoding") == "chunked"
        titles.add(problem(streamed, 413, "body_too_large")["title"])
    assert len(titles) == 1, f"one code, one title: {titles}"


async def _a_body_at_the_limit_is_read(client: AsyncClient, world: World, settings: Settings) -> None:
    at_limit = _json_of_size(settings.max_json_body_bytes)
    # Read and validated (the description is too long), not refused for its size.
    invalid(await client.post("/projects", content=at_limit, headers=JSON), "description", "string_too_long")
    invalid(
        await client.post("/projects", content=_chunks(at_limit), headers=JSON),
        "description",
        "string_too_long",
    )


async def _a_huge_declared_length_is_refused_before_reading(
    client: AsyncClient, world: World, settings: Settings
) -> None:
    response = await client.post(
        "/projects", content=b'{"name": "x"}', headers=JSON | {"content-length": str(10 * 1024**3)}
    )
    problem(response, 413, "body_too_large")


# -- unknown names and ids ----------------------------------------------------------------------------


async def _unknown_names_and_ids_are_404_with_their_code(
    client: AsyncClient, world: World, settings: Settings
) -> None:
    nobody = uuid.uuid4()
    project = f"/projects/{world.project}"
    template = f"{project}/templates/{world.template}"
    process = world.process_path
    run_id = ok(await client.get(process))["latest_run"]["id"]
    cases: list[tuple[str, str, dict[str, Any] | None, str]] = [
        ("GET", "/projects/nope", None, "project_not_found"),
        ("PATCH", "/projects/nope", {"description": "x"}, "project_not_found"),
        ("DELETE", "/projects/nope", None, "project_not_found"),
        ("GET", "/projects/nope/templates", None, "project_not_found"),
        ("GET", "/projects/nope/processes", None, "project_not_found"),
        ("GET", f"/projects/nope/processes/{world.process_id}", None, "project_not_found"),
        ("GET", "/projects/nope/runs", None, "project_not_found"),
        ("GET", "/model-types/nope", None, "model_type_not_found"),
        ("PATCH", "/model-types/nope", {"description": "x"}, "model_type_not_found"),
        ("DELETE", "/model-types/nope", None, "model_type_not_found"),
        ("GET", "/machines/nope", None, "machine_not_found"),
        ("PATCH", "/machines/nope", {"address": "h"}, "machine_not_found"),
        ("DELETE", "/machines/nope", None, "machine_not_found"),
        ("POST", "/machines/nope/enable", None, "machine_not_found"),
        ("POST", "/machines/nope/disable", None, "machine_not_found"),
        ("POST", "/machines/nope/rotate-token", None, "machine_not_found"),
        ("GET", f"{project}/templates/nope", None, "template_not_found"),
        ("PATCH", f"{project}/templates/nope", {"gpus": 1}, "template_not_found"),
        ("DELETE", f"{project}/templates/nope", None, "template_not_found"),
        ("GET", f"{project}/templates/nope/processes", None, "template_not_found"),
        ("POST", f"{project}/templates/nope/processes", {"machine": world.machine}, "template_not_found"),
        ("POST", f"{project}/templates", {"name": "t2", "model_type": "nope"}, "model_type_not_found"),
        ("PATCH", template, {"model_type": "nope"}, "model_type_not_found"),
        ("POST", f"{template}/processes", {"machine": "nope"}, "machine_not_found"),
        ("GET", f"{project}/processes/{nobody}", None, "process_not_found"),
        ("DELETE", f"{project}/processes/{nobody}", None, "process_not_found"),
        ("GET", f"{project}/processes/{nobody}/events", None, "process_not_found"),
        ("GET", f"{project}/processes/{nobody}/runs", None, "process_not_found"),
        ("GET", f"{project}/runs/{nobody}", None, "run_not_found"),
        ("GET", f"{project}/runs/{nobody}/events", None, "run_not_found"),
        ("GET", f"{project}/processes/{run_id}", None, "process_not_found"),  # a run's id is no process's
        ("GET", f"{project}/runs/{world.process_id}", None, "run_not_found"),
    ]
    for action in ("start", "stop", "restart", "disable", "enable"):
        cases.append(("POST", f"{project}/processes/{nobody}/{action}", None, "process_not_found"))
    for method, path, body, code in cases:
        problem(await client.request(method, path, json=body), 404, code)


async def _objects_of_another_project_are_not_found(
    client: AsyncClient, world: World, dump_database: Dump
) -> None:
    other = await make_world(client, suffix="-other")
    before = await dump_database()
    run_id = ok(await client.get(world.process_path))["latest_run"]["id"]
    elsewhere = f"/projects/{other.project}"
    problem(await client.get(f"{elsewhere}/processes/{world.process_id}"), 404, "process_not_found")
    problem(await client.post(f"{elsewhere}/processes/{world.process_id}/stop"), 404, "process_not_found")
    problem(await client.delete(f"{elsewhere}/processes/{world.process_id}"), 404, "process_not_found")
    problem(await client.get(f"{elsewhere}/runs/{run_id}"), 404, "run_not_found")
    assert await dump_database() == before
    # Undo the other world so that `unchanged` sees the database as it was.
    for path in (
        other.process_path,
        f"{elsewhere}/templates/{other.template}",
        f"{elsewhere}/packages/pkg/versions/1.0",
        f"{elsewhere}/packages/pkg",
        elsewhere,
        f"/machines/{other.machine}",
        f"/model-types/{other.model_type}",
    ):
        assert (await client.delete(path)).status_code == 204, path


async def _a_malformed_id_is_422(client: AsyncClient, world: World, settings: Settings) -> None:
    invalid(await client.get(f"/projects/{world.project}/processes/not-a-uuid"), "process_id", "uuid_parsing")
    invalid(await client.post(f"/projects/{world.project}/processes/123/start"), "process_id")
    invalid(await client.get(f"/projects/{world.project}/runs/not-a-uuid"), "run_id")


async def _an_unknown_route_or_method_is_a_problem_too(
    client: AsyncClient, world: World, settings: Settings
) -> None:
    problem(await client.get("/no-such-thing"), 404, "not_found")
    problem(await client.put("/projects"), 405, "method_not_allowed")


# -- pagination and filters ---------------------------------------------------------------------------


async def _an_invalid_cursor_is_422_invalid_cursor(
    client: AsyncClient, world: World, settings: Settings
) -> None:
    project = f"/projects/{world.project}"
    lists = [
        "/projects",
        "/model-types",
        "/machines",
        f"{project}/templates",
        f"{project}/templates/{world.template}/processes",
        f"{project}/processes",
        f"{project}/runs",
        f"{world.process_path}/runs",
        f"{world.process_path}/events",
    ]
    for path in lists:
        for cursor in ("!!!", "abc", "AAAA", "é", "-_-_", "AAAAAAAAAAAAAAAAAAAAAAAAAAAA"):
            body = problem(await client.get(path, params={"cursor": cursor}), 422, "invalid_cursor")
            assert body["field"] == "cursor", body


async def _bad_paging_and_filter_parameters_are_422(
    client: AsyncClient, world: World, settings: Settings
) -> None:
    for limit in ("0", "-1", "201", "ten"):
        invalid(await client.get("/projects", params={"limit": limit}), "limit")
    invalid(await client.get("/projects", params={"cursor": "A" * 65}), "cursor")
    invalid(
        await client.get(f"/projects/{world.project}/processes", params={"status": "bogus"}), "status", "enum"
    )
    invalid(
        await client.get(f"/projects/{world.project}/runs", params={"status": "created"}), "status", "enum"
    )


# -- the tests: each runs its checks on one world and then proves the database unchanged ---------------


async def test_malformed_json_is_400_malformed_json(
    client: AsyncClient, world: World, settings: Settings, unchanged: None
) -> None:
    await _malformed_json_is_400_malformed_json(client, world, settings)
    await _json_without_a_media_type_or_with_another_is_still_checked(client, world, settings)


async def test_wrong_types_are_422_naming_the_field(
    client: AsyncClient, world: World, settings: Settings, unchanged: None
) -> None:
    await _wrong_types_are_422_naming_the_field(client, world, settings)
    await _non_finite_numbers_are_refused(client, world, settings)
    await _a_required_template_field_cannot_be_cleared(client, world, settings)


async def test_unknown_and_missing_fields_are_named(
    client: AsyncClient, world: World, settings: Settings, unchanged: None
) -> None:
    await _unknown_fields_are_refused_by_name(client, world, settings)
    await _missing_required_fields_are_named(client, world, settings)


async def test_bad_names_and_parameter_names_are_422_naming_the_field(
    client: AsyncClient, world: World, settings: Settings, unchanged: None
) -> None:
    await _bad_names_are_422_naming_the_field(client, world, settings)
    await _a_decomposed_name_over_the_limit_is_refused(client, world, settings)
    await _parameter_names_are_checked_at_create_and_patch(client, world, settings)
    await _too_many_parameters_are_refused(client, world, settings)


async def test_a_body_over_the_limit_is_413(
    client: AsyncClient, world: World, settings: Settings, unchanged: None
) -> None:
    await _a_body_over_the_limit_is_413(client, world, settings)
    await _a_body_at_the_limit_is_read(client, world, settings)
    await _a_huge_declared_length_is_refused_before_reading(client, world, settings)


async def test_unknown_names_and_ids_are_404_with_their_code(
    client: AsyncClient, world: World, settings: Settings, unchanged: None
) -> None:
    await _unknown_names_and_ids_are_404_with_their_code(client, world, settings)
    await _a_malformed_id_is_422(client, world, settings)
    await _an_unknown_route_or_method_is_a_problem_too(client, world, settings)


async def test_objects_of_another_project_are_not_found(
    client: AsyncClient, world: World, dump_database: Dump
) -> None:
    # Not `unchanged`: making the other world leaves rows in the audit trail, which nothing deletes.
    # The refused requests themselves are checked against a dump inside.
    await _objects_of_another_project_are_not_found(client, world, dump_database)


async def test_an_invalid_cursor_or_page_size_is_422(
    client: AsyncClient, world: World, settings: Settings, unchanged: None
) -> None:
    await _an_invalid_cursor_is_422_invalid_cursor(client, world, settings)
    await _bad_paging_and_filter_parameters_are_422(client, world, settings)
