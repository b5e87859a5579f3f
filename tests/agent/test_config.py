"""AgentSettings: the token (inline or from a private file) and the root/run_as rule. No database."""

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent import config
from agent.config import AgentSettings

TOKEN = "ty_abc_0123456789secret"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TRAINYARD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TRAINYARD_API_URL", "https://api.test:8000/")
    # Not as root, packages run as the agent's user: allowed only in the sandbox (see the tests below).
    monkeypatch.setenv("TRAINYARD_SANDBOX", "bwrap")


def as_user(monkeypatch: pytest.MonkeyPatch, uid: int) -> None:
    monkeypatch.setattr(config.os, "geteuid", lambda: uid)


def token_file(tmp_path: Path, mode: int, text: str = f"  {TOKEN}\n") -> Path:
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    as_user(monkeypatch, 1000)
    monkeypatch.setenv("TRAINYARD_AGENT_TOKEN", TOKEN)
    monkeypatch.setenv("TRAINYARD_AGENT_METRICS_PORT", "9100")
    settings = AgentSettings()
    assert settings.api_url == "https://api.test:8000"
    assert settings.token() == TOKEN and TOKEN not in repr(settings)
    assert settings.stop_grace == 30 and settings.poll_wait == 30 and settings.agent_metrics_port == 9100
    assert (settings.retry_initial, settings.retry_max) == (0.5, 30)
    assert settings.agent_work_dir == Path.home() / ".local/share/trainyard-agent"
    assert settings.run_as is None


def test_a_private_token_file_is_read_and_stripped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    as_user(monkeypatch, 1000)
    monkeypatch.setenv("TRAINYARD_AGENT_TOKEN_FILE", str(token_file(tmp_path, 0o600)))
    assert AgentSettings().token() == TOKEN


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_token_file_open_to_others_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: int
) -> None:
    as_user(monkeypatch, 1000)
    monkeypatch.setenv("TRAINYARD_AGENT_TOKEN_FILE", str(token_file(tmp_path, mode)))
    with pytest.raises(ValidationError, match=r"TRAINYARD_AGENT_TOKEN_FILE.*group or others"):
        AgentSettings()


def test_a_missing_or_empty_token_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    as_user(monkeypatch, 1000)
    with pytest.raises(ValidationError, match=r"TRAINYARD_AGENT_TOKEN_FILE.*cannot be read"):
        AgentSettings(agent_token_file=tmp_path / "absent")
    with pytest.raises(ValidationError, match=r"TRAINYARD_AGENT_TOKEN_FILE.*empty"):
        AgentSettings(agent_token_file=token_file(tmp_path, 0o600, " \n"))


def test_exactly_one_token_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    as_user(monkeypatch, 1000)
    with pytest.raises(ValidationError, match="TRAINYARD_AGENT_TOKEN or TRAINYARD_AGENT_TOKEN_FILE"):
        AgentSettings()
    monkeypatch.setenv("TRAINYARD_AGENT_TOKEN", TOKEN)
    monkeypatch.setenv("TRAINYARD_AGENT_TOKEN_FILE", str(token_file(tmp_path, 0o600)))
    with pytest.raises(ValidationError, match="not both"):
        AgentSettings()


def test_root_needs_run_as(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINYARD_AGENT_TOKEN", TOKEN)
    as_user(monkeypatch, 0)
    with pytest.raises(ValidationError, match="TRAINYARD_RUN_AS is required"):
        AgentSettings()
    monkeypatch.setenv("TRAINYARD_RUN_AS", "  ")
    with pytest.raises(ValidationError, match="TRAINYARD_RUN_AS is required"):
        AgentSettings()
    monkeypatch.setenv("TRAINYARD_RUN_AS", "nobody")
    settings = AgentSettings()
    assert settings.run_as == "nobody"
    assert settings.agent_work_dir == Path("/var/lib/trainyard-agent")


@pytest.mark.parametrize(
    "variable",
    [
        {"TRAINYARD_POLL_WAIT": "31"},
        {"TRAINYARD_STOP_GRACE": "0"},
        {"TRAINYARD_API_URL": "api.test"},
        {"TRAINYARD_RETRY_INITIAL": "5", "TRAINYARD_RETRY_MAX": "1"},
        {"TRAINYARD_AGENT_METRICS_PORT": "70000"},
    ],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, variable: dict[str, str]) -> None:
    as_user(monkeypatch, 1000)
    monkeypatch.setenv("TRAINYARD_AGENT_TOKEN", TOKEN)
    for name, value in variable.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        AgentSettings()


def test_packages_never_share_the_agents_uid_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINYARD_AGENT_TOKEN", TOKEN)
    monkeypatch.setenv("TRAINYARD_SANDBOX", "none")
    as_user(monkeypatch, 1000)  # an ordinary user: its packages would run as itself
    with pytest.raises(ValidationError, match="could read its token"):
        AgentSettings()
    with pytest.raises(ValidationError, match="only an agent running as root"):
        AgentSettings(run_as="nobody")
    assert AgentSettings(sandbox="bwrap").run_as is None  # the sandbox hides the agent from them
    assert AgentSettings(allow_unsafe_run_user=True).allow_unsafe_run_user  # accepted in so many words

    as_user(monkeypatch, 0)
    for root in ("root", "0"):
        with pytest.raises(ValidationError, match="TRAINYARD_RUN_AS is root"):
            AgentSettings(run_as=root)
        with pytest.raises(ValidationError, match="TRAINYARD_RUN_AS is root"):
            AgentSettings(run_as=root, sandbox="bwrap")  # root in a sandbox is still root
        assert AgentSettings(run_as=root, allow_unsafe_run_user=True).run_as == root
    with pytest.raises(ValidationError, match="names no user"):
        AgentSettings(run_as="no-such-user-here")
    assert AgentSettings(run_as="nobody").run_as == "nobody"


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.example:8000", True),
        ("http://127.0.0.1:8000", True),
        ("http://127.8.9.10", True),
        ("http://localhost:8000", True),
        ("http://[::1]:8000", True),
        ("http://api.example:8000", False),
        ("http://10.0.0.5", False),
    ],
)
def test_the_token_never_crosses_a_network_in_clear_text(
    monkeypatch: pytest.MonkeyPatch, url: str, allowed: bool
) -> None:
    as_user(monkeypatch, 1000)
    monkeypatch.setenv("TRAINYARD_AGENT_TOKEN", TOKEN)
    monkeypatch.setenv("TRAINYARD_API_URL", url)
    if allowed:
        AgentSettings()
        return
    with pytest.raises(ValidationError, match="TRAINYARD_ALLOW_INSECURE_HTTP"):
        AgentSettings()
    monkeypatch.setenv("TRAINYARD_ALLOW_INSECURE_HTTP", "true")
    assert AgentSettings().allow_insecure_http
