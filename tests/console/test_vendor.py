"""The vendored front-end files are the ones vendor.json pins (python -m api.console.vendor --check)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from api.console import vendor


def test_the_committed_files_match_vendor_json() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "api.console.vendor", "--check"], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr


def test_check_finds_a_changed_or_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "vendor"
    shutil.copytree(vendor.VENDOR, copy)
    monkeypatch.setattr(vendor, "VENDOR", copy)
    monkeypatch.setattr(vendor, "HERE", tmp_path)
    packages = vendor.load_pins()
    assert vendor.check(packages) == []
    (copy / "uplot" / "uPlot.esm.js").write_text("export default 1;\n")
    (copy / "axe-core" / "axe.min.js").unlink()
    problems = vendor.check(packages)
    assert len(problems) == 2
    assert any("uPlot.esm.js" in p and "sha256" in p for p in problems)
    assert any("axe.min.js: missing" in p for p in problems)


def test_every_package_has_its_licence_and_integrity() -> None:
    for package in vendor.load_pins():
        assert package["integrity"].startswith("sha512-")
        assert any(f["to"].startswith("LICENSE") for f in package["files"]), package["name"]
