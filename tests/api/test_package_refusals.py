"""Every hostile or unrunnable package upload is refused with a clear 4xx and its stable code, and leaves
nothing: not a row, not a scratch file, not a blob. Cut-off uploads leave nothing either."""

import asyncio
import json
import random
import textwrap
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response
from starlette.types import Message

from shared.enums import ReasonCode
from shared.requirements import RequirementRefused, check_requirements_file
from tests.api.conftest import DatabaseDump
from tests.api.packages_kit import (
    PARAMETERS,
    Members,
    symlink_entry,
    train_py,
    upload_package,
    valid_package,
    versions_path,
    zip_bytes,
    zip_with,
)
from tests.api.world import ok, problem
from tests.conftest import ADMIN_TOKEN

Dump = Callable[[], Awaitable[DatabaseDump]]
MiB = 1024 * 1024
BOUNDARY = "trainyard-test-boundary"


def blob_files(app: FastAPI) -> set[Path]:
    return {path for path in (app.state.blobs.root / "sha256").rglob("*") if path.is_file()}


def scratch_files(app: FastAPI) -> list[Path]:
    return sorted(app.state.blobs.temp_dir.iterdir())


@pytest.fixture
async def project(client: AsyncClient) -> str:
    """A project holding lab/digits 1.0, so a refusal can be seen not to touch an existing package."""
    name: str = ok(await client.post("/projects", json={"name": "lab"}), 201)["name"]
    ok(await upload_package(client, name, "digits", zip_bytes(valid_package())), 201)
    return name


async def assert_leaves_nothing(
    app: FastAPI, dump: Dump, send: Callable[[], Awaitable[Response]], status: int, code: str
) -> dict[str, Any]:
    before, blobs_before = await dump(), blob_files(app)

    body = problem(await send(), status, code)

    assert await dump() == before
    assert scratch_files(app) == []
    assert blob_files(app) == blobs_before
    return body


def without(members: Members, name: str) -> Members:
    return {key: value for key, value in members.items() if key != name}


def with_train(source: str | bytes) -> bytes:
    return zip_bytes(valid_package() | {"train.py": source})


def with_parameters(document: Any) -> bytes:
    raw = document if isinstance(document, str | bytes) else json.dumps(document)
    return zip_bytes(valid_package() | {"parameters.json": raw})


def zeros(size: int) -> bytes:
    return bytes(size)


VALID_TRAIN = valid_package()["train.py"]
assert isinstance(VALID_TRAIN, str)

