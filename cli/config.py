"""Where the command finds its API, token and project: the environment first, then the config file.

The file is `config.json` in the user's config folder (`platformdirs`: `$XDG_CONFIG_HOME/trainyard`,
else `~/.config/trainyard` on Linux), written whole and atomically with mode 0600 in a folder of
mode 0700: it holds a bearer token. `TRAINYARD_URL`, `TRAINYARD_TOKEN` and `TRAINYARD_PROJECT`
override what it says, so a bot needs no file at all.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import platformdirs

from cli.errors import UsageProblem

CONFIG_NAME = "config.json"
URL_VARIABLE, TOKEN_VARIABLE, PROJECT_VARIABLE = "TRAINYARD_URL", "TRAINYARD_TOKEN", "TRAINYARD_PROJECT"
API_PREFIX = "/api/v1"


@dataclass
class Config:
    """What the file holds. `token_kind` is `login` for a token the login route issued (logout
    revokes it) and `api` for one the user handed in (logout only forgets it: a bot may still use it)."""

    url: str | None = None
    token: str | None = None
    token_kind: str | None = None
    project: str | None = None


def config_dir() -> Path:
    return Path(platformdirs.user_config_dir("trainyard", appauthor=False))


def config_path() -> Path:
    return config_dir() / CONFIG_NAME


def load() -> Config:
    """The file's settings; an empty `Config` when there is none. A file that is not ours to read
    as JSON is a usage problem that names it, never a traceback."""
    path = config_path()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Config()
    except (OSError, ValueError) as error:
        raise UsageProblem(f"cannot read {path}: {error}; remove it and run `trainyard login`") from None
    if not isinstance(raw, dict):
        raise UsageProblem(f"{path} is not a JSON object; remove it and run `trainyard login`")
    known = {field.name for field in fields(Config)}
    return Config(**{k: v for k, v in raw.items() if k in known and (v is None or isinstance(v, str))})


def save(config: Config) -> Path:
    """Write the file whole: a temporary file of mode 0600 in the same folder, then a rename, so a
    reader never sees half a file and the token is never readable by others, not for an instant."""
    folder = config_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / CONFIG_NAME
    descriptor, temporary = tempfile.mkstemp(prefix=".config-", suffix=".json", dir=folder)  # mode 0600
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump({k: v for k, v in asdict(config).items() if v is not None}, handle, indent=2)
            handle.write("\n")
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def normalise_url(url: str) -> str:
    """`http://host:8000`, with or without a trailing `/` or `/api/v1`, as the server's root."""
    url = url.strip().rstrip("/")
    if url.endswith(API_PREFIX):
        url = url[: -len(API_PREFIX)].rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UsageProblem(f"the API's URL must start with http:// or https://, not {url!r}")
    return url


@dataclass(frozen=True)
class Settings:
    """What one command runs with, after the environment overrode the file."""

    url: str | None
    token: str | None
    project: str | None
    file: Config


def settings() -> Settings:
    file = load()
    url = os.environ.get(URL_VARIABLE) or file.url
    return Settings(
        url=normalise_url(url) if url else None,
        token=os.environ.get(TOKEN_VARIABLE) or file.token,
        project=os.environ.get(PROJECT_VARIABLE) or file.project,
        file=file,
    )
