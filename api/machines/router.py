from typing import Annotated

from fastapi import APIRouter, Response, status

from api.core.db import SessionDep
from api.core.deps import SettingsDep, TokenKeyDep
from api.core.errors import error_responses
from api.core.schemas import Page, PageDep
from api.core.security import Permission, Principal, requires
from api.machines import service
from api.machines.schemas import MachineCreate, MachineRead, MachineUpdate, MachineWithToken

router = APIRouter(prefix="/machines", tags=["machines"], responses=error_responses(401, 403))

Viewer = Annotated[Principal, requires(Permission.MACHINES_VIEW)]
Admin = Annotated[Principal, requires(Permission.MACHINES_ADMIN)]


@router.post(
    "",
    operation_id="machines_create",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(409, 422),
)
async def register_machine(
    data: MachineCreate, session: SessionDep, settings: SettingsDep, key: TokenKeyDep, _: Admin
) -> MachineWithToken:
    """Register a target machine. The answer holds its agent token, shown this once."""
    machine, token = await service.register_machine(session, key, data)
    read = service.machine_read(machine, settings.offline_after)
    return MachineWithToken(**read.model_dump(), agent_token=token)


@router.get("", operation_id="machines_list")
async def list_machines(
    session: SessionDep, settings: SettingsDep, _: Viewer, page: PageDep
) -> Page[MachineRead]:
    return await service.list_machines(session, page, settings.offline_after)


@router.get("/{machine}", operation_id="machines_get", responses=error_responses(404))
async def get_machine(machine: str, session: SessionDep, settings: SettingsDep, _: Viewer) -> MachineRead:
    return service.machine_read(await service.get_machine(session, machine), settings.offline_after)


@router.patch("/{machine}", operation_id="machines_update", responses=error_responses(404, 409, 422))
async def update_machine(
    machine: str, data: MachineUpdate, session: SessionDep, settings: SettingsDep, _: Admin
) -> MachineRead:
    return service.machine_read(await service.update_machine(session, machine, data), settings.offline_after)


@router.delete(
    "/{machine}",
    operation_id="machines_delete",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409),
)
async def delete_machine(machine: str, session: SessionDep, _: Admin) -> Response:
    await service.delete_machine(session, machine)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{machine}/enable", operation_id="machines_enable", responses=error_responses(404))
async def enable_machine(machine: str, session: SessionDep, settings: SettingsDep, _: Admin) -> MachineRead:
    return service.machine_read(
        await service.set_machine_enabled(session, machine, True), settings.offline_after
    )


@router.post("/{machine}/disable", operation_id="machines_disable", responses=error_responses(404))
async def disable_machine(machine: str, session: SessionDep, settings: SettingsDep, _: Admin) -> MachineRead:
    """A disabled machine takes no new run; runs it already has go on."""
    return service.machine_read(
        await service.set_machine_enabled(session, machine, False), settings.offline_after
    )


@router.post("/{machine}/rotate-token", operation_id="machines_rotate_token", responses=error_responses(404))
async def rotate_token(
    machine: str, session: SessionDep, settings: SettingsDep, key: TokenKeyDep, _: Admin
) -> MachineWithToken:
    """A new agent token, shown this once; the old one stops working at once."""
    found, token = await service.rotate_token(session, key, machine)
    read = service.machine_read(found, settings.offline_after)
    return MachineWithToken(**read.model_dump(), agent_token=token)


@router.post("/{machine}/revoke-token", operation_id="machines_revoke_token", responses=error_responses(404))
async def revoke_token(machine: str, session: SessionDep, settings: SettingsDep, _: Admin) -> MachineRead:
    """Revoke the agent token (a machine lost or stolen): its agent is refused at once; its runs are
    lost as for an agent gone silent. `rotate-token` gives the machine a new one."""
    return service.machine_read(await service.revoke_token(session, machine), settings.offline_after)
