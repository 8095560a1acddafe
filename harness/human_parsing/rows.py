"""SPReID Table 1's "Ours" row: a parsing model's scores on a LIP split, as a store row.

`reidbench parsing eval --store S` writes one (PARSING_SCHEMA, harness/store.py); the report reads
it beside the cells' rows, under the identity the reference's Table 1 "Ours" cells name: method
"spreid-parsing", variant the model's ASPP form ("authors" or "paper"), backbone inception_v3,
trained on "lip", tested on "lip-<split>", protocol "lip". The model's id is a hash of its file, so
scoring it again replaces its row and another model (another seed) adds one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from harness import provenance
from harness.data import lip
from harness.data.fingerprint import split_hash
from harness.store import PARSING_SCHEMA_VERSION

SYNTHETIC_MARK = "reidbench-synthetic.txt"  # written by the synthetic LIP writer (harness/data/synthetic)


def model_id(path: Path) -> str:
    """12 hex digits of the model file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def parsing_row(
    model: Path,
    recipe: dict,
    *,
    seed: int,
    root: Path,
    split: str,
    input_size: tuple[int, int],
    scores: dict[str, float],
) -> dict:
    """The store row of `scores` (percent, from harness.human_parsing.metrics) of `model` on LIP `split`."""
    pairs = lip.read(root, split)
    sha, dirty = provenance.git_state()
    return {
        "schema_version": PARSING_SCHEMA_VERSION,
        "cell_id": model_id(model),
        "method": "spreid-parsing",
        "variant": recipe.get("aspp", "paper"),
        "backbone": "inception_v3",
        "train_dataset": "lip",
        "test_dataset": f"lip-{split}",
        "protocol": "lip",
        "rerank": False,
        "seed": seed,
        "synthetic": (Path(root) / SYNTHETIC_MARK).is_file(),
        **{name: scores[name] / 100 for name in ("overall_acc", "mean_acc", "mean_iou")},
        "num_images": len(pairs),
        "input_height": int(input_size[0]),
        "input_width": int(input_size[1]),
        "config": json.dumps(
            {"model": str(Path(model).resolve()), "recipe": recipe, "root": str(root)}, sort_keys=True
        ),
        "train_fingerprint": None,
        "test_fingerprint": json.dumps({split: split_hash([str(image) for image, _ in pairs], Path(root))}),
        "weights": None,
        "git_sha": f"{sha}{'-dirty' if dirty else ''}" if sha else None,
        "finished_at": provenance.now().isoformat(),
    }
