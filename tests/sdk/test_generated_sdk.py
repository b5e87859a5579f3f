"""The generated SDK (docs/clients.md): `openapi-python-client` generates a client from a served
`/openapi.json` with no warning, and the client, imported as a user would, drives the Primo flow
against a real `trainyard-api serve`: projects, model type, machine, package and dataset uploads,
template, process, a start retried with one `Idempotency-Key`, the agent's reports (through the same
SDK, with the machine's token), the run and its results."""

import importlib
import inspect
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.api.packages_kit import valid_package, zip_bytes
from tests.api.test_cli import Server, migrate, serving, trainyard_api
from tests.conftest import ADMIN_TOKEN
from tests.s3 import S3Server, on_s3, s3_server

__all__ = ["s3_server"]  # the session's SeaweedFS, a fixture of tests/s3.py
GENERATOR = Path(sys.executable).with_name("openapi-python-client")
CONFIG = Path(__file__).with_name("generator.yaml")
PACKAGE = "trainyard_sdk"
PROBLEM = "application/problem+json"
GENERATE_TIMEOUT = 300.0
OPTIONS = (
    "--config",
    str(CONFIG),
    "--output-path",
)  # a bound on waiting for the generator, never an assertion about speed


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("sdk-api")
    migrate(root)
    with serving(root, bootstrap_token=ADMIN_TOKEN) as served:
        yield served


def generate(server: Server, into: Path) -> subprocess.CompletedProcess[str]:
    document = into / "openapi.json"
    document.write_bytes(httpx.get(f"{server.base_url}/openapi.json").raise_for_status().content)
    # The generator formats its output with ruff, found on PATH: this environment's.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [
            str(GENERATOR),
            "generate",
            "--path",
            str(document),
            "--meta",
            "none",
            *OPTIONS,
            str(into / PACKAGE),
        ],
        cwd=into,
        env=env,
        capture_output=True,
        text=True,
        timeout=GENERATE_TIMEOUT,
    )


@pytest.fixture(scope="module")
def sdk(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    into = tmp_path_factory.mktemp("sdk")
    generated = generate(server, into)
    output = generated.stdout + generated.stderr
    assert generated.returncode == 0, output
    assert "warning" not in output.lower() and "skipping" not in output.lower(), output
    sys.path.insert(0, str(into))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(into))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def api(name: str) -> Any:
    """A generated operation's module, e.g. api("processes.processes_start")."""
    return importlib.import_module(f"{PACKAGE}.api.{name}")


def test_every_operation_is_generated_readably_with_typed_answers(sdk: ModuleType, server: Server) -> None:
    document = httpx.get(f"{server.base_url}/openapi.json").raise_for_status().json()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            where = f"{method} {path}"
            # A module per operation, named by its operationId (processes_start, runs_get, ...).
            tag = operation["tags"][0].replace(" ", "_")
            module = api(f"{tag}.{operation['operationId']}")
            assert callable(module.sync_detailed), where
            for status, response in operation["responses"].items():
                for media, content in response.get("content", {}).items():
                    # No answer generated as an untyped `Any`/`dict` where the API has a schema.
                    assert content.get("schema"), f"{where} {status} {media}"
                    if media.endswith("json"):
                        assert "$ref" in json.dumps(content["schema"]), f"{where} {status} {media}"
            if path.startswith("/api/v1/"):
                problems = [
                    r
                    for s, r in operation["responses"].items()
                    if s[0] in "45" and PROBLEM in r.get("content", {})
                ]
                assert problems, f"{where} describes no problem document"
    start = inspect.signature(api("processes.processes_start").sync_detailed)
    assert "idempotency_key" in start.parameters
    assert "RunRead" in str(inspect.signature(api("runs.runs_get").sync).return_annotation)
    assert "RunResults" in str(inspect.signature(api("runs.runs_results_get").sync).return_annotation)


