"""Passwords, as argon2id hashes (argon2-cffi's defaults, RFC 9106's second recommended profile).

Hashing is deliberately slow, so it runs in a worker thread, off the event loop. Tokens never come here:
they are HMACs (api/core/security.py).
"""

import anyio
import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()
# Verified against when the user does not exist or has no password, so that the answer takes as long
# as for a real user and the time does not tell which names exist.
_DUMMY_HASH = _hasher.hash("no user has this password")


async def hash_password(password: str) -> str:
    return await anyio.to_thread.run_sync(_hasher.hash, password)


async def verify_password(
    password_hash: str | None, password: str, limiter: anyio.CapacityLimiter | None = None
) -> bool:
    """`limiter`: the threads it may run on (default: anyio's shared pool)."""

    def verify() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False

    return await anyio.to_thread.run_sync(verify, limiter=limiter)
