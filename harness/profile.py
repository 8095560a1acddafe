"""How fast a method trains and infers, and how busy it keeps the GPU: NVML sampling and throughput.

`reidbench profile` builds each (method, variant, backbone), runs reidbench's own training loop on
synthetic P x K batches at the recipe's input size (no dataset needed), then inference, and writes
one profile row per model (PROFILE_SCHEMA in harness/store.py). Training cells write the same row
for their real training (`training_row`). Throughput leaves out warm-up steps and synchronises the
device around the timed steps. A background thread samples NVML every 0.1 s: SM and memory
utilisation, power and clocks per GPU. Without an NVIDIA GPU or without NVML the GPU columns are
null and `gpu_note` says why; CPU throughput is still recorded.

Cue maps: a method that declares cues is fed random cue tensors in their documented formats
(`harness.data.transforms.random_cues`): its speed does not depend on their content.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from harness import provenance
from harness.data.transforms import random_cues
from harness.errors import UserError, closest
from harness.spec import TrainConfig
from harness.store import SCHEMA_VERSION
from harness.train import TrainResult, autocast, build_optimizer, build_scheduler, resolve_precision, train

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
            return {"gpu_model": None, "gpu_count": None, **dict.fromkeys(_FIGURES), "per_gpu": None,
                    "gpu_note": self.note or "no GPU figures"}
        names = sorted({g["name"] for g in self.per_gpu})
        means = {k: _mean([g[k] for g in self.per_gpu]) for k in _FIGURES}
        return {"gpu_model": ", ".join(names), "gpu_count": len(self.per_gpu), **means,
                "per_gpu": json.dumps(self.per_gpu, sort_keys=True), "gpu_note": self.note}


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
            row.append((
                None if rates is None else float(rates.gpu), None if rates is None else float(rates.memory),
                None if power is None else power / 1000.0,
                self._read(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM),
                self._read(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_MEM),
            ))
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


# -- synthetic inputs -------------------------------------------------------------------------------


def synthetic_batches(
    steps: int, *, ids_per_batch: int, images_per_id: int, size: tuple[int, int], num_classes: int,
    device: torch.device, seed: int = 0, distinct: int = 4, cues: Sequence[str] = (), heatmap_stride: int = 16,
) -> Iterator[tuple]:
    """`steps` P x K batches of random normalised images, cycling over `distinct` batches made up
    front on `device`, so that making inputs costs nothing in the timed loop. With `cues`, each
    batch also carries a dict of random cue tensors (the training loop's fourth element)."""
    generator = torch.Generator().manual_seed(seed)
    made = []
    for _ in range(min(distinct, steps)):
        images = torch.randn((ids_per_batch * images_per_id, 3, *size), generator=generator)
        ids = torch.randperm(num_classes, generator=generator)[:ids_per_batch]
        pids = ids.repeat_interleave(images_per_id)
        batch = (images.to(device), pids.to(device), torch.zeros_like(pids).to(device))
        if cues:
            maps = random_cues(cues, len(images), size, heatmap_stride=heatmap_stride, generator=generator)
            batch += ({name: value.to(device) for name, value in maps.items()},)
        made.append(batch)
    for step in range(steps):
        yield made[step % len(made)]


# -- measuring one model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    train: TrainResult
    infer_images_per_second: float | None
    gpu: GpuFigures
    peak_memory_bytes: int | None
    precision: str
    options: dict[str, Any]


def measure(
    model: torch.nn.Module, config: TrainConfig, *, device: torch.device, steps: int, warmup: int,
    num_classes: int, seed: int = 0,
) -> Measured:
    """Train `warmup + steps` steps with reidbench's loop, then infer as many batches; both timed
    after the warm-up with the device synchronised, while NVML is sampled."""
    precision = resolve_precision(config.precision, device)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    run = torch.compile(model) if config.compile else model
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=max(1, warmup + steps))
    shape = {"ids_per_batch": config.ids_per_batch, "images_per_id": config.images_per_id, "size": config.input_size,
             "num_classes": num_classes, "device": device, "seed": seed, "heatmap_stride": 16 if config.last_stride == 1 else 32}
    reset_peak_memory(device)
    with GpuSampler([device]) as sampler:
        result = train(
            run, model.losses, synthetic_batches(warmup + steps, cues=model.train_cues, **shape), optimizer, scheduler,
            device=device, precision=precision, channels_last=config.channels_last,
            check_every=config.check_every, warmup_steps=warmup, log_every=max(1, warmup + steps), log=lambda m: None,
        )
        trained_until = time.perf_counter()
        infer = _infer(run, synthetic_batches(warmup + steps, cues=model.test_cues, **shape), device=device, precision=precision,
                       channels_last=config.channels_last, warmup=warmup)
    gpu = sampler.figures(since=result.measured_from, until=trained_until)
    options = {"channels_last": config.channels_last, "compile": config.compile}
    return Measured(result, infer, gpu, peak_memory(device), precision, options)


