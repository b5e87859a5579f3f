"""Prediction services: publish a version on a machine, read them, start, stop, delete
(their moves are api/services/lifecycle.py's; the agent's facts api/services/reports.py's)."""

import unicodedata
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.errors import Conflict, InvalidInput, NotFound
from api.core.notify import Notifier
from api.core.repository import add_named, get_by_name
from api.core.schemas import Page, PageParams, paged
from api.core.unit_of_work import commit_early
from api.models import Machine, Package, PackageVersion, Project, Service, ServiceAuditEvent
from api.packages.service import get_package, get_version
from api.runs.lifecycle import Actor
from api.services import lifecycle
from api.services.lifecycle import LIVE, S
from api.services.proxy import PredictClient, Prediction
from api.services.schemas import ServiceCreate, ServiceEndpointRead, ServiceEventRead, ServiceRead
from api.webhooks import outbox
from shared.versions import Version


@dataclass(frozen=True, slots=True)
class LoadedService:
    """A service with the names its answer shows, read in one statement."""

    service: Service
    project: Project
    package: str
    version: str
    machine: Machine


_LOADED = (
    select(Service, Project, Package.name, PackageVersion.major, PackageVersion.minor, Machine)
    .join(Project, Project.id == Service.project_id)
    .join(PackageVersion, PackageVersion.id == Service.package_version_id)
    .join(Package, Package.id == PackageVersion.package_id)
    .join(Machine, Machine.id == Service.machine_id)
)
# Read anew each time (a watcher's re-read must see what committed since: api/core/watch.py).
_BY_NAME = _LOADED.where(
    Service.project_id == bindparam("project_id"), Service.name == bindparam("name")
).execution_options(populate_existing=True)


def _loaded(
    service: Service, project: Project, package: str, major: int, minor: int, machine: Machine
) -> LoadedService:
    return LoadedService(service, project, package, str(Version(major, minor)), machine)


async def load_service(session: AsyncSession, project_id: uuid.UUID, name: str) -> LoadedService:
    """The service named `name` in the project whose id the caller's authorisation found."""
    name = unicodedata.normalize("NFC", name)
    row = (await session.execute(_BY_NAME, {"project_id": project_id, "name": name})).one_or_none()
    if row is None:
        raise NotFound(f"no service named {name!r}", code="service_not_found")
    return _loaded(*row)


async def create_service(
    session: AsyncSession, project: Project, data: ServiceCreate, actor: Actor
) -> Service:
    """`created`: a version of one of the project's packages that has `main.py` with `predict`, on a
    registered, enabled machine. Nothing is written before every check passed."""
    package = await get_package(session, project, data.package)
    version = await get_version(session, package, data.version)
    if not version.has_predict:
        raise InvalidInput(
            f"version {data.version} of {package.name!r} has no main.py with Main.predict: it cannot serve",
            code="package_cannot_serve",
            field="version",
        )
    machine = await get_by_name(session, Machine, data.machine, "machine")
    if not machine.enabled:
        raise Conflict(f"machine {machine.name!r} is disabled", code="machine_disabled", field="machine")
    service = await add_named(
        session,
        Service(
            project_id=project.id,
            name=data.name,
            package_version_id=version.id,
            machine_id=machine.id,
            max_run_seconds=data.max_run_seconds,
            instances=data.instances,
            status=S.CREATED.value,
            endpoints={},
            created_by=actor.id,
        ),
        "service",
    )
    await outbox.service_status_changed(session, service, None, S.CREATED.value, None)
    lifecycle.record_event(
        session,
        service,
        actor,
        "service_created",
        to_status=S.CREATED.value,
        detail=f"package {package.name} {data.version}, machine {machine.name}, {data.instances} instances",
    )
    return service


async def servable_versions(session: AsyncSession, project: Project, limit: int) -> list[tuple[str, str]]:
    """(package, version) of the project's versions that have `main.py` with `predict`: what a service
    may publish; by package name, newest version first (the console's picker)."""
    rows = await session.execute(
        select(Package.name, PackageVersion.major, PackageVersion.minor)
        .join(Package, Package.id == PackageVersion.package_id)
        .where(Package.project_id == project.id, PackageVersion.has_predict)
        .order_by(Package.name, PackageVersion.major.desc(), PackageVersion.minor.desc())
        .limit(limit)
    )
    return [(name, str(Version(major, minor))) for name, major, minor in rows]


