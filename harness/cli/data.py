"""`reidbench data check` and `reidbench data synth`: validate a dataset with its cues, write a synthetic one."""

from __future__ import annotations

import argparse
from pathlib import Path

from tabulate import tabulate

from harness import data
from harness.data.cues import check_files, check_names, split_ref, stored_cues
from harness.data.published import PUBLISHED
from harness.errors import UserError
from harness.splits import split_of

MAX_LISTED = 20  # problems listed per cue; the rest are counted


def add_parser(sub) -> None:
    group = sub.add_parser(
        "data",
        help="check a dataset and its cue maps, or write a synthetic one",
        description="Dataset tools: check a dataset against its published counts, write a synthetic copy.",
    )
    commands = group.add_subparsers(required=True, metavar="SUBCOMMAND")
    check = commands.add_parser(
        "check",
        help="count identities, images and cameras per split, and check every cue file",
        description="Read NAME's layout under ROOT, print identities, images and cameras per split next "
        "to the published counts (flagging differences), and check every cue file under ROOT/cues/. "
        "Exits 1 when an image or cue file is missing or broken.",
    )
    check.add_argument("name", help=f"a dataset: {', '.join(data.dataset_names())}")
    check.add_argument("root", type=Path, help="the folder that holds the dataset")
    check.add_argument(
        "--cues",
        default=None,
        metavar="LIST",
        help="comma-separated cues to check, each cue or cue@source (parsing@spreid: ROOT/cues/parsing@spreid/); "
        "default: every cue folder present under ROOT/cues/",
    )
    check.set_defaults(command=_check)
    synth = commands.add_parser(
        "synth",
        help="write a synthetic dataset in a published layout, with exact cue maps",
        description="Write a synthetic copy of a layout under ROOT: the published naming and file "
        "formats, learnable identities, and every cue map.",
    )
    from harness.data.synthetic.layouts import LAYOUTS

    synth.add_argument("layout", help=f"a layout: {', '.join(LAYOUTS)} (or a dataset name)")
    synth.add_argument("root", type=Path, help="the folder to write into")
    synth.add_argument("--ids", type=int, default=24, help="persons (default 24; half train, half test)")
    synth.add_argument("--seed", type=int, default=0, help="the random seed (default 0); same seed, same bytes")
    synth.set_defaults(command=_synth)


def _synth(args: argparse.Namespace) -> int:
    from harness.data.synthetic.layouts import LAYOUTS, write_layout

    layout = (
        args.layout
        if args.layout in LAYOUTS or args.layout not in data.dataset_names()
        else data.synthetic_layout(args.layout)
    )
    top = write_layout(layout, args.root, ids=args.ids, seed=args.seed)
    if layout == "lip":
        print(f"Wrote synthetic LIP ({args.ids} images, seed {args.seed}) to {top}.")
        return 0
    print(
        f"Wrote synthetic {layout} ({args.ids} persons, seed {args.seed}) to {top}, cue maps to {args.root / 'cues'}/."
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    if not args.root.is_dir():
        raise UserError(f"data check: the root {args.root} is not a folder.")
    dataset = data.load_dataset(args.name, args.root)
    print(counts_table(dataset))
    cue_dir = args.root / "cues"
    if args.cues is not None:
        cues = check_names([c for c in args.cues.split(",") if c], "--cues")
    else:
        present = sorted(p.name for p in cue_dir.iterdir() if p.is_dir()) if cue_dir.is_dir() else []
        order = stored_cues()  # every source of each stored cue (cue/ and cue@source/), in registry order
        cues = tuple(
            sorted((c for c in present if split_ref(c)[0] in order), key=lambda c: order.index(split_ref(c)[0]))
        )
    problems = check_files(dataset.train + dataset.query + dataset.gallery, args.root, cues)
    print(f"\ncues checked: {', '.join(cues) if cues else 'none (no folder under ' + str(cue_dir) + ')'}")
    if problems:
        print(f"{len(problems)} problem(s):")
        for line in _summarise(problems):
            print(f"  {line}")
        return 1
    print(
        f"no problems: every image decodes{' and every cue file is readable, finite and sized right' if cues else ''}."
    )
    return 0


def counts_table(dataset: data.ReidData) -> str:
    """Identities, images and cameras per split, beside the published counts ('!' marks a difference)."""
    published = PUBLISHED.get(split_of(dataset.name)[0], {})  # every classic CUHK03 split has the same counts
    rows, differ = [], False
    for split, samples in (("train", dataset.train), ("query", dataset.query), ("gallery", dataset.gallery)):
        ids, images = len({s.pid for s in samples}), len(samples)
        cams = len({s.camid for s in samples})
        row = [split]
        for value, key in ((ids, f"{split}_ids"), (images, f"{split}_images")):
            expected = published.get(key)
            mark = "" if expected is None or expected == value else " !"
            differ |= bool(mark)
            row += [f"{value:,}{mark}", "" if expected is None else f"{expected:,}"]
        rows.append(row + [cams])
    table = tabulate(
        rows, headers=["split", "ids", "published", "images", "published", "cameras"], disable_numparse=True
    )
    all_cams = len({s.camid for s in dataset.train + dataset.query + dataset.gallery})
    note = f"\ncameras in all: {all_cams}" + (f" (published {published['cameras']})" if "cameras" in published else "")
    if differ or ("cameras" in published and published["cameras"] != all_cams):
        note += f"\n! differs from the published {dataset.name} (expected for synthetic or partial copies)"
    return table + note


def _summarise(problems: list[tuple[str, str]]) -> list[str]:
    lines, shown = [], {}
    for kind, message in problems:
        shown[kind] = shown.get(kind, 0) + 1
        if shown[kind] <= MAX_LISTED:
            lines.append(message)
    lines += [f"... and {n - MAX_LISTED} more {kind} problem(s)" for kind, n in shown.items() if n > MAX_LISTED]
    return lines
