"""`reidbench cues import KIND SRC`: the outputs of the papers' own cue tools, converted to reidbench's cue files.

Each image of the dataset is looked up under SRC by its key (its path below the root, without the
extension), trying the longest tail first: ``SRC/Market-1501-v15.09.15/query/0001_c1s1_001051_00<suffix>``,
then ``SRC/query/0001_c1s1_001051_00<suffix>``, then ``SRC/0001_c1s1_001051_00<suffix>`` (a tool run over
one folder writes a flat one). The files, in the tools' own formats:

==========  ====================  ===============================================================
kind        SRC holds             format read
==========  ====================  ===============================================================
densepose   ``<name>_IUV.png``    DensePose (Detectron) ``infer_simple.py``: the (I, U, V) array
                                  written by ``cv2.imwrite``, which stores it as BGR, so the PNG's
                                  blue channel is the part I (0-24), green U and red V (0-255).
                                  Written as reidbench's RGB IUV (R = I, G = U, B = V).
parsing     ``<name>.png``        JPPNet's label PNG (``cv2.imwrite`` of the argmax: 8-bit grey,
                                  LIP labels 0-19; not its colour ``_vis.png``). Written as is:
                                  reidbench groups LIP labels into its 5 regions on load.
saliency    ``<name>.png``        8-bit grey saliency, 255 = most salient (RGB with equal channels
                                  and 16-bit grey are accepted).
mask        ``<name>.png``        8-bit grey person probability, 255 = person; a 0/1 label mask
                                  (max 1, or a 1-bit PNG) is scaled to 0/255.
pose        one JSON file         COCO keypoints: a dict with ``images`` (``id``, ``file_name``)
                                  and ``annotations`` (``image_id``, ``keypoints`` = 17 x (x, y, v),
                                  ``score``), or a results list whose ``image_id`` is a file name
                                  (or an integer id, with ``--images`` naming the COCO file that
                                  lists them). The best-scored person per image; its 17 points
                                  become GASM's 13 (harness/cue_tools/models.py); v is the
                                  keypoint's score, clipped to [0, 1] (a label's 2 = visible -> 1).
                                  An image listed in ``images`` without annotation: no person.
==========  ====================  ===============================================================

Every file is checked (readable, the right mode and value range, the image's size, keypoints inside
the image); all problems are named together in one error. The good files are written (atomically)
first, so a rerun after fixing the named ones converts only those; an image whose cue file is
already there and valid is skipped unless `force`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from harness.cue_tools.files import Progress, cue_folder, dataset_images, image_size, is_done, sample_root, write_atomic
from harness.cue_tools.models import coco_to_gasm
from harness.data import Sample
from harness.data.body_maps import NUM_DENSEPOSE_PARTS, NUM_KEYPOINTS, NUM_LIP_LABELS
from harness.errors import UserError

KINDS = ("densepose", "parsing", "saliency", "mask", "pose")
SUFFIX = {"densepose": "_IUV.png", "parsing": ".png", "saliency": ".png", "mask": ".png"}
MAX_LISTED = 20


class Malformed(Exception):
    """One source file that cannot be converted; the message says why."""


def _tails(key: str) -> list[str]:
    parts = PurePosixPath(key).with_suffix("").parts
    return ["/".join(parts[i:]) for i in range(len(parts))]


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except (OSError, ValueError, SyntaxError) as err:
        raise Malformed(f"cannot read it as an image: {err}") from None


def _grey(path: Path, what: str) -> np.ndarray:
    image = _open(path)
    if image.mode in ("L", "P"):
        return np.array(image)
    if image.mode == "1":
        return np.array(image).astype(np.uint8) * 255
    if image.mode in ("I;16", "I;16B", "I"):
        return (np.array(image).astype(np.float64) / 257).round().clip(0, 255).astype(np.uint8)
    if image.mode in ("RGB", "RGBA"):
        rgb = np.array(image)[..., :3]
        if (rgb == rgb[..., :1]).all():
            return rgb[..., 0].copy()
        raise Malformed(f"is a colour PNG ({image.mode}); a {what} map is one grey channel")
    raise Malformed(f"is a {image.mode} image; a {what} map is an 8-bit grey PNG")


def read_densepose(path: Path) -> np.ndarray:
    """A DensePose ``*_IUV.png`` (BGR on disk: B = I) -> reidbench's RGB IUV (R = I, G = U, B = V)."""
    image = _open(path)
    if image.mode != "RGB":
        raise Malformed(f"is a {image.mode} image; DensePose's IUV PNG has three channels")
    bgr = np.array(image)  # PIL reads the PNG's channels as R, G, B: here V, U, I
    parts = bgr[..., 2]
    if parts.max(initial=0) > NUM_DENSEPOSE_PARTS:
        hint = (
            " (its red channel holds parts 0-24: is it already RGB-ordered, I in red? Copy it into cues/densepose/)"
            if bgr[..., 0].max(initial=0) <= NUM_DENSEPOSE_PARTS
            else ""
        )
        raise Malformed(f"holds part {parts.max()} in its blue channel (I); parts are 0-{NUM_DENSEPOSE_PARTS}{hint}")
    return np.ascontiguousarray(bgr[..., ::-1])


