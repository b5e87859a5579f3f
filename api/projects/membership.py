"""The one membership a project gets by itself: its creator's."""

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.models import ProjectMember, Role

CREATOR_ROLE = "project-admin"


async def add_creator(session: AsyncSession, project_id: uuid.UUID, user_id: uuid.UUID) -> None:
    role_id = await session.scalar(select(Role.id).where(Role.name == CREATOR_ROLE))
    assert role_id is not None, "built-in roles are made at start-up"
    session.add(ProjectMember(project_id=project_id, user_id=user_id, role_id=role_id))
    await session.flush()
