"""Train SPReID's parsing model on LIP, evaluate it, and write parsing cue maps for a re-ID dataset.

The recipe is SPReID §5: "We train our human semantic parsing model for 30K iterations where the
initial learning rates for the Inception-V3 backbone, atrous spatial pyramid pooling and the 1 x 1
convolution layer are respectively set to 0.01, 0.1 and 0.1. The rest of the parameters and
settings are similar to the ones for person re-identification except the input resolution where
512 x 512 input images are used." From the re-ID settings: mini-batch 15, Nesterov momentum 0.9,
weight decay 0.0005, gradient clipping 2.0 (global L2 norm), and "we decay the learning rate 10
times using exponential shift with the rate of 0.9" (lr x 0.9^floor(10 t / T)). The loss is
per-pixel softmax cross-entropy over the 20 labels.

Not stated, chosen here: an image and its labels are resized to the input size (bilinear and
nearest; LIP's images come in many sizes and aspect ratios) and flipped with probability 0.5
(left and right labels swapped). Evaluation resizes the image the same way and upsamples the
logits bilinearly from 1/16 straight to the annotation's own size, where the pixels are counted.
Cue maps are predicted likewise at `input_size` and upsampled to each re-ID image's size.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision.transforms.v2 import functional as TF

from harness import data
from harness.data import lip
from harness.data.body_maps import lip_regions
from harness.data.cues import cue_path, cue_ref
from harness.data.geometry import MEAN, STD
from harness.errors import UserError
from harness.human_parsing.metrics import confusion_matrix, parsing_scores
from methods.spreid_parsing import NUM_LIP_LABELS, ParsingNet, build_parsing_net


@dataclass(frozen=True)
class Recipe:
    """SPReID §5's parsing recipe; the defaults are the paper's."""

    iterations: int = 30_000
    input_size: tuple[int, int] = (512, 512)
    batch_size: int = 15
    backbone_lr: float = 0.01
    aspp_lr: float = 0.1
    classifier_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    grad_clip: float = 2.0
    exp_decays: int = 10
    gamma: float = 0.9
    flip: float = 0.5
    aspp: str = "authors"  # the ASPP's form (methods/spreid_parsing.py): the authors' code's, or the paper's sentence
    seed: int = 0  # the initialisation and batch order (train's `seed` is written here when the model is saved)


class LipImages(Dataset):
    """(normalised image at `size`, labels at `size` or, with `keep_labels`, at their own size)."""

    def __init__(
        self, pairs: list[tuple[Path, Path]], size: tuple[int, int], *, flip: float = 0.0, keep_labels: bool = False
    ):
        self.pairs, self.size, self.flip, self.keep_labels = pairs, list(size), flip, keep_labels
        self.swap = torch.tensor(lip.FLIP + (lip.IGNORE,) * (256 - len(lip.FLIP)))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path = self.pairs[index]
        image, labels = _read_image(image_path), _read_labels(label_path)
        if image.shape[-2:] != labels.shape[-2:]:
            raise UserError(
                f"LIP: {label_path} is {labels.shape[-1]}x{labels.shape[-2]} but its image {image_path} is "
                f"{image.shape[-1]}x{image.shape[-2]} (width x height)."
            )
        image = normalise(TF.resize(image, self.size, antialias=True))
        if not self.keep_labels:
            labels = TF.resize(labels[None], self.size, interpolation=TF.InterpolationMode.NEAREST_EXACT)[0]
        if self.flip and torch.rand(()) < self.flip:
            image, labels = image.flip(-1), self.swap[labels.long()].flip(-1)
        return image, labels.long()


def _read_image(path: Path) -> torch.Tensor:
    with Image.open(path) as picture:
        return torch.from_numpy(np.array(picture.convert("RGB"))).permute(2, 0, 1).contiguous()


def _read_labels(path: Path) -> torch.Tensor:
    with Image.open(path) as picture:
        if picture.mode not in ("L", "P"):
            raise UserError(f"LIP: {path} must be an 8-bit label-index PNG, it is mode {picture.mode}.")
        labels = torch.from_numpy(np.array(picture))
    if labels.max() >= NUM_LIP_LABELS:
        raise UserError(f"LIP: {path} holds label {int(labels.max())}; LIP's labels are 0-{NUM_LIP_LABELS - 1}.")
    return labels


def normalise(image: torch.Tensor) -> torch.Tensor:
    return TF.normalize(image.float() / 255, MEAN, STD)


def _ragged(items):
    """Collate same-sized images and labels of any size (evaluation keeps each annotation's own)."""
    return torch.stack([image for image, _ in items]), [labels for _, labels in items]


def _autocast(device: torch.device):
    """bf16 on GPUs that support it (speed; the loss is taken in fp32), else nothing."""
    enabled = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def lr_factor(step: int, recipe: Recipe) -> float:
    """The exponential shift: gamma^floor(exp_decays * step / iterations)."""
    return recipe.gamma ** math.floor(recipe.exp_decays * step / recipe.iterations)


def train(
    recipe: Recipe,
    root: Path,
    out: Path,
    *,
    device: torch.device,
    pretrained: bool = True,
    workers: int = 2,
    seed: int = 0,
    log_every: int = 20,
    checkpoint_every: int = 1000,
    log: Callable[[str], None] = print,
) -> ParsingNet:
    """Train on LIP's train split under `root`; the model is saved to `out` (see `load`).

    Every `checkpoint_every` steps the weights, optimizer and step go to ``<out>.resume``; a run that
    finds that file (from the same recipe) continues from it, with a new image order; the file is
    removed once the model is written."""
    torch.manual_seed(seed)
    model = (
        build_parsing_net(pretrained=pretrained, aspp=recipe.aspp).to(device).train()
    )  # uncached weights fail before anything runs
    pairs = lip.read(root, "train")
    groups = model.param_groups(recipe.backbone_lr, recipe.aspp_lr, recipe.classifier_lr)
    optimizer = torch.optim.SGD(
        groups, lr=recipe.backbone_lr, momentum=recipe.momentum, nesterov=True, weight_decay=recipe.weight_decay
    )
    base = [group["lr"] for group in optimizer.param_groups]
    resume = Path(out).with_name(Path(out).name + ".resume")
    start = _resume(resume, model, optimizer, recipe, pretrained, log)
    images = LipImages(pairs, recipe.input_size, flip=recipe.flip)
    sampler = RandomSampler(images, num_samples=(recipe.iterations - start) * recipe.batch_size)  # reshuffled each pass
    loader = DataLoader(
        images,
        batch_size=recipe.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    log(
        f"parsing: training on {len(pairs)} LIP images from {root} for {recipe.iterations} iterations of "
        f"{recipe.batch_size} at {recipe.input_size[0]}x{recipe.input_size[1]} on {device}"
    )
    started = time.perf_counter()
    for step, (batch, labels) in enumerate(loader, start=start):
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = lr * lr_factor(step, recipe)
        batch, labels = batch.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with _autocast(device):
            logits = model(batch)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=lip.IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        done = step + 1
        if checkpoint_every and done % checkpoint_every == 0 and done < recipe.iterations:
            _atomic_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": done,
                    "recipe": asdict(recipe),
                    "pretrained": pretrained,
                },
                resume,
            )
        if done % log_every == 0 or done == recipe.iterations:
            value = loss.item()
            if not math.isfinite(value):
                raise RuntimeError(f"parsing: the loss became non-finite ({value}) at step {done}.")
            rate = (done - start) * recipe.batch_size / (time.perf_counter() - started)
            log(
                f"parsing: step {done}/{recipe.iterations} loss {value:.4f} "
                f"lr {optimizer.param_groups[0]['lr']:.2e} {rate:.1f} img/s"
            )
    save(model, out, replace(recipe, seed=seed), pretrained=pretrained)
    resume.unlink(missing_ok=True)
    log(f"parsing: model written to {out}")
    return model


