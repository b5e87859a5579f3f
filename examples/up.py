"""Everything on this machine, the way `make up` runs it: the API, one agent, the demo.

    python examples/up.py [--no-demo] [--exit-after-demo] [--port P] [--host H]

1. The data dir: `TRAINYARD_DATA_DIR`, default `./data`. The administrator's token is
   `TRAINYARD_BOOTSTRAP_TOKEN`; when unset, the one stored in `DATA/bootstrap_token` (mode 600),
   generated and printed on the first start.
2. `trainyard-api migrate`, then `trainyard-api serve` on H:P (127.0.0.1:8000; `PORT` and
   `TRAINYARD_HOST` too), logging to `DATA/logs/api.log`.
3. The machine `local`, registered if missing; its agent token in `DATA/agent_token` (mode 600). A
   machine whose token file was lost gets a new token (rotate-token).
4. `trainyard-agent run` with that token file and its work dir in `DATA/agent`, logging to
   `DATA/logs/agent.log`. Packages never run as the agent's user nor as root (`run_settings`): as
   root, as the unprivileged `trainyard-run` (made if missing) in a bubblewrap sandbox; otherwise in
   the sandbox as you. Without bubblewrap it refuses, saying how to go on.
5. The console's password for `admin` (who has a token, not a password): generated on the first start,
   set through the API and kept in `DATA/admin_password` (mode 600).
6. `examples/demo.py` (not with `--no-demo`), then either waits for Ctrl-C (or SIGTERM) and stops the
   agent and the API, or with `--exit-after-demo` stops them at once and exits with the demo's status.

Stopping the agent with SIGTERM leaves a run it has in hand going; the next start re-adopts it.
"""

from __future__ import annotations

import argparse
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

EXAMPLES = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
MACHINE = "local"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
MIN_TOKEN_CHARS = 32


class UpError(Exception):
    """Something stops the stack from coming up; the message says what to do."""


def _command(name: str, module: str) -> list[str]:
    script = BIN / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def _write_secret(path: Path, text: str) -> None:
    """`text` into `path`, readable by its owner only from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text + "\n")
    os.chmod(path, 0o600)


def admin_token(data_dir: Path) -> str:
    given = os.environ.get("TRAINYARD_BOOTSTRAP_TOKEN")
    if given:
        return given
    stored = data_dir / "bootstrap_token"
    if stored.exists():
        return stored.read_text().strip()
    token = secrets.token_urlsafe(MIN_TOKEN_CHARS)
    _write_secret(stored, token)
    print(f"the administrator `admin`'s token (kept in {stored}, shown this once):\n\n    {token}\n")
    return token


class Child:
    """A long-running program of the stack: its own session (Ctrl-C reaches us, and we stop it in
    order), output appended to a log file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with log.open("ab") as sink:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"{self.name} did not stop within {STOP_TIMEOUT:.0f} s: killed", file=sys.stderr)
            self.process.kill()
            self.process.wait()


