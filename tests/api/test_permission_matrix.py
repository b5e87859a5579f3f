"""The permission matrix: every operation x every built-in role x own project / other project, agent
tokens of their own machine and of another, and revoked and expired tokens.

The table below is written by hand: it says what each operation needs. An operation missing from it
fails the test, so a new route cannot ship without someone deciding who may call it.

A request is "let through" when the answer is neither 401 nor 403 nor the 404 of a project the caller
cannot see: what happens next (a 404 for an id that does not exist, a 422 for an empty body) is the
route's own business. Ids in paths are random unless a test needs a real one, so that the walk
changes almost nothing.
"""

import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient, Response

from api.access.catalogue import BUILTIN_ROLES
from api.core.openapi import route_permissions
from api.core.security import Permission as P
from api.models.base import utcnow
from tests.api.access_kit import make_user, member_token, token_for
from tests.api.world import BASE_PACKAGE, agent_client, make_world, ok, problem, start_run, take_commands

PUBLIC = "public"  # no token at all
SELF = "any signed-in user"  # for themselves: own tokens, password, identity
AGENT = "agent token"  # only the machine's own commands, runs and downloads
METRICS = "TRAINYARD_METRICS_TOKEN"  # /metrics: public unless that setting is set; no role opens it

NEEDS: dict[str, P | str] = {
    # operations
    "health_live": PUBLIC,
    "health_ready": PUBLIC,
    "operations_metrics": METRICS,
    "auth_login": PUBLIC,
    # self-service
    "auth_me": SELF,
    "auth_logout": SELF,
    "auth_password_change": SELF,
    "permissions_list": SELF,
    "tokens_create": SELF,
    "tokens_list": SELF,
    "tokens_get": SELF,
    "tokens_revoke": SELF,
    # people and roles
    "users_create": P.USERS_ADMIN,
    "users_list": P.USERS_VIEW,
    "users_get": P.USERS_VIEW,
    "users_update": P.USERS_ADMIN,
    "users_delete": P.USERS_ADMIN,
    "users_tokens_create": P.USERS_ADMIN,
    "users_tokens_list": P.USERS_VIEW,
    "users_tokens_revoke": P.USERS_ADMIN,
    "roles_create": P.USERS_ADMIN,
    "roles_list": P.USERS_VIEW,
    "roles_get": P.USERS_VIEW,
    "roles_update": P.USERS_ADMIN,
    "roles_delete": P.USERS_ADMIN,
    "audit_events_list": P.AUDIT_VIEW,
    # projects and their members
    "projects_create": P.PROJECTS_ADMIN,
    "projects_list": P.PROJECTS_VIEW,
    "projects_get": P.PROJECTS_VIEW,
    "projects_update": P.PROJECTS_ADMIN,
    "projects_delete": P.PROJECTS_ADMIN,
    "members_list": P.PROJECTS_VIEW,
    "members_set": P.PROJECTS_ADMIN,
    "members_delete": P.PROJECTS_ADMIN,
    # the installation's lists
    "model_types_create": P.MODEL_TYPES_ADMIN,
    "model_types_list": P.MODEL_TYPES_VIEW,
    "base_packages_list": P.MODEL_TYPES_VIEW,
    "model_types_get": P.MODEL_TYPES_VIEW,
    "model_types_update": P.MODEL_TYPES_ADMIN,
    "model_types_delete": P.MODEL_TYPES_ADMIN,
    "machines_create": P.MACHINES_ADMIN,
    "machines_list": P.MACHINES_VIEW,
    "machines_get": P.MACHINES_VIEW,
    "machines_update": P.MACHINES_ADMIN,
    "machines_delete": P.MACHINES_ADMIN,
    "machines_enable": P.MACHINES_ADMIN,
    "machines_disable": P.MACHINES_ADMIN,
    "machines_rotate_token": P.MACHINES_ADMIN,
    "machines_revoke_token": P.MACHINES_ADMIN,
    # templates
    "templates_create": P.TEMPLATES_CREATE,
    "templates_list": P.TEMPLATES_VIEW,
    "templates_get": P.TEMPLATES_VIEW,
    "templates_update": P.TEMPLATES_EDIT,
    "templates_delete": P.TEMPLATES_DELETE,
    # processes: Primo's actions
    "processes_create": P.PROCESSES_CREATE,
    "templates_processes_list": P.PROCESSES_VIEW,
    "processes_list": P.PROCESSES_VIEW,
    "processes_get": P.PROCESSES_VIEW,
    "processes_events_list": P.PROCESSES_VIEW,
    "processes_start": P.PROCESSES_MANAGE,
    "processes_stop": P.PROCESSES_MANAGE,
    "processes_restart": P.PROCESSES_MANAGE,
    "processes_enable": P.PROCESSES_MANAGE,
    "processes_disable": P.PROCESSES_MANAGE,
    "processes_delete": P.PROCESSES_DELETE,
    "processes_schedule_put": P.PROCESSES_MANAGE,
    "processes_schedule_get": P.PROCESSES_VIEW,
    "processes_schedule_delete": P.PROCESSES_MANAGE,
    # webhooks: a project's administrators only, reads included (their URLs may hold credentials)
    "webhooks_create": P.PROJECTS_ADMIN,
    "webhooks_list": P.PROJECTS_ADMIN,
    "webhooks_get": P.PROJECTS_ADMIN,
    "webhooks_delete": P.PROJECTS_ADMIN,
    "webhooks_deliveries_list": P.PROJECTS_ADMIN,
    "webhooks_deliveries_redeliver": P.PROJECTS_ADMIN,
    # runs: metrics, logs, artifacts, evaluation
    "processes_runs_list": P.RUNS_VIEW,
    "runs_list": P.RUNS_VIEW,
    "runs_get": P.RUNS_VIEW,
    "runs_events_list": P.RUNS_VIEW,
    "runs_results_get": P.RUNS_VIEW,
    "runs_artifacts_list": P.RUNS_VIEW,
    "runs_artifacts_download": P.RUNS_VIEW,
    "runs_evaluation_get": P.RUNS_VIEW,
    "runs_evaluation_samples_list": P.RUNS_VIEW,
    "runs_metrics_get": P.RUNS_VIEW,
    "runs_logs_get": P.RUNS_VIEW,
    # packages and models
    "packages_versions_upload": P.PACKAGES_UPLOAD,
    "packages_list": P.PACKAGES_VIEW,
    "packages_get": P.PACKAGES_VIEW,
    "packages_delete": P.PACKAGES_DELETE,
    "packages_versions_list": P.PACKAGES_VIEW,
    "packages_versions_get": P.PACKAGES_VIEW,
    "packages_versions_download": P.PACKAGES_VIEW,
    "packages_versions_delete": P.PACKAGES_DELETE,
    "packages_versions_lineage": P.PACKAGES_VIEW,
    "models_list": P.MODELS_VIEW,
    # datasets
    "datasets_versions_upload": P.DATASETS_UPLOAD,
    "datasets_list": P.DATASETS_VIEW,
    "datasets_get": P.DATASETS_VIEW,
    "datasets_delete": P.DATASETS_DELETE,
    "datasets_versions_list": P.DATASETS_VIEW,
    "datasets_versions_get": P.DATASETS_VIEW,
    "datasets_versions_delete": P.DATASETS_DELETE,
    "datasets_files_list": P.DATASETS_VIEW,
    "datasets_files_download": P.DATASETS_VIEW,
    "datasets_versions_download": P.DATASETS_VIEW,
    # prediction services: the built-in viewer reads them but may not predict (issue 15)
    "services_create": P.SERVICES_MANAGE,
    "services_list": P.SERVICES_VIEW,
    "services_get": P.SERVICES_VIEW,
    "services_events_list": P.SERVICES_VIEW,
    "services_start": P.SERVICES_MANAGE,
    "services_stop": P.SERVICES_MANAGE,
    "services_delete": P.SERVICES_MANAGE,
    "services_endpoint_get": P.SERVICES_PREDICT,
    "services_predict": P.SERVICES_PREDICT,
    # the agent protocol
    "agent_hello": AGENT,
    "agent_commands_poll": AGENT,
    "agent_commands_ack": AGENT,
    "agent_runs_events_report": AGENT,
    "agent_runs_telemetry_push": AGENT,
    "agent_runs_package_download": AGENT,
    "agent_runs_dataset_manifest": AGENT,
    "agent_runs_test_dataset_manifest": AGENT,
    "agent_runs_blob_download": AGENT,
    "agent_runs_outputs_package_upload": AGENT,
    "agent_runs_outputs_artifact_upload": AGENT,
    "agent_runs_outputs_snapshot_upload": AGENT,
    "agent_runs_outputs_evaluation_upload": AGENT,
    "agent_runs_outputs_checkpoint_upload": AGENT,
    "agent_runs_checkpoint_download": AGENT,
    "agent_runs_outputs_upload_ticket": AGENT,
    "agent_services_events_report": AGENT,
    "agent_services_package_download": AGENT,
}

