"""`trainyard` as a real process against a real `trainyard-api serve`, on SQLite and PostgreSQL:
login and its file, the environment's overrides, --json, problem documents, exit codes, uploads."""

from __future__ import annotations

import json
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.test_cli import Server
from tests.cli.kit import Cli, api_server, cli_for, ok
from tests.conftest import ADMIN_TOKEN, DATABASES
from tests.examples.conftest import PACKAGES

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module", params=DATABASES)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with api_server(tmp_path_factory.mktemp(f"cli-{request.param}"), request.param) as running:
        yield running


@pytest.fixture
def admin(server: Server) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=f"{server.base_url}/api/v1", headers=headers, timeout=30) as client:
        yield client


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return cli_for(tmp_path)


@pytest.fixture
def logged_in(cli: Cli, server: Server) -> Cli:
    ok(cli("login", server.base_url, "--token", stdin=ADMIN_TOKEN + "\n"))
    return cli


def _one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_version_help_and_a_usage_error(cli: Cli) -> None:
    assert ok(cli("--version")).startswith("trainyard ")
    assert "processes" in ok(cli("--help"))
    mistyped = cli("projects", "lst")
    assert mistyped.returncode == 64, mistyped  # not 2: that is a stopped run's
    assert "No such command 'lst'" in mistyped.stderr and mistyped.stdout == ""


def test_shell_completion_knows_the_commands_and_the_projects(logged_in: Cli) -> None:
    ok(logged_in("projects", "create", "completed-name"))

    def complete(line: str) -> list[str]:
        words = line.split(" ")
        env = {"_TRAINYARD_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)}
        return ok(logged_in(**env)).split()

    assert complete("trainyard processes st") == ["start", "stop"]
    assert complete("trainyard templates list -p completed-") == ["completed-name"]


def test_login_with_a_token_saves_it_in_a_file_only_its_owner_reads(cli: Cli, server: Server) -> None:
    result = ok(cli("login", server.base_url + "/api/v1/", "--token", stdin=ADMIN_TOKEN + "\n"))
    assert result.strip() == f"Logged in to {server.base_url} as admin."
    assert ADMIN_TOKEN not in result
    assert stat.S_IMODE(cli.config_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(cli.config_file.parent.stat().st_mode) == 0o700
    saved = json.loads(cli.config_file.read_text())
    assert saved == {"url": server.base_url, "token": ADMIN_TOKEN, "token_kind": "api"}
    me = json.loads(ok(cli("whoami", "--json")))
    assert me["user"]["name"] == "admin" and me["user"]["is_admin"] is True


def test_a_password_login_is_revoked_by_logout(cli: Cli, server: Server, admin: httpx.Client) -> None:
    assert admin.post("/users", json={"name": "alice", "password": PASSWORD}).status_code == 201
    ok(cli("login", server.base_url, "--username", "alice", "--password-stdin", stdin=PASSWORD + "\n"))
    saved = json.loads(cli.config_file.read_text())
    assert saved["token_kind"] == "login"
    whoami = ok(cli("whoami"))
    assert "alice" in whoami and "administrator" not in whoami

    assert ok(cli("logout")).strip() == f"Logged out of {server.base_url}."
    assert "token" not in json.loads(cli.config_file.read_text())
    gone = httpx.get(
        f"{server.base_url}/api/v1/auth/me", headers={"Authorization": f"Bearer {saved['token']}"}
    )
    assert gone.status_code == 401
    after = cli("whoami")
    assert after.returncode == 64 and "not logged in" in _one_error_line(after.stderr)


def test_a_wrong_password_is_one_line_and_saves_nothing(cli: Cli, server: Server) -> None:
    refused = cli("login", server.base_url, "-u", "nobody", "--password-stdin", stdin="wrong\n")
    assert refused.returncode == 3, refused
    assert _one_error_line(refused.stderr).endswith("(invalid_credentials)")
    assert not cli.config_file.exists()


def test_the_environment_overrides_the_file(cli: Cli, server: Server, admin: httpx.Client) -> None:
    assert admin.post("/projects", json={"name": "env-project"}).status_code == 201
    env = {"TRAINYARD_URL": server.base_url, "TRAINYARD_TOKEN": ADMIN_TOKEN}
    # No file at all: the environment is enough.
    names = [p["name"] for p in json.loads(ok(cli("projects", "list", "--json", **env)))]
    assert "env-project" in names and not cli.config_file.exists()
    # A file naming an API that is gone and a revoked token loses to the environment.
    cli.config_file.parent.mkdir(parents=True)
    cli.config_file.write_text(
        json.dumps({"url": "http://127.0.0.1:9", "token": "ty_gone", "project": "none"})
    )
    assert ok(cli("templates", "list", "--json", TRAINYARD_PROJECT="env-project", **env)).strip() == "[]"
    # The file's project is used where the environment names none, and --project beats both.
    missing = cli("templates", "list", **env)
    assert missing.returncode == 3 and "(project_not_found)" in _one_error_line(missing.stderr)
    assert (
        ok(cli("templates", "list", "--json", "-p", "env-project", TRAINYARD_PROJECT="none", **env)) == "[]\n"
    )


def test_a_problem_document_is_one_line_on_stderr(logged_in: Cli, admin: httpx.Client) -> None:
    ok(logged_in("projects", "create", "twice"))
    again = logged_in("projects", "create", "twice")
    assert (again.returncode, again.stdout) == (3, "")
    problem = admin.post("/projects", json={"name": "twice"}).json()
    expected = f"error: {problem['title']}: {problem['detail']} ({problem['code']})"
    assert _one_error_line(again.stderr) == expected

    bad_name = logged_in("projects", "create", "..")
    assert bad_name.returncode == 3 and _one_error_line(bad_name.stderr).endswith(")")
    denied = logged_in("projects", "list", TRAINYARD_TOKEN="ty_not_a_token_at_all")
    assert denied.returncode == 3 and _one_error_line(denied.stderr).endswith("(invalid_token)")


def test_an_unreachable_api_exits_four(cli: Cli) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        result = cli("projects", "list", TRAINYARD_URL=f"http://127.0.0.1:{port}", TRAINYARD_TOKEN="x")
    assert result.returncode == 4 and result.stdout == ""
    assert _one_error_line(result.stderr).startswith(f"error: cannot reach http://127.0.0.1:{port}")


def test_json_is_the_apis_json_and_tables_are_for_people(logged_in: Cli, admin: httpx.Client) -> None:
    made = json.loads(ok(logged_in("projects", "create", "Счета", "-d", "invoices", "--json")))
    assert made == admin.get("/projects/Счета").json()
    ok(logged_in("projects", "use", "Счета"))
    table = ok(logged_in("projects", "list")).splitlines()
    assert table[0].split() == ["NAME", "TEMPLATES", "DESCRIPTION"]
    assert any(line.split() == ["*", "Счета", "0", "invoices"] for line in table), table


def test_hostile_text_cannot_drive_the_terminal(logged_in: Cli, admin: httpx.Client) -> None:
    description = "\x1b[2J\x1b[31mred\u202eevil\nsecond line"
    assert admin.post("/projects", json={"name": "hostile", "description": description}).status_code == 201
    shown = ok(logged_in("projects", "show", "hostile"))
    assert "\x1b" not in shown and "\u202e" not in shown
    assert "\\x1b[2J\\x1b[31mred\\u202eevil\\nsecond line" in shown
    assert json.loads(ok(logged_in("projects", "show", "hostile", "--json")))["description"] == description


def test_an_upload_streams_with_a_byte_progress_bar(logged_in: Cli, admin: httpx.Client) -> None:
    ok(logged_in("projects", "create", "uploads"))
    folder = PACKAGES / "iris-sklearn"
    result = logged_in("packages", "upload", "iris", str(folder), "-p", "uploads")
    assert ok(result).strip() == "Uploaded iris 1.0."
    assert "uploading iris-sklearn" in result.stderr and "100%" in result.stderr, result.stderr
    zipped = admin.get("/projects/uploads/packages/iris/versions/1.0").json()["size"]
    assert f"{zipped / 1000:.1f}/{zipped / 1000:.1f} kB" in result.stderr, (zipped, result.stderr)

    quiet = logged_in("packages", "upload", "iris", str(folder), "-p", "uploads", "--json")
    assert json.loads(ok(quiet))["version"] == "2.0" and "uploading" not in quiet.stderr
    data = logged_in.home / "labels.csv"
    data.write_text("x,label\n1,a\n")
    added = json.loads(
        ok(logged_in("datasets", "upload", "tiny", str(data), "--path", "t", "-p", "uploads", "--json"))
    )
    assert (added["number"], added["file_count"]) == (1, 1)
    listed = json.loads(ok(logged_in("datasets", "show", "tiny", "1", "-p", "uploads", "--json")))
    assert listed == added


def test_process_actions_and_a_delete_that_asks_first(logged_in: Cli, admin: httpx.Client) -> None:
    ok(logged_in("model-types", "create", "classifier-actions"))
    ok(logged_in("projects", "create", "actions"))
    machine = json.loads(ok(logged_in("machines", "create", "box", "--address", "10.0.0.7", "--json")))
    assert machine["agent_token"].startswith("ty_")
    ok(
        logged_in(
            "templates",
            "create",
            "t",
            "--model-type",
            "classifier-actions",
            "--param",
            "epochs=3",
            "-p",
            "actions",
        )
    )
    created = json.loads(
        ok(logged_in("processes", "create", "-t", "t", "-m", "box", "-p", "actions", "--json"))
    )
    assert created["status"] == "created"
    pid = created["id"]
    assert ok(logged_in("processes", "disable", pid, "-p", "actions")).strip() == "Disabled."
    refused = logged_in("processes", "start", pid, "-p", "actions")
    assert refused.returncode == 3 and "disabled" in _one_error_line(refused.stderr)
    ok(logged_in("processes", "enable", pid, "-p", "actions"))

    asked = logged_in("processes", "delete", pid, "-p", "actions")
    assert asked.returncode == 64 and "--yes" in _one_error_line(asked.stderr)
    assert admin.get(f"/projects/actions/processes/{pid}").status_code == 200
    ok(logged_in("processes", "delete", pid, "--yes", "-p", "actions"))
    gone = logged_in("processes", "show", pid, "-p", "actions")
    assert gone.returncode == 3 and "(process_not_found)" in _one_error_line(gone.stderr)