def _resume(
    path: Path,
    model: ParsingNet,
    optimizer: torch.optim.Optimizer,
    recipe: Recipe,
    pretrained: bool,
    log: Callable[[str], None],
) -> int:
    """The step to start from: 0, or that of the resume file, whose state is loaded."""
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["recipe"] != asdict(recipe) or state["pretrained"] != pretrained:
        raise UserError(
            f"{path} holds a run with another recipe ({state['recipe']}, pretrained {state['pretrained']}); "
            f"resume it with the same flags, or delete it to start afresh."
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    log(f"parsing: resuming from step {state['step']} ({path})")
    return state["step"]


def _atomic_save(value: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".partial")
    torch.save(value, scratch)
    scratch.replace(path)


def save(model: ParsingNet, path: Path, recipe: Recipe, *, pretrained: bool) -> None:
    _atomic_save(
        {
            "kind": "spreid-parsing",
            "state_dict": model.state_dict(),
            "recipe": asdict(recipe),
            "pretrained": pretrained,
            "num_labels": model.num_labels,
        },
        Path(path),
    )


def load(path: Path, device: torch.device) -> tuple[ParsingNet, Recipe]:
    """A model written by `train`, in eval mode on `device`, with the recipe it was trained with."""
    path = Path(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"--model {path}: no such file (`reidbench parsing train --out {path}` writes one).") from None
    except Exception as err:  # a truncated file or another format: pickle, zip and torch raise many kinds
        raise UserError(f"--model {path}: not a model written by `reidbench parsing train` ({err}).") from None
    if not isinstance(saved, dict) or saved.get("kind") != "spreid-parsing":
        raise UserError(f"--model {path}: not a model written by `reidbench parsing train`.")
    recipe = {"aspp": "paper", **saved["recipe"]}  # models written before the key had the paper's ASPP
    model = build_parsing_net(pretrained=False, num_labels=saved["num_labels"], aspp=recipe["aspp"])
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval(), Recipe(**{**recipe, "input_size": tuple(recipe["input_size"])})


@torch.no_grad()
def evaluate(
    model: ParsingNet,
    pairs: list[tuple[Path, Path]],
    input_size: tuple[int, int],
    *,
    device: torch.device,
    batch_size: int = 8,
    workers: int = 2,
) -> torch.Tensor:
    """The (20, 20) confusion matrix of `model` over `pairs`, counted at each annotation's own size."""
    loader = DataLoader(
        LipImages(pairs, input_size, keep_labels=True), batch_size=batch_size, num_workers=workers, collate_fn=_ragged
    )
    confusion = torch.zeros(model.num_labels, model.num_labels, dtype=torch.int64)
    for images, labels in loader:
        with _autocast(device):
            coarse = model.coarse_logits(images.to(device)).float()
        for logits, truth in zip(coarse, labels):
            pred = F.interpolate(logits[None], size=truth.shape, mode="bilinear", align_corners=False)[0].argmax(0)
            confusion += confusion_matrix(pred, truth.to(device), model.num_labels, lip.IGNORE)
    return confusion


def evaluate_split(
    model: ParsingNet,
    root: Path,
    split: str,
    input_size: tuple[int, int],
    *,
    device: torch.device,
    batch_size: int = 8,
    workers: int = 2,
) -> dict[str, float]:
    return parsing_scores(
        evaluate(model, lip.read(root, split), input_size, device=device, batch_size=batch_size, workers=workers)
    )


class _ReidImages(Dataset):
    """Re-ID images resized to the parsing input, with their own size and index."""

    def __init__(self, paths: list[str], size: tuple[int, int]):
        self.paths, self.size = paths, list(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = _read_image(Path(self.paths[index]))
        return normalise(TF.resize(image, self.size, antialias=True)), tuple(image.shape[-2:]), index


def _by_size(items):
    return (
        torch.stack([image for image, _, _ in items]),
        [size for _, size, _ in items],
        [index for _, _, index in items],
    )


@torch.no_grad()
def write_cues(
    model: ParsingNet,
    dataset: str,
    root: Path,
    input_size: tuple[int, int],
    *,
    device: torch.device,
    batch_size: int = 16,
    workers: int = 2,
    source: str | None = "spreid",
    log: Callable[[str], None] = print,
) -> int:
    """Write ``<root>/cues/parsing@<source>/<key>.npy`` (``cues/parsing/`` for source None: the
    default source, where a user's own maps go) for every image of `dataset` under `root`: float32 (5, H, W)
    probabilities of foreground, head, upper body, lower body and shoes (harness/data/cues.py), grouped
    from the 20 LIP label probabilities as label maps are grouped (harness/data/body_maps.py). Returns the count."""
    reid = data.load_dataset(dataset, root)
    samples = list({s.path: s for s in reid.train + reid.query + reid.gallery}.values())
    ref = cue_ref("parsing", source)
    folder = Path(root) / "cues" / ref
    targets = [cue_path(root, ref, s.cue_key).with_suffix(".npy") for s in samples]
    labels = [t.with_suffix(".png") for t in targets if t.with_suffix(".png").is_file()]
    if labels:
        raise UserError(
            f"parsing cues: {len(labels)} label PNG(s) such as {labels[0]} are already there, and a .png is "
            f"read in preference to the .npy beside it. Move {folder} away first, or write another source."
        )
    loader = DataLoader(
        _ReidImages([s.path for s in samples], input_size),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_by_size,
    )
    log(
        f"parsing: writing cues for {len(samples)} {dataset} images under {folder}/ "
        f"(parsed at {input_size[0]}x{input_size[1]})"
    )
    for images, sizes, indices in loader:
        with _autocast(device):
            coarse = model.coarse_logits(images.to(device)).float()
        for logits, size, index in zip(coarse, sizes, indices):
            probabilities = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0].softmax(0)
            regions = lip_regions(probabilities).cpu().numpy().astype(np.float32)
            target = targets[index]
            target.parent.mkdir(parents=True, exist_ok=True)
            scratch = target.with_name(target.name + ".partial")
            with open(scratch, "wb") as handle:
                np.save(handle, regions)
            scratch.replace(target)
    return len(samples)