# (zip, its stable code); every one is a 422.
REFUSED_ZIPS = {
    "text": (b"definitely not a zip", "not_a_zip"),
    "empty-file": (b"", "not_a_zip"),
    "truncated-zip": (zip_bytes(valid_package())[:300], "not_a_zip"),
    "no-train-py": (zip_bytes(without(valid_package(), "train.py")), "missing_train_py"),
    "train-py-two-folders-down": (zip_bytes(valid_package(), prefix="a/b/"), "missing_train_py"),
    "train-py-in-one-of-two-folders": (
        zip_bytes({"a/train.py": VALID_TRAIN, "b/readme.txt": "hi"}),
        "missing_train_py",
    ),
    "syntax-error": (with_train("class Main(:\n    pass\n"), "syntax_error"),
    "nul-byte": (with_train(VALID_TRAIN + "\x00"), "syntax_error"),
    "not-utf8": (with_train(b"\xff\xfeclass Main: pass\n"), "syntax_error"),
    "main-py-syntax-error": (
        zip_bytes(valid_package() | {"main.py": "class Main\n    def predict(self, input):"}),
        "syntax_error",
    ),
    # What parsing alone can do to the API: nesting that exhausts the parser or the AST builder.
    "deep-expression": (with_train("x = " + "+".join(["a"] * 200_000) + "\n" + VALID_TRAIN), "syntax_error"),
    "deep-unary": (with_train("x = " + "-" * 200_000 + "1\n" + VALID_TRAIN), "syntax_error"),
    "no-class-main": (with_train(VALID_TRAIN.replace("class Main", "class Model")), "missing_main_class"),
    "main-not-at-top-level": (
        with_train("if True:\n" + textwrap.indent(VALID_TRAIN, "    ")),
        "missing_main_class",
    ),
    "main-is-a-function": (with_train("def Main():\n    pass\n"), "missing_main_class"),
    "no-train": (with_train(train_py("__init__", "save")), "missing_method"),
    "no-save": (with_train(train_py("__init__", "train", "evaluate")), "missing_method"),
    "train-not-a-method": (
        with_train("class Main:\n    train = None\n\n    def save(self):\n        pass\n"),
        "missing_method",
    ),
    "missing-in-the-local-base-too": (
        with_train("class Base:\n    def save(self): pass\n\nclass Main(Base):\n    pass\n"),
        "missing_method",
    ),
    "dot-dot": (zip_bytes(valid_package() | {"../evil.py": "x"}), "unsafe_path"),
    "dot-dot-inside": (zip_bytes(valid_package() | {"lib/../../evil.py": "x"}), "unsafe_path"),
    "absolute": (zip_bytes(valid_package() | {"/etc/cron.d/evil": "x"}), "unsafe_path"),
    "backslash": (zip_bytes(valid_package() | {"..\\evil.py": "x"}), "unsafe_path"),
    "symlink": (zip_with(valid_package(), symlink_entry("data/passwd", "/etc/passwd")), "symlink"),
    "ratio-bomb": (zip_bytes(valid_package() | {"data.bin": zeros(4 * MiB)}), "zip_bomb"),
    "params-not-json": (with_parameters("{epochs: 10"), "invalid_parameters_json"),
    "params-not-utf8": (with_parameters(b"\xff\xfe[]"), "invalid_parameters_json"),
    "params-too-deep": (with_parameters("[" * 100_000 + "]" * 100_000), "invalid_parameters_json"),
    "params-not-a-list": (with_parameters({"epochs": 10}), "invalid_parameters_json"),
    "params-item-not-object": (with_parameters([1]), "invalid_parameters_json"),
    "params-unknown-type": (with_parameters([{"name": "x", "type": "tensor"}]), "invalid_parameters_json"),
    "params-name-not-text": (with_parameters([{"name": 5, "type": "int"}]), "invalid_parameters_json"),
    "params-no-type": (with_parameters([{"name": "x"}]), "invalid_parameters_json"),
    "params-extra-key": (
        with_parameters([{"name": "x", "type": "int", "min": 0}]),
        "invalid_parameters_json",
    ),
    "params-reserved-PATH": (with_parameters([{"name": "PATH", "type": "str"}]), "invalid_parameters_json"),
    "params-reserved-data_directory": (
        with_parameters([{"name": "data_directory", "type": "str"}]),
        "invalid_parameters_json",
    ),
    "params-reserved-LD_PRELOAD": (
        with_parameters([{"name": "LD_PRELOAD", "type": "str"}]),
        "invalid_parameters_json",
    ),
    "params-reserved-TRAINYARD_": (
        with_parameters([{"name": "TRAINYARD_API_URL", "type": "str"}]),
        "invalid_parameters_json",
    ),
    "params-not-an-identifier": (
        with_parameters([{"name": "learning-rate", "type": "float"}]),
        "invalid_parameters_json",
    ),
    "params-duplicate": (with_parameters([*PARAMETERS, PARAMETERS[0]]), "invalid_parameters_json"),
    "params-default-wrong-type": (
        with_parameters([{"name": "epochs", "type": "int", "default": "ten"}]),
        "invalid_parameters_json",
    ),
    "params-float-default-for-int": (
        with_parameters([{"name": "epochs", "type": "int", "default": 2.5}]),
        "invalid_parameters_json",
    ),
    "params-bool-default-for-int": (
        with_parameters([{"name": "epochs", "type": "int", "default": True}]),
        "invalid_parameters_json",
    ),
    "params-int-default-past-int64": (
        with_parameters('[{"name": "epochs", "type": "int", "default": 1000000000000000000000000000000}]'),
        "invalid_parameters_json",
    ),
    "params-float-default-overflow": (
        with_parameters('[{"name": "lr", "type": "float", "default": 1e400}]'),
        "invalid_parameters_json",
    ),
    "params-float-default-huge-integer": (
        with_parameters('[{"name": "lr", "type": "float", "default": 1' + "0" * 400 + "}]"),
        "invalid_parameters_json",
    ),
    "params-nan-default": (
        with_parameters('[{"name": "lr", "type": "float", "default": NaN}]'),
        "invalid_parameters_json",
    ),
    "params-description-not-text": (
        with_parameters([{"name": "x", "type": "int", "description": 3}]),
        "invalid_parameters_json",
    ),
    "params-too-many": (
        with_parameters([{"name": f"p{i}", "type": "int"} for i in range(257)]),
        "invalid_parameters_json",
    ),
}