def service_read(loaded: LoadedService) -> ServiceRead:
    service = loaded.service
    return ServiceRead(
        id=service.id,
        project=loaded.project.name,
        name=service.name,
        package=loaded.package,
        version=loaded.version,
        machine=loaded.machine.name,
        max_run_seconds=service.max_run_seconds,
        instances=service.instances,
        status=S(service.status),
        serving_instances=sorted(int(key) for key in service.endpoints),
        reason_code=service.reason_code,
        error_tail=service.error_tail,
        delete_requested=service.delete_requested,
        created_at=service.created_at,
        started_at=service.started_at,
        ended_at=service.ended_at,
    )


async def list_services(
    session: AsyncSession, project: Project, page: PageParams, status: S | None = None
) -> Page[ServiceRead]:
    statement = _LOADED.where(Service.project_id == project.id)
    if status is not None:
        statement = statement.where(Service.status == status.value)

    def item(*row: object) -> ServiceRead:
        return service_read(_loaded(*row))  # type: ignore[arg-type]

    return await paged(session, statement, Service.id, page, item)


async def start_service(
    session: AsyncSession, notifier: Notifier, loaded: LoadedService, actor: Actor
) -> None:
    await lifecycle.start(session, notifier, loaded.service, actor, machine_enabled=loaded.machine.enabled)


async def stop_service(session: AsyncSession, notifier: Notifier, service: Service, actor: Actor) -> None:
    """409 `service_not_active` when there is nothing to stop."""
    if not await lifecycle.request_stop(session, notifier, service, actor):
        raise Conflict(
            f"the service is {service.status}: there is nothing to stop", code="service_not_active"
        )


async def delete_service(session: AsyncSession, notifier: Notifier, service: Service, actor: Actor) -> bool:
    """Delete it now (True) when no agent serves it; else stop it first and delete it once it has
    stopped (False): an agent never keeps serving a service nobody can see or stop."""
    for _ in range(3):
        if S(service.status) not in LIVE:
            gone = await session.execute(
                delete(Service).where(Service.id == service.id, Service.revision == service.revision)
            )
            if gone.rowcount == 1:  # type: ignore[attr-defined]
                session.expunge(service)
                return True
            await lifecycle.reread(session, service)
            continue
        if await lifecycle.change(
            session, service, lambda s: {"delete_requested": True} if S(s.status) in LIVE else None
        ):
            lifecycle.record_event(session, service, actor, "delete_requested")
            if service.status != S.STOPPING:
                await lifecycle.request_stop(session, notifier, service, actor)
            # A start no agent had taken is withdrawn and the service stopped at once: then it is gone.
            return await session.get(Service, service.id) is None
    raise Conflict("the service kept changing under this request; try again", code="concurrent_update")


def endpoint_read(service: Service) -> ServiceEndpointRead:
    """The serving instances' addresses and the secret; 409 `service_not_serving` when none answers."""
    addresses, secret = serving_endpoints(service)
    return ServiceEndpointRead(addresses=addresses, secret=secret)


def serving_endpoints(service: Service) -> tuple[list[str], str]:
    if service.status != S.SERVING or not service.endpoints:
        raise Conflict(
            f"service {service.name!r} is {service.status}, not serving", code="service_not_serving"
        )
    addresses = [service.endpoints[key] for key in sorted(service.endpoints, key=int)]
    return addresses, service.secret


async def predict(
    session: AsyncSession,
    client: PredictClient,
    loaded: LoadedService,
    read_body: Callable[[], Awaitable[bytes]],
    content_type: str | None,
) -> Prediction:
    """What a serving instance answers to the body `read_body` gives (the REST route's and the
    console's test form's one path): 409 `service_not_serving`, 502 `service_unreachable`, 422
    `prediction_failed`. The body is read after the request's connection went back to the pool."""
    addresses, secret = serving_endpoints(loaded.service)
    service_id, label = loaded.service.id, (loaded.project.name, loaded.service.name)
    await commit_early(session, "a prediction waits on the model: no connection is held meanwhile")
    body = await read_body()
    return await client.predict(service_id, label, addresses, secret, body, content_type)


async def list_events(session: AsyncSession, service: Service, page: PageParams) -> Page[ServiceEventRead]:
    statement = select(ServiceAuditEvent).where(ServiceAuditEvent.service_id == service.id)
    return await paged(session, statement, ServiceAuditEvent.id, page, ServiceEventRead.model_validate)


async def machine_service(session: AsyncSession, machine_id: uuid.UUID, service_id: uuid.UUID) -> Service:
    """The service with that id if it is published on the caller's machine; 404 otherwise (another
    machine's service looks like one that does not exist)."""
    service = await session.scalar(
        select(Service).where(Service.id == service_id, Service.machine_id == machine_id)
    )
    if service is None:
        raise NotFound(f"no service {service_id} on this machine", code="service_not_found")
    return service
