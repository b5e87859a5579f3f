"""The public operational routes: liveness, readiness, the OpenAPI document and its page."""

from fastapi import FastAPI
from httpx import AsyncClient

from api.core.migrate import downgrade, upgrade
from tests.api.world import ok, problem


async def test_healthz_answers_without_a_token(anon: AsyncClient) -> None:
    assert ok(await anon.get("/healthz")) == {"status": "ok"}


async def test_readyz_answers_ready_on_a_current_schema(anon: AsyncClient) -> None:
    assert ok(await anon.get("/readyz")) == {"status": "ready"}


async def test_public_routes_need_no_token_and_ignore_a_bad_one(anon: AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "garbage"}):
        assert ok(await anon.get("/healthz", headers=headers))["status"] == "ok"
        assert ok(await anon.get("/readyz", headers=headers))["status"] == "ready"
        assert ok(await anon.get("/openapi.json", headers=headers))["openapi"].startswith("3.")
        docs = await anon.get("/docs", headers=headers)
        assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
        assert "/openapi.json" in docs.text


async def test_the_api_itself_is_not_public(anon: AsyncClient) -> None:
    problem(await anon.get("/api/v1/projects"), 401, "missing_token")


async def test_readyz_reports_a_schema_that_is_no_longer_current(
    anon: AsyncClient, app: FastAPI, database_url: str
) -> None:
    """An operator downgraded the database under a running API: not ready, and it says why."""
    await app.state.engine.dispose()  # no pooled connection holds the tables being dropped
    downgrade(database_url, "base")
    body = problem(await anon.get("/readyz"), 503, "schema_outdated")
    assert "trainyard-api migrate" in body["detail"]
    assert ok(await anon.get("/healthz"))["status"] == "ok"  # alive, just not ready

    upgrade(database_url)
    assert ok(await anon.get("/readyz"))["status"] == "ready"
