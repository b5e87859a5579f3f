"""Machines: the target machines, online or not, their GPUs and the runs on them; register one, enable,
disable, rotate or revoke its agent token (issue 12, page 9).

A client of `api/machines/service.py` with the API's permissions: `machines.view` sees the page,
`machines.admin` acts (the routes `machines_*` require the same). An agent token is shown once, in
the answer to the POST that made it (`no-store`; reloading it would post again, and a second
registration of the name is refused): never in a URL, never on a page that can be fetched again.
"""

import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import HTMLResponse, RedirectResponse

from api.console.common import Signed, SignedChange, SignedPage, field_errors, refuse, require
from api.console.pages import PageAnswer, redirect, render
from api.console.session import audit
from api.core.db import SessionDep
from api.core.deps import SettingsDep, TokenKeyDep
from api.core.errors import Conflict, NotFound
from api.core.schemas import MAX_PAGE_SIZE, PageParams
from api.core.security import Permission, Principal
from api.machines import service
from api.machines.schemas import MachineCreate, MachineRead
from api.models import Machine, Project, Run
from shared.enums import ACTIVE_RUN_STATUSES

PAGE = "machines"
URL = "/ui/machines/"
router = APIRouter(prefix="/ui", include_in_schema=False)
FormText = Annotated[str, Form(max_length=8192)]
Cursor = Annotated[str | None, Query(max_length=64)]
NO_STORE = {"Cache-Control": "no-store"}
EMPTY_FORM = {"name": "", "address": "", "description": "", "capacity": "1"}


def machine_url(name: str) -> str:
    """A machine's actions live under this path (its name quoted whole: any alphabet)."""
    return f"{URL}{quote(name, safe='')}"


@dataclass
class RunOnMachine:
    """An active run as the Machines page shows it: only where the person may see the project's runs."""

    project: str
    template: str
    number: int
    status: str
    stage: str | None
    progress: float | None
    gpus: int


@dataclass
class MachineRow:
    machine: MachineRead
    runs: list[RunOnMachine] = field(default_factory=list)
    hidden_runs: int = 0  # active runs in projects the person does not see
    has_token: bool = True  # False once revoked, until a rotation gives a new one


async def _active_runs(
    session: AsyncSession, principal: Principal, rows: dict[uuid.UUID, MachineRow]
) -> None:
    """What runs on each machine now (one statement for the page), and which have no agent token."""
    if not rows:
        return
    statement = (
        select(Run, Project.name)
        .join(Project, Project.id == Run.project_id)
        .where(Run.machine_id.in_(rows), Run.status.in_([s.value for s in ACTIVE_RUN_STATUSES]))
        .order_by(Run.created_at)
    )
    revoked = select(Machine.id).where(Machine.id.in_(rows), Machine.token_hmac.is_(None))
    for machine_id in await session.scalars(revoked):
        rows[machine_id].has_token = False
    for run, project in await session.execute(statement):
        row = rows[run.machine_id]
        if not principal.can(Permission.RUNS_VIEW, run.project_id):
            row.hidden_runs += 1
            continue
        config = run.config or {}
        row.runs.append(
            RunOnMachine(
                project=project,
                template=str(config.get("template", "")),
                number=run.number,
                status=run.status,
                stage=run.stage,
                progress=run.progress,
                gpus=int(config.get("gpus") or 0),
            )
        )


async def _listing(
    session: AsyncSession, where: Signed, offline_after: float, cursor: str | None = None
) -> dict[str, Any]:
    """The page's data, read before any change is tried (a refused form renders it as it was)."""
    page = await service.list_machines(session, PageParams(limit=MAX_PAGE_SIZE, cursor=cursor), offline_after)
    rows = {machine.id: MachineRow(machine) for machine in page.items}
    await _active_runs(session, where.principal, rows)
    return {
        "rows": list(rows.values()),
        "next_cursor": page.next_cursor,
        "may_admin": where.can(Permission.MACHINES_ADMIN),
        "offline_after": offline_after,
        "machine_url": machine_url,
    }