@pytest.mark.parametrize(("content", "code"), REFUSED_ZIPS.values(), ids=REFUSED_ZIPS.keys())
async def test_a_package_that_cannot_run_is_refused(
    client: AsyncClient, app: FastAPI, dump_database: Dump, project: str, content: bytes, code: str
) -> None:
    for package in ("digits", "fresh"):  # an existing package gains no version, a new one is not made
        body = await assert_leaves_nothing(
            app, dump_database, lambda p=package: upload_package(client, project, p, content), 422, code
        )
        assert body["field"] == "file"


# (a change to the limits, the zip, its status and code)
LIMITS = {
    "too-many-files": ({"max_archive_files": 3}, zip_bytes(valid_package()), 422, "too_many_files"),
    "too-many-bytes": (
        {"max_archive_bytes": 4096},
        zip_bytes(valid_package() | {"data.bin": random.Random(1).randbytes(8192)}),
        422,
        "too_large",
    ),
    "stricter-ratio": (
        {"max_archive_ratio": 2},
        zip_bytes(valid_package() | {"data.bin": zeros(2 * MiB)}),
        422,
        "zip_bomb",
    ),
    # Declared small enough to be read, then refused at the first byte over the limit...
    "over-max-package-bytes-streamed": (
        {"max_package_bytes": 4096},
        zip_bytes(
            valid_package() | {"data.bin": random.Random(2).randbytes(20_000)}, compression=zipfile.ZIP_STORED
        ),
        413,
        "upload_too_large",
    ),
    # ... or refused from its Content-Length before a byte is read.
    "over-max-package-bytes-declared": (
        {"max_package_bytes": 4096},
        zip_bytes(
            valid_package() | {"data.bin": random.Random(3).randbytes(200_000)},
            compression=zipfile.ZIP_STORED,
        ),
        413,
        "upload_too_large",
    ),
}


@pytest.mark.parametrize(("limits", "content", "status", "code"), LIMITS.values(), ids=LIMITS.keys())
async def test_a_package_over_the_limits_is_refused(
    client: AsyncClient,
    app: FastAPI,
    dump_database: Dump,
    project: str,
    limits: dict[str, int],
    content: bytes,
    status: int,
    code: str,
) -> None:
    for name, value in limits.items():
        setattr(app.state.settings, name, value)

    await assert_leaves_nothing(
        app, dump_database, lambda: upload_package(client, project, "digits", content), status, code
    )


