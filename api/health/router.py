from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy import text

from api.core.errors import ServiceUnavailable, error_responses
from api.core.migrate import schema_problem

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: str


@router.get("/healthz", operation_id="health_live")
async def healthz() -> Health:
    """The process answers."""
    return Health(status="ok")


@router.get("/readyz", operation_id="health_ready", responses=error_responses(503))
async def readyz(request: Request) -> Health:
    """The database answers and its schema is the one this version needs."""
    engine = request.app.state.engine
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        problem = await schema_problem(engine, request.app.state.schema_heads)
    except Exception as error:
        raise ServiceUnavailable(
            f"the database does not answer: {type(error).__name__}", code="database_unavailable"
        ) from None
    if problem is not None:
        raise ServiceUnavailable(problem, code="schema_outdated")
    return Health(status="ready")
