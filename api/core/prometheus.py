"""`GET /metrics` in Prometheus' text format, and the request metrics middleware.

Counters and histograms are per API process (prometheus-client's default registry; its multiprocess
mode is not used): with several `--workers` or replicas, scrape each process and sum by `instance`.
The gauges of the fleet (runs by status, machines online) are read from the database at each scrape,
so every process reports the same truth. `TRAINYARD_METRICS_TOKEN`, when set, is required as a bearer
token.
"""

import hmac
import time
from datetime import timedelta

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.core.errors import Unauthorized, error_responses
from api.models import Machine, Run
from api.models.base import utcnow
from shared.enums import RunStatus

REQUESTS = Counter("trainyard_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "trainyard_http_request_duration_seconds",
    "Time to answer an HTTP request (a held long-poll counts its wait)",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RUNS = Gauge("trainyard_runs", "Runs by status", ["status"])
MACHINES_ONLINE = Gauge(
    "trainyard_machines_online", "Enabled machines that polled within TRAINYARD_OFFLINE_AFTER"
)
POINTS = Counter("trainyard_metric_points_ingested_total", "Metric points stored")
LOG_LINES = Counter("trainyard_log_lines_ingested_total", "Log lines stored")
BATCHES = Counter("trainyard_telemetry_batches_total", "Telemetry batches stored")
WAITING = Gauge(
    "trainyard_long_polls_waiting",
    "Requests held waiting: agent command polls, log follows, waits for a change",
)
FOLLOWERS = Gauge("trainyard_log_follows_waiting", "Log follow requests held waiting")
LAG = Histogram(
    "trainyard_telemetry_lag_seconds",
    "From the newest point or line of a batch being written on the target machine to its storing",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
)
PREDICTIONS = Counter(
    "trainyard_predictions_total",
    "Predictions forwarded to a service by POST .../predict, by outcome (ok or the problem's code)",
    ["project", "service", "outcome"],
)
PREDICT_LATENCY = Histogram(
    "trainyard_predict_duration_seconds",
    "From forwarding a prediction to its answer (or failure), the API's hop to the instance included",
    ["project", "service"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

router = APIRouter(tags=["operations"])


class RequestMetrics:
    """Counts every HTTP request by its route's template (never the raw path: ids would explode the
    label set), method and status, with its latency."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            REQUESTS.labels(method, route, str(status)).inc()
            LATENCY.labels(method, route).observe(time.perf_counter() - started)


@router.get(
    "/metrics",
    operation_id="operations_metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **error_responses(401)},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this API process (a bearer token when TRAINYARD_METRICS_TOKEN is set)."""
    settings = request.app.state.settings
    if settings.metrics_token is not None:
        expected = f"Bearer {settings.metrics_token.get_secret_value()}".encode()
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise Unauthorized(
                "/metrics needs the bearer token TRAINYARD_METRICS_TOKEN", code="invalid_token"
            )
    async with request.app.state.sessionmaker() as session:
        counts = dict((await session.execute(select(Run.status, func.count()).group_by(Run.status))).all())
        seen_after = utcnow() - timedelta(seconds=settings.offline_after)
        online = await session.scalar(
            select(func.count()).where(Machine.enabled.is_(True), Machine.last_seen_at > seen_after)
        )
    for status in RunStatus:
        RUNS.labels(status.value).set(counts.get(status.value, 0))
    MACHINES_ONLINE.set(online or 0)
    WAITING.set(request.app.state.notifier.waiting)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
