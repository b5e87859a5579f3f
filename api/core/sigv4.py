"""Presigned S3 URLs (AWS Signature Version 4, query-string authentication), signed here.

obstore signs a method and a key and nothing else. Two things the blob store needs go past that, and
both are query parameters that SigV4 must cover:

- people's downloads: `response-content-disposition` and `response-content-type`, so that a redirect
  to the bucket still saves the file under the name people gave it, in its own type;
- multipart uploads by agents: `partNumber` and `uploadId` on each part's `PUT`, and the API's own
  create, complete, list and abort calls of a multipart upload, which obstore does not expose.

The algorithm is AWS's "Authenticating Requests: Using Query Parameters", nothing added: a canonical
request (method, URI, sorted query, signed headers, `UNSIGNED-PAYLOAD`), its hash in a string to sign,
and an HMAC chain from the secret over the date, region and service. `tests/api/test_sigv4.py` checks
it against AWS's published example and against a real SeaweedFS, which verifies every signature.

Credentials are the static ones of the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
optionally `AWS_SESSION_TOKEN`), the same variables the S3 client reads. Where there are none (an
instance role, web identity), `Presigner.from_environment` gives `None` and the callers keep to what
obstore can sign: downloads stream through the API, outputs go up in one `PUT`.
"""

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
# SigV4's bounds on a presigned URL's life.
MIN_LIFETIME = timedelta(seconds=1)
MAX_LIFETIME = timedelta(days=7)


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = ""
    session_token: str | None = None

    def __repr__(self) -> str:  # never the secret in a log or a traceback
        return f"Credentials(access_key={self.access_key!r})"


def presigned_url(
    method: str,
    origin: str,
    path: str,
    *,
    region: str,
    credentials: Credentials,
    expires: timedelta,
    now: datetime | None = None,
    query: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    service: str = "s3",
) -> str:
    """A URL that lets its holder send `method` to `origin` + `path` with exactly `query` until
    `expires` has passed. `headers` (besides `host`) are signed too: the request must carry them with
    these values. `path` is the object's path as stored (`/bucket/key`), encoded here."""
    if not MIN_LIFETIME <= expires <= MAX_LIFETIME:
        raise ValueError(f"a presigned URL lives {MIN_LIFETIME} to {MAX_LIFETIME}")
    if not path.startswith("/"):
        raise ValueError("the path starts with /")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    scope = f"{day}/{region}/{service}/aws4_request"
    signed = {"host": urlsplit(origin).netloc.lower()}
    signed.update({name.lower(): " ".join(value.split()) for name, value in (headers or {}).items()})
    signed_names = ";".join(sorted(signed))
    params = dict(query or {})
    params.update(
        {
            "X-Amz-Algorithm": ALGORITHM,
            "X-Amz-Credential": f"{credentials.access_key}/{scope}",
            "X-Amz-Date": stamp,
            "X-Amz-Expires": str(int(expires.total_seconds())),
            "X-Amz-SignedHeaders": signed_names,
        }
    )
    if credentials.session_token:
        params["X-Amz-Security-Token"] = credentials.session_token
    canonical_uri = _encode(path, safe="/")
    canonical_query = "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(params.items()))
    canonical_headers = "".join(f"{name}:{signed[name]}\n" for name in sorted(signed))
    canonical_request = "\n".join(
        [method, canonical_uri, canonical_query, canonical_headers, signed_names, UNSIGNED_PAYLOAD]
    )
    string_to_sign = "\n".join(
        [ALGORITHM, stamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = _hmac(f"AWS4{credentials.secret_key}".encode(), day)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{origin}{canonical_uri}?{canonical_query}&X-Amz-Signature={signature}"


@dataclass(frozen=True)
class Presigner:
    """Presigned URLs for the objects of one bucket, path-style (`<endpoint>/<bucket>/<key>`), as the
    blob store's client addresses them."""

    endpoint: str
    bucket: str
    region: str
    credentials: Credentials

    @classmethod
    def from_environment(cls, endpoint: str | None, bucket: str) -> "Presigner | None":
        """From the `AWS_*` variables the S3 client reads; `None` without static credentials."""
        access_key = os.environ.get("AWS_ACCESS_KEY_ID")
        secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not access_key or not secret_key:
            return None
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        origin = (endpoint or f"https://s3.{region}.amazonaws.com").rstrip("/")
        credentials = Credentials(access_key, secret_key, os.environ.get("AWS_SESSION_TOKEN") or None)
        return cls(origin, bucket, region, credentials)

    @property
    def origin(self) -> str:
        """`scheme://host[:port]` of the endpoint: where every URL it signs points."""
        scheme, _, rest = self.endpoint.partition("://")
        return f"{scheme}://{rest.partition('/')[0]}"

    def url(
        self,
        method: str,
        key: str,
        expires: timedelta,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        now: datetime | None = None,
    ) -> str:
        """`key` is the object's whole key in the bucket (the store's prefix included)."""
        base_path = self.endpoint.removeprefix(self.origin).strip("/")
        path = f"/{base_path}/" if base_path else "/"
        return presigned_url(
            method,
            self.origin,
            f"{path}{self.bucket}/{key}",
            region=self.region,
            credentials=self.credentials,
            expires=expires,
            now=now,
            query=query,
            headers=headers,
        )


def _encode(value: str, safe: str = "") -> str:
    """RFC 3986 encoding as SigV4 wants it: every byte but the unreserved ones (and `safe`)."""
    return quote(value, safe="-_.~" + safe)


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()
