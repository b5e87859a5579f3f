"""A run's Python: the machine's, or a virtual environment built from the package's requirements.txt.

Two environments are built with the real pip (one that works, one that fails on a name PyPI does not
have); the locking, clean-up and pruning tests replace pip with a no-op, since what they check is what
happens around it.
"""

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent import environments
from agent.environments import (
    MARKER,
    EnvironmentBuildFailed,
    prune,
    python_for,
    requirements_hash,
)
from shared.requirements import (
    MAX_REQUIREMENTS_BYTES,
    TOO_LARGE,
    RequirementRefused,
    check_requirements_file,
)


def _package(root: Path, requirements: str | None) -> Path:
    root.mkdir(parents=True)
    (root / "train.py").write_text("class Main: ...\n", encoding="utf-8")
    if requirements is not None:
        (root / "requirements.txt").write_text(requirements, encoding="utf-8")
    return root


def _entries(work_dir: Path) -> set[str]:
    """What is in `envs/` besides the lock folder."""
    envs = work_dir / "envs"
    return {entry.name for entry in envs.iterdir()} - {".locks"} if envs.is_dir() else set()


@dataclass
class Built:
    work_dir: Path
    package: Path
    pythons: list[Path]
    builds: int


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """One real environment, asked for by two runs at the same time; `builds` counts the pip runs."""
    root = tmp_path_factory.mktemp("environments")
    package = _package(root / "package", "numpy  # already on the machine: nothing to download\n")
    work_dir = root / "work"
    builds = 0
    real = environments._pip_install

    async def counting(environment: Path, *rest: Any) -> None:
        nonlocal builds
        builds += 1
        await real(environment, *rest)

    async def two_runs() -> list[Path]:
        return list(await asyncio.gather(python_for(package, work_dir), python_for(package, work_dir)))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(environments, "_pip_install", counting)
        pythons = asyncio.run(two_runs())
    yield Built(work_dir, package, pythons, builds)


@pytest.fixture
def no_pip(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """pip replaced by a no-op that records the environments it was asked to install into."""
    calls: list[Path] = []

    async def fake(environment: Path, *_: object) -> None:
        calls.append(environment)

    monkeypatch.setattr(environments, "_pip_install", fake)
    return calls


async def test_without_requirements_the_machines_python(tmp_path: Path) -> None:
    package = _package(tmp_path / "package", None)
    assert await python_for(package, tmp_path / "work") == Path(sys.executable)
    assert requirements_hash(package) is None
    assert not (tmp_path / "work").exists()


async def test_venvs_off_the_machines_python(tmp_path: Path) -> None:
    package = _package(tmp_path / "package", "numpy\n")
    assert await python_for(package, tmp_path / "work", venvs=False) == Path(sys.executable)
    assert not (tmp_path / "work").exists()


def test_two_runs_at_once_build_once(built: Built) -> None:
    key = requirements_hash(built.package)
    assert key is not None
    assert built.builds == 1
    assert built.pythons == [built.work_dir / "envs" / key / "bin" / "python"] * 2
    assert _entries(built.work_dir) == {key}  # no temporary folder left
    record = json.loads((built.work_dir / "envs" / key / MARKER).read_text(encoding="utf-8"))
    assert record["requirements_sha256"] == key


def test_the_environment_sees_its_requirements_and_the_machines_torch(built: Built) -> None:
    # torch is installed in the virtual environment the tests run in, not in the base interpreter the
    # new environment is made from: the `.pth` file is what makes it visible.
    script = "import sys, numpy, torch; print(sys.prefix)"
    result = subprocess.run(
        [str(built.pythons[0]), "-c", script], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == built.pythons[0].parent.parent


async def test_a_second_run_reuses_the_environment(built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    async def must_not_build(*args: object) -> None:
        raise AssertionError("the environment was built again")

    monkeypatch.setattr(environments, "_build", must_not_build)
    marker = built.pythons[0].parent.parent / MARKER
    before = marker.stat()
    assert await python_for(built.package, built.work_dir) == built.pythons[0]
    after = marker.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


async def test_a_failing_requirement_raises_with_pips_message_and_leaves_nothing(tmp_path: Path) -> None:
    package = _package(tmp_path / "package", "trainyard-no-such-package-xyz==1\n")
    with pytest.raises(EnvironmentBuildFailed) as caught:
        await python_for(package, tmp_path / "work")
    assert "pip install" in str(caught.value)
    assert "trainyard-no-such-package-xyz" in caught.value.detail
    assert "No matching distribution" in caught.value.detail
    assert _entries(tmp_path / "work") == set()


@pytest.mark.parametrize("line", ["-e .", "--extra-index-url https://example.org/simple", "./vendored"])
async def test_a_refused_line_is_named_before_anything_is_built(tmp_path: Path, line: str) -> None:
    package = _package(tmp_path / "package", f"numpy\n{line}\n")
    with pytest.raises(EnvironmentBuildFailed) as caught:
        await python_for(package, tmp_path / "work")
    assert "line 2" in caught.value.detail
    assert line in caught.value.detail
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"numpy\n" + b"#" * MAX_REQUIREMENTS_BYTES, TOO_LARGE),
        (b"numpy\n\xff\xfe\n", "requirements.txt is not UTF-8 text"),
    ],
)
async def test_a_file_too_large_or_not_utf8_is_refused_in_the_uploads_words(
    tmp_path: Path, content: bytes, words: str
) -> None:
    package = _package(tmp_path / "package", None)
    (package / "requirements.txt").write_bytes(content)
    with pytest.raises(RequirementRefused) as upload:
        check_requirements_file(content)  # what the API answers an upload of this package
    with pytest.raises(EnvironmentBuildFailed) as caught:
        await python_for(package, tmp_path / "work")
    assert caught.value.detail == str(upload.value) == words
    assert not (tmp_path / "work").exists()


