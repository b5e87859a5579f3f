"""The named exception to one unit of work per request: a commit before the request has ended."""

from sqlalchemy.ext.asyncio import AsyncSession


async def commit_early(session: AsyncSession, reason: str) -> None:
    """Commit what the request has done so far, before it ends, for `reason`.

    A request's changes are committed by the session dependency alone (`api/core/db.py`), after the
    route returned, so that nothing half-written survives an error. A route may commit early only
    where it is about to wait on something other than the database, for a long or unbounded time: a
    body that streams in, a download that streams out, a long-poll, a password hash. Holding the
    connection over that wait would stall every other request on SQLite (one connection) and drain
    the pool on PostgreSQL. What it committed is then whole on its own: a name checked, a claim
    made, an attempt counted; what follows begins a new transaction on the same session, which the
    dependency commits or rolls back as usual.

    `reason` says which wait this is; it is not used at run time (grep for `commit_early` to find
    every such commit and why it is allowed).
    """
    del reason
    await session.commit()
