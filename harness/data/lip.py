"""LIP, Look into Person (Gong et al., CVPR 2017): the human-parsing set SPReID's parsing model learns from.

The published layout, as ``TrainVal_images.zip`` and ``TrainVal_parsing_annotations.zip`` unpack
under the dataset root (~30,462 train and 10,000 val images of single persons cropped from COCO):

    TrainVal_images/train_images/<id>.jpg                           e.g. 77_471474.jpg
    TrainVal_images/val_images/<id>.jpg
    TrainVal_images/train_id.txt, val_id.txt                        one <id> per line
    TrainVal_parsing_annotations/train_segmentations/<id>.png       8-bit label index 0-19, image-sized
    TrainVal_parsing_annotations/val_segmentations/<id>.png

Some unzip tools nest a folder of the archive's name (``TrainVal_images/TrainVal_images/...``);
both forms are read. Without an id list, every .jpg of the split's folder is used. Labels: `LABELS`
(0 is background); harness.data.transforms groups them into SPReID's 5 regions.
"""

from __future__ import annotations

from pathlib import Path

from harness.errors import UserError

IMAGES, ANNOTATIONS = "TrainVal_images", "TrainVal_parsing_annotations"
SPLITS = ("train", "val")
LABELS = (
    "background",
    "hat",
    "hair",
    "glove",
    "sunglasses",
    "upper-clothes",
    "dress",
    "coat",
    "socks",
    "pants",
    "jumpsuits",
    "scarf",
    "skirt",
    "face",
    "left-arm",
    "right-arm",
    "left-leg",
    "right-leg",
    "left-shoe",
    "right-shoe",
)
FLIP = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 14, 17, 16, 19, 18)  # label after a horizontal flip
IGNORE = 255  # a label that scores nothing (padding); LIP's own maps hold 0-19 only


def _folder(root: Path, archive: str) -> Path:
    nested = root / archive / archive
    return nested if nested.is_dir() else root / archive


def read(root: Path | str, split: str) -> list[tuple[Path, Path]]:
    """The (image, label map) pairs of `split` ("train" or "val") under `root`, in id-list order."""
    root = Path(root)
    if split not in SPLITS:
        raise UserError(f"LIP has splits {', '.join(SPLITS)}, not {split!r}.")
    images, labels = _folder(root, IMAGES) / f"{split}_images", _folder(root, ANNOTATIONS) / f"{split}_segmentations"
    for folder in (images, labels):
        if not folder.is_dir():
            raise UserError(
                f"LIP not found: expected the folder {folder} under the root {root} (the layout is in "
                f"harness/data/lip.py). Point --root at the folder that holds {IMAGES}/ and {ANNOTATIONS}/."
            )
    id_file = images.parent / f"{split}_id.txt"
    if id_file.is_file():
        ids = [line.strip() for line in id_file.read_text().splitlines() if line.strip()]
    else:
        ids = sorted(p.stem for p in images.glob("*.jpg"))
    pairs = [(images / f"{i}.jpg", labels / f"{i}.png") for i in ids]
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        raise UserError(
            f"LIP {split}: {len(missing)} listed file(s) are missing, e.g. {missing[0]}"
            + (f" (ids from {id_file})." if id_file.is_file() else ".")
        )
    if not pairs:
        raise UserError(f"LIP {split}: no images in {images}.")
    return pairs