@torch.inference_mode()
def _infer(model: torch.nn.Module, batches, *, device: torch.device, precision: str, channels_last: bool, warmup: int) -> float | None:
    model.eval()
    images, start = 0, None
    for step, (inputs, _, _, *cues) in enumerate(batches):
        if step == warmup:
            synchronize(device)
            start, images = time.perf_counter(), 0
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            model(inputs, *cues)
        images += len(inputs)
    synchronize(device)
    model.train()
    return images / (time.perf_counter() - start) if start is not None and images else None


# -- rows -------------------------------------------------------------------------------------------

_IDENTITY = ("source", "cell_id", "method", "variant", "backbone", "input_height", "input_width",
             "batch_size", "world_size", "precision", "options", "device")


def profile_row(
    *, source: str, cell_id: str | None, method: str, variant: str, backbone: str, config: TrainConfig,
    measured: Measured, world_size: int, device: torch.device, executor: str, started, extra_config: dict | None = None,
) -> dict[str, Any]:
    """One row of PROFILE_SCHEMA. Its id hashes the identity columns and the device's name, so a
    rerun on the same kind of device replaces the row and a CPU row never replaces a GPU row."""
    sha, dirty = provenance.git_state()
    result = measured.train
    measured_ips = result.measured_images_per_second
    row = {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "cell_id": cell_id,
        "method": method,
        "variant": variant,
        "backbone": backbone,
        "input_height": config.input_size[0],
        "input_width": config.input_size[1],
        "batch_size": config.ids_per_batch * config.images_per_id,
        "world_size": world_size,
        "precision": measured.precision,
        "options": json.dumps(measured.options, sort_keys=True),
        "train_steps": result.iterations - result.warmup_steps,
        "warmup_steps": result.warmup_steps,
        "train_images_per_second": measured_ips,
        "train_images_per_second_per_device": measured_ips / world_size if measured_ips else None,
        "infer_images_per_second": measured.infer_images_per_second,
        **measured.gpu.columns(),
        "peak_memory_bytes": measured.peak_memory_bytes,
        "git_sha": sha,
        "git_dirty": dirty,
        **provenance.environment(device),
        "executor": executor,
        "started_at": started,
        "finished_at": provenance.now(),
        "config": json.dumps({"train": dataclasses.asdict(config), **(extra_config or {})}, sort_keys=True),
    }
    identity = json.dumps({k: row[k] for k in _IDENTITY}, sort_keys=True)
    return {"profile_id": hashlib.sha256(identity.encode()).hexdigest()[:12], **row}


def training_row(cell, result: TrainResult, gpu: GpuFigures, peak: int | None, *, precision: str,
                 device: torch.device, world_size: int, executor: str, started) -> dict[str, Any]:
    """The profile row of a training cell's real training (`cell` a harness.spec.Cell); no inference figure."""
    config = cell.train
    options = {"channels_last": config.channels_last, "compile": config.compile, "data_on_device": config.data_on_device}
    return profile_row(
        source="training", cell_id=cell.id, method=cell.method, variant=cell.variant, backbone=cell.backbone,
        config=config, measured=Measured(result, None, gpu, peak, precision, options), world_size=world_size,
        device=device, executor=executor, started=started, extra_config={"train_dataset": cell.train_dataset},
    )


