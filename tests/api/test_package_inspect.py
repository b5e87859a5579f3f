"""parameters.json declarations and the coercion of template values to the declared types: plain
functions, no database."""

import json
from typing import Any

import pytest

from api.core.errors import InvalidInput
from api.packages.inspect import (
    MAX_DECLARED_PARAMETERS,
    DeclaredParameter,
    coerce_parameter,
    parse_declaration,
)


def parse(document: Any) -> list[DeclaredParameter]:
    return parse_declaration(document if isinstance(document, bytes) else json.dumps(document).encode())


def refusal(document: Any) -> str:
    with pytest.raises(InvalidInput) as raised:
        parse(document)
    assert raised.value.code == "invalid_parameters_json" and raised.value.field == "file"
    assert raised.value.detail.startswith("the package cannot run: parameters.json")
    return raised.value.detail


def test_a_declaration_is_read_in_order_with_canonical_types() -> None:
    declared = parse(
        [
            {"name": "epochs", "type": "integer", "default": 10, "description": "Passes over the data"},
            {"name": "learning_rate", "type": "number", "default": 1},
            {"name": "optimizer", "type": "string"},
            {"name": "augment", "type": "boolean", "default": True},
            {"name": "_private2", "type": "float", "default": None},
        ]
    )

    assert declared == [
        DeclaredParameter("epochs", "int", 10, "Passes over the data"),
        DeclaredParameter("learning_rate", "float", 1, ""),
        DeclaredParameter("optimizer", "str", None, ""),
        DeclaredParameter("augment", "bool", True, ""),
        DeclaredParameter("_private2", "float", None, ""),
    ]


def test_the_list_may_be_wrapped_in_an_object() -> None:
    assert parse({"parameters": [{"name": "epochs", "type": "int"}]}) == [DeclaredParameter("epochs", "int")]
    assert parse([]) == [] and parse({"parameters": []}) == []


def test_a_long_description_is_cut_not_refused() -> None:
    (declared,) = parse([{"name": "x", "type": "str", "description": "d" * 5000}])

    assert declared.description == "d" * 1024


def test_as_many_parameters_as_allowed_are_taken() -> None:
    document = [{"name": f"p{i}", "type": "int"} for i in range(MAX_DECLARED_PARAMETERS)]

    assert len(parse(document)) == MAX_DECLARED_PARAMETERS
    assert "at most" in refusal([*document, {"name": "one_more", "type": "int"}])


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(b"{epochs: 10", id="not-json"),
        pytest.param(b"\xff\xfe[]", id="not-utf8"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nested-too-deeply"),
        pytest.param(b'[{"name": "lr", "type": "float", "default": NaN}]', id="nan"),
        pytest.param(b'[{"name": "lr", "type": "float", "default": -Infinity}]', id="infinity"),
        pytest.param({"epochs": 10}, id="object-of-values"),
        pytest.param({"parameters": [], "version": 1}, id="object-with-more-than-parameters"),
        pytest.param("epochs", id="string"),
        pytest.param(None, id="null"),
        pytest.param([1], id="item-not-an-object"),
        pytest.param([{"name": "x"}], id="no-type"),
        pytest.param([{"type": "int"}], id="no-name"),
        pytest.param([{"name": "x", "type": "int", "min": 0}], id="unknown-key"),
        pytest.param([{"name": "x", "type": "tensor"}], id="unknown-type"),
        pytest.param([{"name": "x", "type": "Int"}], id="type-is-case-sensitive"),
        pytest.param([{"name": "x", "type": ["int"]}], id="type-not-text"),
        pytest.param([{"name": 5, "type": "int"}], id="name-not-text"),
        pytest.param([{"name": "", "type": "int"}], id="empty-name"),
        pytest.param([{"name": "learning-rate", "type": "float"}], id="not-an-identifier"),
        pytest.param([{"name": "1st", "type": "int"}], id="starts-with-a-digit"),
        pytest.param([{"name": "époque", "type": "int"}], id="not-ascii"),
        pytest.param([{"name": "x", "type": "int", "description": 3}], id="description-not-text"),
        pytest.param([{"name": "x", "type": "int"}, {"name": "x", "type": "str"}], id="declared-twice"),
    ],
)
def test_malformed_declarations_are_refused(document: Any) -> None:
    refusal(document)


@pytest.mark.parametrize(
    "name",
    [
        "PATH",
        "HOME",
        "USER",
        "data_directory",
        "test_data_directory",
        "artifacts_directory",
        "save_training_data",
        "augmentation",
        "CUDA_VISIBLE_DEVICES",
        "LD_PRELOAD",
        "PYTHONPATH",
        "NCCL_DEBUG",
        "TRAINYARD_PARAMETERS_FILE",
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    ],
)
def test_names_of_the_runs_own_environment_are_refused(name: str) -> None:
    assert "reserved" in refusal([{"name": name, "type": "str"}])


@pytest.mark.parametrize(
    ("kind", "default"),
    [
        ("int", "10"),
        ("int", 2.5),
        ("int", True),
        ("float", "0.1"),
        ("float", False),
        ("str", 3),
        ("str", ["a"]),
        ("bool", 1),
        ("bool", "true"),
        ("int", {"value": 1}),
    ],
)
def test_a_default_of_the_wrong_type_is_refused(kind: str, default: Any) -> None:
    assert "default" in refusal([{"name": "x", "type": kind, "default": default}])


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        (3, "int", 3),
        (-1, "int", -1),
        (3, "float", 3.0),
        (2.5, "float", 2.5),
        ("adam", "str", "adam"),
        ("", "str", ""),
        (True, "bool", True),
        (False, "bool", False),
        (2**63 - 1, "int", 2**63 - 1),
        (-(2**63), "int", -(2**63)),
        (2**63 - 1, "float", float(2**63 - 1)),
        (1e300, "float", 1e300),
    ],
)
def test_values_of_the_declared_type_are_taken(value: Any, kind: str, expected: Any) -> None:
    coerced = coerce_parameter(value, kind)

    assert coerced == expected and type(coerced) is type(expected)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (True, "int"),  # booleans are never numbers, though Python says bool is an int
        (False, "float"),
        (2.0, "int"),
        ("3", "int"),
        ("2.5", "float"),
        (None, "float"),
        (1, "bool"),
        ("true", "bool"),
        (None, "bool"),
        (3, "str"),
        (["a"], "str"),
        ({"a": 1}, "str"),
        (10**30, "int"),  # strictly: a JSON integer within int64
        (2**63, "int"),
        (-(2**63) - 1, "int"),
        (10**400, "float"),  # float() would overflow
        (float("inf"), "float"),  # 1e400 as Python's JSON reader reads it
        (float("nan"), "float"),
        (3.0, "int"),
        ("3", "float"),
    ],
)
def test_values_of_another_type_are_not(value: Any, kind: str) -> None:
    assert coerce_parameter(value, kind) is None