def wait_healthy(api: Child, url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not api.alive():
            raise UpError(f"the API exited ({api.process.returncode}); {api.log}:\n{api.tail()}")
        with suppress(httpx.TransportError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise UpError(f"the API did not answer {url}/healthz in {START_TIMEOUT:.0f} s; see {api.log}")


def machine_token(client: httpx.Client, token_file: Path) -> None:
    """Register `local` or reuse it; make sure `token_file` holds a token the API accepts."""
    found = client.get(f"/machines/{MACHINE}")
    if found.status_code == 401:
        raise UpError(
            "the API refused the administrator's token: this data dir's database was made with another "
            "TRAINYARD_BOOTSTRAP_TOKEN (set that one, or use a fresh TRAINYARD_DATA_DIR)"
        )
    if found.status_code == 404:
        body = {"name": MACHINE, "address": "127.0.0.1", "description": "this machine (make up)"}
        response = client.post("/machines", json=body)
    elif found.status_code == 200 and token_file.exists():
        return
    elif found.status_code == 200:
        response = client.post(f"/machines/{MACHINE}/rotate-token")
    else:
        raise UpError(f"GET /machines/{MACHINE}: {found.status_code} {found.text[:300]}")
    if response.status_code not in (200, 201):
        raise UpError(f"{response.request.url.path}: {response.status_code} {response.text[:300]}")
    _write_secret(token_file, response.json()["agent_token"])


# What a person may set for the agent's runs; every other TRAINYARD_ variable stays the API's.
RUN_SETTINGS = (
    "TRAINYARD_RUN_AS",
    "TRAINYARD_RUN_PYTHON",
    "TRAINYARD_SANDBOX",
    "TRAINYARD_SANDBOX_NETWORK",
    "TRAINYARD_ALLOW_UNSAFE_RUN_USER",
)
RUN_USER = "trainyard-run"


def agent_env(url: str, data_dir: Path, token_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINYARD_")}
    env.update(
        TRAINYARD_API_URL=url,
        TRAINYARD_AGENT_TOKEN_FILE=str(token_file),
        TRAINYARD_AGENT_WORK_DIR=str(data_dir / "agent"),
    )
    env.update(run_settings())
    return env


def run_settings() -> dict[str, str]:
    """Packages never run as the agent's user nor as root: as root, `make up` runs them as the
    unprivileged `trainyard-run` (made if missing) in a bubblewrap sandbox, which also shows that user
    this machine's Python wherever it lives; as anyone else, in the sandbox as yourself, where they
    see neither the agent's processes nor its files. Settings of your own are kept as they are."""
    chosen = {name: os.environ[name] for name in RUN_SETTINGS if os.environ.get(name)}
    if chosen:
        return chosen
    if shutil.which("bwrap") is None:
        who = "root" if os.geteuid() == 0 else "you"
        raise UpError(
            "the demo's packages run in a bubblewrap sandbox, and bubblewrap is not installed: "
            "`apt-get install bubblewrap` (Debian, Ubuntu), or accept that they run as "
            f"{who}, able to read the agent's token, with TRAINYARD_ALLOW_UNSAFE_RUN_USER=true"
        )
    if os.geteuid() != 0:
        return {"TRAINYARD_SANDBOX": "bwrap"}
    try:
        pwd.getpwnam(RUN_USER)
    except KeyError:
        command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RUN_USER]
        made = subprocess.run(command, capture_output=True, text=True, check=False)
        if made.returncode != 0:
            raise UpError(f"could not make the user {RUN_USER} for packages: {made.stderr.strip()}") from None
        print(f"made the unprivileged user {RUN_USER}, which the demo's packages run as")
    return {"TRAINYARD_RUN_AS": RUN_USER, "TRAINYARD_SANDBOX": "bwrap"}


@contextmanager
def stack(data_dir: Path, host: str, port: int, token: str) -> Iterator[tuple[str, list[Child]]]:
    """The API and the agent, running: the URL, and the two (agent first). Both stopped on the way
    out, the agent first."""
    logs = data_dir / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)  # the programs' logs are for the person who runs them
    os.chmod(logs, 0o700)
    env = dict(os.environ, TRAINYARD_DATA_DIR=str(data_dir), TRAINYARD_BOOTSTRAP_TOKEN=token)
    with (logs / "api.log").open("ab") as sink:
        migrate = [*_command("trainyard-api", "api.cli"), "migrate"]
        migrated = subprocess.run(migrate, env=env, stdout=sink, stderr=subprocess.STDOUT, check=False)
    if migrated.returncode != 0:
        raise UpError(f"trainyard-api migrate failed ({migrated.returncode}); see {logs / 'api.log'}")
    print(f"the database schema in {data_dir} is current")
    serve = [*_command("trainyard-api", "api.cli"), "serve", "--host", host, "--port", str(port)]
    children = [Child("the API", serve, env, logs / "api.log")]
    try:
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
        wait_healthy(children[0], url)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"{url}/api/v1", headers=headers, timeout=30) as client:
            token_file = data_dir / "agent_token"
            machine_token(client, token_file)
        agent_command = [*_command("trainyard-agent", "agent.cli"), "run"]
        agent = Child("the agent", agent_command, agent_env(url, data_dir, token_file), logs / "agent.log")
        children.insert(0, agent)
        print(f"API on {url} (log {children[1].log}); agent on the machine `{MACHINE}` (log {agent.log})")
        yield url, children
    finally:
        for child in children:
            child.stop()


