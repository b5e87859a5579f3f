"""examples/zip_package.py: the zips the demo uploads are stable and accepted as packages."""

import io
import zipfile
from pathlib import Path

import pytest

from api.packages.inspect import inspect_package
from shared.archive import DEFAULT_LIMITS
from tests.examples.conftest import EXAMPLES, PACKAGES, load_module

zip_package = load_module(EXAMPLES / "zip_package.py", "trainyard_example_zip_package")


@pytest.mark.parametrize("name", ["digits-classifier", "iris-sklearn"])
def test_each_example_package_zips_into_an_accepted_package(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.zip"
    data = zip_package.zip_folder(PACKAGES / name, out)
    assert out.read_bytes() == data == zip_package.zip_folder(PACKAGES / name)  # the same bytes each time
    info = inspect_package(out, DEFAULT_LIMITS)
    assert (info.root_prefix, info.has_evaluate, info.has_predict) == ("", True, True)
    if name == "digits-classifier":
        assert info.declared_parameters is not None
        assert {p.name: (p.type, p.default) for p in info.declared_parameters} == {
            "epochs": ("int", 5),
            "batch_size": ("int", 32),
            "learning_rate": ("float", 0.003),
            "learning_rate_decay": ("float", 0.7),
            "seed": ("int", 0),
        }
    else:
        assert info.declared_parameters is None and info.has_requirements


def test_caches_and_hidden_files_are_left_out(tmp_path: Path) -> None:
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("a")
    (tmp_path / "train.py").write_text("class Main: pass\n")
    names = zipfile.ZipFile(io.BytesIO(zip_package.zip_folder(tmp_path))).namelist()
    assert names == ["sub/a.txt", "train.py"]
