"""`reidbench eval` and `reidbench visrank`: a kept or external model on any registered test dataset.

Both run in this process (one rank; `--device`), check everything first (the model file, its
shapes, the test datasets and the cue maps they need) and write nothing when something is wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import uuid
from pathlib import Path

from harness import data, provenance
from harness.engine import artefact, zoo
from harness.engine.dist import init_distributed
from harness.engine.evaluate import Evaluation, check_test_cues, dataset_root, evaluate_tests
from harness.engine.rows import Trained
from harness.engine.visrank import visrank
from harness.errors import UserError, closest
from harness.spec import Cell, DatasetConfig, Resources, SyntheticConfig, TrainConfig, model_kwargs, split_method
from harness.store import Store
from methods import method_names, method_variants
from methods.backbones import backbone_names


def add_parsers(sub, store_option) -> None:
    ev = sub.add_parser(
        "eval",
        help="evaluate a kept or external model on registered test datasets, writing rows",
        description="Evaluate a done cell's kept model (cells/<id>/model.safetensors), or external weights "
        "(reidbench, fast-reid, torchreid or reid-strong-baseline BNNeck ResNets), on any registered test "
        "dataset, plain and re-ranked, and write the rows to the store: extraction and scoring, no training.",
    )
    ev.add_argument("cell", nargs="?", help="a done cell's id (or a unique prefix); or give --weights")
    ev.add_argument("--test", nargs="+", required=True, metavar="NAME", help="registered test dataset(s)")
    ev.add_argument(
        "--weights", type=Path, metavar="PATH", help="an external checkpoint (.safetensors, .pth, .pth.tar)"
    )
    ev.add_argument("--method", help="with --weights: method or method:variant (default baseline)")
    ev.add_argument("--backbone", help="with --weights: the backbone (e.g. resnet50)")
    ev.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --weights: a builder option, e.g. last_stride=2 (TOML value; repeatable)",
    )
    ev.add_argument(
        "--train-dataset",
        default="external",
        metavar="NAME",
        help="with --weights: what it was trained on, for the rows",
    )
    ev.add_argument("--input", metavar="HxW", help="input size (default: the kept model's; 256x128 for --weights)")
    _common(ev, store_option)
    ev.set_defaults(command=_eval)

    vis = sub.add_parser(
        "visrank",
        help="write ranked lists of a kept model: an HTML page and PNG grids",
        description="For a done cell and a test dataset: each query with its top-k gallery images (green: "
        "right, red: wrong) and its AP, plain and re-ranked side by side, worst queries first; written to "
        "cells/<id>/visrank/<test>/ in the store, where `reidbench report` links it.",
    )
    vis.add_argument("cell", help="a done cell's id (or a unique prefix)")
    vis.add_argument("--test", required=True, metavar="NAME", help="a registered test dataset")
    vis.add_argument("--topk", type=int, default=10, help="gallery images per list (default 10)")
    pick = vis.add_mutually_exclusive_group()
    pick.add_argument(
        "--worst", type=int, default=20, metavar="N", help="the N queries with the lowest AP (default 20)"
    )
    pick.add_argument("--queries", nargs="+", metavar="Q", help="these queries (file names or indices) instead")
    _common(vis, store_option)
    vis.set_defaults(command=_visrank)


def _common(p, store_option) -> None:
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="NAME=ROOT",
        help="a test dataset's root (repeatable); default: the synthetic stand-in",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch-size", type=int, default=128, help="images per inference batch (default 128)")
    store_option(p)


def _roots(args, tests: list[str], synthetic: SyntheticConfig) -> tuple[dict[str, Path], dict[str, DatasetConfig]]:
    given = {}
    for entry in args.data:
        name, sep, root = entry.partition("=")
        if not sep or not root:
            raise UserError(f"--data {entry!r}: write NAME=ROOT, e.g. --data market1501=/data/reid.")
        given[name] = str(Path(root).expanduser().resolve())
    known = data.dataset_names()
    for name in [*tests, *given]:
        if name not in known:
            raise UserError(f"unknown test dataset {name!r}; {closest(name, known)}")
    configs = {name: DatasetConfig(name, given.get(name)) for name in tests}
    return {name: dataset_root(c, synthetic) for name, c in configs.items()}, configs


def _size(text: str | None, default) -> tuple[int, int]:
    if text is None:
        return tuple(default)
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--input {text!r}: write HxW, e.g. 256x128.") from None
    return h, w


def load_model(args, store: Store):
    """(model, cell, trained figures, train fingerprint, weights' origin or None, input size) for a cell or --weights."""
    if args.weights is None:
        if not args.cell:
            raise UserError(
                "give a cell id (`reidbench eval CELL --test NAME`) or --weights PATH with --method and --backbone."
            )
        from harness.cli import find_cell  # noqa: PLC0415

        cell_id = find_cell(store, args.cell)
        model, info = artefact.load(store, cell_id)
        cell = Cell.from_json(json.dumps(info["cell"]))
        return (
            model,
            cell,
            Trained(**info["trained"]),
            info.get("train_fingerprint"),
            None,
            _size(args.input, info["input_size"]),
        )
    if args.cell:
        raise UserError("give a cell id or --weights, not both.")
    method, variant = split_method(args.method or "baseline")
    if method not in method_names():
        raise UserError(f"--method {method!r}: {closest(method, method_names())}")
    variant = variant or method_variants(method)[0]
    if not args.backbone or args.backbone not in backbone_names():
        raise UserError(f"--backbone {args.backbone!r}: {closest(str(args.backbone), backbone_names())}")
    options = dict(_option(o) for o in args.option)
    state, layout, notes = zoo.to_baseline(zoo.read_checkpoint(args.weights), str(args.weights))
    if method != "baseline" and layout != "reidbench":
        raise UserError(
            f"--weights {args.weights} is in {layout}'s layout, which reidbench maps onto the baseline only; "
            f"use --method baseline."
        )
    info = {
        "method": method,
        "variant": variant,
        "backbone": args.backbone,
        "num_classes": zoo.num_classes_of(state),
        "options": {
            k: v
            for k, v in model_kwargs(method, variant, args.backbone, options).items()
            if k not in ("variant", "backbone")
        },
    }
    try:
        model = artefact.build(info)
    except TypeError as err:
        raise UserError(f"--option: {err}") from None
    artefact.load_into(model, state, str(args.weights), f"{method}:{variant} on {args.backbone}")
    digest = zoo.sha256(args.weights)
    origin = json.dumps(
        {"path": str(args.weights.resolve()), "sha256": digest, "layout": layout, "notes": notes}, sort_keys=True
    )
    size = _size(args.input, (256, 128))
    cell = zoo.ExternalCell(
        grid="external",
        method=method,
        variant=variant,
        backbone=args.backbone,
        train_dataset=args.train_dataset,
        test_datasets=(),
        seed=0,
        train=TrainConfig(input_size=size),
        datasets=(),
        synthetic=SyntheticConfig(),
        method_options=tuple(sorted(options.items())),
        weights_sha256=digest,
    )
    return model.eval(), cell, Trained(0, 0.0, None), None, origin, size


def _option(text: str):
    import tomllib  # noqa: PLC0415

    key, sep, value = text.partition("=")
    try:
        return key.strip(), tomllib.loads(f"v = {value}")["v"] if sep else None
    except tomllib.TOMLDecodeError:
        raise UserError(f"--option {text!r}: write KEY=VALUE with a TOML value, e.g. last_stride=2.") from None


def _visrank(args: argparse.Namespace) -> int:
    from harness.cli import find_cell  # noqa: PLC0415

    if args.topk < 1 or args.worst < 1:
        raise UserError(f"--topk and --worst must be at least 1 (got {args.topk} and {args.worst}).")
    store = Store(args.store)
    cell_id = find_cell(store, args.cell)
    model, info = artefact.load(store, cell_id)
    cell = Cell.from_json(json.dumps(info["cell"]))
    roots, _ = _roots(args, [args.test], cell.synthetic)
    check_test_cues(model, roots, f"{info['method']}:{info['variant']}")
    test_set = data.load_dataset(args.test, roots[args.test])
    env = init_distributed(args.device)
    page = visrank(
        model.to(env.device),
        info,
        test_set,
        roots[args.test],
        store.visrank_dir(cell_id, args.test),
        env,
        cell_id=cell_id,
        topk=args.topk,
        worst=args.worst,
        queries=args.queries,
        batch_size=args.batch_size,
    )
    print(f"Wrote {page} and its PNG grids (open it in a browser; `reidbench report` links it).")
    return 0


def _eval(args: argparse.Namespace) -> int:
    store = Store(args.store)
    model, cell, trained, train_fp, origin, size = load_model(args, store)
    earlier = _earlier_tests(store, cell.id, args.test)
    roots, configs = _roots(args, args.test, cell.synthetic)
    configs = {**earlier, **configs}
    roots.update({name: dataset_root(config, cell.synthetic) for name, config in earlier.items()})
    tests = [*earlier, *args.test]
    what = f"{cell.method}:{cell.variant}"
    check_test_cues(model, roots, what)
    loaded = {name: data.load_dataset(name, root) for name, root in roots.items()}  # every test set read before any row
    datasets = {d.name: d for d in cell.datasets}
    datasets.update(configs)
    cell = dataclasses.replace(
        cell,
        test_datasets=tuple(tests),
        datasets=tuple(datasets.values()),
        train=dataclasses.replace(cell.train, eval_batch_size=args.batch_size, num_workers=0),
    )
    if earlier:
        print(f"Evaluating {', '.join(earlier)} again too: a cell's published rows all come from one run.", flush=True)
    env = init_distributed(args.device)
    model = model.to(env.device)
    run_id = uuid.uuid4().hex[:12]
    evaluation = Evaluation(
        cell,
        Resources(device=args.device),
        trained,
        train_fp,
        "local",
        provenance.now(),
        run_id=run_id,
        weights=origin,
        keep_embeddings=origin is None,
        extra_config={"command": "reidbench eval"},
    )
    evaluate_tests(
        model,
        tests,
        evaluation,
        store=store,
        env=env,
        size=size,
        root_of=roots.__getitem__,
        loaded=loaded,
        log=lambda m: print(m, flush=True),
    )
    store.publish(cell.id, run_id)
    print(
        f"Wrote {2 * len(tests)} row(s) of cell {cell.id} (run {run_id}) to {store.root / 'rows' / cell.id}/"
        + (" (external weights: never counted as a training run in the paper tables)" if origin else "")
    )
    return 0


def _earlier_tests(store: Store, cell_id: str, asked: list[str]) -> dict[str, DatasetConfig]:
    """The test datasets the cell's published rows cover besides `asked`, with the dataset settings
    they were scored with (from the rows' config): the new run scores them again, so that the
    cell's rows stay one run's (harness/store.py)."""
    earlier: dict[str, DatasetConfig] = {}
    for (name, _), row in sorted(store.cell_rows(cell_id).rows.items(), key=str):
        if name in asked or name in earlier:
            continue
        recorded = {d["name"]: d for d in json.loads(row["config"]).get("cell", {}).get("datasets", [])}
        earlier[name] = DatasetConfig(**recorded[name]) if name in recorded else DatasetConfig(name)
    return earlier
