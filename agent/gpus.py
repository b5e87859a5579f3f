"""The machine's GPUs, through NVML (`pynvml` from nvidia-ml-py), never through torch: importing torch
takes seconds and hundreds of MB, and initialising CUDA would hold memory on every GPU.

No NVML (the module missing, no driver, `nvmlInit()` failing) means no GPUs: the machine takes CPU runs
only. Indices are NVML's, which count in PCI bus order; CUDA counts the fastest GPU first unless
`CUDA_DEVICE_ORDER=PCI_BUS_ID`, so `visible_devices` sets both variables.
"""

import contextlib
import importlib
import threading
import uuid
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any, TypeVar

from shared.protocol import GpuInfo

_T = TypeVar("_T")
_lock = threading.Lock()
_loaded = False
_nvml: ModuleType | None = None


def _load() -> ModuleType | None:
    """`pynvml`, initialised once (a failure too is remembered until `shutdown`)."""
    global _loaded, _nvml
    with _lock:
        if not _loaded:
            _loaded = True
            try:
                module = importlib.import_module("pynvml")
                module.nvmlInit()
                _nvml = module
            except Exception:  # ImportError, NVMLError (no library, no driver), OSError
                _nvml = None
        return _nvml


def shutdown() -> None:
    """Release NVML (when the daemon stops); the next call initialises it again."""
    global _loaded, _nvml
    with _lock:
        if _nvml is not None:
            with contextlib.suppress(Exception):  # nothing to do about it on the way out
                _nvml.nvmlShutdown()
        _loaded, _nvml = False, None


def _text(value: object) -> str:
    # nvidia-ml-py returns str; releases before 11.5 returned bytes.
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _or_none(read: Callable[..., _T], *args: Any) -> _T | None:
    """One NVML query, None when it fails (NVMLError_NotSupported and kin, a GPU lost to the driver)."""
    try:
        return read(*args)
    except Exception:
        return None


def _describe(nvml: ModuleType, index: int) -> GpuInfo | None:
    handle = _or_none(nvml.nvmlDeviceGetHandleByIndex, index)
    if handle is None:
        return None  # fallen off the bus, or lost to a driver error: not offered to runs
    name = _or_none(nvml.nvmlDeviceGetName, handle)
    memory = _or_none(nvml.nvmlDeviceGetMemoryInfo, handle)
    gpu_uuid = _or_none(nvml.nvmlDeviceGetUUID, handle)
    return GpuInfo(
        index=index,
        name=_text(name)[:256] if name else f"GPU {index}",
        memory_total_mb=int(memory.total) // 2**20 if memory is not None else None,
        uuid=_text(gpu_uuid)[:128] if gpu_uuid else None,
    )


def _count(nvml: ModuleType) -> int:
    return int(_or_none(nvml.nvmlDeviceGetCount) or 0)


def discover() -> list[GpuInfo]:
    """Every GPU NVML sees, by index; [] without NVML."""
    nvml = _load()
    if nvml is None:
        return []
    found = (_describe(nvml, index) for index in range(_count(nvml)))
    return [gpu for gpu in found if gpu is not None]


def utilisation() -> dict[int, float]:
    """Percent of the last sample period each GPU was busy, by index; {} without NVML."""
    nvml = _load()
    if nvml is None:
        return {}
    busy: dict[int, float] = {}
    for index in range(_count(nvml)):
        handle = _or_none(nvml.nvmlDeviceGetHandleByIndex, index)
        rates = _or_none(nvml.nvmlDeviceGetUtilizationRates, handle) if handle is not None else None
        if rates is not None:
            busy[index] = float(rates.gpu)
    return busy


def visible_devices(indices: Iterable[int]) -> dict[str, str]:
    """The variables that give a run these GPUs, and only these ("" hides every GPU from a CPU run)."""
    return {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": ",".join(str(index) for index in indices),
    }


class GpuPool:
    """Which run holds which GPU on this machine. Used from the daemon's event loop only."""

    def __init__(self, indices: Iterable[int]) -> None:
        self._indices = sorted(set(indices))
        self._held: dict[uuid.UUID, list[int]] = {}

    @property
    def capacity(self) -> int:
        """How many GPUs the machine has: a run asking for more can never start here."""
        return len(self._indices)

    def free(self) -> list[int]:
        held = {index for indices in self._held.values() for index in indices}
        return [index for index in self._indices if index not in held]

    def held_by(self, run_id: uuid.UUID) -> list[int] | None:
        indices = self._held.get(run_id)
        return list(indices) if indices is not None else None

    def take(self, run_id: uuid.UUID, count: int) -> list[int] | None:
        """`count` free GPUs for the run (the lowest indices), or None while fewer are free.

        A run that already holds GPUs gets the same ones again (a start command delivered twice).
        """
        if count < 0:
            raise ValueError(f"a run cannot ask for {count} GPUs")
        if run_id in self._held:
            return list(self._held[run_id])
        free = self.free()
        if count > len(free):
            return None
        self._held[run_id] = free[:count]
        return free[:count]

    def release(self, run_id: uuid.UUID) -> list[int]:
        """Give the run's GPUs back; those it held (none for an unknown run)."""
        return self._held.pop(run_id, [])

    def restore(self, run_id: uuid.UUID, indices: Iterable[int]) -> None:
        """Record GPUs a re-adopted run already uses. Trusted as they are: the run is running on them,
        even one that NVML no longer lists (it is then held, not offered, if it comes back)."""
        self._held[run_id] = sorted(set(indices))