async def test_requirements_through_a_symlink_are_refused(tmp_path: Path) -> None:
    package = _package(tmp_path / "package", None)
    (package / "requirements.txt").symlink_to("/etc/hostname")
    with pytest.raises(EnvironmentBuildFailed):
        await python_for(package, tmp_path / "work")


async def test_a_cancelled_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = asyncio.Event()

    async def slow_pip(environment: Path, *_: object) -> None:
        started.set()
        await asyncio.Event().wait()  # until cancelled

    monkeypatch.setattr(environments, "_pip_install", slow_pip)
    package = _package(tmp_path / "package", "numpy\n")
    build = asyncio.create_task(python_for(package, tmp_path / "work"))
    await started.wait()
    assert len(_entries(tmp_path / "work")) == 1  # the temporary folder, while pip runs
    build.cancel()
    with pytest.raises(asyncio.CancelledError):
        await build
    assert _entries(tmp_path / "work") == set()


async def test_a_crashed_builds_leftovers_are_removed(tmp_path: Path, no_pip: list[Path]) -> None:
    package = _package(tmp_path / "package", "numpy\n")
    key = requirements_hash(package)
    leftover = tmp_path / "work" / "envs" / f".{key}.0123.tmp"
    (leftover / "lib").mkdir(parents=True)
    python = await python_for(package, tmp_path / "work")
    assert python.parent.parent.name == key
    assert _entries(tmp_path / "work") == {key}


async def test_another_process_holding_the_lock_is_waited_for(tmp_path: Path, no_pip: list[Path]) -> None:
    # Another fd on the lock file stands for another agent process: flock conflicts between open file
    # descriptions whether or not they belong to one process.
    package = _package(tmp_path / "package", "numpy\n")
    key = requirements_hash(package)
    assert key is not None
    held = environments._try_lock(environments._lock_path(tmp_path / "work" / "envs", key))
    assert held is not None
    build = asyncio.create_task(python_for(package, tmp_path / "work"))
    await asyncio.sleep(0.2)
    assert not build.done()
    assert no_pip == []
    os.close(held)
    await build
    assert len(no_pip) == 1


async def test_an_environment_whose_python_is_gone_is_rebuilt(tmp_path: Path, no_pip: list[Path]) -> None:
    package = _package(tmp_path / "package", "numpy\n")
    python = await python_for(package, tmp_path / "work")
    (python.parent / "python").unlink()
    (python.parent / "python").symlink_to(tmp_path / "replaced-python3.11")
    assert await python_for(package, tmp_path / "work") == python
    assert len(no_pip) == 2
    assert python.exists()


async def test_prune_removes_what_is_not_kept(tmp_path: Path, no_pip: list[Path]) -> None:
    work_dir = tmp_path / "work"
    kept = _package(tmp_path / "kept", "numpy\n")
    unused = _package(tmp_path / "unused", "numpy==2.*\n")
    await python_for(kept, work_dir)
    await python_for(unused, work_dir)
    kept_key, unused_key = requirements_hash(kept), requirements_hash(unused)
    assert kept_key is not None and unused_key is not None

    assert prune(work_dir, {kept_key}, older_than=3600) == []  # both used just now
    last_used = work_dir / "envs" / unused_key / environments.LAST_USED
    os.utime(last_used, (0, 0))
    assert prune(work_dir, {kept_key}, older_than=3600) == [unused_key]
    assert _entries(work_dir) == {kept_key}

    held = environments._try_lock(environments._lock_path(work_dir / "envs", kept_key))
    assert held is not None
    try:
        assert prune(work_dir) == []  # in use right now
    finally:
        os.close(held)
    assert prune(work_dir) == [kept_key]
    assert _entries(work_dir) == set()
    await python_for(kept, work_dir)  # and it builds again
    assert _entries(work_dir) == {kept_key}


@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="no system Python")
async def test_the_environment_is_made_by_the_run_interpreter(tmp_path: Path) -> None:
    """TRAINYARD_RUN_PYTHON, not the agent's Python, makes it: the run user can run what it can run.
    Real pip: `pip` is on the system Python already, so nothing is downloaded."""
    system = "/usr/bin/python3"
    outer = tmp_path / "outer-site"
    outer.mkdir()
    (outer / "outer_marker.py").write_text("WHERE = 'outer'\n", encoding="utf-8")
    package = _package(tmp_path / "package", "pip\n")
    python = await python_for(package, tmp_path / "work", base=system, outer=[str(outer)])
    assert python.parent.parent.name == requirements_hash(package)
    answer = await asyncio.to_thread(
        subprocess.run,
        [str(python), "-c", "import sys, outer_marker; print(sys.base_prefix, outer_marker.WHERE)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert answer.stdout.split() == ["/usr", "outer"]  # not the agent's own base (pyenv here)
    marker = json.loads((python.parent.parent / MARKER).read_text(encoding="utf-8"))
    assert marker["base_executable"] == system and marker["outer_site_packages"] == [str(outer)]
