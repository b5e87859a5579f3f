"""The import rules of the layout, read from the source with `ast` (the code is never imported).

- `shared/` is the wire: it imports neither `api` nor `agent`.
- `api/` and `agent/` never import each other.
- `api/core/` is infrastructure: of `api`, it imports only itself and `api.models`, never a domain.
- `agent/runtime/` is the only folder on a run process's path: it imports only itself and the
  standard library (`sys.stdlib_module_names`), so a package's environment needs nothing of ours.
"""

import ast
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Rule:
    folder: str  # relative to the root, with `/`
    says: str
    allows: Callable[[str, Path], bool]  # (imported module, the folder on disk) -> allowed


def _top(module: str) -> str:
    return module.partition(".")[0]


def _within(module: str, *packages: str) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def _runtime_allows(module: str, folder: Path) -> bool:
    # Started by its file path, the runner has the folder itself on `sys.path`: `trainyard` (the module
    # packages import) is imported by that name there.
    own = {path.stem for path in folder.iterdir() if path.suffix == ".py" or (path / "__init__.py").exists()}
    top = _top(module)
    return top in sys.stdlib_module_names or top in own or _within(module, "agent.runtime")


RULES = (
    Rule("shared", "imports neither api nor agent", lambda m, _: _top(m) not in {"api", "agent"}),
    Rule("api", "never imports agent", lambda m, _: _top(m) != "agent"),
    Rule("agent", "never imports api", lambda m, _: _top(m) != "api"),
    Rule(
        "api/core",
        "imports of api only api.core and api.models, never a domain",
        lambda m, _: _top(m) != "api" or _within(m, "api.core", "api.models"),
    ),
    Rule("agent/runtime", "imports only itself and the standard library", _runtime_allows),
)


def _package(path: Path, root: Path) -> list[str]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return parts if path.name == "__init__.py" else parts[:-1]


def imports(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """Every module `path` imports, absolute (a relative import resolved against its package), with
    its line; `from x import y` also yields `x.y`, since `y` may be a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package(path, root)
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{module}.{alias.name}"


def violations(root: Path) -> list[str]:
    """One line per import statement that breaks a rule, naming the first module it should not reach."""
    found: dict[tuple[str, int, str], str] = {}
    for rule in RULES:
        folder = root / rule.folder
        for path in sorted(folder.rglob("*.py")):
            where = path.relative_to(root).as_posix()
            for line, module in imports(path, root):
                if not rule.allows(module, folder):
                    found.setdefault(
                        (where, line, rule.folder),
                        f"{where}:{line} imports {module}: {rule.folder}/ {rule.says}",
                    )
    return sorted(found.values())


def test_the_tree_keeps_the_import_rules() -> None:
    assert all((ROOT / rule.folder).is_dir() for rule in RULES)
    assert violations(ROOT) == []


BROKEN = {
    "shared": ("shared/wire.py", "from api.core.config import Settings\n"),
    "api": ("api/things/service.py", "import agent.client\n"),
    "agent": ("agent/poller.py", "def f():\n    from api.models import Run\n"),
    "api/core": ("api/core/deps.py", "from api.projects import service\n"),
    "agent/runtime": ("agent/runtime/runner.py", "import numpy\n"),
}


@pytest.mark.parametrize("folder", [rule.folder for rule in RULES])
def test_a_broken_rule_is_found(tmp_path: Path, folder: str) -> None:
    for rule in RULES:
        (tmp_path / rule.folder).mkdir(parents=True, exist_ok=True)
    name, source = BROKEN[folder]
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(source)
    found = violations(tmp_path)
    assert len(found) >= 1 and all(item.startswith(f"{name}:") for item in found), found
    assert any(f": {folder}/ " in item for item in found), found


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    (tmp_path / "api" / "core").mkdir(parents=True)
    (tmp_path / "api" / "core" / "db.py").write_text("from ..projects import service\nfrom . import errors\n")
    assert list(imports(tmp_path / "api" / "core" / "db.py", tmp_path)) == [
        (1, "api.projects"),
        (1, "api.projects.service"),
        (2, "api.core"),
        (2, "api.core.errors"),
    ]
    assert violations(tmp_path) == [
        "api/core/db.py:1 imports api.projects: api/core/ imports of api only api.core and api.models,"
        " never a domain",
    ]


# One unit of work per request (api/README.md): the session dependency commits, `commit_early` is
# the one named way a route commits before it ends, and these own a transaction of their own, outside
# any request's, so they commit it themselves. Each with why.
COMMIT_OWNERS = {
    "api/core/db.py": "the session dependency: commits each request's unit of work",
    "api/core/unit_of_work.py": "commit_early: the one named mid-request commit",
    "api/core/sqlite.py": "the SQLite hot unit, committed on the database's own thread",
    "api/core/idempotency.py": "an idempotency claim released after an error, on its own terms",
    "api/access/bootstrap.py": "the start-up's built-in roles and first administrator",
    "api/base_packages/service.py": "trainyard-api migrate's install of the built-in base packages",
    "api/runs/sweeper.py": "the sweeper's sessions, outside any request",
    "api/services/sweep.py": "the sweeper's service timeouts (a start no agent took, a lost machine)",
    "api/schedules/firing.py": "a schedule's firing, outside any request",
    "api/storage/collector.py": "each removal of the blob collector, outside any request",
    "api/webhooks/dispatch.py": "the webhook dispatcher's claims and outcomes, outside any request",
    "api/telemetry/ingest.py": "a telemetry batch owns its transaction",
    "api/agent_routes/poll_store.py": "the long-poll's look on PostgreSQL, on a connection of its own",
}


def direct_commits(root: Path) -> dict[str, list[int]]:
    """Each module under `api/` that calls `.commit()` itself, with the lines it does so on."""
    found: dict[str, list[int]] = {}
    for path in sorted((root / "api").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "commit"
            ):
                found.setdefault(path.relative_to(root).as_posix(), []).append(node.lineno)
    return found


def test_only_the_named_owners_commit() -> None:
    """A route that must commit before it ends says why through `commit_early(session, reason)`."""
    found = direct_commits(ROOT)
    stray = {module: lines for module, lines in found.items() if module not in COMMIT_OWNERS}
    assert stray == {}, f"call commit_early(session, reason) instead of .commit(): {stray}"


def test_a_stray_commit_is_found(tmp_path: Path) -> None:
    (tmp_path / "api" / "things").mkdir(parents=True)
    (tmp_path / "api" / "things" / "router.py").write_text(
        "async def route(session):\n    x = 1\n    await session.commit()\n"
    )
    (tmp_path / "api" / "things" / "service.py").write_text("def commit():\n    return 'commit'\n")
    assert direct_commits(tmp_path) == {"api/things/router.py": [3]}


def test_the_command_line_client_talks_http_only() -> None:
    """`cli/` (the `trainyard` command) reaches the API over HTTP: of ours it imports only itself and
    `shared`, never `api` or `agent`, so it installs and runs where neither does."""
    found = [
        f"{path.relative_to(ROOT).as_posix()}:{line} imports {module}"
        for path in sorted((ROOT / "cli").rglob("*.py"))
        for line, module in imports(path, ROOT)
        if _top(module) in {"api", "agent"}
    ]
    assert (ROOT / "cli").is_dir() and found == []
