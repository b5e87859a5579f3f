"""`/api/v1/agent/services/{service_id}/...`: what a machine's agent reports about the services
published on it, and the package it serves. Another machine's service answers 404, as one that does
not exist."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Request, Response

from api.agent_routes import service as agents
from api.core.db import SessionDep
from api.core.deps import BlobsDep
from api.core.downloads import blob_response
from api.core.errors import error_responses
from api.core.security import CurrentAgent
from api.models import PackageVersion
from api.services import reports
from api.services.service import machine_service
from shared.protocol import ServiceEvent, ServiceEventReply

router = APIRouter(
    prefix="/agent/services/{service_id}", tags=["agent"], responses=error_responses(401, 403, 404)
)


@router.post("/events", operation_id="agent_services_events_report", responses=error_responses(422))
async def report_service_event(
    service_id: uuid.UUID,
    event: Annotated[ServiceEvent, Body()],
    session: SessionDep,
    agent: CurrentAgent,
) -> ServiceEventReply:
    """A fact about one instance: `starting`, `serving` (its address), `exited`, `stopped`. The reply's
    `stop` says the service is no longer wanted served: stop its instances."""
    machine = await agents.agent_machine(session, agent.machine_id)
    service = await machine_service(session, machine.id, service_id)
    return await reports.report_event(session, machine, service, event)


@router.get(
    "/package",
    operation_id="agent_services_package_download",
    responses={200: {"content": {"application/zip": {}}, "description": "The package zip; ETag = sha256"}},
)
async def download_service_package(
    service_id: uuid.UUID, request: Request, session: SessionDep, blobs: BlobsDep, agent: CurrentAgent
) -> Response:
    """The zip of the version the service serves (its start payload's `package_sha256`)."""
    service = await machine_service(session, agent.machine_id, service_id)
    version = await session.get_one(PackageVersion, service.package_version_id)
    return await blob_response(
        blobs,
        version.blob_sha256,
        version.size,
        "application/zip",
        request.headers.get("if-none-match"),
        filename=f"{version.blob_sha256}.zip",
    )
