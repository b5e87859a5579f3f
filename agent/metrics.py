"""The agent's own Prometheus endpoint (`TRAINYARD_AGENT_METRICS_PORT`): runs in hand, the telemetry
not yet acknowledged by the API (bytes of the run files), the last successful push, GPU utilisation
where NVML answers. A registry of its own, served by prometheus-client's HTTP server in a thread."""

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
RUNS_IN_HAND = Gauge("trainyard_agent_runs_in_hand", "Runs this agent carries", registry=REGISTRY)
SPOOL_BYTES = Gauge(
    "trainyard_agent_spool_bytes", "Telemetry on disk not yet acknowledged by the API", registry=REGISTRY
)
LAST_PUSH = Gauge(
    "trainyard_agent_last_push_timestamp_seconds",
    "When the API last acknowledged a telemetry batch (Unix seconds)",
    registry=REGISTRY,
)

_backlog: dict[uuid.UUID, int] = {}
GpuSource = Callable[[], dict[int, float]]


def set_backlog(run_id: uuid.UUID, size: int) -> None:
    """Bytes of `run_id`'s files the API has not acknowledged yet (0 forgets the run)."""
    if size:
        _backlog[run_id] = size
    else:
        _backlog.pop(run_id, None)
    SPOOL_BYTES.set(sum(_backlog.values()))


def pushed() -> None:
    LAST_PUSH.set(time.time())


def nvml_utilisation() -> dict[int, float]:
    """GPU index -> utilisation in percent, from NVML (nvidia-ml-py); empty where there is none."""
    try:
        import pynvml  # type: ignore[import-untyped,unused-ignore]

        pynvml.nvmlInit()
    except Exception:
        return {}
    try:
        return {
            index: float(pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(index)).gpu)
            for index in range(pynvml.nvmlDeviceGetCount())
        }
    except Exception:
        return {}
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


class _Gpus(Collector):
    def __init__(self, source: GpuSource) -> None:
        self.source = source

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "trainyard_agent_gpu_utilisation_percent", "GPU utilisation (NVML)", labels=["gpu"]
        )
        for index, percent in sorted(self.source().items()):
            family.add_metric([str(index)], percent)
        yield family


def start_metrics_server(port: int, agent: object | None = None, gpus: GpuSource = nvml_utilisation) -> None:
    """Serve the agent's metrics on `port` (all interfaces). With `agent`, runs in hand are read from
    its `runs` mapping at each scrape."""
    if agent is not None:
        RUNS_IN_HAND.set_function(lambda: float(len(getattr(agent, "runs", ()))))
    REGISTRY.register(_Gpus(gpus))
    start_http_server(port, registry=REGISTRY)
    logger.info("agent metrics on port %d", port)
