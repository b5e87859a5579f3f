"""`trainyard login`, `logout`, `whoami`: where the API is and who the command acts as."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from cli import config, output
from cli.client import Api, segment
from cli.errors import ApiError, UsageProblem
from cli.options import JsonOpt, ProjectOpt, api


def _secret(prompt: str, from_stdin: bool) -> str:
    """A password or token: the first line of stdin when asked (scripts), else a hidden prompt."""
    if from_stdin or not sys.stdin.isatty():
        value = sys.stdin.readline().strip()
    else:
        value = str(typer.prompt(prompt, hide_input=True)).strip()
    if not value:
        raise UsageProblem(f"no {prompt.lower()} given")
    return value


def login(
    url: Annotated[
        str | None,
        typer.Argument(
            help="The API's URL, e.g. http://127.0.0.1:8000 (default: TRAINYARD_URL, the saved one)."
        ),
    ] = None,
    username: Annotated[
        str | None, typer.Option("--username", "-u", help="Asked for when not given.")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin's first line.")
    ] = False,
    token: Annotated[
        bool,
        typer.Option(
            "--token",
            help="Log in with an API token instead (a bot's), read from stdin or a hidden prompt: "
            "never on the command line, where any process may read it.",
        ),
    ] = False,
    project: ProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Log in to a Trainyard API and save the URL, the token and a default project (mode 0600)."""
    saved = config.load()
    given = url or config.settings().url or saved.url
    if not given:
        given = str(typer.prompt("API URL"))
    base = config.normalise_url(given)
    if token:
        secret, kind = _secret("Token", password_stdin or not sys.stdin.isatty()), "api"
    else:
        name = username or str(typer.prompt("Username"))
        password = _secret("Password", password_stdin)
        with Api(base, None) as anonymous:
            reply = anonymous.post("/auth/login", {"username": name, "password": password})
        secret, kind = reply["token"], "login"
    with Api(base, secret) as api:
        me = api.get("/auth/me")
        if project:
            project = api.get(f"/projects/{segment(project)}")["name"]
    if project is None and saved.url == base:
        project = saved.project  # logging in again to the same API keeps its default project
    path = config.save(config.Config(url=base, token=secret, token_kind=kind, project=project))
    if as_json:
        output.print_json(me)
        return
    user = me["user"]
    output.out.print(output.text(f"Logged in to {base} as {user['name']}."))
    output.note(f"token saved in {path}" + (f"; default project {project}" if project else ""))


def logout(as_json: JsonOpt = False) -> None:
    """Forget the saved token; a token this command's login made is revoked on the API too."""
    saved = config.load()
    revoked = False
    if saved.url and saved.token and saved.token_kind == "login":
        with Api(saved.url, saved.token) as api:
            try:
                api.post("/auth/logout")
                revoked = True
            except ApiError as error:
                if error.status != 401:  # an expired or revoked token is logged out already
                    raise
    if saved.token:
        config.save(config.Config(url=saved.url, project=saved.project))
    if as_json:
        output.print_json({"url": saved.url, "logged_out": saved.token is not None, "revoked": revoked})
        return
    if saved.token:
        output.out.print(output.text(f"Logged out of {saved.url}."))
    else:
        output.note("not logged in")
    if config.settings().token:
        output.note(f"{config.TOKEN_VARIABLE} is set: commands still use it")


def whoami(as_json: JsonOpt = False) -> None:
    """Who the token acts as, on which API, with which default project."""
    found = config.settings()
    with api() as client:
        me: dict[str, Any] = client.get("/auth/me")
    if as_json:
        output.print_json(me)
        return
    user, token = me["user"], me.get("token")
    output.fields(
        [
            ("user", user["name"] + (" (administrator)" if user["is_admin"] else "")),
            ("name", user["display_name"]),
            ("api", found.url),
            ("token", f"{token['kind']} {token['name']}".strip() if token else "bootstrap"),
            ("expires", output.when(token.get("expires_at")) if token else ""),
            ("project", found.project or "(none: `trainyard projects use NAME`)"),
            ("projects", ", ".join(f"{p['project']} ({p['role']})" for p in me["projects"])),
        ]
    )
