"""A template's parameters are typed strictly: an int is a JSON integer within int64 (not "3", not
true, not 3.0), a float a finite JSON number, a bool true or false, a str text. What the package's
parameters.json declares decides the type; a package that declares nothing still gets no integer past
int64 and no NaN or infinity. A refusal is a 422 naming the parameter and changes nothing."""

import json
import math
from collections.abc import Awaitable, Callable

import pytest
from httpx import AsyncClient

from tests.api.conftest import DatabaseDump
from tests.api.packages_kit import upload_package, valid_package, zip_bytes
from tests.api.world import ok, problem

Dump = Callable[[], Awaitable[DatabaseDump]]
INT64_MAX = 2**63 - 1
TEMPLATES = "/projects/lab/templates"

# (parameter, its value as JSON text): refused against the declaration of valid_package()
# (epochs int, learning_rate float, optimizer str, augment bool).
REFUSED_DECLARED = {
    "int-as-text": ("epochs", '"3"'),
    "int-as-true": ("epochs", "true"),
    "int-as-3.0": ("epochs", "3.0"),
    "int-with-fraction": ("epochs", "2.5"),
    "int-10^30": ("epochs", "1" + "0" * 30),
    "int-past-int64": ("epochs", str(INT64_MAX + 1)),
    "int-below-int64": ("epochs", str(-(2**63) - 1)),
    "float-as-text": ("learning_rate", '"0.1"'),
    "float-as-false": ("learning_rate", "false"),
    "float-nan": ("learning_rate", "NaN"),
    "float-infinity": ("learning_rate", "-Infinity"),
    "float-overflow": ("learning_rate", "1e400"),
    "float-integer-past-int64": ("learning_rate", "1" + "0" * 400),
    "bool-as-1": ("augment", "1"),
    "bool-as-text": ("augment", '"true"'),
    "str-as-number": ("optimizer", "3"),
    "str-as-bool": ("optimizer", "false"),
}
# Refused whatever the package declares: no JSON integer past int64, no number that is not finite.
REFUSED_ANYWHERE = {
    "int-10^30": ("seed", "1" + "0" * 30),
    "int-past-int64": ("seed", str(INT64_MAX + 1)),
    "nan": ("rate", "NaN"),
    "infinity": ("rate", "Infinity"),
    "overflow": ("rate", "-1e400"),
    "integer-overflowing-a-float": ("rate", "1" + "0" * 400),
}


@pytest.fixture
async def lab(client: AsyncClient) -> None:
    """lab/declared 1.0 declares the four types; lab/free 1.0 declares nothing."""
    ok(await client.post("/projects", json={"name": "lab"}), 201)
    ok(await client.post("/model-types", json={"name": "clf"}), 201)
    ok(await upload_package(client, "lab", "declared", zip_bytes(valid_package())), 201)
    ok(await upload_package(client, "lab", "free", zip_bytes(valid_package(parameters=None))), 201)
    for package in ("declared", "free"):
        body = {"name": package, "model_type": "clf", "base_package": package}
        ok(await client.post(TEMPLATES, json=body), 201)


def _body(package: str, parameter: str, raw: str, fields: dict[str, str]) -> bytes:
    head = json.dumps({"model_type": "clf", "base_package": package, **fields})
    return f'{head[:-1]}, "parameters": {{"{parameter}": {raw}}}}}'.encode()


async def _refused(client: AsyncClient, dump: Dump, package: str, name: str, raw: str) -> None:
    # NaN, Infinity and 1e400 (read as infinity) are no JSON number: the request's schema refuses them
    # (`validation_error`), naming the parameter too; every other refusal is the parameter check's.
    value = json.loads(raw)
    finite = not isinstance(value, float) or math.isfinite(value)
    code = "invalid_parameter" if finite else "validation_error"
    before = await dump()
    headers = {"Content-Type": "application/json"}
    for method, url, fields in (
        ("POST", TEMPLATES, {"name": "new"}),
        ("PATCH", f"{TEMPLATES}/{package}", {}),
    ):
        response = await client.request(
            method, url, content=_body(package, name, raw, fields), headers=headers
        )
        body = problem(response, 422, code)
        assert body["field"] == f"parameters.{name}", body
    assert await dump() == before


@pytest.mark.parametrize(("name", "raw"), REFUSED_DECLARED.values(), ids=REFUSED_DECLARED.keys())
async def test_a_value_not_strictly_of_its_declared_type_is_refused(
    client: AsyncClient, dump_database: Dump, lab: None, name: str, raw: str
) -> None:
    await _refused(client, dump_database, "declared", name, raw)


@pytest.mark.parametrize(("name", "raw"), REFUSED_ANYWHERE.values(), ids=REFUSED_ANYWHERE.keys())
async def test_no_package_takes_an_integer_past_int64_or_a_number_that_is_not_finite(
    client: AsyncClient, dump_database: Dump, lab: None, name: str, raw: str
) -> None:
    await _refused(client, dump_database, "free", name, raw)


async def test_values_of_their_type_are_kept_as_they_were_given(client: AsyncClient, lab: None) -> None:
    declared = {"epochs": INT64_MAX, "learning_rate": 3, "optimizer": "3", "augment": False}
    body = {"model_type": "clf", "base_package": "declared", "parameters": declared}
    read = ok(await client.patch(f"{TEMPLATES}/declared", json=body))["parameters"]
    assert read == {"epochs": INT64_MAX, "learning_rate": 3.0, "optimizer": "3", "augment": False}
    assert type(read["learning_rate"]) is float
    ok(await client.patch(f"{TEMPLATES}/declared", json={"parameters": {"epochs": -(2**63)}}))
    free = {"seed": "42", "shuffle": True, "count": -(2**63), "rate": 1e300}
    body = {"model_type": "clf", "base_package": "free", "parameters": free}
    read = ok(await client.patch(f"{TEMPLATES}/free", json=body))["parameters"]
    assert read == free and {k: type(v) for k, v in read.items()} == {k: type(v) for k, v in free.items()}