def test_the_primo_flow_through_the_generated_sdk(sdk: ModuleType, server: Server) -> None:
    from trainyard_sdk.api.agent import (
        agent_commands_ack,
        agent_commands_poll,
        agent_runs_events_report,
        agent_runs_outputs_package_upload,
    )
    from trainyard_sdk.api.datasets import datasets_versions_upload
    from trainyard_sdk.api.machines import machines_create
    from trainyard_sdk.api.model_types import model_types_create
    from trainyard_sdk.api.packages import packages_versions_list, packages_versions_upload
    from trainyard_sdk.api.processes import processes_create, processes_start
    from trainyard_sdk.api.projects import projects_create
    from trainyard_sdk.api.runs import runs_get, runs_results_get
    from trainyard_sdk.api.templates import templates_create
    from trainyard_sdk.models import (
        DatasetsVersionsUploadBody,
        ExitedEvent,
        FinishedEvent,
        LaunchedEvent,
        MachineCreate,
        ModelTypeCreate,
        PackagesVersionsUploadBody,
        Problem,
        ProcessCreate,
        ProjectCreate,
        RunStatus,
        TemplateCreate,
        TemplateCreateParameters,
    )
    from trainyard_sdk.types import File

    client = sdk.AuthenticatedClient(
        base_url=server.base_url, token=ADMIN_TOKEN, raise_on_unexpected_status=True
    )
    # Names of this attempt's own: a rerun meets the module's server again.
    suffix = uuid.uuid4().hex[:8]
    name, classifier, gpu = f"invoices-{suffix}", f"classifier-{suffix}", f"gpu-{suffix}"
    project = projects_create.sync(client=client, body=ProjectCreate(name=name))
    assert project.name == name
    model_type = model_types_create.sync(client=client, body=ModelTypeCreate(name=classifier))
    assert model_type.name == classifier
    machine = machines_create.sync(client=client, body=MachineCreate(name=gpu, address="10.0.3.17"))
    assert machine.agent_token.startswith("ty_")

    package_zip = zip_bytes(valid_package(parameters=None))
    upload_key = str(uuid.uuid4())

    def upload_package() -> Any:
        body = PackagesVersionsUploadBody(file=File(payload=BytesIO(package_zip), file_name="digits.zip"))
        return packages_versions_upload.sync_detailed(
            name, "digits", client=client, body=body, idempotency_key=upload_key
        )

    uploaded, retried = upload_package(), upload_package()
    assert uploaded.status_code == 201 and retried.status_code == 201
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.parsed.version == uploaded.parsed.version == "1.0"
    versions = packages_versions_list.sync(name, "digits", client=client)
    assert [v.version for v in versions.items] == ["1.0"]

    scans = zip_bytes({"train/0.txt": "zero", "train/1.txt": "one"})
    dataset = datasets_versions_upload.sync(
        name,
        "scans",
        client=client,
        body=DatasetsVersionsUploadBody(file=File(payload=BytesIO(scans), file_name="scans.zip")),
    )
    assert dataset.number == 1 and dataset.file_count == 2

    template = templates_create.sync(
        name,
        client=client,
        body=TemplateCreate(
            name="digits",
            model_type=classifier,
            base_package="digits",
            dataset="scans",
            parameters=TemplateCreateParameters.from_dict({"epochs": 2}),
        ),
    )
    assert template.name == "digits"
    process = processes_create.sync(name, "digits", client=client, body=ProcessCreate(machine=gpu))

    # A bot's start, retried after a dropped answer: one run, the same answer again.
    start_key = str(uuid.uuid4())
    started = processes_start.sync_detailed(name, process.id, client=client, idempotency_key=start_key)
    again = processes_start.sync_detailed(name, process.id, client=client, idempotency_key=start_key)
    assert started.status_code == 201 and again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    run_id = started.parsed.latest_run.id
    assert again.parsed.latest_run.id == run_id and again.parsed.run_count == 1
    refused = processes_start.sync_detailed(name, process.id, client=client)
    assert refused.status_code == 409 and isinstance(refused.parsed, Problem)
    assert refused.parsed.code == "run_active"

    # The agent's side of the run, through the same SDK with the machine's token.
    agent = sdk.AuthenticatedClient(base_url=server.base_url, token=machine.agent_token)
    commands = agent_commands_poll.sync(client=agent)
    assert [(c.kind.value, c.run_id) for c in commands] == [("start_run", run_id)]
    agent_commands_ack.sync(commands[0].id, client=agent)
    agent_runs_events_report.sync(run_id, client=agent, body=LaunchedEvent(type_="launched", pid=4242))
    assert runs_get.sync(name, run_id, client=client).status == RunStatus.RUNNING

    agent_runs_events_report.sync(run_id, client=agent, body=ExitedEvent(type_="exited", exit_code=0))
    agent_runs_outputs_package_upload.sync(run_id, client=agent, body=File(payload=BytesIO(package_zip)))
    agent_runs_events_report.sync(run_id, client=agent, body=FinishedEvent(type_="finished"))
    run = runs_get.sync(name, run_id, client=client)
    assert run.status == RunStatus.SUCCEEDED, run
    results = runs_results_get.sync(name, run_id, client=client)
    assert results.parameters.inputs.package == "digits"
    assert results.run_summary.outputs.version == "1.1"


@pytest.fixture(scope="module")
def s3_served(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Server]:
    """The same API on a real SeaweedFS (tests/s3.py), its downloads answered 307 to the bucket."""
    s3: S3Server = request.getfixturevalue("s3_server")
    root = tmp_path_factory.mktemp("sdk-api-s3")
    with pytest.MonkeyPatch.context() as patch:
        settings = {"bootstrap_token": ADMIN_TOKEN, **on_s3(s3, patch)}
        migrated = trainyard_api(root, "migrate", **settings)
        assert migrated.returncode == 0, migrated.stderr
        with serving(root, **settings) as served:
            yield served


def test_a_download_on_s3_follows_the_redirect_when_asked(sdk: ModuleType, s3_served: Server) -> None:
    """docs/clients.md: a generated client made with `follow_redirects=True` gets the file from the
    bucket; without it, the 307 and its `Location`."""
    from trainyard_sdk.api.packages import packages_versions_download, packages_versions_upload
    from trainyard_sdk.api.projects import projects_create
    from trainyard_sdk.models import PackagesVersionsUploadBody, ProjectCreate
    from trainyard_sdk.types import File

    following = sdk.AuthenticatedClient(
        base_url=s3_served.base_url, token=ADMIN_TOKEN, follow_redirects=True, raise_on_unexpected_status=True
    )
    projects_create.sync(client=following, body=ProjectCreate(name="sdk-s3"))
    content = zip_bytes(valid_package(parameters=None))
    body = PackagesVersionsUploadBody(file=File(payload=BytesIO(content), file_name="p.zip"))
    packages_versions_upload.sync("sdk-s3", "p", client=following, body=body)

    got = packages_versions_download.sync("sdk-s3", "p", "1.0", client=following)
    assert isinstance(got, File) and got.payload.read() == content
    plain = sdk.AuthenticatedClient(base_url=s3_served.base_url, token=ADMIN_TOKEN)
    answer = packages_versions_download.sync_detailed("sdk-s3", "p", "1.0", client=plain)
    assert answer.status_code == 307 and "X-Amz-Signature=" in answer.headers["location"]
