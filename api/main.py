"""create_app() and the lifespan: wiring only."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import __doc__ as description
from api.access.bootstrap import prepare_database
from api.access.login_gate import LoginGate
from api.access.members_router import audit_router
from api.access.members_router import router as members_router
from api.access.router import roles_router, users_router
from api.access.tokens_router import auth_router, tokens_router
from api.agent_routes.direct import router as agent_direct_router
from api.agent_routes.hold import HeldPolls
from api.agent_routes.io import router as agent_io_router
from api.agent_routes.router import router as agent_router
from api.agent_routes.services import router as agent_services_router
from api.base_packages.router import router as base_packages_router
from api.console.app import install_console
from api.core.access_log import quiet_agent_access_lines
from api.core.auth_first import install_auth_first
from api.core.config import Settings
from api.core.db import create_engine, create_sessionmaker, pg_conninfo
from api.core.errors import install_error_handlers
from api.core.idempotency import install_idempotency
from api.core.limits import BodySizeLimit
from api.core.migrate import head_revisions, schema_problem
from api.core.notify import Notifier, PgNotifier
from api.core.openapi import install_openapi
from api.core.prometheus import RequestMetrics
from api.core.prometheus import router as prometheus_router
from api.core.s3blobs import blob_store
from api.core.transport import Transport
from api.datasets.router import router as datasets_router
from api.health.router import router as health_router
from api.machines.router import router as machines_router
from api.model_types.router import router as model_types_router
from api.packages.router import router as packages_router
from api.processes.router import router as processes_router
from api.projects.router import router as projects_router
from api.runs.outputs_router import router as run_outputs_router
from api.runs.router import router as runs_router
from api.runs.sweeper import Sweeper
from api.schedules.firing import ScheduleFiring
from api.schedules.router import router as schedules_router
from api.services.proxy import PredictClient
from api.services.router import router as services_router
from api.storage.collector import collect_forever
from api.telemetry.router import agent_router as telemetry_agent_router
from api.telemetry.router import router as telemetry_router
from api.templates.router import router as templates_router
from api.webhooks.dispatch import Dispatcher
from api.webhooks.router import router as webhooks_router

logger = logging.getLogger(__name__)
API_PREFIX = "/api/v1"
STALE_UPLOAD_SECONDS = 6 * 3600
VERSION = "0.1.0"


class SchemaNotCurrent(RuntimeError):
    pass


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        heads = head_revisions()
        problem = await schema_problem(engine, heads)
        if problem is not None:
            await engine.dispose()
            raise SchemaNotCurrent(f"refusing to start: {problem}")
        # Several API processes may serve PostgreSQL: wake-ups travel between them by LISTEN/NOTIFY.
        notifier = (
            Notifier() if settings.is_sqlite else PgNotifier(pg_conninfo(settings.resolved_database_url))
        )
        sessionmaker = create_sessionmaker(engine, notifier)
        token_key = settings.secret_key_bytes()
        # `trainyard-api serve` uses the bootstrap token before it serves and drops it
        # (api/access/bootstrap.py); an app made in process (tests, embedding) may still be handed one.
        bootstrap = settings.bootstrap_token.get_secret_value() if settings.bootstrap_token else None
        if await prepare_database(sessionmaker, token_key, bootstrap):
            logger.info("created the administrator `admin` holding TRAINYARD_BOOTSTRAP_TOKEN")
        app.state.settings = settings
        app.state.engine = engine
        app.state.schema_heads = heads
        app.state.sessionmaker = sessionmaker
        app.state.notifier = notifier
        app.state.token_key = token_key
        app.state.login_gate = LoginGate(settings)
        blobs = blob_store(settings)  # the data dir's blobs, another folder, or S3 (docs/storage.md)
        blobs.cleanup_temp(older_than_seconds=STALE_UPLOAD_SECONDS)  # scratch files of a crashed process
        app.state.blobs = blobs
        await notifier.start()
        app.state.predict_client = PredictClient()  # one per process: kept-alive connections
        sweeper = asyncio.create_task(Sweeper(sessionmaker, notifier, settings).run_forever(), name="sweeper")
        dispatcher = asyncio.create_task(
            Dispatcher(sessionmaker, notifier, settings).run_forever(), name="webhook-dispatcher"
        )
        schedules = asyncio.create_task(
            ScheduleFiring(sessionmaker, notifier, settings).run_forever(), name="schedules"
        )
        tasks = [sweeper, dispatcher, schedules]
        if settings.blob_gc_interval_seconds > 0:  # 0: off (docs/storage.md, "Garbage collection")
            tasks.append(asyncio.create_task(collect_forever(sessionmaker, blobs, settings), name="blob-gc"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await app.state.predict_client.aclose()
            await notifier.stop()
            await engine.dispose()

    quiet_agent_access_lines()
    app = FastAPI(
        title="Trainyard",
        version=VERSION,
        description=description or "",
        lifespan=lifespan,
        # /docs and /redoc are the console's (api/console/docs.py): served from the package, offline.
        docs_url=None,
        redoc_url=None,
        openapi_tags=[
            {"name": "projects", "description": "Scopes of templates, processes, packages and datasets"},
            {"name": "model types", "description": "Kinds of task (administrators)"},
            {"name": "machines", "description": "Target machines and their agent tokens (administrators)"},
            {"name": "templates", "description": "Training templates"},
            {"name": "processes", "description": "Training processes and Primo's actions"},
            {"name": "runs", "description": "Runs, their status, progress and audit trail"},
            {"name": "packages", "description": "ML packages, their versions, lineage and trained models"},
            {"name": "datasets", "description": "Datasets and their versions: manifests over shared files"},
            {"name": "agent", "description": "The agent protocol: agent tokens only"},
            {"name": "auth", "description": "Log in with a password, log out, who am I"},
            {"name": "users", "description": "People and bots, and their roles in each project"},
            {"name": "roles", "description": "Named sets of permissions, and the permission catalogue"},
            {"name": "tokens", "description": "API tokens: your own, and (administrators) bots'"},
            {"name": "audit", "description": "The audit trail: who changed what, when"},
            {"name": "webhooks", "description": "Signed event deliveries to a project's orchestrators"},
            {"name": "services", "description": "Package versions published on a machine, answering predict"},
            {"name": "operations", "description": "Liveness and readiness"},
        ],
    )
    # The agents' routes first: they take nearly all the requests (10,000 machines each poll every
    # 30 s and post telemetry), and FastAPI matches a request against the routes in order. Each
    # router is included straight into the app: one nesting level less to match through.
    for router in (
        agent_router,
        telemetry_agent_router,
        agent_io_router,
        agent_services_router,
        agent_direct_router,
        projects_router,
        model_types_router,
        machines_router,
        templates_router,
        processes_router,
        schedules_router,
        packages_router,
        base_packages_router,
        datasets_router,
        run_outputs_router,
        runs_router,
        telemetry_router,
        auth_router,
        users_router,
        roles_router,
        members_router,
        tokens_router,
        audit_router,
        webhooks_router,
        services_router,
    ):
        app.include_router(router, prefix=API_PREFIX)
    install_idempotency(app)  # Idempotency-Key on every POST a signed-in user makes
    app.include_router(health_router)
    app.include_router(prometheus_router)
    install_console(app)
    app.add_middleware(HeldPolls, path=f"{API_PREFIX}/agent/commands")
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_json_body_bytes,
        max_telemetry_bytes=settings.max_telemetry_body_bytes,
    )
    # Outside the others: a refused secret in the URL or a flood of headers reaches nothing else, and
    # every answer, theirs included, gets the transport's headers. Metrics still count it all.
    app.add_middleware(Transport)
    app.add_middleware(RequestMetrics)
    install_error_handlers(app)
    install_auth_first(app)
    install_openapi(app)
    return app