def run_demo(command: list[str], env: dict[str, str], children: list[Child]) -> int:
    """The demo's exit code; if the API or the agent dies meanwhile, the demo is stopped and fails."""
    demo = subprocess.Popen(command, env=env)
    try:
        while demo.poll() is None:
            dead = [child for child in children if not child.alive()]
            if dead:
                demo.terminate()
                demo.wait()
                raise UpError(
                    f"{dead[0].name} exited ({dead[0].process.returncode}); {dead[0].log}:\n{dead[0].tail()}"
                )
            time.sleep(0.2)
    finally:
        if demo.poll() is None:
            demo.terminate()
            demo.wait()
    return demo.returncode


def admin_password(url: str, token: str, data_dir: Path) -> Path | None:
    """The file holding `admin`'s console password, set on the first start; None if it could not be set
    (the token is not `admin`'s, say): the console then needs a password set by hand."""
    stored = data_dir / "admin_password"
    if stored.exists():
        return stored
    password = secrets.token_urlsafe(18)
    _write_secret(stored, password)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=f"{url}/api/v1", headers=headers, timeout=30) as client:
        response = client.patch("/users/admin", json={"password": password})
    if response.status_code != 200:
        stored.unlink()
        print(f"up: could not set admin's console password ({response.status_code}): {response.text[:200]}")
        return None
    print(f"the administrator `admin`'s console password (kept in {stored}, shown this once):")
    print(f"\n    {password}\n")
    return stored


def _print_urls(url: str) -> None:
    print(f"\nAPI docs (OpenAPI): {url}/docs\nPrometheus metrics:  {url}/metrics")


def _print_console(url: str, password_file: Path | None) -> None:
    how = (
        f"sign in as `admin` with the password in {password_file}"
        if password_file is not None
        else 'set a password for `admin` first: PATCH /api/v1/users/admin {"password": ...}'
    )
    print(f"\nThe console: {url}/ui/ ({how})")


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-demo", action="store_true", help="start the API and the agent only")
    parser.add_argument("--exit-after-demo", action="store_true", help="stop everything after the demo")
    parser.add_argument("--host", default=os.environ.get("TRAINYARD_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8000))
    args = parser.parse_args(argv)
    data_dir = Path(os.environ.get("TRAINYARD_DATA_DIR") or "data").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _on_sigterm)
    status = 0
    try:
        token = admin_token(data_dir)
        with stack(data_dir, args.host, args.port, token) as (url, children):
            password_file = admin_password(url, token, data_dir)
            if not args.no_demo:
                demo = [sys.executable, str(EXAMPLES / "demo.py"), "--api", url, "--machine", MACHINE]
                status = run_demo(demo, dict(os.environ, TRAINYARD_TOKEN=token), children)
            if args.no_demo or status != 0:  # else the demo printed them
                _print_urls(url)
            _print_console(url, password_file)
            if args.exit_after_demo:
                print("stopping the agent and the API (--exit-after-demo)")
                return status
            print("running; Ctrl-C stops the agent and the API")
            while all(child.alive() for child in children):
                time.sleep(1)
            dead = next(child for child in children if not child.alive())
            print(f"up: {dead.name} exited ({dead.process.returncode}); {dead.log}:\n{dead.tail()}")
            return 1
    except UpError as error:
        print(f"up: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping the agent and the API")
    return status


if __name__ == "__main__":
    sys.exit(main())
