"""`trainyard-api migrate | serve [--host H] [--port P] [--workers N]`."""

import argparse
import asyncio
import logging
import sys

from pydantic import ValidationError

from api.config import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        problems = "; ".join(
            f"TRAINYARD_{'_'.join(str(p) for p in e['loc']).upper() or 'SETTINGS'}: {e['msg']}"
            for e in error.errors()
        )
        raise SystemExit(f"trainyard-api: invalid settings: {problems}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainyard-api", description="Trainyard's central service.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="bring the database schema to this version")
    serve = commands.add_parser("serve", help="serve the API")
    serve.add_argument("--host", help="default: TRAINYARD_HOST (127.0.0.1)")
    serve.add_argument("--port", type=int, help="default: TRAINYARD_PORT (8000)")
    serve.add_argument(
        "--workers", type=int, default=1, help="API processes (PostgreSQL only: SQLite takes one)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings()

    if args.command == "migrate":
        from api.migrate import upgrade

        if settings.is_sqlite:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(settings.resolved_database_url)
        print("trainyard-api: the database schema is current")
        return 0

    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.workers > 1 and settings.is_sqlite:
        # The long-poll wake-ups and SQLite's single writer both live inside one process.
        parser.error(
            "SQLite takes one API process: use PostgreSQL (TRAINYARD_DATABASE_URL) for --workers > 1"
        )
    from api.migrate import schema_problem_now

    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    problem = schema_problem_now(settings.resolved_database_url)
    if problem is not None:
        print(f"trainyard-api: refusing to start: {problem}", file=sys.stderr)
        return 2
    from api.bootstrap import not_dumpable, serve_without_bootstrap_token, use_bootstrap_token

    not_dumpable()
    if settings.bootstrap_token is not None:
        if asyncio.run(use_bootstrap_token(settings)):
            print("trainyard-api: created the administrator `admin` holding TRAINYARD_BOOTSTRAP_TOKEN")
        serve_without_bootstrap_token(sys.argv[1:] if argv is None else argv)
    import uvicorn

    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port or settings.port,
        workers=args.workers,
        proxy_headers=True,
        log_level="info",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
