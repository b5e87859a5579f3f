"""The agent's one settings object, read from `TRAINYARD_*` variables and validated at start-up.

Nothing else in `agent/` reads the environment. The agent token comes from `TRAINYARD_AGENT_TOKEN`
or from the file named by `TRAINYARD_AGENT_TOKEN_FILE`, never from a command line.
"""

import os
import stat
import sys
from pathlib import Path
from typing import Self

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.protocol import MAX_POLL_WAIT_SECONDS

ROOT_WORK_DIR = Path("/var/lib/trainyard-agent")


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
    agent_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    package_venvs: bool = Field(
        default=True,
        description="A package with a requirements.txt runs in a virtual environment built from it "
        "(agent/environments.py); off: every run uses the agent's Python.",
    )
    poll_wait: float = Field(default=MAX_POLL_WAIT_SECONDS, ge=0, le=MAX_POLL_WAIT_SECONDS)
    retry_initial: float = Field(default=0.5, gt=0, description="First backoff ceiling, seconds.")
    retry_max: float = Field(default=30.0, gt=0, description="Largest backoff ceiling, seconds.")

    _token: SecretStr = PrivateAttr()

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("TRAINYARD_API_URL must start with http:// or https://")
        return value

    @field_validator("run_as")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

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
        if self.retry_max < self.retry_initial:
            raise ValueError("TRAINYARD_RETRY_MAX must be at least TRAINYARD_RETRY_INITIAL")
        return self

    def token(self) -> str:
        """The agent token, for the `Authorization` header only."""
        return self._token.get_secret_value()
