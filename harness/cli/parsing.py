"""`reidbench parsing train|eval|write-cues`: SPReID's parsing model on LIP, and the cue maps it writes."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from harness.data.cues import SOURCE_PATTERN, cue_ref
from harness.errors import UserError


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size HxW such as 512x512") from None
    if h < 16 or w < 16:
        raise argparse.ArgumentTypeError(f"{text!r}: height and width must be at least 16 (the output stride)")
    return h, w


def add_parser(sub, store: str) -> None:
    group = sub.add_parser(
        "parsing",
        help="SPReID's human parsing model: train on LIP, evaluate, write parsing cues",
        description="SPReID's human semantic parsing network (Inception-V3 at output stride 16 + ASPP, "
        "20 LIP labels): train it on a LIP-layout dataset, report SPReID Table 1's metrics, and "
        "write 5-region parsing cue maps for a re-ID dataset.",
    )
    commands = group.add_subparsers(required=True, metavar="SUBCOMMAND")

    def common(p: argparse.ArgumentParser, batch: int) -> None:
        p.add_argument("--device", default="auto", help="auto (cuda when there is a GPU), cpu or cuda")
        p.add_argument("--batch-size", type=int, default=batch, help=f"images per step (default: {batch})")
        p.add_argument(
            "--workers", type=int, default=2, help="data-loader processes (default: 2; 0 loads in this process)"
        )

    train = commands.add_parser(
        "train",
        help="train on LIP's train split (SPReID §5's recipe)",
        description="Train the parsing model on LIP's train split under ROOT with SPReID §5's recipe "
        "(30K iterations of 15 images at 512x512, SGD with Nesterov momentum, learning rates 0.01 "
        "backbone / 0.1 ASPP / 0.1 classifier, exponential shift, gradient clipping 2.0).",
    )
    train.add_argument(
        "--root", type=Path, required=True, help="the folder holding TrainVal_images/ and TrainVal_parsing_annotations/"
    )
    train.add_argument("--out", type=Path, required=True, metavar="MODEL.pt", help="where the trained model is written")
    train.add_argument("--iterations", type=int, default=30_000, help="training steps (default: 30000)")
    train.add_argument("--input-size", type=_size, default=(512, 512), metavar="HxW", help="default: 512x512")
    train.add_argument(
        "--no-pretrained",
        dest="pretrained",
        action="store_false",
        help="start from random weights instead of the cached ImageNet Inception-V3 weights",
    )
    train.add_argument(
        "--aspp",
        choices=("authors", "paper"),
        default="authors",
        help="the ASPP: the authors' code's (image pooling + 1x1 + four atrous branches, projected to 1024; "
        "default) or the paper's sentence (the four atrous branches, projected to 256)",
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--log-every", type=int, default=20, help="steps between log lines (default: 20)")
    train.add_argument(
        "--checkpoint-every",
        type=int,
        default=1000,
        help="steps between resume points, MODEL.pt.resume, which a rerun continues from (default: 1000; 0: none)",
    )
    common(train, 15)
    train.set_defaults(command=_train)

    score = commands.add_parser(
        "eval",
        help="overall accuracy, mean accuracy and mean IoU on a LIP split",
        description="Score a trained model on LIP's val split (or --split train): overall pixel "
        "accuracy, mean class accuracy and mean IoU over the 20 labels, as SPReID Table 1.",
    )
    score.add_argument("--model", type=Path, required=True, metavar="MODEL.pt")
    score.add_argument("--root", type=Path, required=True, help="the LIP root")
    score.add_argument("--split", default="val", choices=("val", "train"))
    score.add_argument("--input-size", type=_size, metavar="HxW", help="default: the size the model was trained at")
    score.add_argument(
        "--store",
        default=store,
        metavar="PATH",
        help=f'the result store the scores are written to, SPReID Table 1\'s "Ours" row (default: {store}/)',
    )
    score.add_argument("--no-store", dest="store", action="store_const", const=None, help="print the scores only")
    common(score, 8)
    score.set_defaults(command=_eval)

    cues = commands.add_parser(
        "write-cues",
        help="write parsing cue maps (.npy, 5 regions) for a re-ID dataset",
        description="Parse every image of a re-ID dataset and write ROOT/cues/parsing@SOURCE/<key>.npy "
        "(SOURCE: spreid unless --source says otherwise; read by specs with [train] cue_sources = "
        '{ parsing = "spreid" }): '
        "float32 (5, H, W) probabilities of foreground, head, upper body, lower body and shoes, "
        "the cue format of harness/data/cues.py.",
    )
    cues.add_argument("--model", type=Path, required=True, metavar="MODEL.pt")
    cues.add_argument("--dataset", required=True, help="a registered dataset name, e.g. market1501")
    cues.add_argument("--root", type=Path, required=True, help="the folder that holds the dataset")
    cues.add_argument(
        "--input-size",
        type=_size,
        default=(512, 512),
        metavar="HxW",
        help="the parsing resolution (default: 512x512, as the SPReID authors' main.py --scales_tr)",
    )
    cues.add_argument(
        "--source",
        default="spreid",
        type=_source,
        help="the cue source the maps are written as: ROOT/cues/parsing@SOURCE/ (default: spreid); "
        "'default' writes ROOT/cues/parsing/",
    )
    common(cues, 16)
    cues.set_defaults(command=_write_cues)


def _train(args: argparse.Namespace) -> int:
    from harness.engine.dist import resolve_device
    from harness.human_parsing.run import Recipe, train
    from methods.backbones import MissingWeights

    if args.iterations < 1 or args.batch_size < 1:
        raise UserError(
            f"--iterations and --batch-size must be at least 1 (got {args.iterations} and {args.batch_size})."
        )
    recipe = Recipe(iterations=args.iterations, input_size=args.input_size, batch_size=args.batch_size, aspp=args.aspp)
    try:
        train(
            recipe,
            args.root,
            args.out,
            device=resolve_device(args.device),
            pretrained=args.pretrained,
            workers=args.workers,
            seed=args.seed,
            log_every=args.log_every,
            checkpoint_every=args.checkpoint_every,
        )
    except MissingWeights as err:
        raise UserError(str(err)) from None
    return 0


def _eval(args: argparse.Namespace) -> int:
    from harness.engine.dist import resolve_device
    from harness.human_parsing.metrics import METRICS
    from harness.human_parsing.run import evaluate_split, load

    device = resolve_device(args.device)
    model, recipe = load(args.model, device)
    size = args.input_size or recipe.input_size
    scores = evaluate_split(
        model, args.root, args.split, size, device=device, batch_size=args.batch_size, workers=args.workers
    )
    print(f"LIP {args.split} ({args.root}), {args.model} at {size[0]}x{size[1]}:")
    for name, label in zip(METRICS, ("overall acc.", "mean acc.", "mean IoU")):
        print(f"  {label:<13} {scores[name]:6.2f} %")
    if args.store is not None:
        from harness.human_parsing.rows import parsing_row
        from harness.store import Store

        row = parsing_row(
            args.model,
            asdict(recipe),
            seed=recipe.seed,
            root=args.root,
            split=args.split,
            input_size=size,
            scores=scores,
        )
        print(f"written to the store: {Store(args.store).write_parsing(row)} (SPReID Table 1, `reidbench report`)")
    return 0


def _source(value: str) -> str:
    if not SOURCE_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is no source name: lower-case letters, digits, '.', '_' or '-' (e.g. spreid)"
        )
    return value


def _write_cues(args: argparse.Namespace) -> int:
    from harness.engine.dist import resolve_device
    from harness.human_parsing.run import load, write_cues

    device = resolve_device(args.device)
    model, _ = load(args.model, device)
    source = None if args.source == "default" else args.source
    count = write_cues(
        model,
        args.dataset,
        args.root,
        args.input_size,
        device=device,
        batch_size=args.batch_size,
        workers=args.workers,
        source=source,
    )
    print(f"Wrote {count} parsing cue map(s) under {args.root / 'cues' / cue_ref('parsing', source)}/.")
    return 0