def read_parsing(path: Path) -> np.ndarray:
    image = _open(path)
    if image.mode not in ("L", "P"):
        raise Malformed(
            f"is a {image.mode} image; JPPNet's label PNG is 8-bit grey (its colour picture is the _vis.png)"
        )
    labels = np.array(image)
    if labels.max(initial=0) >= NUM_LIP_LABELS:
        raise Malformed(f"holds label {labels.max()}; LIP's labels are 0-{NUM_LIP_LABELS - 1}")
    return labels


def read_saliency(path: Path) -> np.ndarray:
    return _grey(path, "saliency")


def read_mask(path: Path) -> np.ndarray:
    mask = _grey(path, "mask")
    return mask * np.uint8(255) if mask.max(initial=0) <= 1 else mask


READERS: dict[str, Callable[[Path], np.ndarray]] = {
    "densepose": read_densepose,
    "parsing": read_parsing,
    "saliency": read_saliency,
    "mask": read_mask,
}


def _find(src: Path, samples: list[Sample], suffix: str) -> tuple[dict[int, Path], list[str]]:
    """Each sample's source file (longest key tail first), and the problems: missing or shared files."""
    found, problems, users = {}, [], {}
    for index, sample in enumerate(samples):
        tails = _tails(sample.cue_key)
        path = next((src / (t + suffix) for t in tails if (src / (t + suffix)).is_file()), None)
        if path is None:
            problems.append(
                f"missing: {src / (tails[-1] + suffix)} (or {src / (tails[0] + suffix)}) for image {sample.path}"
            )
            continue
        found[index] = path
        users.setdefault(path, []).append(sample.path)
    for path, images in users.items():
        if len(images) > 1:
            problems.append(
                f"ambiguous: {path} would serve {len(images)} images ({', '.join(images[:3])}); "
                f"keep the dataset's folders under {src}"
            )
            for index in [i for i, p in found.items() if p == path]:
                del found[index]
    return found, problems


def _resized(raw: np.ndarray, size: tuple[int, int], kind: str) -> np.ndarray:
    nearest = kind in ("parsing", "densepose")
    image = Image.fromarray(raw)
    return np.array(image.resize((size[1], size[0]), Image.NEAREST if nearest else Image.BILINEAR))


def _pose_index(src: Path, images_file: Path | None) -> dict[str, list[dict]]:
    """COCO keypoints JSON -> file name without extension -> its person annotations (none: listed, no person)."""
    try:
        content = json.loads(src.read_text())
        names = {}
        if images_file is not None:
            names = {img["id"]: img["file_name"] for img in json.loads(images_file.read_text())["images"]}
        if isinstance(content, dict):
            names.update({img["id"]: img["file_name"] for img in content["images"]})
            annotations = content["annotations"]
        else:
            annotations = content
        by_name: dict[str, list[dict]] = {str(PurePosixPath(n).with_suffix("")): [] for n in names.values()}
        for ann in annotations:
            image_id = ann["image_id"]
            if not isinstance(image_id, str) and image_id not in names:
                raise UserError(
                    f"cues import pose: {src}: image_id {image_id!r} is not a file name and no 'images' list "
                    f"names it; give the COCO file that lists the images with --images."
                )
            name = image_id if isinstance(image_id, str) else names[image_id]
            by_name.setdefault(str(PurePosixPath(name).with_suffix("")), []).append(ann)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"cues import pose: cannot read {src} as COCO keypoints JSON ({type(err).__name__}: {err}); expected "
            f"{{'images': [{{'id', 'file_name'}}], 'annotations': [{{'image_id', 'keypoints', 'score'}}]}} or a "
            f"results list [{{'image_id': FILE_NAME, 'keypoints', 'score'}}] (harness/cue_tools/importers.py)."
        ) from None
    return by_name


