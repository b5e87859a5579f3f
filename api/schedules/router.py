"""`/projects/{project}/processes/{process_id}/schedule`: a process's cron schedule (docs/clients.md)."""

from typing import Annotated

from fastapi import APIRouter, Response, status

from api.core.db import SessionDep
from api.core.errors import error_responses
from api.core.security import Permission
from api.processes.deps import ProcessTarget, process_for
from api.schedules import service
from api.schedules.schemas import ScheduleRead, ScheduleSet

router = APIRouter(prefix="/projects/{project}", tags=["processes"], responses=error_responses(401, 403, 404))

Viewed = Annotated[ProcessTarget, process_for(Permission.PROCESSES_VIEW)]
Managed = Annotated[ProcessTarget, process_for(Permission.PROCESSES_MANAGE)]
PATH = "/processes/{process_id}/schedule"


@router.put(PATH, operation_id="processes_schedule_put", responses=error_responses(422))
async def put_schedule(data: ScheduleSet, target: Managed, session: SessionDep) -> ScheduleRead:
    """Start the process on a cron schedule (create or replace). 422 `invalid_cron` with the parser's
    words, `invalid_timezone` for a name that is not an IANA zone. Due firings start the process as
    the actor `schedule`; one while a run is active, or of a disabled process, is skipped and recorded
    in the process's events."""
    schedule = await service.set_schedule(session, target.loaded.process, data, target.actor)
    return ScheduleRead.model_validate(schedule)


@router.get(PATH, operation_id="processes_schedule_get")
async def get_schedule(target: Viewed, session: SessionDep) -> ScheduleRead:
    """The schedule with its next firing (`next_fire_at`, UTC); 404 `schedule_not_found` if it has none."""
    return ScheduleRead.model_validate(await service.get_schedule(session, target.loaded.process))


@router.delete(PATH, operation_id="processes_schedule_delete", status_code=status.HTTP_204_NO_CONTENT)
async def delete_schedule(target: Managed, session: SessionDep) -> Response:
    """Remove the schedule; 404 `schedule_not_found` if it has none."""
    await service.remove_schedule(session, target.loaded.process, target.actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