def profile_targets(
    spec_path: Path | None, *, methods: Sequence[str] | None = None, backbones: Sequence[str] | None = None,
    batch: int | None = None, input_size: str | None = None, precision: str | None = None, compile: bool | None = None,
    channels_last: bool | None = None, device: str | None = None,
) -> tuple[list[tuple[str, str, str]], TrainConfig, torch.device]:
    """What `reidbench profile` measures: (method, variant, backbone) triples, the recipe, the device.

    A spec gives its grid's triples, its [train] recipe and its device; flags override them.
    """
    from methods import method_names, method_variants
    from methods.backbones import backbone_names

    config, spec_device, triples = TrainConfig(), "auto", []
    if spec_path is not None:
        from harness.spec import load_spec

        spec = load_spec(spec_path)
        config, spec_device = spec.cells[0].train, spec.resources.device
        triples = list(dict.fromkeys((c.method, c.variant, c.backbone) for c in spec.cells))
    if methods:
        chosen = []
        for entry in methods:
            name, _, variant = entry.partition(":")
            if name not in method_names():
                raise UserError(f"--methods: unknown method {name!r}; {closest(name, method_names())}")
            variants = method_variants(name)
            if variant and variant not in variants:
                raise UserError(f"--methods: method {name!r} has no variant {variant!r}; {closest(variant, variants)}")
            chosen += [(name, variant)] if variant else [(name, v) for v in variants]
    else:
        chosen = list(dict.fromkeys((m, v) for m, v, _ in triples)) or [(m, v) for m in method_names() for v in method_variants(m)]
    for name in backbones or []:
        if name not in backbone_names():
            raise UserError(f"--backbones: unknown backbone {name!r}; {closest(name, backbone_names())}")
    nets = list(backbones or dict.fromkeys(b for _, _, b in triples) or ["resnet50"])
    targets = [(m, v, b) for m, v in chosen for b in nets]

    changes: dict[str, Any] = {}
    if batch is not None:
        k = config.images_per_id
        if batch < k or batch % k:
            raise UserError(f"--batch {batch} must be a multiple of images_per_id = {k} (P identities x K images).")
        changes["ids_per_batch"] = batch // k
    if input_size is not None:
        height, sep, width = input_size.lower().partition("x")
        if not (sep and height.isdigit() and width.isdigit()) or min(int(height), int(width)) < 16:
            raise UserError(f"--input {input_size!r} must be HEIGHTxWIDTH, each at least 16, e.g. 256x128.")
        changes["input_size"] = (int(height), int(width))
    for key, value in (("precision", precision), ("compile", compile), ("channels_last", channels_last)):
        if value is not None:
            changes[key] = value
    config = dataclasses.replace(config, **changes)

    wanted = device or spec_device
    if wanted == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda (or the spec's [resources] device) asks for a GPU, but torch sees no usable CUDA GPU here.")
    chosen_device = torch.device("cuda", torch.cuda.current_device()) if wanted != "cpu" and torch.cuda.is_available() else torch.device("cpu")
    return targets, config, chosen_device


def run_profile(
    targets: Sequence[tuple[str, str, str]], config: TrainConfig, *, device: torch.device, steps: int, warmup: int,
    num_classes: int = 751, log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Profile each (method, variant, backbone) on `device`; the rows, in order. Random weights:
    pretrained ones would not change the speed. 751 classes: Market-1501's training identities."""
    from methods import create_model

    rows = []
    for method, variant, backbone in targets:
        started = provenance.now()
        torch.manual_seed(0)
        model = create_model(method, variant=variant, backbone=backbone, num_classes=num_classes, pretrained=False,
                             last_stride=config.last_stride, label_smoothing=config.label_smoothing,
                             triplet_margin=config.triplet_margin)
        log(f"profiling {method}:{variant} on {backbone}: {warmup} + {steps} training and inference steps of "
            f"{config.ids_per_batch}x{config.images_per_id} images at {config.input_size[0]}x{config.input_size[1]} on {device}")
        measured = measure(model, config, device=device, steps=steps, warmup=warmup, num_classes=num_classes)
        rows.append(profile_row(
            source="profile", cell_id=None, method=method, variant=variant, backbone=backbone, config=config,
            measured=measured, world_size=1, device=device, executor="local", started=started,
            extra_config={"steps": steps, "warmup": warmup, "num_classes": num_classes},
        ))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows
