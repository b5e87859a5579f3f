"""The agent's one settings object, read from `TRAINYARD_*` variables and validated at start-up.

Nothing else in `agent/` reads the environment. The agent token comes from `TRAINYARD_AGENT_TOKEN`
or from the file named by `TRAINYARD_AGENT_TOKEN_FILE`, never from a command line.
"""

import ipaddress
import os
import pwd
import re
import stat
import sys
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.protocol import MAX_POLL_WAIT_SECONDS

ROOT_WORK_DIR = Path("/var/lib/trainyard-agent")
SLURM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def _is_root() -> bool:
    return os.geteuid() == 0


def default_work_dir() -> Path:
    """`/var/lib/trainyard-agent` for root, else `~/.local/share/trainyard-agent`."""
    if _is_root():
        return ROOT_WORK_DIR
    return Path.home() / ".local" / "share" / "trainyard-agent"


def read_token_file(path: Path) -> str:
    """The token in `path`, stripped; refused when the file is open to group or others."""
    variable = "TRAINYARD_AGENT_TOKEN_FILE"
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{variable} ({path}) is not a regular file")
        if mode & 0o077:
            raise ValueError(
                f"{variable} ({path}) has mode {stat.S_IMODE(mode):04o}: it must not be readable or "
                f"writable by group or others (chmod 600 {path})"
            )
        token = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ValueError(f"{variable} ({path}) cannot be read: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{variable} ({path}) is not UTF-8 text") from None
    if not token:
        raise ValueError(f"{variable} ({path}) is empty")
    return token


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINYARD_", extra="ignore")

    api_url: str = Field(min_length=1, description="The API's root URL, e.g. https://trainyard.example.")
    agent_token: SecretStr | None = None
    agent_token_file: Path | None = None
    agent_work_dir: Path = Field(default_factory=default_work_dir)
    stop_grace: float = Field(default=30.0, gt=0, description="Seconds from SIGTERM to SIGKILL.")
    run_as: str | None = Field(default=None, description="The user packages run as (required as root).")
    run_python: str = Field(
        default=sys.executable,
        min_length=1,
        description="The machine's Python for runs without requirements.txt (readable by TRAINYARD_RUN_AS).",
    )
    allow_unsafe_run_user: bool = Field(
        default=False,
        description="Let packages run as root or as the agent's own user without a sandbox: they can then "
        "read the agent's token. Only for a disposable machine or container.",
    )
    sandbox: Literal["none", "bwrap"] = Field(
        default="none", description="bwrap: each run in a bubblewrap sandbox (agent/sandbox.py)."
    )
    sandbox_network: bool = Field(default=False, description="Whether a sandboxed run may use the network.")
    run_memory_bytes: int | None = Field(default=None, ge=64 * 1024 * 1024, description="RLIMIT_AS of a run.")
    run_cpu_seconds: int | None = Field(default=None, ge=1, description="RLIMIT_CPU of each run process.")
    run_max_processes: int | None = Field(
        default=None, ge=8, description="RLIMIT_NPROC: processes of the run user, all its runs together."
    )
    allow_insecure_http: bool = Field(
        default=False, description="Send the agent token over plain http:// to a host other than loopback."
    )
    agent_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    agent_serve_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="The address a service's instances listen on (docs/serving.md); 0.0.0.0 or :: for "
        "every interface, so the API reaches them from another machine.",
    )
    agent_serve_advertise: str | None = Field(
        default=None,
        description="The host put in an instance's address for the API to call; default the listening host.",
    )
    agent_serve_ports: str = Field(
        default="8500-8999", description="The ports a service's instances may listen on: FIRST-LAST."
    )
    agent_serve_liveness_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="How often a serving instance's /health is asked; one that fails 3 times in a row is "
        "killed and restarted.",
    )
    package_venvs: bool = Field(
        default=True,
        description="A package with a requirements.txt runs in a virtual environment built from it "
        "(agent/environments.py); off: every run uses the agent's Python.",
    )
    direct_blobs: bool = Field(
        default=True,
        description="Say `direct_blobs` in the hello: on an S3 store, fetch inputs and send outputs through "
        "presigned URLs, the bytes bypassing the API (docs/storage.md); off: every byte through the API.",
    )
    poll_wait: float = Field(default=MAX_POLL_WAIT_SECONDS, ge=0, le=MAX_POLL_WAIT_SECONDS)
    retry_initial: float = Field(default=0.5, gt=0, description="First backoff ceiling, seconds.")
    retry_max: float = Field(default=30.0, gt=0, description="Largest backoff ceiling, seconds.")
    agent_executor: Literal["local", "slurm"] = Field(
        default="local",
        description="local: runs are processes of this machine; slurm: each run is a Slurm batch job, and "
        "the work dir must be a folder the compute nodes share at the same path (docs/executors.md).",
    )
    slurm_conf: Path | None = Field(
        default=None, description="The cluster's slurm.conf, given to Slurm's commands as SLURM_CONF."
    )
    slurm_partitions: str = Field(
        default="",
        description="Comma-separated partitions a template may name (parameter slurm_partition); the first "
        "is used when it names none. Empty: Slurm's default partition, and none may be named.",
    )
    slurm_accounts: str = Field(default="", description="Comma-separated accounts (parameter slurm_account).")
    slurm_qos: str = Field(default="", description="Comma-separated QoS names (parameter slurm_qos).")
    slurm_poll_interval: float = Field(
        default=5.0, gt=0, le=300, description="Seconds between two looks at a job's state (scontrol)."
    )

    _token: SecretStr = PrivateAttr()

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("TRAINYARD_API_URL must start with http:// or https://")
        return value

    @field_validator("agent_serve_ports")
    @classmethod
    def _port_range(cls, value: str) -> str:
        first, dash, last = value.strip().partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise ValueError("TRAINYARD_AGENT_SERVE_PORTS is FIRST-LAST, e.g. 8500-8999") from None
        if not 1 <= low <= high <= 65535:
            raise ValueError("TRAINYARD_AGENT_SERVE_PORTS: need 1 <= FIRST <= LAST <= 65535")
        return f"{low}-{high}"

    @field_validator("agent_serve_advertise")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @property
    def serve_ports(self) -> range:
        """TRAINYARD_AGENT_SERVE_PORTS as a range of ports."""
        low, _, high = self.agent_serve_ports.partition("-")
        return range(int(low), int(high) + 1)

    @property
    def serve_advertise(self) -> str:
        """The host an instance's address names: TRAINYARD_AGENT_SERVE_ADVERTISE, else the listening one."""
        return self.agent_serve_advertise or self.agent_serve_host

    @field_validator("run_as")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("slurm_partitions", "slurm_accounts", "slurm_qos")
    @classmethod
    def _slurm_names(cls, value: str) -> str:
        for name in (item.strip() for item in value.split(",")):
            if name and not SLURM_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a Slurm name (letters, digits, '_', '-', '.')")
        return value

    @model_validator(mode="after")
    def _check_executor(self) -> Self:
        if self.agent_executor == "slurm" and self.sandbox != "none":
            raise ValueError(
                "TRAINYARD_SANDBOX=bwrap is for local runs: under TRAINYARD_AGENT_EXECUTOR=slurm, Slurm "
                "starts the run's processes on its nodes"
            )
        return self

    @model_validator(mode="after")
    def _check_combination(self) -> Self:
        if self.agent_token is not None and self.agent_token_file is not None:
            raise ValueError("set TRAINYARD_AGENT_TOKEN or TRAINYARD_AGENT_TOKEN_FILE, not both")
        if self.agent_token is not None:
            token = self.agent_token.get_secret_value().strip()
            if not token:
                raise ValueError("TRAINYARD_AGENT_TOKEN is empty")
            self._token = SecretStr(token)
        elif self.agent_token_file is not None:
            self._token = SecretStr(read_token_file(self.agent_token_file))
        else:
            raise ValueError("set TRAINYARD_AGENT_TOKEN or TRAINYARD_AGENT_TOKEN_FILE (the machine's token)")
        if self.run_as is None and _is_root():
            raise ValueError(
                "TRAINYARD_RUN_AS is required when the agent runs as root: packages never run as root"
            )
        self._check_run_user()
        self._check_transport()
        if self.retry_max < self.retry_initial:
            raise ValueError("TRAINYARD_RETRY_MAX must be at least TRAINYARD_RETRY_INITIAL")
        return self

    def _check_run_user(self) -> None:
        """Packages never share a uid with the agent, nor run as root, unless a sandbox hides the
        agent from them (same uid) or the settings accept the risk in so many words."""
        if self.run_as is None:
            uid = os.geteuid()
        else:
            try:
                entry = pwd.getpwuid(int(self.run_as)) if self.run_as.isdigit() else pwd.getpwnam(self.run_as)
            except KeyError:
                raise ValueError(f"TRAINYARD_RUN_AS names no user on this machine: {self.run_as!r}") from None
            uid = entry.pw_uid
        if self.allow_unsafe_run_user:
            return
        if uid == 0:
            raise ValueError(
                "TRAINYARD_RUN_AS is root: a package would own the machine and read the agent's token. "
                "Name an unprivileged user (e.g. `useradd --system trainyard-run`), or set "
                "TRAINYARD_ALLOW_UNSAFE_RUN_USER=true for a disposable container"
            )
        if uid != os.geteuid():
            if not _is_root():
                raise ValueError(
                    "TRAINYARD_RUN_AS names another user, and only an agent running as root can start "
                    "processes as another user: run the agent as root, or leave TRAINYARD_RUN_AS unset "
                    "and turn on TRAINYARD_SANDBOX=bwrap"
                )
            return
        if self.sandbox == "none":
            raise ValueError(
                "packages would run as the agent's own user and could read its token "
                "(/proc/<agent>/environ, the token file, the work dir's state). Run the agent as root "
                "with TRAINYARD_RUN_AS=<an unprivileged user>, or turn on TRAINYARD_SANDBOX=bwrap "
                "(bubblewrap), or set TRAINYARD_ALLOW_UNSAFE_RUN_USER=true for a machine of your own"
            )

    def _check_transport(self) -> None:
        """The token goes in every request's header: never in clear text over a real network."""
        parts = urlsplit(self.api_url)
        if parts.scheme != "http" or self.allow_insecure_http:
            return
        host = (parts.hostname or "").lower()
        if host == "localhost" or host.endswith(".localhost"):
            return
        try:
            if ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            pass
        raise ValueError(
            f"TRAINYARD_API_URL is plain http:// to {host}: the agent token would cross the network in "
            "clear text. Use https:// (docs/deployment.md puts TLS in front of the API), or set "
            "TRAINYARD_ALLOW_INSECURE_HTTP=true on a network you trust"
        )

    def token(self) -> str:
        """The agent token, for the `Authorization` header only."""
        return self._token.get_secret_value()
