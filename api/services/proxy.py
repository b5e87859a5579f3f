"""`POST .../services/{service}/predict` forwarded to a serving instance (docs/serving.md).

One `httpx.AsyncClient` per API process (its connections to the instances are kept alive and
reused); the instances of a service take the calls in turn. A connection refused is tried on the
next instance (nothing reached the model); a timeout is not (the model may be working on it).
"""

import functools
import ssl
import time
import uuid
from dataclasses import dataclass

import httpx

from api.core.errors import TrainyardError
from api.core.prometheus import PREDICT_LATENCY, PREDICTIONS

CONNECT_TIMEOUT_SECONDS = 5.0
# A prediction that takes longer is cut off with 502: a caller that must wait longer calls the
# instance directly (GET .../endpoint).
PREDICT_TIMEOUT_SECONDS = 60.0
MAX_ERROR_CHARS = 2000


class ServiceUnreachable(TrainyardError):
    status_code = 502
    code = "service_unreachable"
    title = "Service unreachable"


class PredictionFailed(TrainyardError):
    """The model raised: the instance answered 500 with `{"error": "<type>: <message>"}`."""

    status_code = 422
    code = "prediction_failed"
    title = "Prediction failed"


@dataclass(frozen=True, slots=True)
class Prediction:
    body: bytes
    media_type: str


@functools.cache
def _tls() -> ssl.SSLContext:
    """httpx's own context (certifi's roots), built once per process: loading the roots takes ~40 ms
    of a CPU, and an app is created per test in the suite (one per process in production)."""
    return httpx.create_ssl_context(trust_env=False)


class PredictClient:
    def __init__(self) -> None:
        self.http = httpx.AsyncClient(
            verify=_tls(),
            timeout=httpx.Timeout(PREDICT_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            follow_redirects=False,
            trust_env=False,  # an instance is on the machines' network, never behind the API's proxy
        )
        self._turns: dict[uuid.UUID, int] = {}

    async def aclose(self) -> None:
        await self.http.aclose()

    def _in_turn(self, service_id: uuid.UUID, addresses: list[str]) -> list[str]:
        turn = self._turns.get(service_id, 0)
        self._turns[service_id] = turn + 1
        first = turn % len(addresses)
        return addresses[first:] + addresses[:first]

    async def predict(
        self,
        service_id: uuid.UUID,
        label: tuple[str, str],
        addresses: list[str],
        secret: str,
        body: bytes,
        content_type: str | None,
    ) -> Prediction:
        """The instance's answer, or a problem; counted by outcome in Prometheus."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await self._forward(service_id, addresses, secret, body, content_type)
        except TrainyardError as error:
            outcome = error.code
            raise
        finally:
            PREDICTIONS.labels(*label, outcome).inc()
            PREDICT_LATENCY.labels(*label).observe(time.perf_counter() - started)

    async def _forward(
        self, service_id: uuid.UUID, addresses: list[str], secret: str, body: bytes, content_type: str | None
    ) -> Prediction:
        headers = {"Authorization": f"Bearer {secret}"}
        if content_type:
            headers["Content-Type"] = content_type
        refused: list[str] = []
        for address in self._in_turn(service_id, addresses):
            try:
                response = await self.http.post(f"{address}/predict", content=body, headers=headers)
            except httpx.ConnectError as error:  # nothing reached the model: the next instance
                refused.append(f"{address}: {error}")
                continue
            except httpx.TimeoutException:
                raise ServiceUnreachable(
                    f"the instance at {address} did not answer within {PREDICT_TIMEOUT_SECONDS:g} s"
                ) from None
            except httpx.HTTPError as error:
                raise ServiceUnreachable(f"the instance at {address} failed: {error}") from None
            return _answer(address, response)
        raise ServiceUnreachable("no instance of the service could be reached: " + "; ".join(refused))


def _answer(address: str, response: httpx.Response) -> Prediction:
    if response.is_success:
        media_type = response.headers.get("content-type", "application/octet-stream")
        return Prediction(response.content, media_type)
    if response.status_code == 500:
        raise PredictionFailed(_model_error(response))
    if response.status_code == 401:  # an instance of an earlier start, still up with its old secret
        raise ServiceUnreachable(f"the instance at {address} refused the service's secret")
    raise ServiceUnreachable(f"the instance at {address} answered {response.status_code}")


def _model_error(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    text = error if isinstance(error, str) else response.text
    return (text or "the model raised").strip()[:MAX_ERROR_CHARS]
