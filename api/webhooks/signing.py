"""Standard Webhooks signatures (https://www.standardwebhooks.com): the three headers a receiver
verifies with any of its libraries.

The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the signature is HMAC-SHA256 under
the secret's bytes (`whsec_` then base64), sent base64-encoded as `v1,<signature>`.
"""

import base64
import binascii
import hashlib
import hmac
import secrets

PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_bytes(secret: str) -> bytes:
    """The key of `secret` (`whsec_` and base64 of 24 to 64 bytes); ValueError saying what is wrong."""
    if not secret.startswith(PREFIX):
        raise ValueError(f"a signing secret starts with {PREFIX!r} (Standard Webhooks), then base64")
    try:
        key = base64.b64decode(secret.removeprefix(PREFIX), validate=True)
    except binascii.Error:
        raise ValueError(f"after {PREFIX!r} a signing secret is base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(f"a signing secret holds {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes")
    return key


def signed_headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    content = f"{message_id}.{timestamp}.".encode() + body
    signature = hmac.new(secret_bytes(secret), content, hashlib.sha256).digest()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(signature).decode(),
    }
