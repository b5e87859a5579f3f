"""`trainyard-api migrate | serve [--host H] [--port P] [--workers N] | gc [--dry-run]`."""

import argparse
import asyncio
import logging
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError
from sqlalchemy.engine import make_url

from api.core.config import SECRET_KEY_FILE, Settings

if TYPE_CHECKING:
    from api.storage.collector import CollectionReport

logger = logging.getLogger("trainyard.api")
# What this process creates (the SQLite file and its -wal and -shm, the secret key, blobs, scratch
# files) is its own: files 0600, folders 0700.
PRIVATE_UMASK = 0o077


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        problems = "; ".join(
            f"TRAINYARD_{'_'.join(str(p) for p in e['loc']).upper() or 'SETTINGS'}: {e['msg']}"
            for e in error.errors()
        )
        raise SystemExit(f"trainyard-api: invalid settings: {problems}") from None


def _private(path: Path, mode: int) -> None:
    """Tighten `path` to `mode` if others may read it (a data dir from an older version, a copy made
    with another umask), saying so; warn if it cannot be tightened (not ours)."""
    try:
        current = stat.S_IMODE(path.lstat().st_mode)
    except FileNotFoundError:
        return
    if path.is_symlink() or not current & 0o077:
        return
    try:
        path.chmod(mode)
    except OSError as error:
        logger.warning("%s is mode %o, open to others, and cannot be tightened: %s", path, current, error)
        return
    logger.warning("%s was mode %o, open to other users: tightened to %o", path, current, mode)


def private_data_dir(settings: Settings) -> None:
    """Make the data dir the service's own, before anything is written into it: the umask for what
    this process creates, then the dir itself and the secrets and database already in it. Blobs written
    under an older umask stay as they are, behind a data dir no other user may enter."""
    os.umask(PRIVATE_UMASK)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _private(settings.data_dir, 0o700)
    _private(settings.data_dir / "blobs", 0o700)
    files = [settings.data_dir / SECRET_KEY_FILE]
    if settings.is_sqlite:
        database = make_url(settings.resolved_database_url).database
        if database:
            files += [Path(database + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
    for path in files:
        _private(path, 0o600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainyard-api", description="Trainyard's central service.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "migrate", help="bring the database schema to this version, and the built-in base packages"
    )
    base_packages = commands.add_parser("base-packages", help="the built-in base packages")
    base_packages.add_subparsers(dest="action", required=True).add_parser(
        "install", help="install or update them (migrate does it too); a new version only for new content"
    )
    serve = commands.add_parser("serve", help="serve the API")
    serve.add_argument("--host", help="default: TRAINYARD_HOST (127.0.0.1)")
    serve.add_argument("--port", type=int, help="default: TRAINYARD_PORT (8000)")
    serve.add_argument(
        "--workers", type=int, default=1, help="API processes (PostgreSQL only: SQLite takes one)"
    )
    gc = commands.add_parser("gc", help="remove the blobs nothing refers to, past the grace period")
    gc.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings()

    if args.command == "migrate":
        from api.core.migrate import upgrade

        if settings.is_sqlite:
            private_data_dir(settings)
        upgrade(settings.resolved_database_url)
        print("trainyard-api: the database schema is current")
        return _install_base_packages(settings)

    if args.command == "base-packages":
        from api.core.migrate import schema_problem_now

        problem = schema_problem_now(settings.resolved_database_url)
        if problem is not None:
            print(f"trainyard-api: refusing to install the base packages: {problem}", file=sys.stderr)
            return 2
        return _install_base_packages(settings)

    if args.command == "gc":
        return _collect(settings, dry_run=args.dry_run)

    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.workers > 1 and settings.is_sqlite:
        # The long-poll wake-ups and SQLite's single writer both live inside one process.
        parser.error(
            "SQLite takes one API process: use PostgreSQL (TRAINYARD_DATABASE_URL) for --workers > 1"
        )
    from api.core.migrate import schema_problem_now

    private_data_dir(settings)  # on PostgreSQL too: the blobs live there
    problem = schema_problem_now(settings.resolved_database_url)
    if problem is not None:
        print(f"trainyard-api: refusing to start: {problem}", file=sys.stderr)
        return 2
    from api.access.bootstrap import not_dumpable, serve_without_bootstrap_token, use_bootstrap_token

    not_dumpable()
    if settings.bootstrap_token is not None:
        if asyncio.run(use_bootstrap_token(settings)):
            print("trainyard-api: created the administrator `admin` holding TRAINYARD_BOOTSTRAP_TOKEN")
        serve_without_bootstrap_token(sys.argv[1:] if argv is None else argv)
    import uvicorn

    from api.core.http_protocol import BoundedHttpToolsProtocol

    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers,
        # A request's head is bounded before the app sees it (api/core/http_protocol.py).
        http=BoundedHttpToolsProtocol,
        # X-Forwarded-For and -Proto are believed from these addresses only: uvicorn's default is
        # 127.0.0.1, a proxy on this machine; FORWARDED_ALLOW_IPS widens it (docs/deployment.md).
        proxy_headers=True,
        log_level="info",
    )
    return 0


def _collect(settings: Settings, *, dry_run: bool) -> int:
    """`trainyard-api gc`: one collector pass now, under the same claim as the API's own passes; each
    blob on a line of its own, then the total. Exit 3 when another process is collecting."""
    from api.core.migrate import schema_problem_now

    problem = schema_problem_now(settings.resolved_database_url)
    if problem is not None:
        print(f"trainyard-api: refusing to collect: {problem}", file=sys.stderr)
        return 2
    report = asyncio.run(_collect_once(settings, dry_run))
    if report is None:
        print("trainyard-api: another process is collecting blobs now; try again later", file=sys.stderr)
        return 3
    verb = "would remove" if dry_run else "removed"
    for blob in report.removed:
        print(f"{verb} {blob.sha256} {blob.size} bytes ({blob.why})")
    freed = "would be freed" if dry_run else "freed"
    for left in report.leftovers:  # what agents' direct uploads left under incoming/ (on S3)
        size = "" if left.size is None else f" {left.size} bytes"
        print(f"{verb} {left.key}{size} ({left.why})")
    print(f"trainyard-api: {verb} {len(report.removed)} blobs, {report.bytes_freed} bytes {freed}")
    if report.leftovers:
        print(f"trainyard-api: {verb} {len(report.leftovers)} leftovers of direct uploads")
    return 0


async def _collect_once(settings: Settings, dry_run: bool) -> "CollectionReport | None":
    from api.core.db import create_engine, create_sessionmaker
    from api.core.notify import Notifier
    from api.core.s3blobs import blob_store
    from api.storage.collector import collect_claimed

    engine = create_engine(settings)
    try:
        sessionmaker = create_sessionmaker(engine, Notifier())  # nothing it does wakes a long-poll
        return await collect_claimed(sessionmaker, blob_store(settings), settings, dry_run=dry_run)
    finally:
        await engine.dispose()


def _install_base_packages(settings: Settings) -> int:
    """The built-in base packages brought up to this code (docs/base-packages.md), one line each."""
    from api.base_packages.service import install_now

    private_data_dir(settings)  # the blobs may live in the data dir, on PostgreSQL too
    for item in asyncio.run(install_now(settings)):
        state = "installed" if item.added else "is current at"
        print(f"trainyard-api: base package {item.name} {state} {item.version} (sha256 {item.sha256[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
