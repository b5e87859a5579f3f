"""`trainyard base-packages list` as a real process against a real `trainyard-api serve` whose
`trainyard-api migrate` installed the built-in base packages (docs/base-packages.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.test_cli import Server
from tests.cli.kit import Cli, api_server, cli_for, ok
from tests.conftest import ADMIN_TOKEN


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with api_server(tmp_path_factory.mktemp("cli-base-packages"), "sqlite") as running:
        yield running


@pytest.fixture
def logged_in(tmp_path: Path, server: Server) -> Cli:
    cli = cli_for(tmp_path)
    ok(cli("login", server.base_url, "--token", stdin=ADMIN_TOKEN + "\n"))
    return cli


def test_the_base_packages_are_listed_as_a_table_and_as_json(logged_in: Cli) -> None:
    table = ok(logged_in("base-packages", "list")).splitlines()
    assert table[0].split()[:4] == ["NAME", "LATEST", "MODEL", "TYPES"]
    assert [line.split()[:3] for line in table[1:]] == [
        ["image-classifier", "1.0", "image-classification"],
        ["tabular-classifier", "1.0", "tabular-classification"],
    ]
    only = logged_in("base-packages", "list", "--model-type", "tabular-classification", "--json")
    rows = json.loads(ok(only))
    assert [row["name"] for row in rows] == ["tabular-classifier"]
    assert "target_column" in [parameter["name"] for parameter in rows[0]["declared_parameters"]]
