"""How fast a method trains and infers, and how busy it keeps the GPU: NVML sampling and throughput.

`reidbench profile` builds each (method, variant, backbone), runs reidbench's own training loop on
synthetic P x K batches at the recipe's input size (no dataset needed), then inference, and writes
one profile row per model (PROFILE_SCHEMA in harness/store.py). Training cells write the same row
for their real training (harness/engine/rows.py). Throughput leaves out warm-up steps and synchronises the
device around the timed steps. A background thread samples NVML every 0.1 s: SM and memory
utilisation, power and clocks per GPU. Without an NVIDIA GPU or without NVML the GPU columns are
null and `gpu_note` says why; CPU throughput is still recorded.

Cue maps: a method that declares cues is fed random cue tensors in their documented formats
(`harness.data.transforms.random_cues`): its speed does not depend on their content.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from harness import provenance
from harness.data.cues import random_cues
from harness.engine.gpu import GpuSampler, peak_memory, reset_peak_memory, synchronize
from harness.engine.rows import Measured, profile_row
from harness.engine.train import autocast, build_optimizer, build_scheduler, resolve_precision, train
from harness.errors import UserError, closest
from harness.spec import TrainConfig, load_spec, model_kwargs, split_method
from methods import create_model, method_names, method_variants
from methods.backbones import backbone_names

# -- synthetic inputs -------------------------------------------------------------------------------


def synthetic_batches(
    steps: int,
    *,
    ids_per_batch: int,
    images_per_id: int,
    size: tuple[int, int],
    num_classes: int,
    device: torch.device,
    seed: int = 0,
    distinct: int = 4,
    cues: Sequence[str] = (),
    heatmap_stride: int = 16,
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


def measure(
    model: torch.nn.Module,
    config: TrainConfig,
    *,
    device: torch.device,
    steps: int,
    warmup: int,
    num_classes: int,
    seed: int = 0,
    heatmap_stride: int = 16,
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
    shape = {
        "ids_per_batch": config.ids_per_batch,
        "images_per_id": config.images_per_id,
        "size": config.input_size,
        "num_classes": num_classes,
        "device": device,
        "seed": seed,
        "heatmap_stride": heatmap_stride,
    }
    reset_peak_memory(device)
    with GpuSampler([device]) as sampler:
        result = train(
            run,
            model.losses,
            synthetic_batches(warmup + steps, cues=model.train_cues, **shape),
            optimizer,
            scheduler,
            device=device,
            precision=precision,
            channels_last=config.channels_last,
            check_every=config.check_every,
            warmup_steps=warmup,
            log_every=max(1, warmup + steps),
            log=lambda m: None,
        )
        trained_until = time.perf_counter()
        infer = _infer(
            run,
            synthetic_batches(warmup + steps, cues=model.test_cues, **shape),
            device=device,
            precision=precision,
            channels_last=config.channels_last,
            warmup=warmup,
        )
    gpu = sampler.figures(since=result.measured_from, until=trained_until)
    options = {"channels_last": config.channels_last, "compile": config.compile}
    return Measured(result, infer, gpu, peak_memory(device), precision, options)


@torch.inference_mode()
def _infer(
    model: torch.nn.Module, batches, *, device: torch.device, precision: str, channels_last: bool, warmup: int
) -> float | None:
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


def profile_targets(
    spec_path: Path | None,
    *,
    methods: Sequence[str] | None = None,
    backbones: Sequence[str] | None = None,
    batch: int | None = None,
    input_size: str | None = None,
    precision: str | None = None,
    compile: bool | None = None,
    channels_last: bool | None = None,
    device: str | None = None,
) -> tuple[list[tuple[str, str, str]], TrainConfig, torch.device]:
    """What `reidbench profile` measures: (method, variant, backbone) triples, the recipe, the device.

    A spec gives its grid's triples, its [train] recipe and its device; flags override them.
    """
    config, spec_device, triples = TrainConfig(), "auto", []
    if spec_path is not None:
        spec = load_spec(spec_path)
        config, spec_device = spec.cells[0].train, spec.resources.device
        triples = list(dict.fromkeys((c.method, c.variant, c.backbone) for c in spec.cells))
    if methods:
        chosen = []
        for entry in methods:
            name, variant = split_method(entry)
            if name not in method_names():
                raise UserError(f"--methods: unknown method {name!r}; {closest(name, method_names())}")
            variants = method_variants(name)
            if variant and variant not in variants:
                raise UserError(f"--methods: method {name!r} has no variant {variant!r}; {closest(variant, variants)}")
            chosen += [(name, variant)] if variant else [(name, v) for v in variants]
    else:
        chosen = list(dict.fromkeys((m, v) for m, v, _ in triples)) or [
            (m, v) for m in method_names() for v in method_variants(m)
        ]
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
        raise UserError(
            "--device cuda (or the spec's [resources] device) asks for a GPU, but torch sees no usable CUDA GPU here."
        )
    chosen_device = (
        torch.device("cuda", torch.cuda.current_device())
        if wanted != "cpu" and torch.cuda.is_available()
        else torch.device("cpu")
    )
    return targets, config, chosen_device


def run_profile(
    targets: Sequence[tuple[str, str, str]],
    config: TrainConfig,
    *,
    device: torch.device,
    steps: int,
    warmup: int,
    num_classes: int = 751,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Profile each (method, variant, backbone) on `device`; the rows, in order. Random weights:
    pretrained ones would not change the speed. 751 classes: Market-1501's training identities."""
    rows = []
    for method, variant, backbone in targets:
        started = provenance.now()
        torch.manual_seed(0)
        kwargs = {**model_kwargs(method, variant, backbone), "pretrained": False}
        model = create_model(method, num_classes=num_classes, **kwargs)
        log(
            f"profiling {method}:{variant} on {backbone}: {warmup} + {steps} training and inference steps of "
            f"{config.ids_per_batch}x{config.images_per_id} images at {config.input_size[0]}x{config.input_size[1]} on {device}"
        )
        measured = measure(
            model,
            config,
            device=device,
            steps=steps,
            warmup=warmup,
            num_classes=num_classes,
            heatmap_stride=16 if kwargs["last_stride"] == 1 else 32,
        )
        rows.append(
            profile_row(
                source="profile",
                cell_id=None,
                method=method,
                variant=variant,
                backbone=backbone,
                config=config,
                measured=measured,
                world_size=1,
                device=device,
                executor="local",
                started=started,
                extra_config={"steps": steps, "warmup": warmup, "num_classes": num_classes},
            )
        )
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows
