"""GPU discovery through NVML, and the pool that hands GPUs to runs.

This machine has no GPU, so NVML is a fake `pynvml` module put in `sys.modules`; the real module is
checked too, where it finds nothing.
"""

import importlib
import sys
import uuid
from collections.abc import Iterator
from types import ModuleType, SimpleNamespace

import pytest

from agent import gpus
from agent.gpus import GpuPool, discover, utilisation, visible_devices
from shared.protocol import GpuInfo


class NVMLError(Exception):
    pass


def _fake_nvml(*, init_fails: bool = False) -> ModuleType:
    """Three GPUs: an old-style one (bytes names), one without memory info, one fallen off the bus."""
    module = ModuleType("pynvml")
    state = {"initialised": 0}

    def init() -> None:
        if init_fails:
            raise NVMLError("Driver Not Loaded")
        state["initialised"] += 1

    def handle(index: int) -> int:
        if index == 2:
            raise NVMLError("GPU is lost")
        return index

    def memory(handle: int) -> SimpleNamespace:
        if handle == 1:
            raise NVMLError("Not Supported")
        return SimpleNamespace(total=80 * 2**30, free=0, used=0)

    def rates(handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=[37, 99][handle], memory=10)

    module.__dict__.update(
        NVMLError=NVMLError,
        nvmlInit=init,
        nvmlShutdown=lambda: state.update(initialised=0),
        nvmlDeviceGetCount=lambda: 3,
        nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetName=lambda handle: [b"NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"][handle],
        nvmlDeviceGetUUID=lambda handle: f"GPU-{handle:08d}-0000-0000-0000-000000000000",
        nvmlDeviceGetMemoryInfo=memory,
        nvmlDeviceGetUtilizationRates=rates,
        state=state,
    )
    return module


@pytest.fixture(autouse=True)
def fresh_nvml() -> Iterator[None]:
    gpus.shutdown()  # forget what an earlier test loaded
    yield
    gpus.shutdown()


def test_discover_through_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert discover() == [
        GpuInfo(
            index=0,
            name="NVIDIA A100-SXM4-80GB",
            memory_total_mb=81920,
            uuid="GPU-00000000-0000-0000-0000-000000000000",
        ),
        GpuInfo(index=1, name="NVIDIA H100 80GB HBM3", uuid="GPU-00000001-0000-0000-0000-000000000000"),
    ]
    assert utilisation() == {0: 37.0, 1: 99.0}
    assert fake.state["initialised"] == 1  # once, not per call
    gpus.shutdown()
    assert fake.state["initialised"] == 0


def test_no_gpus_when_nvml_does_not_initialise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(init_fails=True))
    assert discover() == []
    assert utilisation() == {}


def test_no_gpus_without_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    assert discover() == []
    assert utilisation() == {}


def test_the_real_nvml_finds_no_gpu_here() -> None:
    pynvml = importlib.import_module("pynvml")  # the real one (untyped)
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    assert discover() == []
    assert utilisation() == {}


def test_the_pool_gives_each_run_the_gpus_it_asks_for() -> None:
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    pool = GpuPool([3, 1, 0, 2])
    assert pool.capacity == 4
    assert pool.take(first, 2) == [0, 1]
    assert pool.take(first, 2) == [0, 1]  # a start delivered twice
    assert pool.take(second, 3) is None  # not now: two are free
    assert pool.take(second, 2) == [2, 3]
    assert pool.take(third, 0) == []  # a CPU run
    assert pool.free() == []
    assert pool.release(first) == [0, 1]
    assert pool.release(first) == []
    assert pool.held_by(first) is None
    assert pool.take(third, 1) == []  # it holds its (empty) share already
    assert pool.free() == [0, 1]
    with pytest.raises(ValueError):
        pool.take(uuid.uuid4(), -1)


def test_restored_runs_keep_their_gpus() -> None:
    adopted, lost_gpu, new = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    pool = GpuPool([0, 1, 2])
    pool.restore(adopted, [1])
    pool.restore(lost_gpu, [5])  # a GPU NVML no longer lists: held, never offered
    assert pool.free() == [0, 2]
    assert pool.take(new, 2) == [0, 2]
    assert pool.held_by(adopted) == [1]
    assert pool.release(lost_gpu) == [5]


def test_visible_devices() -> None:
    assert visible_devices([2, 0]) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "2,0"}
    assert visible_devices([])["CUDA_VISIBLE_DEVICES"] == ""