def _multipart(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart/form-data body of (field, filename or None, content) parts, with BOUNDARY."""
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
PACKAGE = zip_bytes(valid_package())

# (how the request is sent, its status and code)
REFUSED_REQUESTS: dict[str, tuple[dict[str, Any], int, str]] = {
    "json-body": ({"json": {"file": "x"}}, 422, "multipart_required"),
    "raw-zip-body": (
        {"content": PACKAGE, "headers": {"Content-Type": "application/zip"}},
        422,
        "multipart_required",
    ),
    "no-content-type": ({"content": PACKAGE}, 422, "multipart_required"),
    "form-urlencoded": ({"data": {"file": "x"}}, 422, "multipart_required"),
    "multipart-without-boundary": (
        {"content": PACKAGE, "headers": {"Content-Type": "multipart/form-data"}},
        422,
        "multipart_required",
    ),
    "another-field-name": ({"files": {"package": ("p.zip", PACKAGE)}}, 422, "file_required"),
    "file-as-a-text-field": (
        {"content": _multipart(("file", None, b"x")), "headers": MULTIPART},
        422,
        "file_required",
    ),
    "no-parts": ({"content": _multipart(), "headers": MULTIPART}, 422, "file_required"),
    "two-files": (
        {"content": _multipart(("file", "a.zip", PACKAGE), ("file", "b.zip", PACKAGE)), "headers": MULTIPART},
        422,
        "too_many_files",
    ),
    "garbage-after-the-boundary": (
        {"content": f"--{BOUNDARY}\r\nno headers here".encode() + bytes(range(256)), "headers": MULTIPART},
        422,
        "malformed_upload",
    ),
}


@pytest.mark.parametrize(
    ("request_args", "status", "code"), REFUSED_REQUESTS.values(), ids=REFUSED_REQUESTS.keys()
)
async def test_a_request_that_is_not_a_package_upload_is_refused(
    client: AsyncClient,
    app: FastAPI,
    dump_database: Dump,
    project: str,
    request_args: dict[str, Any],
    status: int,
    code: str,
) -> None:
    await assert_leaves_nothing(
        app,
        dump_database,
        lambda: client.post(versions_path(project, "digits"), **request_args),
        status,
        code,
    )


async def test_an_upload_to_a_name_or_project_that_cannot_be_is_refused(
    client: AsyncClient, anon: AsyncClient, app: FastAPI, dump_database: Dump, project: str
) -> None:
    async def send(client: AsyncClient, project: str, package: str) -> Response:
        return await upload_package(client, project, package, PACKAGE)

    await assert_leaves_nothing(
        app, dump_database, lambda: send(client, "nowhere", "digits"), 404, "project_not_found"
    )
    for name in ("with space", "semi;colon", "x" * 129, "...", "emoji-🙂"):
        body = await assert_leaves_nothing(
            app, dump_database, lambda n=name: send(client, project, n), 422, "invalid_name"
        )
        assert body["field"] == "package"
    url = f"/api/v1{versions_path(project, 'digits')}"
    files = {"file": ("p.zip", PACKAGE, "application/zip")}
    await assert_leaves_nothing(app, dump_database, lambda: anon.post(url, files=files), 401, "missing_token")


# -- uploads cut off mid-way ----------------------------------------------------------------------------


def _head(filename: str = "package.zip") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/zip\r\n\r\n"
    ).encode()


FULL_BODY = _head() + PACKAGE + f"\r\n--{BOUNDARY}--\r\n".encode()
# Where the body is cut: in the part's headers, in the zip, just before the closing boundary.
CUTS = {
    "in-headers": len(_head()) // 2,
    "in-the-zip": len(_head()) + len(PACKAGE) // 2,
    "before-the-end": len(FULL_BODY) - 3,
}


@pytest.mark.parametrize("cut", CUTS.values(), ids=CUTS.keys())
async def test_a_client_that_goes_away_mid_upload_leaves_nothing(
    app: FastAPI, dump_database: Dump, project: str, cut: int
) -> None:
    """As a server sees it: some body, then `http.disconnect`."""
    before, blobs_before = await dump_database(), blob_files(app)

    sent = await _asgi_post(
        app, versions_path(project, "digits"), [FULL_BODY[:cut][i : i + 1000] for i in range(0, cut, 1000)]
    )

    start = next(message for message in sent if message["type"] == "http.response.start")
    body = json.loads(
        b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    )
    assert (start["status"], body["code"]) == (422, "upload_incomplete"), body
    assert await dump_database() == before
    assert scratch_files(app) == []
    assert blob_files(app) == blobs_before


async def _asgi_post(app: FastAPI, path: str, chunks: list[bytes]) -> list[Message]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"/api/v1{path}",
        "raw_path": f"/api/v1{path}".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"trainyard.test"),
            (b"authorization", f"Bearer {ADMIN_TOKEN}".encode()),
            (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
            (b"content-length", str(len(FULL_BODY)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("trainyard.test", 80),
    }
    messages: list[Message] = [{"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks]
    messages.append({"type": "http.disconnect"})
    sent: list[Message] = []

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # a disconnected client sends nothing more
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize("cut", CUTS.values(), ids=CUTS.keys())
async def test_a_body_that_ends_early_leaves_nothing(
    client: AsyncClient, app: FastAPI, dump_database: Dump, project: str, cut: int
) -> None:
    """The client's stream ends before the multipart body does (no closing boundary)."""
    before, blobs_before = await dump_database(), blob_files(app)

    async def ends_early() -> Any:
        yield FULL_BODY[:cut]

    response = await client.post(versions_path(project, "digits"), content=ends_early(), headers=MULTIPART)

    problem(response, 422, "upload_incomplete")
    assert await dump_database() == before
    assert scratch_files(app) == []
    assert blob_files(app) == blobs_before


@pytest.mark.parametrize("cut", CUTS.values(), ids=CUTS.keys())
async def test_a_body_whose_stream_fails_leaves_nothing(
    client: AsyncClient, app: FastAPI, dump_database: Dump, project: str, cut: int
) -> None:
    """Not the client's malformed body but a failure while reading it: it reaches the transport as it
    is (a 500, not a 422), and nothing stays."""
    before, blobs_before = await dump_database(), blob_files(app)

    async def fails() -> Any:
        yield FULL_BODY[:cut]
        raise RuntimeError("the connection was reset")

    with pytest.raises(RuntimeError, match="the connection was reset"):
        await client.post(versions_path(project, "digits"), content=fails(), headers=MULTIPART)

    assert await dump_database() == before
    assert scratch_files(app) == []
    assert blob_files(app) == blobs_before


async def test_an_upload_holds_no_database_connection_while_its_body_streams(
    client: AsyncClient, app: FastAPI, project: str
) -> None:
    """On SQLite the API has one connection: an upload holding it would stall every other request."""
    halfway = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> Any:
        yield FULL_BODY[: len(FULL_BODY) // 2]
        halfway.set()
        await release.wait()
        yield FULL_BODY[len(FULL_BODY) // 2 :]

    upload = asyncio.create_task(
        client.post(versions_path(project, "digits"), content=slow(), headers=MULTIPART)
    )
    await asyncio.wait_for(halfway.wait(), 10)
    await asyncio.sleep(0.05)  # let the route take the first chunk

    assert app.state.engine.pool.checkedout() == 0
    listed = await asyncio.wait_for(client.get(f"/projects/{project}/packages"), 10)
    assert ok(listed)["items"][0]["latest_version"] == "1.0"
    release.set()
    assert ok(await upload, 201)["version"] == "2.0"


# -- requirements.txt: the agent's policy, applied at upload ---------------------------------------------

# What the agent would refuse to install (`shared.requirements`), each in a package otherwise valid.
HOSTILE_REQUIREMENTS: dict[str, str | bytes] = {
    "editable": "numpy\n-e .\n",
    "index-url": "--index-url https://evil.example/simple\nnumpy\n",
    "extra-index-url": "numpy\n--extra-index-url=https://evil.example/simple\n",
    "direct-url": "numpy @ https://evil.example/numpy.whl\n",
    "vcs": "git+https://evil.example/x.git\n",
    "local-path": "../sibling\n",
    "archive": "evil-1.0.tar.gz\n",
    "other-file": "-r /etc/passwd\n",
    "environment": "numpy==${TRAINYARD_AGENT_TOKEN}\n",
    "no-binary": "--no-binary :all:\nnumpy\n",
    "continued": "numpy \\\n  --index-url https://evil.example\n",
    "not-utf8": b"numpy\n\xff\xfe\n",
    "too-large": "numpy\n" + "# padding\n" * 30_000,
}


@pytest.mark.parametrize("content", HOSTILE_REQUIREMENTS.values(), ids=HOSTILE_REQUIREMENTS.keys())
async def test_a_requirements_file_the_agent_would_refuse_is_refused_at_upload(
    client: AsyncClient, app: FastAPI, dump_database: Dump, project: str, content: str | bytes
) -> None:
    raw = content.encode() if isinstance(content, str) else content
    with pytest.raises(RequirementRefused) as refused:  # what a run of this package would end with
        check_requirements_file(raw)
    for prefix in ("", "pkg/"):  # at the root, or in the zip's single top-level folder
        package = zip_bytes(valid_package() | {"requirements.txt": content}, prefix=prefix)
        body = await assert_leaves_nothing(
            app,
            dump_database,
            lambda p=package: upload_package(client, project, "digits", p),
            422,
            ReasonCode.INVALID_PACKAGE.value,
        )
        assert body["field"] == "file"
        assert body["detail"] == f"the package cannot run: {refused.value}"


async def test_a_requirements_file_the_agent_would_install_is_accepted(
    client: AsyncClient, project: str
) -> None:
    requirements = (
        "# what the package needs\nnumpy>=1.24\nscikit-learn[alldeps] >= 1.3, <2 ; python_version >= '3.8'\n"
        "--prefer-binary\n"
    )
    package = zip_bytes(valid_package() | {"requirements.txt": requirements})
    assert ok(await upload_package(client, project, "digits", package), 201)["has_requirements"] is True
