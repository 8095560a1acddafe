"""Cue maps: per-image files computed once by off-the-shelf models, in documented formats.

A cue of an image lives at ``<root>/cues/<cue>/<key><suffix>``, where ``key`` is the image's path
below the dataset root without its extension (``Market-1501-v15.09.15/query/0001_c1s1_001051_00``;
CUHK03's extracted images use ``labeled/1_001_1_01``) and every cue map has the image's size:

==========  ===========  ===========================================================================
cue         suffix       content
==========  ===========  ===========================================================================
saliency    .png         8-bit grey saliency map, 255 = most salient (SSP-ReID)
parsing     .png         8-bit LIP label index, 0-19 (grouped into 5 regions on load), or
            .npy         float32 (5, H, W): probabilities of foreground, head, upper body, lower
                         body, shoes (SPReID/SSP-ReID); the .png is used when both exist
densepose   .png         RGB IUV: R = DensePose part 0-24 (0 = background), G = U, B = V scaled to
                         0-255 (DSA-reID)
pose        .txt         13 lines ``x y score`` in pixels (x right, y down; score 0 = not detected),
                         in GASM's order: head, left/right shoulder, elbow, wrist, hip, knee, ankle
mask        .png         8-bit person-mask probability, 255 = person (GASM)
==========  ===========  ===========================================================================

A derived cue is read from another cue's files and given another form by the transforms:
``densepose-crops`` reads the densepose IUV and becomes 24 part crops (DSA-reID's CSA), not DSAP images.

Loading returns the raw arrays at image size; harness.data.transforms turns them into tensors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from harness.errors import UserError

CUES = ("saliency", "parsing", "densepose", "pose", "mask")
SUFFIXES = {"saliency": (".png",), "parsing": (".png", ".npy"), "densepose": (".png",), "pose": (".txt",), "mask": (".png",)}
NUM_KEYPOINTS = 13
KEYPOINTS = ("head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
             "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
NUM_LIP_LABELS = 20
NUM_DENSEPOSE_PARTS = 24
DERIVED = {"densepose-crops": "densepose"}  # derived cue -> the cue whose files it is read from


class CueError(UserError):
    """A cue file that is missing, unreadable or of the wrong size or content."""


def check_names(cues, where: str) -> tuple[str, ...]:
    from harness.errors import closest

    for cue in cues:
        if cue not in CUES and cue not in DERIVED:
            raise UserError(f"{where}: unknown cue {cue!r}; {closest(cue, (*CUES, *DERIVED))}")
    return tuple(cues)


def cue_path(root: Path, cue: str, key: str) -> Path:
    """The cue file of an image, preferring the first suffix that exists (else the first)."""
    stem = Path(root) / "cues" / cue / Path(key).with_suffix("")
    candidates = [stem.with_name(stem.name + suffix) for suffix in SUFFIXES[cue]]
    return next((path for path in candidates if path.is_file()), candidates[0])


def load_cue(root: Path, cue: str, key: str, size: tuple[int, int]) -> np.ndarray:
    """The raw cue of an image of `size` (height, width); any problem is a CueError naming the file."""
    cue = DERIVED.get(cue, cue)
    path = cue_path(root, cue, key)
    if not path.is_file():
        raise CueError(f"cue {cue}: missing file {path} (expected for image {key}; formats in harness/data/cues.py).")
    try:
        value = _read(path, cue)
    except CueError:
        raise
    except Exception as err:  # PIL, numpy and float() raise many kinds
        raise CueError(f"cue {cue}: cannot read {path}: {err}") from None
    if cue != "pose":
        shape = value.shape[1:] if value.ndim == 3 and cue == "parsing" else value.shape[:2]
        if tuple(shape) != tuple(size):
            raise CueError(f"cue {cue}: {path} is {shape[1]}x{shape[0]} (width x height) but its image is {size[1]}x{size[0]}.")
    return value


def _read(path: Path, cue: str) -> np.ndarray:
    if cue == "pose":
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        if len(rows) != NUM_KEYPOINTS or any(len(r) != 3 for r in rows):
            raise CueError(f"cue pose: {path} must hold {NUM_KEYPOINTS} lines of 'x y score', it holds {len(rows)} line(s).")
        return np.asarray([[float(v) for v in r] for r in rows], np.float32)
    if path.suffix == ".npy":
        value = np.load(path).astype(np.float32)
        if value.ndim != 3 or value.shape[0] != 5:
            raise CueError(f"cue parsing: {path} must be a (5, H, W) probability array, it is {value.shape}.")
        return value
    with Image.open(path) as image:
        mode = "RGB" if cue == "densepose" else "L"
        if image.mode != mode:
            raise CueError(f"cue {cue}: {path} must be an {'RGB' if mode == 'RGB' else '8-bit grey'} PNG, it is mode {image.mode}.")
        value = np.array(image)  # a writable copy
    if cue == "parsing" and value.max(initial=0) >= NUM_LIP_LABELS:
        raise CueError(f"cue parsing: {path} holds label {value.max()}; LIP labels are 0-{NUM_LIP_LABELS - 1}.")
    if cue == "densepose" and value[..., 0].max(initial=0) > NUM_DENSEPOSE_PARTS:
        raise CueError(f"cue densepose: {path} holds part {value[..., 0].max()}; parts are 0-{NUM_DENSEPOSE_PARTS}.")
    return value


def write_cues(root: Path, key: str, *, lip: np.ndarray, iuv: np.ndarray, mask: np.ndarray, keypoints: np.ndarray,
               saliency: np.ndarray) -> None:
    """Write every cue of one image in the formats above (the synthetic writers' exact cues)."""
    arrays = {"saliency": (saliency, "L"), "parsing": (lip, "L"), "densepose": (iuv, "RGB"), "mask": (mask, "L")}
    for cue, (value, _) in arrays.items():
        path = cue_path(root, cue, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(value, np.uint8)).save(path)
    path = cue_path(root, "pose", key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{x:.2f} {y:.2f} {s:.2f}\n" for x, y, s in keypoints))
