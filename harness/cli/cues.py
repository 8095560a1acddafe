"""`reidbench cues make|import`: make GASM's pose and mask cues with torchvision's COCO models, or convert
the papers' own tools' outputs (DensePose, JPPNet, saliency, COCO keypoints, masks) into cue files."""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.errors import UserError


def add_parser(sub) -> None:
    group = sub.add_parser(
        "cues",
        help="make pose and mask cue maps, or import the papers' tools' cue outputs",
        description="Cue maps for a dataset under ROOT/cues/ (formats: docs/data.md). `make` runs an "
        "off-the-shelf COCO model; `import` converts what the papers' own tools wrote. Both skip images "
        "whose cue file exists and is valid, so rerunning resumes; `reidbench data check NAME ROOT "
        "--cues CUE` verifies the result.",
    )
    commands = group.add_subparsers(required=True, metavar="SUBCOMMAND")
    make = commands.add_parser(
        "make",
        help="pose (Keypoint R-CNN, 13 keypoints) or mask (DeepLabV3 person probability) cues",
        description="Run torchvision's COCO Keypoint R-CNN (pose: 17 keypoints reduced to GASM's 13) or "
        "DeepLabV3 (mask: person probability) over every image of the dataset that has no valid cue "
        "yet, batched, on the GPU when there is one. Weights come from the cache "
        "(`reidbench weights fetch keypointrcnn deeplabv3-coco`). GASM used CenterNet and PSPNet: "
        "harness/cue_tools/models.py says how these differ.",
    )
    make.add_argument("cue", choices=("pose", "mask"))
    make.add_argument("--dataset", required=True, help="a registered dataset name, e.g. market1501")
    make.add_argument("--root", type=Path, required=True, help="the folder that holds the dataset")
    make.add_argument("--device", default="auto", help="auto (cuda when there is a GPU), cpu or cuda")
    make.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    make.add_argument(
        "--size", type=int, help="the model's input size, shorter side in pixels (default: pose 800, mask 520)"
    )
    make.add_argument(
        "--proposals",
        type=int,
        default=1000,
        help="pose: region proposals kept per image (default: torchvision's 1000)",
    )
    make.add_argument("--workers", type=int, default=2, help="image-decoding processes (default: 2)")
    make.add_argument(
        "--random-weights", action="store_true", help="random weights instead of the cached COCO ones (tests only)"
    )
    make.set_defaults(command=_make)
    imp = commands.add_parser(
        "import",
        help="convert DensePose IUV, JPPNet parsing, saliency, COCO keypoints or mask files",
        description="Convert the outputs of the papers' cue tools under SRC into cue files: DensePose "
        "*_IUV.png (BGR as OpenCV wrote it), JPPNet's LIP label PNGs, grey saliency PNGs, a COCO "
        "keypoints JSON file (17 keypoints -> GASM's 13) or mask PNGs. Files are found by the image's "
        "path below ROOT, or its tail (SRC/query/NAME, SRC/NAME). Every file is checked; all missing or "
        "malformed ones are named in one error (exit 2) after the good ones are written.",
    )
    imp.add_argument("kind", choices=("densepose", "parsing", "saliency", "pose", "mask"))
    imp.add_argument("src", type=Path, help="the tool's output folder (pose: its JSON file)")
    imp.add_argument("--dataset", required=True, help="a registered dataset name, e.g. market1501")
    imp.add_argument("--root", type=Path, required=True, help="the folder that holds the dataset")
    imp.add_argument("--force", action="store_true", help="convert images that already have a valid cue too")
    imp.add_argument(
        "--resize", action="store_true", help="resize maps made at another size to their image (default: an error)"
    )
    imp.add_argument("--images", type=Path, help="pose: the COCO file whose 'images' list the results' ids index")
    imp.set_defaults(command=_import)


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise UserError(f"cues: the root {root} is not a folder.")


def _make(args: argparse.Namespace) -> int:
    from harness.cue_tools.make import make_cues
    from harness.engine.dist import resolve_device

    _check_root(args.root)
    for flag, value in (("--batch-size", args.batch_size), ("--proposals", args.proposals), ("--size", args.size or 1)):
        if value < 1:
            raise UserError(f"cues make: {flag} must be at least 1 (got {value}).")
    written, skipped = make_cues(
        args.cue,
        args.dataset,
        args.root,
        device=resolve_device(args.device),
        batch_size=args.batch_size,
        size=args.size,
        proposals=args.proposals,
        random_weights=args.random_weights,
        workers=args.workers,
    )
    print(
        f"Wrote {written} {args.cue} cue(s), skipped {skipped} that were there; check: "
        f"reidbench data check {args.dataset} {args.root} --cues {args.cue}"
    )
    return 0


def _import(args: argparse.Namespace) -> int:
    from harness.cue_tools.importers import import_cues

    _check_root(args.root)
    written, skipped = import_cues(
        args.kind, args.src, args.dataset, args.root, force=args.force, resize=args.resize, images_file=args.images
    )
    print(
        f"Wrote {written} {args.kind} cue(s), skipped {skipped} that were there; check: "
        f"reidbench data check {args.dataset} {args.root} --cues {args.kind}"
    )
    return 0
