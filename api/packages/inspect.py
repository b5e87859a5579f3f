"""What a package zip offers, found by parsing, never by importing or running it.

The API treats a package as hostile: the archive checks of `shared.archive` first, then `train.py`
parsed with `ast` (never imported: importing runs the package's code on the API). A package that
cannot run is refused at upload with a message that says why.
"""

import ast
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.core.errors import InvalidInput
from shared.archive import ArchiveError, ArchiveLimits, inspect_zip, read_member
from shared.names import InvalidName, check_parameter_name
from shared.protocol import INT64_MAX, INT64_MIN
from shared.requirements import (
    MAX_REQUIREMENTS_BYTES,
    TOO_LARGE,
    RequirementRefused,
    check_requirements_file,
)

MAX_SOURCE_BYTES = 2 * 1024 * 1024
MAX_DECLARED_PARAMETERS = 256
PARAMETER_TYPES = {
    "int": int,
    "integer": int,
    "float": float,
    "number": float,
    "str": str,
    "string": str,
    "bool": bool,
    "boolean": bool,
}


@dataclass(frozen=True)
class DeclaredParameter:
    name: str
    type: str  # int | float | str | bool
    default: Any = None
    description: str = ""


@dataclass(frozen=True)
class PackageInfo:
    root_prefix: str
    has_evaluate: bool
    has_process_data: bool
    has_predict: bool
    has_requirements: bool
    declared_parameters: list[DeclaredParameter] | None = field(default=None)


def _refuse(message: str, code: str) -> InvalidInput:
    return InvalidInput(f"the package cannot run: {message}", code=code, field="file")


def inspect_package(path: Path, limits: ArchiveLimits) -> PackageInfo:
    """Check a package zip and say what it offers; InvalidInput with a stable code if it cannot run."""
    try:
        inventory = inspect_zip(path, limits)
    except ArchiveError as error:
        raise InvalidInput(
            f"the archive was refused: {error.message}", code=error.code, field="file"
        ) from None
    names = set(inventory.names)
    prefix = ""
    if "train.py" not in names:
        prefix = inventory.root_prefix
        if not prefix or f"{prefix}train.py" not in names:
            raise _refuse(
                "no train.py at the root of the zip or in its single top-level folder", "missing_train_py"
            )

    def source(name: str, max_bytes: int = MAX_SOURCE_BYTES) -> bytes | None:
        if f"{prefix}{name}" not in names:
            return None
        try:
            return read_member(path, f"{prefix}{name}", max_bytes, limits=limits)
        except ArchiveError as error:
            raise _refuse(f"{name}: {error.message}", error.code) from None

    train_source = source("train.py")
    assert train_source is not None
    train_methods = _main_methods(train_source, "train.py")
    if train_methods is None:
        raise _refuse("train.py has no `class Main`", "missing_main_class")
    for required in ("train", "save"):
        if train_methods is not _UNKNOWN and required not in train_methods:
            raise _refuse(f"train.py's class Main has no `{required}` method", "missing_method")
    main_source = source("main.py")
    predict = False
    if main_source is not None:
        main_methods = _main_methods(main_source, "main.py")
        predict = main_methods is not None and (main_methods is _UNKNOWN or "predict" in main_methods)
    _check_requirements(source, f"{prefix}requirements.txt" in names)
    parameters_source = source("parameters.json")
    known = train_methods is _UNKNOWN
    return PackageInfo(
        root_prefix=prefix,
        has_evaluate=known or "evaluate" in train_methods,
        has_process_data=known or "process_data" in train_methods,
        has_predict=predict,
        has_requirements=f"{prefix}requirements.txt" in names,
        declared_parameters=None if parameters_source is None else parse_declaration(parameters_source),
    )


def _check_requirements(source: Callable[[str, int], bytes | None], present: bool) -> None:
    """The agent's own policy (`shared.requirements`), with its words and its code: a package the agent
    would refuse to install is refused here, not at its first run."""
    if not present:
        return
    try:
        content = source("requirements.txt", MAX_REQUIREMENTS_BYTES)
    except InvalidInput as error:
        if error.code != "too_large":
            raise
        raise _refuse(TOO_LARGE, RequirementRefused.code) from None
    assert content is not None
    try:
        check_requirements_file(content)
    except RequirementRefused as refused:
        raise _refuse(str(refused), refused.code) from None


class _Unknown(frozenset[str]):
    """Main inherits from a class defined elsewhere: its methods cannot be known without running it."""


_UNKNOWN = _Unknown()