def _match_names(src: Path, samples: list[Sample], by_name: dict[str, list[dict]]) -> tuple[dict[int, str], list[str]]:
    """Each sample's file name in the JSON: the longest tail its key shares with a name there (a name may
    be an absolute path, a path below the root or a bare file name); a tail shared by several names,
    or a name serving several images, is ambiguous."""
    by_tail: dict[str, set[str]] = {}
    for name in by_name:
        for tail in _tails(name.lstrip("/")):
            by_tail.setdefault(tail, set()).add(name)
    found, problems, users = {}, [], {}
    for index, sample in enumerate(samples):
        tail = next((t for t in _tails(sample.cue_key) if t in by_tail), None)
        if tail is None:
            problems.append(
                f"missing: no entry in {src} for image {sample.path} (file name {_tails(sample.cue_key)[-1]})"
            )
        elif len(by_tail[tail]) > 1:
            problems.append(
                f"ambiguous: {src} names {len(by_tail[tail])} images ending in {tail} for image {sample.path}"
            )
        else:
            (found[index],) = by_tail[tail]
            users.setdefault(found[index], []).append(index)
    for name, indices in users.items():
        if len(indices) > 1:
            problems.append(
                f"ambiguous: {src}'s {name} would serve {len(indices)} images "
                f"({', '.join(samples[i].path for i in indices[:3])}); name them by their folders"
            )
            for index in indices:
                del found[index]
    return found, problems


def _pose_of(annotations: list[dict], size: tuple[int, int]) -> np.ndarray:
    if not annotations:
        return np.zeros((NUM_KEYPOINTS, 3), np.float32)
    best = max(annotations, key=lambda a: float(a.get("score", 1.0)))
    points = np.asarray(best.get("keypoints", []), np.float32)
    if points.size != 51:
        raise Malformed(f"holds {points.size} keypoint values; COCO keypoints are 17 x (x, y, v) = 51")
    points = points.reshape(17, 3)
    seen = points[:, 2] > 0
    outside = seen & (
        (points[:, 0] < -1) | (points[:, 1] < -1) | (points[:, 0] > size[1] + 1) | (points[:, 1] > size[0] + 1)
    )
    if outside.any():
        raise Malformed(
            f"keypoint(s) {np.flatnonzero(outside).tolist()} lie outside the {size[1]}x{size[0]} image "
            f"(coordinates of another frame, e.g. a resized input?)"
        )
    return coco_to_gasm(points[:, :2], points[:, 2])


def import_cues(
    kind: str,
    src: Path,
    dataset: str,
    root: Path,
    *,
    force: bool = False,
    resize: bool = False,
    images_file: Path | None = None,
    log: Callable[[str], None] = print,
    progress_stream=None,
) -> tuple[int, int]:
    """Convert `kind` files under `src` for every image of `dataset` under `root`: (written, skipped).

    Raises one UserError naming every missing or malformed file, after writing the good ones."""
    if kind not in KINDS:
        raise UserError(f"cues import: unknown kind {kind!r}; use one of {', '.join(KINDS)}.")
    if kind == "pose" and not src.is_file():
        raise UserError(f"cues import pose: {src} is not a file; pose cues come from one COCO keypoints JSON file.")
    if kind != "pose" and not src.is_dir():
        raise UserError(f"cues import {kind}: {src} is not a folder of {SUFFIX[kind]} files.")
    samples = dataset_images(dataset, root)
    todo = [s for s in samples if force or not is_done(s, root, kind)]
    log(
        f"cues import {kind}: {len(samples)} {dataset} images, {len(samples) - len(todo)} already have a valid cue; "
        f"converting {len(todo)} from {src} into {cue_folder(root, kind)}/"
    )
    problems: list[str] = []
    if kind == "pose":
        by_name = _pose_index(src, images_file)
        found, problems = _match_names(src, todo, by_name)
    else:
        found, problems = _find(src, todo, SUFFIX[kind])
    progress = Progress(f"cues import {kind}", len(found), stream=progress_stream)
    written = 0
    for index, source in sorted(found.items()):
        sample = todo[index]
        size = image_size(sample.path)
        try:
            if kind == "pose":
                raw = _pose_of(by_name[source], size)
            else:
                raw = READERS[kind](source)
                if raw.shape[:2] != size:
                    if not resize:
                        raise Malformed(
                            f"is {raw.shape[1]}x{raw.shape[0]} (width x height) but its image {sample.path} is "
                            f"{size[1]}x{size[0]} (--resize scales maps made at another size)"
                        )
                    raw = _resized(raw, size, kind)
        except Malformed as err:
            where = src if kind == "pose" else source
            problems.append(f"malformed: {where}{' (' + source + ')' if kind == 'pose' else ''} {err}")
            continue
        write_atomic(sample_root(sample, root), kind, sample.cue_key, raw)
        written += 1
        progress.advance(1)
    if problems:
        listed = problems[:MAX_LISTED] + (
            [f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else []
        )
        raise UserError(
            f"cues import {kind}: {len(problems)} of {len(todo)} source file(s) are missing or malformed; the "
            f"{written} good one(s) were written, and a rerun after fixing these converts only the rest:\n  "
            + "\n  ".join(listed)
        )
    return written, len(samples) - len(todo)
