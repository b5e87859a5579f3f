"""What stands before a login's argon2 check, in this process: a token bucket per client address and
per username, and a bound on the verifications that run at once.

argon2 costs tens of milliseconds of a CPU and 64 MiB on purpose. Unbounded, a burst of logins takes
every CPU and the thread pool the rest of the API needs; bounded here, a burst waits its turn (and
holds no database connection while it waits: api/access/login.py). The buckets refuse a client that
tries too fast before it costs anything. They are per process: N replicas allow N times as much; the
lock per username (`login_failures`) is the bound replicas share.
"""

import math
import time
from collections import OrderedDict
from typing import Annotated

import anyio
from fastapi import Depends, Request

from api.access import passwords
from api.core.config import Settings
from api.core.errors import TooManyRequests

# Past this many keys the least recently used bucket is dropped: a flood of new addresses or names
# costs bounded memory. A dropped bucket starts full again, as one that was left alone to refill.
MAX_KEYS = 65_536


class RateLimiter:
    """Token buckets by key: `burst` tries at once, then `per_minute`."""

    def __init__(self, burst: int, per_minute: float, max_keys: int = MAX_KEYS) -> None:
        self.burst = float(burst)
        self.per_second = per_minute / 60
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def _tokens(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.per_second)

    def wait(self, key: str, now: float) -> float:
        """Seconds until `key` may try again; 0: now."""
        return max(0.0, (1 - self._tokens(key, now)) / self.per_second)

    def take(self, key: str, now: float) -> None:
        self._buckets[key] = (self._tokens(key, now) - 1, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)


class LoginGate:
    def __init__(self, settings: Settings) -> None:
        self.by_address = RateLimiter(settings.login_ip_burst, settings.login_ip_per_minute)
        self.by_name = RateLimiter(settings.login_name_burst, settings.login_name_per_minute)
        self.verifier = anyio.CapacityLimiter(settings.login_verifications)
        self.verifications = 0  # started since the start: what the tests count guesses by

    def admit(self, address: str, name_key: str) -> None:
        """Take a try from the address's bucket and the name's, or refuse (429 `login_rate_limited`)
        and take from neither."""
        now = time.monotonic()
        wait = max(self.by_address.wait(address, now), self.by_name.wait(name_key, now))
        if wait > 0:
            seconds = math.ceil(wait)
            raise TooManyRequests(
                f"too many logins from this address or for this name; try again in {seconds} s",
                code="login_rate_limited",
                retry_after=seconds,
            )
        self.by_address.take(address, now)
        self.by_name.take(name_key, now)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """argon2, in a worker thread, at most `TRAINYARD_LOGIN_VERIFY_CONCURRENCY` at once."""
        self.verifications += 1
        return await passwords.verify_password(password_hash, password, limiter=self.verifier)


async def get_login_gate(request: Request) -> LoginGate:
    gate: LoginGate = request.app.state.login_gate
    return gate


LoginGateDep = Annotated[LoginGate, Depends(get_login_gate)]