ROLES = ["viewer", "trainer", "project-admin", "administrator"]
# What an agent route answers for another machine's run, command or service: as if it did not exist.
NOT_THEIRS = ("run_not_found", "command_not_found", "service_not_found")


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str
    path: str  # with {placeholders}, from /api/v1 (or the root for the operations)


def all_operations(app: FastAPI) -> list[Operation]:
    """Every operation of the OpenAPI document, with its full path."""
    methods = {"get", "post", "put", "patch", "delete"}
    return [
        Operation(operation["operationId"], method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        for method, operation in item.items()
        if method in methods
    ]


def test_every_operation_is_in_the_table_and_declares_what_it_says(app_without_database: FastAPI) -> None:
    operations = all_operations(app_without_database)
    missing = sorted({o.operation_id for o in operations} - set(NEEDS))
    assert not missing, f"add these to NEEDS, with the permission each needs: {missing}"
    stale = sorted(set(NEEDS) - {o.operation_id for o in operations})
    assert not stale, f"no longer routes: {stale}"
    declared = route_permissions(app_without_database)
    for operation in operations:
        need = NEEDS[operation.operation_id]
        expected = need if isinstance(need, P) else None
        assert declared[operation.operation_id] == expected, operation
        assert operation.path.startswith("/api/v1/agent/") == (need == AGENT), operation


@pytest.fixture(scope="module")
def app_without_database(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    from api.core.config import Settings
    from api.main import create_app

    data_dir = tmp_path_factory.mktemp("matrix")
    return create_app(Settings(data_dir=data_dir, database_url=f"sqlite:///{data_dir}/unused.db"))


@dataclass
class Scene:
    own: str
    other: str
    tokens: dict[str, str]  # who -> token
    agent_own: str
    agent_other: str
    own_run: str
    other_run: str
    own_command: str
    other_command: str
    own_service: str
    other_service: str


async def build_scene(client: AsyncClient, app: FastAPI) -> Scene:
    own = await make_world(client, "-own")
    other = await make_world(client, "-other")
    tokens = {role: await member_token(client, own.project, f"u-{role}", role) for role in ROLES}
    await make_user(client, "outsider")
    tokens["outsider"] = await token_for(client, "outsider")
    own_run = (await start_run(client, own))["id"]
    other_run = (await start_run(client, other))["id"]
    services = {}
    for name, world in (("own", own), ("other", other)):
        body = {"name": "svc", "package": BASE_PACKAGE, "version": "1.0", "machine": world.machine}
        services[name] = ok(await client.post(f"/projects/{world.project}/services", json=body), 201)["id"]
    commands = {}
    for name, token in (("own", own.agent_token), ("other", other.agent_token)):
        async with agent_client(app, token) as agent:
            commands[name] = (await take_commands(agent))[0]["id"]
    return Scene(
        own.project,
        other.project,
        tokens,
        own.agent_token,
        other.agent_token,
        own_run,
        other_run,
        commands["own"],
        commands["other"],
        services["own"],
        services["other"],
    )


def fill(path: str, project: str, **real: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1).split(":")[0]
        if name == "project":
            return project
        if name in real:
            return real[name]
        if name.endswith("_id"):
            return str(uuid.uuid4())
        if name == "sha256":
            return "0" * 64
        if name == "version":
            return "1"
        return "nothing-here"

    return re.sub(r"\{([^}]+)\}", value, path)


# Valid bodies where the body is checked before the route looks the run up, so that what is tested is
# the run's machine, not the body.
BODIES: dict[str, dict[str, Any]] = {
    "agent_hello": {"agent_version": "0.1.0"},
    "agent_runs_events_report": {"type": "stage", "stage": "matrix"},
    "agent_runs_telemetry_push": {"seq": 1},
    "agent_runs_outputs_snapshot_upload": {"files": []},
    "agent_runs_outputs_upload_ticket": {"sha256": "0" * 64, "size": 1},
    "agent_services_events_report": {"type": "starting"},
}


async def call(api: AsyncClient, operation: Operation, path: str) -> Response:
    body: dict[str, Any] | None = None
    if operation.method in {"POST", "PUT", "PATCH"}:
        body = BODIES.get(operation.operation_id, {})
    return await api.request(operation.method, path, json=body)


def let_through(response: Response) -> bool:
    if response.status_code in (401, 403):
        return False
    return not (response.status_code == 404 and response.json().get("code") == "project_not_found")


def client_for(app: FastAPI, token: str) -> AsyncClient:
    return AsyncClient(
        transport=ASGITransport(app=app),
        base_url="http://trainyard.test",
        headers={"Authorization": f"Bearer {token}"},
    )


# PostgreSQL walks a representative slice; SQLite the whole matrix.
PG_ROLES = {"viewer", "project-admin", "outsider"}
PG_OPERATIONS = {
    "projects_list",
    "projects_get",
    "members_set",
    "templates_create",
    "processes_start",
    "processes_delete",
    "runs_get",
    "packages_versions_upload",
    "datasets_versions_download",
    "machines_create",
    "users_list",
    "tokens_list",
    "agent_commands_poll",
}


async def test_the_matrix(client: AsyncClient, app: FastAPI, is_postgres: bool) -> None:
    scene = await build_scene(client, app)
    operations = [
        o
        for o in all_operations(app)
        # Logging out would end the walk for that token: tests/api/test_access.py covers it.
        if NEEDS[o.operation_id] not in (PUBLIC, METRICS) and o.operation_id != "auth_logout"
    ]
    if is_postgres:
        operations = [o for o in operations if o.operation_id in PG_OPERATIONS]
    failures: list[str] = []

    def expect(who: str, operation: Operation, where: str, response: Response, through: bool) -> None:
        if let_through(response) != through:
            failures.append(
                f"{who} {operation.operation_id} ({where}): {response.status_code} "
                f"{response.text[:160]}, expected {'through' if through else 'refused'}"
            )

    # The built-in roles, held in the own project only, and a user with no role anywhere.
    for who, token in scene.tokens.items():
        if is_postgres and who not in PG_ROLES:
            continue
        held = BUILTIN_ROLES[who][1] if who in BUILTIN_ROLES else frozenset()
        async with client_for(app, token) as api:
            for operation in operations:
                need = NEEDS[operation.operation_id]
                if need == AGENT:
                    path = fill(operation.path, scene.own, run_id=scene.own_run)
                    response = await call(api, operation, path)
                    problem(response, 403, "agent_token_required")
                    continue
                if "{project}" not in operation.path:
                    response = await call(api, operation, fill(operation.path, scene.own))
                    expect(who, operation, "global", response, need == SELF or need in held)
                    continue
                own = await call(api, operation, fill(operation.path, scene.own))
                expect(who, operation, "own project", own, need in held)
                if need not in held and own.status_code == 403:
                    assert own.json()["code"] == "permission_denied", own.text
                other = await call(api, operation, fill(operation.path, scene.other))
                # Not 403: the other project must look exactly like one that does not exist.
                problem(other, 404, "project_not_found")
                nowhere = await call(api, operation, fill(operation.path, "no-such-project"))
                assert other.json()["detail"].replace(scene.other, "X") == nowhere.json()["detail"].replace(
                    "no-such-project", "X"
                )

    # Agent tokens: refused on every user route; on the agent's routes, only their own machine's work.
    for operation in operations:
        need = NEEDS[operation.operation_id]
        if need != AGENT:
            async with client_for(app, scene.agent_own) as api:
                problem(
                    await call(api, operation, fill(operation.path, scene.own)),
                    403,
                    "agent_token_not_allowed",
                )
            continue
        async with client_for(app, scene.agent_own) as api:
            mine = fill(
                operation.path,
                scene.own,
                run_id=scene.own_run,
                command_id=scene.own_command,
                service_id=scene.own_service,
            )
            response = await call(api, operation, mine)
            expect("own agent", operation, "own run", response, True)
            assert not (response.status_code == 404 and response.json()["code"] in NOT_THEIRS), (
                operation,
                response.text,
            )
            theirs = fill(
                operation.path,
                scene.own,
                run_id=scene.other_run,
                command_id=scene.other_command,
                service_id=scene.other_service,
            )
            if theirs != mine:
                response = await call(api, operation, theirs)
                assert response.status_code == 404, (operation, response.text)
                assert response.json()["code"] in NOT_THEIRS, (
                    operation,
                    response.text,
                )

    assert not failures, "\n".join(failures)


async def test_revoked_and_expired_tokens_open_nothing(
    client: AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch, is_postgres: bool
) -> None:
    world = await make_world(client)
    revoked = await member_token(client, world.project, "revoked", "administrator")
    expiring = ok(
        await client.post(
            "/users/revoked/tokens",
            json={"name": "expiring", "expires_at": (utcnow() + timedelta(hours=1)).isoformat()},
        ),
        201,
    )["token"]
    tokens = ok(await client.get("/users/revoked/tokens"))["items"]
    first = next(t for t in tokens if t["name"] == "t")
    assert (await client.delete(f"/users/revoked/tokens/{first['id']}")).status_code == 204
    ok(await client.post(f"/machines/{world.machine}/revoke-token"))
    async with client_for(app, expiring) as api:
        ok(await api.get("/api/v1/auth/me"))  # good until it expires
    monkeypatch.setattr("api.core.security.utcnow", lambda: utcnow() + timedelta(hours=2))

    operations = [o for o in all_operations(app) if NEEDS[o.operation_id] not in (PUBLIC, METRICS)]
    if is_postgres:
        operations = [o for o in operations if o.operation_id in PG_OPERATIONS]
    for token in (revoked, expiring, world.agent_token):
        async with client_for(app, token) as api:
            for operation in operations:
                path = fill(operation.path, world.project)
                problem(await call(api, operation, path), 401, "invalid_token")