def _main_methods(source: bytes, filename: str) -> frozenset[str] | None:
    try:
        tree = ast.parse(source, filename=filename)
    except (SyntaxError, ValueError) as error:
        line = f" (line {error.lineno})" if isinstance(error, SyntaxError) and error.lineno else ""
        raise _refuse(
            f"{filename} does not parse{line}: {error.msg if isinstance(error, SyntaxError) else error}",
            "syntax_error",
        ) from None
    except (RecursionError, MemoryError):
        # Nesting deep enough to exhaust the parser (MemoryError) or the AST builder (RecursionError):
        # Python would refuse to compile it too.
        raise _refuse(f"{filename} does not parse: it is nested too deeply", "syntax_error") from None
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    if "Main" not in classes:
        return None
    return _methods(classes["Main"], classes)


def _methods(main: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> frozenset[str]:
    """Main's methods and those of its bases defined in the same file. Walked with a list rather than
    recursion, so a hostile chain of thousands of local bases cannot exhaust the stack."""
    found: set[str] = set()
    seen: set[str] = set()
    pending = [main]
    while pending:
        node = pending.pop()
        if node.name in seen:
            continue  # a base reached twice (a diamond) is read once
        seen.add(node.name)
        found |= {item.name for item in node.body if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)}
        for base in node.bases:
            if isinstance(base, ast.Name) and base.id == "object":
                continue
            if not (isinstance(base, ast.Name) and base.id in classes):
                return _UNKNOWN
            pending.append(classes[base.id])
    return frozenset(found)


def parse_declaration(raw: bytes) -> list[DeclaredParameter]:
    """`parameters.json`: a list (or `{"parameters": [...]}`) of {name, type, default, description}."""
    try:
        document = json.loads(raw, parse_constant=_refuse_constant)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, NaN and Infinity
        raise _refuse(f"parameters.json is not JSON: {error}", "invalid_parameters_json") from None
    except RecursionError:
        raise _refuse("parameters.json is not JSON: nested too deeply", "invalid_parameters_json") from None
    if isinstance(document, dict) and set(document) == {"parameters"}:
        document = document["parameters"]
    if not isinstance(document, list) or len(document) > MAX_DECLARED_PARAMETERS:
        raise _refuse(
            f"parameters.json must be a list of at most {MAX_DECLARED_PARAMETERS} parameters",
            "invalid_parameters_json",
        )
    declared: dict[str, DeclaredParameter] = {}
    for index, item in enumerate(document):
        where = f"parameters.json[{index}]"
        if (
            not isinstance(item, dict)
            or not {"name", "type"} <= set(item)
            or set(item) - {"name", "type", "default", "description"}
        ):
            raise _refuse(
                f"{where} must hold name, type and optionally default and description",
                "invalid_parameters_json",
            )
        name, kind = item["name"], item["type"]
        if not isinstance(name, str) or not isinstance(kind, str) or kind not in PARAMETER_TYPES:
            raise _refuse(f"{where}: type must be one of int, float, str, bool", "invalid_parameters_json")
        try:
            check_parameter_name(name)
        except InvalidName as error:
            raise _refuse(f"{where}: parameter {name!r} {error}", "invalid_parameters_json") from None
        if name in declared:
            raise _refuse(f"{where}: parameter {name!r} is declared twice", "invalid_parameters_json")
        canonical = PARAMETER_TYPES[kind].__name__
        default = item.get("default")
        if default is not None and coerce_parameter(default, canonical) is None:
            raise _refuse(
                f"{where}: the default of {name!r} must be {PARAMETER_RULES[canonical]}",
                "invalid_parameters_json",
            )
        description = item.get("description", "")
        if not isinstance(description, str):
            raise _refuse(f"{where}: description must be text", "invalid_parameters_json")
        declared[name] = DeclaredParameter(name, canonical, default, description[:1024])
    return list(declared.values())


def _refuse_constant(name: str) -> Any:
    """Python's reader takes NaN and Infinity; JSON (and PostgreSQL's JSONB) does not."""
    raise ValueError(f"{name} is not a JSON value")


# What each declared type takes, in the words of a refusal.
PARAMETER_RULES = {
    "int": "an integer within int64 (a JSON integer: not text, not a boolean, not 3.0)",
    "float": "a finite number (a JSON number: not text, not a boolean)",
    "str": "text",
    "bool": "true or false",
}


def kind_of(value: Any) -> str | None:
    """The parameter type a JSON value is, read strictly (a boolean is never a number), or None."""
    for kind, python_type in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(value, python_type):
            return kind
    return None


def coerce_parameter(value: Any, kind: str) -> Any:
    """The value as the declared type, or None when it is not strictly one: an int is a JSON integer
    within int64, a float a finite JSON number (an integer within int64 becomes its float), a bool
    true or false, a str text. Nothing is converted from text or from a boolean."""
    given = kind_of(value)
    if given == "int" and not INT64_MIN <= value <= INT64_MAX:
        return None  # past what the run's int64 (and every other reader) holds; float() could overflow
    if given == "float" and not math.isfinite(value):
        return None
    if kind == "float" and given == "int":
        return float(value)
    return value if given == kind else None
