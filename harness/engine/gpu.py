"""GPU figures of a running job: NVML sampling in a background thread, and peak memory.

A sampler reads NVML every 0.1 s: SM and memory utilisation, power and clocks per GPU. Without an
NVIDIA GPU or without NVML the figures are empty and say why; everything else still runs.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

SAMPLE_INTERVAL = 0.1  # seconds between NVML samples
_FIGURES = ("sm_utilization", "memory_utilization", "power_watts", "sm_clock_mhz", "memory_clock_mhz")


# -- NVML sampling ----------------------------------------------------------------------------------


@dataclass
class GpuFigures:
    """Means of the NVML samples per GPU, or why there are none."""

    per_gpu: list[dict[str, Any]] = field(default_factory=list)  # {"name", "uuid", figures..., "samples"}
    note: str | None = None

    def columns(self) -> dict[str, Any]:
        """The GPU columns of a profile row: means over the GPUs, and the per-GPU list as JSON."""
        if not self.per_gpu:
            return {
                "gpu_model": None,
                "gpu_count": None,
                **dict.fromkeys(_FIGURES),
                "per_gpu": None,
                "gpu_note": self.note or "no GPU figures",
            }
        names = sorted({g["name"] for g in self.per_gpu})
        means = {k: _mean([g[k] for g in self.per_gpu]) for k in _FIGURES}
        return {
            "gpu_model": ", ".join(names),
            "gpu_count": len(self.per_gpu),
            **means,
            "per_gpu": json.dumps(self.per_gpu, sort_keys=True),
            "gpu_note": self.note,
        }


class GpuSampler:
    """Samples the NVML figures of `devices` every SAMPLE_INTERVAL seconds in a background thread.

    Use as a context manager; `figures(since, until)` averages the samples taken in that window
    (time.perf_counter() values), e.g. the measured steps of a run.
    """

    def __init__(self, devices: Sequence[torch.device], interval: float = SAMPLE_INTERVAL):
        self.devices = [d for d in devices if d.type == "cuda"]
        self.interval, self.note = interval, None
        self.handles: list[tuple[Any, str, str]] = []  # (NVML handle, name, uuid)
        self.samples: list[tuple[float, list[tuple[float, ...]]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml: Any = None

    def __enter__(self) -> GpuSampler:
        if not self.devices:
            self.note = "no NVIDIA GPU: the run used the CPU"
            return self
        try:
            import pynvml
        except ImportError:
            self.note = "pynvml is not installed (pip install nvidia-ml-py)"
            return self
        try:
            pynvml.nvmlInit()
            self.handles = [self._handle(pynvml, d) for d in self.devices]
        except pynvml.NVMLError as err:
            self.note = f"NVML is not available: {err}"
            return self
        self._nvml = pynvml
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sample()
            self._nvml.nvmlShutdown()
            self._thread = None

    def figures(self, since: float | None = None, until: float | None = None) -> GpuFigures:
        if not self.handles:
            return GpuFigures(note=self.note)
        window = [s for t, s in self.samples if (since is None or t >= since) and (until is None or t <= until)]
        if not window:  # a window shorter than the interval: the nearest samples are the best estimate
            window = [s for _, s in self.samples]
        per_gpu = []
        for i, (_, name, uuid) in enumerate(self.handles):
            values = [sample[i] for sample in window]
            figures = {k: _mean([v[j] for v in values]) for j, k in enumerate(_FIGURES)}
            per_gpu.append({"name": name, "uuid": uuid, **figures, "samples": len(values)})
        return GpuFigures(per_gpu, self.note)

    @staticmethod
    def _handle(pynvml: Any, device: torch.device) -> tuple[Any, str, str]:
        """The NVML handle of a torch device: by UUID, since CUDA_VISIBLE_DEVICES renumbers GPUs."""
        index = device.index if device.index is not None else torch.cuda.current_device()
        handle = None
        uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or "")
        if uuid:
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
            except pynvml.NVMLError:
                handle = None
        if handle is None:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        return handle, name.decode() if isinstance(name, bytes) else name, uuid

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        nvml, row = self._nvml, []
        for handle, _, _ in self.handles:
            rates = self._read(nvml.nvmlDeviceGetUtilizationRates, handle)
            power = self._read(nvml.nvmlDeviceGetPowerUsage, handle)
            row.append(
                (
                    None if rates is None else float(rates.gpu),
                    None if rates is None else float(rates.memory),
                    None if power is None else power / 1000.0,
                    self._read(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM),
                    self._read(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_MEM),
                )
            )
        self.samples.append((time.perf_counter(), row))

    def _read(self, query: Callable, *args: Any) -> Any:
        """One NVML reading, or None when this GPU does not support it (e.g. power under MIG)."""
        try:
            return query(*args)
        except self._nvml.NVMLError as err:
            self.note = f"some NVML readings are unsupported here: {err}"
            return None


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


# -- device helpers ---------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int | None:
    """torch's peak allocated bytes on a GPU since the last reset; None on the CPU."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def gather_gpu_figures(figures: GpuFigures, peak: int | None) -> tuple[GpuFigures, int | None]:
    """Every rank's GPU figures in one (rank order) and the largest peak memory, on every rank."""
    if not dist.is_initialized():
        return figures, peak
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (figures.per_gpu, figures.note, peak))
    per_gpu = [g for gpus, _, _ in parts for g in gpus]
    note = next((n for _, n, _ in parts if n), None)
    peaks = [p for _, _, p in parts if p is not None]
    return GpuFigures(per_gpu, note), max(peaks) if peaks else None
