"""Cue maps: per-image files computed once by off-the-shelf models, and the registry that knows them.

A cue of an image lives at ``<root>/cues/<cue>/<key><suffix>``, where ``key`` is the image's path
below the dataset root without its extension (``Market-1501-v15.09.15/query/0001_c1s1_001051_00``;
CUHK03's extracted images use ``labeled/1_001_1_01``) and every cue map has the image's size. The
transforms move each cue with its image by its geometry kind (harness/data/geometry.py) and give
methods the tensor in the last column (per image; a batch adds a first dimension):

===============  ======  ===================================  ===========  ====================================
cue              suffix  file content                         geometry     tensor
===============  ======  ===================================  ===========  ====================================
saliency         .png    8-bit grey saliency map, 255 = most  probability  (1, H, W) in [0, 1], saliency at
                         salient (SSP-ReID)                                input resolution
parsing          .png    8-bit LIP label index, 0-19,         label        (5, H, W): foreground, head, upper
                         grouped into 5 regions on load                    body, lower body, shoes, each channel
                 .npy    float32 (5, H, W): probabilities of  probability  l1-normalised (sums to 1; all-zero
                         those 5 regions (SPReID/SSP-ReID);                if absent)
                         the .png is used when both exist
densepose        .png    RGB IUV: R = DensePose part 0-24     UV space     (24, 3, 32, 32): DSA-reID's DSAP
                         (0 = background), G = U, B = V                    images, normalised like the image
                         scaled to 0-255 (DSA-reID)
densepose-crops  (densepose's files)                          UV space     (24, 3, 32, 32): each DensePose
                                                                           part's bounding box in the image,
                                                                           resized (DSA-reID's CSA); mean
                                                                           colour where a part is absent
pose             .txt    13 lines ``x y score`` in pixels     keypoints    (13, H/s, W/s): Gaussian heatmaps
                         (x right, y down; score 0 = not                   (sigma 1 cell, peak = keypoint score)
                         detected), in GASM's order: head,                 at the feature-map size: s is the
                         left/right shoulder, elbow, wrist,                backbone's output stride (16 with
                         hip, knee, ankle                                  last_stride 1, else 32)
mask             .png    8-bit person-mask probability,       probability  (1, H, W) in [0, 1], person-mask
                         255 = person (GASM)                               probability
===============  ======  ===================================  ===========  ====================================

A derived cue (``densepose-crops``) is read from another cue's files and given another form.

A cue can have named sources: ``<root>/cues/<cue>@<source>/`` holds the same cue made by another
model, in the same format (``cues/parsing@spreid/`` from SPReID's parser, written by `reidbench
parsing write-cues`; ``cues/parsing/``, the default source, for maps a user brings, e.g. JPPNet's).
Everything here takes a cue reference, ``cue`` or ``cue@source``; a spec picks the source a method
reads with `[train] cue_sources` (see `cue_ref`), and methods see the tensor under the cue's name.

Each cue is one `Cue` entry below: its suffixes, reader and writer, geometry kind, tensor form,
random maker (for model tests and profiling) and synthetic maker (the renderer's exact map). Loading,
checking (`reidbench data check`), transforming, random batches and the synthetic writers all go
through the registry, so a new cue is one `register_cue` call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from harness.data import body_maps as body
from harness.data.geometry import LABEL_MAP, PROBABILITY_MAP, Geometry, Keypoints, UvSpace
from harness.errors import UserError, closest

Size = tuple[int, int]  # (height, width)


class CueError(UserError):
    """A cue file that is missing, unreadable or of the wrong size or content."""


def _as_is(value: torch.Tensor, size: Size, heatmap_stride: int) -> torch.Tensor:
    return value


def _image_grid(raw: np.ndarray) -> Size:
    return raw.shape[:2]


@dataclass(frozen=True)
class Cue:
    """Everything the harness does with one cue.

    A cue with files of its own gives `suffixes`, `read` and `write`; a derived cue names the cue whose
    files it reads as `source` and gives neither.
    """

    name: str
    geometry: Geometry | Callable[[np.ndarray], Geometry]  # or a function of the raw array: a cue with two forms
    tensor: Callable[[np.ndarray, torch.Tensor], torch.Tensor]  # (raw array, uint8 image) -> what the geometry moves
    random: Callable[[int, Size, int, torch.Generator | None], torch.Tensor]  # (batch, size, stride, gen) -> batch
    finish: Callable[[torch.Tensor, Size, int], torch.Tensor] = _as_is  # (moved, input size, stride) -> final
    suffixes: tuple[str, ...] = ()  # file suffixes, the preferred first
    read: Callable[[Path], np.ndarray] | None = None  # file -> raw array; CueError when its content is wrong
    write: Callable[[Path, np.ndarray], Path] | None = None  # (path without suffix, raw) -> the file written
    grid: Callable[[np.ndarray], Size | None] = _image_grid  # the raw array's (H, W); None: not a map
    synthetic: Callable[[Any], np.ndarray] | None = None  # a synthetic Rendering -> its exact raw cue
    source: str | None = None  # a derived cue: the cue whose files it is read from

    def geometry_of(self, raw: np.ndarray) -> Geometry:
        return self.geometry(raw) if callable(self.geometry) else self.geometry


REGISTRY: dict[str, Cue] = {}


def register_cue(cue: Cue) -> Cue:
    """Add a cue to the registry (its name is what methods declare and `--cues` takes)."""
    if cue.name in REGISTRY:
        raise ValueError(f"cue {cue.name!r} is registered twice")
    if cue.source is not None and (cue.source not in REGISTRY or REGISTRY[cue.source].source is not None):
        raise ValueError(f"cue {cue.name!r}: its source {cue.source!r} is not a registered cue with files of its own")
    if cue.source is None and not (cue.suffixes and cue.read and cue.write):
        raise ValueError(f"cue {cue.name!r} needs suffixes, a reader and a writer (or a source to derive from)")
    REGISTRY[cue.name] = cue
    return cue


def cue_names() -> tuple[str, ...]:
    """Every registered cue, in registration order."""
    return tuple(REGISTRY)


def stored_cues() -> tuple[str, ...]:
    """The cues with files (and a folder under <root>/cues/) of their own: all but the derived ones."""
    return tuple(name for name, cue in REGISTRY.items() if cue.source is None)


SOURCE_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")  # a source's name: lower case, a folder-name suffix


def split_ref(ref: str) -> tuple[str, str | None]:
    """("parsing", "spreid") for "parsing@spreid"; (name, None) for the default source."""
    name, _, source = ref.partition("@")
    return name, source or None


def cue_ref(name: str, source: str | None) -> str:
    """The reference of cue `name` from `source` (None: the default source, plain ``cues/<name>/``)."""
    return f"{name}@{source}" if source else name


def cue_refs(cues: Iterable[str], sources: Iterable[tuple[str, str]] | dict[str, str]) -> tuple[str, ...]:
    """Each cue's reference under a spec's `cue_sources` (cue -> source; a cue not named: the default)."""
    chosen = dict(sources)
    return tuple(cue_ref(c, chosen.get(c)) for c in cues)


def files_of(ref: str) -> str:
    """The cue (reference) whose files `ref` is read from: itself, or the cue it is derived from,
    from the same source."""
    name, source = split_ref(ref)
    return cue_ref(REGISTRY[name].source or name, source)


def check_names(cues: Iterable[str], where: str) -> tuple[str, ...]:
    """The cue references, each a registered cue with an optional well-formed `@source`."""
    cues = tuple(cues)
    for cue in cues:
        name, source = split_ref(cue)
        if name not in REGISTRY:
            raise UserError(f"{where}: unknown cue {name!r}; {closest(name, cue_names())}")
        if "@" in cue and not (source and SOURCE_PATTERN.fullmatch(source)):
            raise UserError(
                f"{where}: {cue!r} names no valid source; write cue@source with a source of lower-case letters, "
                f"digits, '.', '_' or '-' (e.g. parsing@spreid, read from cues/parsing@spreid/)"
            )
    return cues


def _stem(root: Path, cue: str, key: str) -> Path:
    return Path(root) / "cues" / cue / Path(key).with_suffix("")


def cue_path(root: Path, cue: str, key: str) -> Path:
    """The cue file of an image, preferring the first suffix that exists (else the first)."""
    stem = _stem(root, cue, key)
    candidates = [stem.with_name(stem.name + suffix) for suffix in REGISTRY[split_ref(cue)[0]].suffixes]
    return next((path for path in candidates if path.is_file()), candidates[0])


def load_cue(root: Path, cue: str, key: str, size: Size) -> np.ndarray:
    """The raw cue of an image of `size` (height, width); any problem is a CueError naming the file."""
    cue = files_of(cue)
    path = cue_path(root, cue, key)
    if not path.is_file():
        raise CueError(f"cue {cue}: missing file {path} (expected for image {key}; formats in harness/data/cues.py).")
    entry = REGISTRY[split_ref(cue)[0]]
    try:
        value = entry.read(path)
    except CueError:
        raise
    except Exception as err:  # PIL, numpy and float() raise many kinds
        raise CueError(f"cue {cue}: cannot read {path}: {err}") from None
    if np.issubdtype(value.dtype, np.floating):
        _check_finite(value, path, cue)
    shape = entry.grid(value)
    if shape is not None and tuple(shape) != tuple(size):
        raise CueError(
            f"cue {cue}: {path} is {shape[1]}x{shape[0]} (width x height) but its image is {size[1]}x{size[0]}."
        )
    return value


def write_cue(root: Path, cue: str, key: str, raw: np.ndarray) -> Path:
    """Write one raw cue of an image in its file format (what `load_cue` reads back)."""
    stem = _stem(root, cue, key)
    stem.parent.mkdir(parents=True, exist_ok=True)
    return REGISTRY[split_ref(cue)[0]].write(stem, raw)


def write_cues(root: Path, key: str, rendering: Any) -> None:
    """Write every cue of one synthetic image: each registered cue's exact map from the renderer's `Rendering`."""
    for name, cue in REGISTRY.items():
        if cue.synthetic is not None:
            write_cue(root, name, key, cue.synthetic(rendering))


def random_cues(
    names, batch_size: int, size: Size, *, heatmap_stride: int = 16, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """A batch of random cue tensors in the formats of the table above, for model tests and profiling:
    the shapes, ranges and normalisation of real cues, none of their structure."""
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise KeyError(f"unknown cue(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    return {n: REGISTRY[n].random(batch_size, tuple(size), heatmap_stride, generator) for n in names}


# --- the built-in cues ---------------------------------------------------------------------------


def _grey_png(cue: str, mode: str = "L") -> Callable[[Path], np.ndarray]:
    def read(path: Path) -> np.ndarray:
        with Image.open(path) as image:
            if image.mode != mode:
                raise CueError(
                    f"cue {cue}: {path} must be an {'RGB' if mode == 'RGB' else '8-bit grey'} PNG, "
                    f"it is mode {image.mode}."
                )
            return np.array(image)  # a writable copy

    return read


def _write_png(stem: Path, raw: np.ndarray) -> Path:
    path = stem.with_name(stem.name + ".png")
    Image.fromarray(np.asarray(raw, np.uint8)).save(path)
    return path


def _one_map(raw: np.ndarray, image: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(raw.astype(np.float32) / 255)[None]


def _random_map(batch: int, size: Size, stride: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(batch, 1, *size, generator=generator)


register_cue(
    Cue(
        "saliency",
        PROBABILITY_MAP,
        _one_map,
        _random_map,
        suffixes=(".png",),
        read=_grey_png("saliency"),
        write=_write_png,
        synthetic=lambda r: r.saliency,
    )
)


def _read_parsing(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        value = np.load(path, allow_pickle=False).astype(np.float32)
        if value.ndim != 3 or value.shape[0] != 5:
            raise CueError(f"cue parsing: {path} must be a (5, H, W) probability array, it is {value.shape}.")
        return value
    value = _grey_png("parsing")(path)
    if value.max(initial=0) >= body.NUM_LIP_LABELS:
        raise CueError(f"cue parsing: {path} holds label {value.max()}; LIP labels are 0-{body.NUM_LIP_LABELS - 1}.")
    return value


def _write_parsing(stem: Path, raw: np.ndarray) -> Path:
    if raw.ndim == 2:
        return _write_png(stem, raw)
    path = stem.with_name(stem.name + ".npy")
    np.save(path, np.asarray(raw, np.float32))
    return path


def _parsing_tensor(raw: np.ndarray, image: torch.Tensor) -> torch.Tensor:
    """Region probabilities as they are; label maps as region indices (the 5 regions have no sides, so a flip needs no label swap)."""
    return torch.from_numpy(raw) if raw.ndim == 3 else torch.from_numpy(body.LIP_REGION[raw])[None]


def _parsing_finish(value: torch.Tensor, size: Size, heatmap_stride: int) -> torch.Tensor:
    return body.l1(value.float()) if value.is_floating_point() else body.region_maps(value[0])


register_cue(
    Cue(
        "parsing",
        lambda raw: PROBABILITY_MAP if raw.ndim == 3 else LABEL_MAP,
        _parsing_tensor,
        lambda batch, size, stride, g: body.l1(torch.rand(batch * 5, *size, generator=g)).view(batch, 5, *size),
        finish=_parsing_finish,
        suffixes=(".png", ".npy"),
        read=_read_parsing,
        write=_write_parsing,
        grid=lambda raw: raw.shape[1:] if raw.ndim == 3 else raw.shape[:2],
        synthetic=lambda r: r.lip,
    )
)


def _read_densepose(path: Path) -> np.ndarray:
    value = _grey_png("densepose", "RGB")(path)
    if value[..., 0].max(initial=0) > body.NUM_DENSEPOSE_PARTS:
        raise CueError(
            f"cue densepose: {path} holds part {value[..., 0].max()}; parts are 0-{body.NUM_DENSEPOSE_PARTS}."
        )
    return value


def _iuv(raw: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(raw.transpose(2, 0, 1)))


def _random_parts(batch: int, size: Size, stride: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(batch, 24, 3, body.DSAP_SIZE, body.DSAP_SIZE, generator=generator)


_PART_FLIP = torch.from_numpy(body.DENSEPOSE_FLIP[1:] - 1)  # part i's image <- its mirror part's

register_cue(
    Cue(
        "densepose",
        UvSpace(lambda dsap: dsap[_PART_FLIP]),
        lambda raw, image: body.dsap_images(image.float() / 255, _iuv(raw)),
        _random_parts,
        suffixes=(".png",),
        read=_read_densepose,
        write=_write_png,
        synthetic=lambda r: r.iuv,
    )
)
# The mirrored person's part i is the mirror image of its partner part's crop.
register_cue(
    Cue(
        "densepose-crops",
        UvSpace(lambda crops: crops[_PART_FLIP].flip(-1)),
        lambda raw, image: body.part_crops(image.float() / 255, _iuv(raw)),
        _random_parts,
        source="densepose",
    )
)


def _read_pose(path: Path) -> np.ndarray:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if len(rows) != body.NUM_KEYPOINTS or any(len(r) != 3 for r in rows):
        raise CueError(
            f"cue pose: {path} must hold {body.NUM_KEYPOINTS} lines of 'x y score', it holds {len(rows)} line(s)."
        )
    return np.asarray([[float(v) for v in r] for r in rows], np.float32)


def _write_pose(stem: Path, raw: np.ndarray) -> Path:
    path = stem.with_name(stem.name + ".txt")
    path.write_text("".join(f"{x:.2f} {y:.2f} {s:.2f}\n" for x, y, s in raw))
    return path


register_cue(
    Cue(
        "pose",
        Keypoints(body.KEYPOINT_FLIP),
        lambda raw, image: torch.as_tensor(raw, dtype=torch.float32).clone(),
        lambda batch, size, stride, g: torch.rand(
            batch, body.NUM_KEYPOINTS, size[0] // stride, size[1] // stride, generator=g
        ),
        finish=body.heatmaps,
        suffixes=(".txt",),
        read=_read_pose,
        write=_write_pose,
        grid=lambda raw: None,
        synthetic=lambda r: r.keypoints,
    )
)
register_cue(
    Cue(
        "mask",
        PROBABILITY_MAP,
        _one_map,
        _random_map,
        suffixes=(".png",),
        read=_grey_png("mask"),
        write=_write_png,
        synthetic=lambda r: r.mask.astype(np.uint8) * 255,
    )
)

CUES = stored_cues()  # the built-in cues with files of their own; stored_cues() also sees later registrations


def _check_finite(value: np.ndarray, path: Path, cue: str) -> np.ndarray:
    bad = int(value.size - np.isfinite(value).sum())
    if bad:
        raise CueError(f"cue {cue}: {path} holds {bad} NaN or infinite value(s).")
    return value


def check_files(samples, root: Path, cues: tuple[str, ...]) -> list[tuple[str, str]]:
    """Every (cue or 'image', problem) of `samples` (harness.data.Sample), not just the first.

    Each image is decoded whole (a truncated JPEG has a good header), and each cue read and
    checked for finite values, so `reidbench data check` and a cell's pre-flight find what
    would otherwise fail the cell after its training."""
    problems = []
    for sample in {s.path: s for s in samples}.values():
        try:
            with Image.open(sample.path) as image:
                image.load()
                size = (image.height, image.width)
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises SyntaxError for some broken headers
            problems.append(("image", f"{sample.path}: cannot decode: {err}"))
            continue
        for cue in cues:
            try:
                load_cue(Path(sample.root) if sample.root else root, cue, sample.cue_key, size)
            except CueError as err:
                problems.append((cue, str(err)))
    return problems