def _page(
    request: Request,
    where: Signed,
    listing: dict[str, Any],
    *,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    context = where.context(**listing, form=form or EMPTY_FORM, errors=errors or {}, active=PAGE)
    return render(request, "machines/list.html", context, signed_in=where.signed_in, status_code=status_code)


def _token_page(
    request: Request, where: Signed, machine: MachineRead, token: str, *, registered: bool
) -> HTMLResponse:
    """The agent token, this once: the answer to the POST, never stored by the browser."""
    context = where.context(
        machine=machine,
        token=token,
        registered=registered,
        api_url=str(request.base_url).rstrip("/"),
        active=PAGE,
    )
    status_code = 201 if registered else 200
    page = render(request, "machines/token.html", context, signed_in=where.signed_in, status_code=status_code)
    page.headers.update(NO_STORE)
    return page


@router.get("/machines/")
async def machines_page(
    request: Request, session: SessionDep, settings: SettingsDep, where: SignedPage, cursor: Cursor = None
) -> HTMLResponse:
    require(request, where, Permission.MACHINES_VIEW)
    return _page(request, where, await _listing(session, where, settings.offline_after, cursor))


@router.post("/machines")
async def register_machine(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    key: TokenKeyDep,
    where: SignedChange,
    name: FormText = "",
    address: FormText = "",
    description: FormText = "",
    capacity: FormText = "1",
) -> HTMLResponse:
    """What `POST /api/v1/machines` does (`machines_create`): the same permission, schema and service."""
    require(request, where, Permission.MACHINES_ADMIN)
    form = {"name": name, "address": address, "description": description, "capacity": capacity}
    listing = await _listing(session, where, settings.offline_after)

    def refused(errors: dict[str, str], status_code: int) -> PageAnswer:
        return PageAnswer(_page(request, where, listing, form=form, errors=errors, status_code=status_code))

    try:
        data = MachineCreate.model_validate(
            {
                "name": name,
                "address": address,
                "description": description,
                "capacity": capacity.strip() or "1",
            }
        )
    except ValidationError as invalid:
        raise refused(field_errors(invalid), 422) from None
    try:
        machine, token = await service.register_machine(session, key, data)
    except Conflict as taken:
        raise refused({"name": taken.detail}, 409) from None
    audit(session, request, where.principal, "machines_create")
    read = service.machine_read(machine, settings.offline_after)
    return _token_page(request, where, read, token, registered=True)


async def _machine(request: Request, session: AsyncSession, where: Signed, name: str) -> None:
    """404 page for a machine that is not (or no longer) there; checked before any change."""
    try:
        await service.get_machine(session, name)
    except NotFound:
        raise refuse(request, where.signed_in, 404, "machines.not_found") from None


@router.post("/machines/{machine}/enable")
async def enable_machine(
    request: Request, session: SessionDep, where: SignedChange, machine: str
) -> RedirectResponse:
    return await _set_enabled(request, session, where, machine, True)


@router.post("/machines/{machine}/disable")
async def disable_machine(
    request: Request, session: SessionDep, where: SignedChange, machine: str
) -> RedirectResponse:
    """A disabled machine takes no new run; the runs it has go on (as `machines_disable`)."""
    return await _set_enabled(request, session, where, machine, False)


async def _set_enabled(
    request: Request, session: AsyncSession, where: Signed, machine: str, enabled: bool
) -> RedirectResponse:
    require(request, where, Permission.MACHINES_ADMIN)
    await _machine(request, session, where, machine)
    await service.set_machine_enabled(session, machine, enabled)
    audit(session, request, where.principal, "machines_enable" if enabled else "machines_disable")
    return redirect(URL)


@router.post("/machines/{machine}/rotate-token")
async def rotate_token(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    key: TokenKeyDep,
    where: SignedChange,
    machine: str,
) -> HTMLResponse:
    """A new agent token, shown this once; the old one stops working at once (`machines_rotate_token`)."""
    require(request, where, Permission.MACHINES_ADMIN)
    await _machine(request, session, where, machine)
    found, token = await service.rotate_token(session, key, machine)
    audit(session, request, where.principal, "machines_rotate_token")
    read = service.machine_read(found, settings.offline_after)
    return _token_page(request, where, read, token, registered=False)


@router.post("/machines/{machine}/revoke-token")
async def revoke_token(
    request: Request, session: SessionDep, where: SignedChange, machine: str
) -> RedirectResponse:
    """No agent token at all: the agent is refused at once (`machines_revoke_token`)."""
    require(request, where, Permission.MACHINES_ADMIN)
    await _machine(request, session, where, machine)
    await service.revoke_token(session, machine)
    audit(session, request, where.principal, "machines_revoke_token")
    return redirect(URL)
