"""Target machines: registration, the agent token, enable/disable, and capacity."""

from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.core.errors import Conflict
from api.core.repository import add_named, get_by_name
from api.core.schemas import Page, PageParams, paged
from api.core.security import new_token, token_hmac
from api.machines.schemas import MachineCreate, MachineRead, MachineUpdate
from api.models import Machine, Process, Service
from api.models.base import utcnow


def machine_read(machine: Machine, offline_after: float) -> MachineRead:
    online = machine.last_seen_at is not None and utcnow() - machine.last_seen_at <= timedelta(
        seconds=offline_after
    )
    columns = {column.key: getattr(machine, column.key) for column in Machine.__table__.columns}
    return MachineRead.model_validate({**columns, "online": online})


async def get_machine(session: AsyncSession, name: str) -> Machine:
    return await get_by_name(session, Machine, name, "machine")


async def register_machine(session: AsyncSession, key: bytes, data: MachineCreate) -> tuple[Machine, str]:
    token = new_token()
    machine = Machine(
        name=data.name,
        address=data.address,
        description=data.description,
        capacity=data.capacity,
        token_hmac=token_hmac(key, token),
        gpus=[],
    )
    return await add_named(session, machine, "machine"), token


async def update_machine(session: AsyncSession, name: str, data: MachineUpdate) -> Machine:
    machine = await get_machine(session, name)
    if data.capacity is not None:
        # Conditional: never below the processes the machine holds, even if one is being created now.
        result = await session.execute(
            update(Machine)
            .where(Machine.id == machine.id, Machine.process_count <= data.capacity)
            .values(capacity=data.capacity)
        )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise Conflict(
                f"machine {name!r} holds more than {data.capacity} processes",
                code="capacity_below_processes",
                field="capacity",
            )
    if data.address is not None:
        machine.address = data.address
    if data.description is not None:
        machine.description = data.description
    await session.flush()
    await session.refresh(machine)
    return machine


async def set_machine_enabled(session: AsyncSession, name: str, enabled: bool) -> Machine:
    machine = await get_machine(session, name)
    machine.enabled = enabled
    await session.flush()
    return machine


async def rotate_token(session: AsyncSession, key: bytes, name: str) -> tuple[Machine, str]:
    """A new agent token; the old one stops working at once."""
    machine = await get_machine(session, name)
    token = new_token()
    machine.token_hmac = token_hmac(key, token)
    await session.flush()
    return machine, token


async def revoke_token(session: AsyncSession, name: str) -> Machine:
    """No agent token at all: the agent is refused (401) until a rotate-token gives a new one."""
    machine = await get_machine(session, name)
    machine.token_hmac = None
    await session.flush()
    return machine


async def delete_machine(session: AsyncSession, name: str) -> None:
    machine = await get_machine(session, name)
    count = await session.scalar(select(func.count()).where(Process.machine_id == machine.id))
    if count:
        raise Conflict(f"machine {name!r} still holds {count} processes", code="machine_in_use")
    services = await session.scalar(select(func.count()).where(Service.machine_id == machine.id))
    if services:
        raise Conflict(f"machine {name!r} still holds {services} services", code="machine_in_use")
    await session.delete(machine)
    await session.flush()


async def list_machines(session: AsyncSession, page: PageParams, offline_after: float) -> Page[MachineRead]:
    def item(machine: Machine) -> MachineRead:
        return machine_read(machine, offline_after)

    return await paged(session, select(Machine), Machine.id, page, item)
