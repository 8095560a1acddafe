"""The `reidbench` command: run a grid, see its status, report results, check and make datasets."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from tabulate import tabulate

from harness.errors import UserError

DEFAULT_STORE = "results"
DEFAULT_REPORTS = "reports"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.command(args)
    except UserError as err:
        print(f"reidbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reidbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `reidbench report | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reidbench",
        description="Train and evaluate person re-identification methods over a grid of "
        "(method, backbone, dataset) cells, store every result in Parquet, and report them.",
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def store_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", default=DEFAULT_STORE, metavar="PATH", help=f"the result store (default: {DEFAULT_STORE}/)")

    run = sub.add_parser("run", help="run the cells of a grid spec that are not done yet",
                         description="Expand a grid spec into cells and run every cell whose results are not in the store yet.")
    run.add_argument("spec", type=Path, help="a grid spec, e.g. jobs/smoke.toml")
    store_option(run)
    run.add_argument("--executor", default="local", help="where cells run: local (default)")
    run.add_argument("--force", action="store_true", help="run every cell again, even those already done")
    run.add_argument("--dry-run", action="store_true", help="list the cells, their ids and states; run nothing")
    run.add_argument("--reports", default=DEFAULT_REPORTS, type=Path, metavar="DIR",
                     help=f"where the grid's results table is written as Markdown (default: {DEFAULT_REPORTS}/)")
    run.set_defaults(command=_run)

    status = sub.add_parser("status", help="show which cells of a grid are done, failed or not started",
                            description="One line per cell of the spec: done, running, failed (with the reason) or not started.")
    status.add_argument("spec", type=Path, help="a grid spec")
    store_option(status)
    status.set_defaults(command=_status)

    report = sub.add_parser("report", help="render the five papers' tables: published, measured and the difference",
                            description="Render every results table of the five papers from the store: the published "
                            "number, the measured one (mean over seeds) and the difference, with GPU throughput, "
                            "cross-domain matrices and CMC curves. With no options: everything, in every format, under reports/.")
    store_option(report)
    report.add_argument("--paper", default="all", help="ssp-reid, spreid, dsa-reid, scsn, gasm or all (default)")
    report.add_argument("--table", type=int, metavar="N", help="only this table of --paper (also printed as Markdown)")
    report.add_argument("--format", metavar="FORMAT", help="md, latex, html or csv (default: all four)")
    report.add_argument("--out", default=DEFAULT_REPORTS, type=Path, metavar="DIR", help=f"output folder (default: {DEFAULT_REPORTS}/)")
    report.set_defaults(command=_report)

    from harness.data.cli import add_parser as add_data_parser

    add_data_parser(sub)
    profile = sub.add_parser("profile", help="measure training and inference throughput and GPU use per method",
                             description="Train and infer each (method, variant, backbone) for a few steps on synthetic "
                             "P x K batches at the recipe's input size, and write one profile row each to the store: "
                             "images per second (warm-up excluded), peak GPU memory, NVML SM/memory utilisation, power, clocks.")
    profile.add_argument("spec", type=Path, nargs="?", help="a grid spec: its methods, backbones, [train] recipe and device")
    profile.add_argument("--methods", nargs="+", metavar="M", help="methods (name or name:variant; default: the spec's, else all registered)")
    profile.add_argument("--backbones", nargs="+", metavar="B", help="backbones (default: the spec's, else resnet50)")
    profile.add_argument("--steps", type=int, default=20, help="measured steps, each for training and inference (default: 20)")
    profile.add_argument("--warmup", type=int, default=5, help="steps run first and not measured (default: 5)")
    profile.add_argument("--batch", type=int, metavar="B", help="images per step, a multiple of images_per_id (default: the recipe's P x K)")
    profile.add_argument("--input", metavar="HxW", help="input size (default: the recipe's, 256x128)")
    profile.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), help="override the recipe's precision")
    profile.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model")
    profile.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="channels-last memory format")
    profile.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: the spec's, else auto")
    store_option(profile)
    profile.set_defaults(command=_profile)
    return parser


def _run(args: argparse.Namespace) -> int:
    from harness.cell import is_done
    from harness.executors import get_executor
    from harness.spec import load_spec
    from harness.store import Store

    spec, store = load_spec(args.spec), Store(args.store)
    executor = get_executor(args.executor)  # an unknown name is an error even when nothing is left to run
    if args.dry_run:
        print(_cells_table(spec, store))
        todo = sum(args.force or not is_done(store, c) for c in spec.cells)
        print(f"\n{len(spec.cells)} cell(s) in grid {spec.name!r}, {todo} to run. Nothing was run (--dry-run).")
        return 0
    todo = [c for c in spec.cells if args.force or not is_done(store, c)]
    if not todo:
        print(f"All {len(spec.cells)} cell(s) of grid {spec.name!r} are done in {store.root}/; nothing to run (--force reruns them).")
        _show_results(spec, store, args.reports)
        return 0
    _prepare_data(todo, spec.resources.world_size)
    print(f"Running {len(todo)} of {len(spec.cells)} cell(s) of grid {spec.name!r} with the {args.executor} executor.", flush=True)
    outcomes = executor(todo, spec.resources, store)
    _show_results(spec, store, args.reports)
    failed = [o for o in outcomes if not o.ok]
    for outcome in failed:
        where = store.cell_dir(outcome.cell_id)
        print(f"cell {outcome.cell_id} failed: {outcome.reason} (traceback in {where / 'state.json'}, logs in {where / 'logs'})", file=sys.stderr)
    return 1 if failed else 0


def _prepare_data(cells, world_size: int) -> None:
    """Make and check every dataset (and pretrained weights) before anything starts, so bad input fails fast and once."""
    from harness import data
    from harness.cell import dataset_root

    loaded: dict[tuple[str, Path], data.ReidData] = {}
    for cell in cells:
        roots = {config.name: dataset_root(config, cell.synthetic) for config in cell.datasets}
        for config in cell.datasets:
            if (config.name, roots[config.name]) not in loaded:
                loaded[config.name, roots[config.name]] = data.load_dataset(config.name, roots[config.name])
                kind = "synthetic" if config.synthetic else "real"
                print(f"dataset {config.name} ({kind}): {roots[config.name]}", flush=True)
        train = loaded[cell.train_dataset, roots[cell.train_dataset]]
        if cell.train.pretrained:
            from methods.backbones import MissingWeights, pretrained_weights_file

            try:
                pretrained_weights_file(cell.backbone)
            except MissingWeights as err:
                raise UserError(str(err)) from None
        p = cell.train.ids_per_batch
        if p > train.num_train_ids or p % world_size:
            raise UserError(
                f"[train] ids_per_batch = {p} must be at most the {train.num_train_ids} training identities of "
                f"{cell.train_dataset} and divisible by [resources] world_size = {world_size}."
            )


def _show_results(spec, store, reports: Path) -> None:
    from harness.report import results_table, write_markdown

    contents = store.read()
    _warn(contents.problems)
    ids = {c.id for c in spec.cells}
    rows = [r for r in contents.rows if r["cell_id"] in ids]
    if rows:
        print(results_table(rows))
        path = write_markdown(reports / f"{spec.name}.md", f"Results of grid {spec.name}", rows)
        print(f"\nWritten to {path}")


def _status(args: argparse.Namespace) -> int:
    from harness.spec import load_spec
    from harness.store import Store

    spec, store = load_spec(args.spec), Store(args.store)
    print(_cells_table(spec, store))
    return 0


def _cells_table(spec, store) -> str:
    from harness.cell import is_done

    lines = []
    for cell in spec.cells:
        if is_done(store, cell):
            state = {"state": "done"}
        else:
            state = store.read_state(cell.id) or {"state": "not started"}
            if state["state"] == "done":  # but rows are gone: `run` will redo the cell
                state = {"state": "rows missing", "reason": f"expected rows under {store.root / 'rows' / cell.id}"}
        label = state["state"]
        if label == "running" and state.get("hostname") == socket.gethostname() and not _alive(state.get("pid")):
            label = "interrupted"
        detail = state.get("reason") or (state.get("log_dir") if label != "done" else "")
        lines.append([cell.id, f"{cell.method}:{cell.variant}", cell.backbone, cell.train_dataset,
                      ",".join(cell.test_datasets), cell.seed, label, detail or ""])
    return tabulate(lines, headers=["cell", "method", "backbone", "train", "test", "seed", "state", "detail"], disable_numparse=True)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _report(args: argparse.Namespace) -> int:
    from harness.report.build import FORMATS, write_report
    from harness.report.render import markdown_table

    formats = FORMATS if args.format is None else (args.format,)
    outcome = write_report(Path(args.store), args.out, paper=args.paper, table=args.table, formats=formats)
    _warn(outcome.problems)
    if args.table is not None:
        print(markdown_table(outcome.tables[0]))
    rows = [[t.spec.paper, t.spec.number, f"{t.measured}/{t.measurable}", t.published, t.synthetic or ""] for t in outcome.tables]
    print(tabulate(rows, headers=["paper", "table", "measured", "published", "synthetic"], disable_numparse=True))
    if not any(t.measured for t in outcome.tables):
        print(f"\nThe store {args.store}/ has no measurements for these tables: they show the published values only.")
    print(f"\nWrote {len(outcome.files)} file(s) under {args.out}/.")
    return 0


def _profile(args: argparse.Namespace) -> int:
    from harness.profile import profile_targets, run_profile, throughput_table
    from harness.store import Store

    if args.steps < 1 or args.warmup < 0:
        raise UserError(f"--steps must be at least 1 and --warmup not negative (got {args.steps} and {args.warmup}).")
    targets, config, device = profile_targets(
        args.spec, methods=args.methods, backbones=args.backbones, batch=args.batch, input_size=args.input,
        precision=args.precision, compile=args.compile, channels_last=args.channels_last, device=args.device,
    )
    store = Store(args.store)
    rows = run_profile(targets, config, device=device, steps=args.steps, warmup=args.warmup)
    for row in rows:
        store.write_profile(row)
    if rows:
        print(throughput_table(rows))
        print(f"\nWrote {len(rows)} profile row(s) to {store.root / 'profiles'}/")
    return 0


def _warn(problems: list[str]) -> None:
    for problem in problems:
        print(f"reidbench: warning: {problem}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
