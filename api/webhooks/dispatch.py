"""The dispatcher: sends what the outbox holds, retried with backoff for a day, once across replicas.

Every API process runs one. A delivery is claimed with one conditional UPDATE (pending, due, and not
leased by another: `leased_until` in the past), which sets a lease; of several processes one wins and
sends it, and records the outcome under that lease. A process that dies while sending leaves a lease
that runs out: another sends the message again, under the same `webhook-id` (at least once; a
receiver keeps the ids it saw). The dispatcher sleeps until the outbox's next due attempt or a wake:
a commit that wrote deliveries wakes it through the notifier, in this process at once, in the others
through PostgreSQL's NOTIFY.
"""

import asyncio
import contextlib
import json
import logging
import random
import time
from datetime import datetime, timedelta

import httpcore
from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.core.config import Settings
from api.core.notify import Notifier
from api.models import Webhook, WebhookDelivery
from api.models.base import utcnow
from api.webhooks.outbox import DELIVERIES_KEY
from api.webhooks.signing import signed_headers
from api.webhooks.targets import GuardedBackend, TargetRefused

logger = logging.getLogger(__name__)

LEASE = timedelta(seconds=60)  # far longer than one attempt may take (TIMEOUT_SECONDS)
TIMEOUT_SECONDS = 10.0
IDLE_SECONDS = 2.0  # the longest sleep: a lease that ran out elsewhere is noticed within it
BATCH = 32
CONCURRENCY = 16
BODY_KEPT = 1024
BACKOFF_FIRST_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 3600.0
USER_AGENT = "Trainyard-Webhooks/1"


def backoff(attempts: int) -> timedelta:
    """Exponential, capped at an hour, with jitter: half to all of it, so that receivers coming back
    from an outage are not met by every sender at once."""
    ceiling = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** max(0, attempts - 1))
    return timedelta(seconds=ceiling * random.uniform(0.5, 1.0))


def _due(now: datetime) -> ColumnElement[bool]:
    """Pending, due, and leased by no one (or by one whose lease ran out)."""
    return and_(
        WebhookDelivery.state == "pending",
        WebhookDelivery.next_attempt_at <= now,
        or_(WebhookDelivery.leased_until.is_(None), WebhookDelivery.leased_until < now),
    )


class Dispatcher:
    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], notifier: Notifier, settings: Settings
    ) -> None:
        self._sessionmaker = sessionmaker
        self._notifier = notifier
        self._pool = httpcore.AsyncConnectionPool(
            network_backend=GuardedBackend(settings.webhooks_allow_private),
            max_connections=CONCURRENCY,
            retries=0,
        )
        self._slots = asyncio.Semaphore(CONCURRENCY)

    async def run_forever(self) -> None:
        try:
            while True:
                mark = self._notifier.mark()
                try:
                    await self.dispatch_once()
                    pause = await self._until_next_due()
                except Exception:  # a pass that fails is tried again after a pause
                    logger.exception("webhook dispatch failed")
                    pause = IDLE_SECONDS
                with (
                    self._notifier.listen(DELIVERIES_KEY, since=mark, request=False) as woken,
                    contextlib.suppress(TimeoutError),
                ):
                    async with asyncio.timeout(pause):
                        await woken.wait()
        finally:
            await self._pool.aclose()

    async def _until_next_due(self) -> float:
        async with self._sessionmaker() as session:
            due = await session.scalar(
                select(func.min(WebhookDelivery.next_attempt_at)).where(
                    WebhookDelivery.state == "pending", WebhookDelivery.leased_until.is_(None)
                )
            )
        if due is None:
            return IDLE_SECONDS
        return min(IDLE_SECONDS, max(0.0, (due - utcnow()).total_seconds()))

    async def dispatch_once(self) -> int:
        """Claim the due deliveries and send them; how many were sent (whatever their outcome)."""
        claimed = await self._claim()
        if claimed:
            await asyncio.gather(*(self._send(delivery, hook, lease) for delivery, hook, lease in claimed))
        return len(claimed)

    async def _claim(self) -> list[tuple[WebhookDelivery, Webhook, datetime]]:
        now = utcnow()
        lease = now + LEASE
        claimed = []
        async with self._sessionmaker() as session:
            candidates = (
                await session.scalars(
                    select(WebhookDelivery.id)
                    .where(_due(now))
                    .order_by(WebhookDelivery.next_attempt_at)
                    .limit(BATCH)
                )
            ).all()
            for delivery_id in candidates:
                won = await session.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id == delivery_id, _due(now))
                    .values(leased_until=lease, attempts=WebhookDelivery.attempts + 1, last_attempt_at=now)
                    .returning(WebhookDelivery),
                    execution_options={"synchronize_session": False, "populate_existing": True},
                )
                delivery = won.scalar_one_or_none()
                if delivery is None:  # another process claimed it first
                    continue
                hook = await session.get(Webhook, delivery.webhook_id)
                if hook is not None:
                    claimed.append((delivery, hook, lease))
            await session.commit()
        return claimed

    async def _send(self, delivery: WebhookDelivery, hook: Webhook, lease: datetime) -> None:
        body = json.dumps(delivery.payload, separators=(",", ":")).encode()
        headers = {
            **signed_headers(hook.secret, delivery.message_id, int(time.time()), body),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        status: int | None = None
        kept = b""
        error = ""
        async with self._slots:
            try:
                async with asyncio.timeout(TIMEOUT_SECONDS):
                    async with self._pool.stream(
                        "POST",
                        hook.url,
                        headers=list(headers.items()),
                        content=body,
                        extensions={"timeout": {"connect": TIMEOUT_SECONDS, "read": TIMEOUT_SECONDS}},
                    ) as response:
                        status = response.status
                        async for chunk in response.aiter_stream():
                            kept += chunk[: BODY_KEPT - len(kept)]
                            if len(kept) >= BODY_KEPT:
                                break
            except TargetRefused as refused:
                error = str(refused)
            except TimeoutError:
                error = f"no answer within {TIMEOUT_SECONDS:g} s"
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as failed:
                error = f"could not connect: {failed}"
            except httpcore.TimeoutException as failed:
                error = f"timed out: {failed}"
            except (httpcore.ProtocolError, httpcore.NetworkError, httpcore.UnsupportedProtocol) as failed:
                error = f"{type(failed).__name__}: {failed}"
        await self._record(delivery, lease, status, kept.decode("utf-8", "replace"), error)

    async def _record(
        self, delivery: WebhookDelivery, lease: datetime, status: int | None, body: str, error: str
    ) -> None:
        now = utcnow()
        ok = status is not None and 200 <= status < 300
        if not ok and not error:
            error = f"the receiver answered {status}"
        if ok:
            values: dict[str, object] = {"state": "succeeded", "delivered_at": now}
        elif now >= delivery.give_up_at:
            values = {"state": "failed"}
        else:
            values = {"next_attempt_at": now + backoff(delivery.attempts)}
        values |= {"leased_until": None, "response_status": status, "response_body": body, "error": error}
        async with self._sessionmaker() as session:
            # Under this lease only: a process whose lease ran out does not overwrite the next one's.
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery.id, WebhookDelivery.leased_until == lease)
                .values(**values),
                execution_options={"synchronize_session": False},
            )
            await session.commit()
        if not ok:
            logger.info(
                "webhook delivery %s of webhook %s: %s (attempt %d)",
                delivery.id,
                delivery.webhook_id,
                error,
                delivery.attempts,
            )
