"""The checkpoint folder on the agent's side: what is zipped for the API, and the runtime's accessor."""

import os
import zipfile
from pathlib import Path

import pytest

from agent.checkpoints import _zip_checkpoint
from agent.runtime import trainyard


def test_the_accessor_names_the_runs_folder_and_none_outside_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAINYARD_CHECKPOINT_DIRECTORY", raising=False)
    assert trainyard.checkpoint_directory() is None
    monkeypatch.setenv("TRAINYARD_CHECKPOINT_DIRECTORY", "/work/runs/r/checkpoint")
    assert trainyard.checkpoint_directory() == "/work/runs/r/checkpoint"


def test_only_the_folders_own_regular_files_are_zipped(tmp_path: Path) -> None:
    source, archive = tmp_path / "checkpoint", tmp_path / "checkpoint.zip"
    assert _zip_checkpoint(source, archive) is False  # no folder: nothing to keep
    source.mkdir()
    assert _zip_checkpoint(source, archive) is False and not archive.exists()  # empty: nothing either
    secret = tmp_path / "agent-token"
    secret.write_text("ty_secret")
    (source / "epoch-2.pt").write_bytes(b"weights")
    (source / "inner").mkdir()
    (source / "inner" / "optimizer.pt").write_bytes(b"moments")
    os.symlink(secret, source / "token")  # the package's folder: a link is never followed
    os.symlink(tmp_path, source / "outside")
    assert _zip_checkpoint(source, archive) is True
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == ["epoch-2.pt", "inner/optimizer.pt"]
        assert zf.read("inner/optimizer.pt") == b"moments"
