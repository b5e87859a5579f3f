"""The SigV4 query signer (api/core/sigv4.py): AWS's published example, then a real SeaweedFS, which
checks every signature (tests/s3.py gives it one identity), for what the blob store signs with it."""

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import obstore
import pytest

from api.core.sigv4 import Credentials, Presigner, presigned_url
from tests.s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Server, new_prefix, s3_server

__all__ = ["s3_server"]  # the session's SeaweedFS, a fixture of tests/s3.py


def test_aws_published_example() -> None:
    """The example of AWS's "Authenticating Requests: Using Query Parameters": virtual-hosted
    `examplebucket`, `GET /test.txt`, 24 h, signed 2013-05-24 00:00:00 UTC."""
    url = presigned_url(
        "GET",
        "https://examplebucket.s3.amazonaws.com",
        "/test.txt",
        region="us-east-1",
        credentials=Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        expires=timedelta(days=1),
        now=datetime(2013, 5, 24, tzinfo=UTC),
    )
    assert url == (
        "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    )


def test_lifetime_bounds_and_path() -> None:
    credentials = Credentials("a", "b")
    for expires in (timedelta(0), timedelta(days=7, seconds=1)):
        with pytest.raises(ValueError, match="lives"):
            presigned_url("GET", "http://h", "/k", region="r", credentials=credentials, expires=expires)
    with pytest.raises(ValueError, match="starts with /"):
        presigned_url("GET", "http://h", "k", region="r", credentials=credentials, expires=timedelta(1))


def test_secret_never_in_repr() -> None:
    assert "s3cr3t" not in repr(Credentials("key", "s3cr3t", "token"))


def test_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert Presigner.from_environment(None, "b") is None  # an instance role: nothing to sign with here
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SK")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    aws = Presigner.from_environment(None, "b")
    assert aws is not None and aws.endpoint == "https://s3.eu-west-3.amazonaws.com"
    url = aws.url("GET", "p/sha256/ab", timedelta(minutes=1))
    assert url.startswith("https://s3.eu-west-3.amazonaws.com/b/p/sha256/ab?")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "TOK/EN=")
    other = Presigner.from_environment("http://minio:9000/", "b")
    assert other is not None and other.endpoint == "http://minio:9000"
    query = parse_qsl(urlsplit(other.url("GET", "k", timedelta(1))).query)
    assert ("X-Amz-Security-Token", "TOK/EN=") in query


@pytest.fixture
def presigner(s3_server: S3Server) -> Presigner:
    return Presigner(s3_server.endpoint, s3_server.bucket, REGION, Credentials(ACCESS_KEY, SECRET_KEY))


@pytest.fixture
def stored(s3_server: S3Server) -> tuple[str, bytes]:
    """An object with an awkward key (a space, a plus, non-ASCII), put by the tests' own client."""
    key = f"{new_prefix()}/dir/a b+ü.bin"
    content = b"\x00signed bytes\xff" * 100
    obstore.put(s3_server.client(), key, content)
    return key, content


def test_get_with_response_overrides(presigner: Presigner, stored: tuple[str, bytes]) -> None:
    key, content = stored
    disposition = "attachment; filename*=UTF-8''%D0%BE%D1%82%D1%87%D1%91%D1%82%20v1.bin"
    url = presigner.url(
        "GET",
        key,
        timedelta(minutes=5),
        query={"response-content-disposition": disposition, "response-content-type": "image/png"},
    )
    answer = httpx.get(url)
    assert answer.status_code == 200, answer.text
    assert answer.content == content
    assert answer.headers["content-disposition"] == disposition
    assert answer.headers["content-type"] == "image/png"


def test_s3_refuses_what_was_not_signed(presigner: Presigner, stored: tuple[str, bytes]) -> None:
    key, _ = stored
    url = presigner.url("GET", key, timedelta(minutes=5), query={"response-content-type": "image/png"})
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    # Another override than the one signed, another key, another method: each refused.
    forged = parts._replace(query=urlencode({**query, "response-content-type": "text/html"})).geturl()
    assert httpx.get(forged).status_code == 403
    other_key = url.replace("/dir/", "/other/")
    assert httpx.get(other_key).status_code == 403
    assert httpx.put(url, content=b"x").status_code == 403
    # Wrong secret.
    wrong = Presigner(presigner.endpoint, presigner.bucket, REGION, Credentials(ACCESS_KEY, "nope"))
    assert httpx.get(wrong.url("GET", key, timedelta(minutes=5))).status_code == 403


def test_s3_refuses_an_expired_url(presigner: Presigner, stored: tuple[str, bytes]) -> None:
    key, _ = stored
    signed_long_ago = datetime.now(UTC) - timedelta(minutes=10)
    url = presigner.url("GET", key, timedelta(minutes=5), now=signed_long_ago)
    assert httpx.get(url).status_code == 403
    fresh = presigner.url("GET", key, timedelta(minutes=5))
    assert httpx.get(fresh).status_code == 200


def test_put_with_a_signed_header(presigner: Presigner, s3_server: S3Server) -> None:
    """A header under the signature must come with the value signed."""
    key = f"{new_prefix()}/put.bin"
    url = presigner.url("PUT", key, timedelta(minutes=5), headers={"Content-Type": "application/zip"})
    assert httpx.put(url, content=b"z", headers={"Content-Type": "text/plain"}).status_code == 403
    answer = httpx.put(url, content=b"zip", headers={"Content-Type": "application/zip"})
    assert answer.status_code == 200, answer.text
    assert bytes(obstore.get(s3_server.client(), key).bytes()) == b"zip"
