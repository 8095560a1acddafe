"""The `reidbench` command: run a grid, see its status, report results, check and make datasets."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tabulate import tabulate

from harness.errors import UserError
from harness.report.reference import PAPERS

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
        p.add_argument(
            "--store", default=DEFAULT_STORE, metavar="PATH", help=f"the result store (default: {DEFAULT_STORE}/)"
        )

    run = sub.add_parser(
        "run",
        help="run the cells of a grid spec that are not done yet",
        description="Expand a grid spec into cells and run every cell whose results are not in the store yet.",
    )
    run.add_argument("spec", type=Path, help="a grid spec, e.g. jobs/smoke.toml")
    store_option(run)
    run.add_argument(
        "--executor", default="local", help="where cells run: local (default), slurm (submit and return) or ray"
    )
    run.add_argument("--force", action="store_true", help="run every cell again, even those already done")
    run.add_argument("--dry-run", action="store_true", help="list the cells, their ids and states; run nothing")
    run.add_argument(
        "--reports",
        default=DEFAULT_REPORTS,
        type=Path,
        metavar="DIR",
        help=f"where the grid's results table is written as Markdown (default: {DEFAULT_REPORTS}/)",
    )
    _cluster_options(run)
    run.set_defaults(command=_run)

    status = sub.add_parser(
        "status",
        help="show which cells of a grid are done, failed or not started",
        description="One line per cell of the spec: done, running, failed (with the reason) or not started.",
    )
    status.add_argument("spec", type=Path, help="a grid spec")
    store_option(status)
    status.set_defaults(command=_status)

    combine = sub.add_parser(
        "combine",
        help="compute the grid's [[combine]] combinations whose cells are done",
        description="Score each [[combine]] combination of the spec whose part cells are done, from "
        "their kept embeddings (l2-normalised and concatenated), and write its rows. `reidbench run` "
        "does this too; with the slurm executor, run this once the cells are done.",
    )
    combine.add_argument("spec", type=Path, help="a grid spec with [[combine]] tables")
    store_option(combine)
    combine.add_argument(
        "--force", action="store_true", help="compute done combinations again (their rows are replaced)"
    )
    combine.set_defaults(command=_combine_command)

    logs = sub.add_parser(
        "logs",
        help="print where a cell's logs are and their last lines",
        description="The log files of a cell (its SLURM task logs, or the local launcher's) and the tail of each.",
    )
    logs.add_argument("cell", help="a cell id, or a unique prefix of one")
    store_option(logs)
    logs.add_argument("-n", "--lines", type=int, default=20, help="lines of each log to print (default: 20)")
    logs.set_defaults(command=_logs)

    cancel = sub.add_parser(
        "cancel",
        help="cancel the queued and running SLURM jobs of a grid",
        description="scancel the jobs of the grid's cells (or only of --cells) that are pending or running.",
    )
    cancel.add_argument("spec", type=Path, help="a grid spec")
    store_option(cancel)
    cancel.add_argument("--cells", nargs="+", metavar="ID", help="only these cell ids (or prefixes)")
    cancel.set_defaults(command=_cancel)

    report = sub.add_parser(
        "report",
        help="render the papers' tables: published, measured and the difference",
        description=f"Render every results table of the papers ({', '.join(PAPERS)}) from the store: the published "
        "number, the measured one (mean over seeds) and the difference, with GPU throughput, "
        "cross-domain matrices and CMC curves. With no options: everything, in every format, under reports/.",
    )
    store_option(report)
    report.add_argument("--paper", default="all", help=f"{', '.join(PAPERS)} or all (default)")
    report.add_argument("--table", type=int, metavar="N", help="only this table of --paper (also printed as Markdown)")
    report.add_argument("--format", metavar="FORMAT", help="md, latex, html or csv (default: all four)")
    report.add_argument(
        "--out", default=DEFAULT_REPORTS, type=Path, metavar="DIR", help=f"output folder (default: {DEFAULT_REPORTS}/)"
    )
    report.set_defaults(command=_report)

    from harness.cli.data import add_parser as add_data_parser

    add_data_parser(sub)
    from harness.cli.catalogue import add_parsers as add_catalogue_parsers

    add_catalogue_parsers(sub)
    from harness.cli.parsing import add_parser as add_parsing_parser

    add_parsing_parser(sub, DEFAULT_STORE)
    from harness.cli.store import add_parser as add_store_parser

    add_store_parser(sub, DEFAULT_STORE)
    from harness.cli.evaluate import add_parsers as add_evaluate_parsers

    add_evaluate_parsers(sub, store_option)
    from harness.cli.cues import add_parser as add_cues_parser

    add_cues_parser(sub)
    profile = sub.add_parser(
        "profile",
        help="measure training and inference throughput and GPU use per method",
        description="Train and infer each (method, variant, backbone) for a few steps on synthetic "
        "P x K batches at the recipe's input size, and write one profile row each to the store: "
        "images per second (warm-up excluded), peak GPU memory, NVML SM/memory utilisation, power, clocks.",
    )
    profile.add_argument(
        "spec", type=Path, nargs="?", help="a grid spec: its methods, backbones, [train] recipe and device"
    )
    profile.add_argument(
        "--methods",
        nargs="+",
        metavar="M",
        help="methods (name or name:variant; default: the spec's, else all registered)",
    )
    profile.add_argument("--backbones", nargs="+", metavar="B", help="backbones (default: the spec's, else resnet50)")
    profile.add_argument(
        "--steps", type=int, default=20, help="measured steps, each for training and inference (default: 20)"
    )
    profile.add_argument("--warmup", type=int, default=5, help="steps run first and not measured (default: 5)")
    profile.add_argument(
        "--batch",
        type=int,
        metavar="B",
        help="images per step, a multiple of images_per_id (default: the recipe's P x K)",
    )
    profile.add_argument("--input", metavar="HxW", help="input size (default: the recipe's, 256x128)")
    profile.add_argument(
        "--precision", choices=("auto", "fp32", "bf16", "fp16"), help="override the recipe's precision"
    )
    profile.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model"
    )
    profile.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=None, help="channels-last memory format"
    )
    profile.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: the spec's, else auto")
    store_option(profile)
    profile.set_defaults(command=_profile)
    return parser


def _run(args: argparse.Namespace) -> int:
    from harness import runner
    from harness.executors import get_executor
    from harness.spec import load_spec
    from harness.status import CellStatus
    from harness.store import Store

    spec, store = load_spec(args.spec), Store(args.store)
    get_executor(args.executor)  # an unknown name is an error even when nothing is left to run
    spec = _with_overrides(args, spec)
    if args.dry_run:
        return _dry_run(args, spec, store)
    _check_writable(args.reports, "--reports", "the reports folder")
    log = lambda message: print(message, flush=True)  # noqa: E731
    if args.executor != "slurm":
        due, busy = runner.todo(spec, store, executor=args.executor, force=args.force)
        if due:  # a store that is all done may be read-only: reading it is enough
            _check_writable(Path(args.store), "--store", "the result store")
        if not due and not busy:
            print(
                f"All {len(spec.cells)} cell(s) of grid {spec.name!r} are done in {store.root}/; nothing to run (--force reruns them)."
            )
    if args.executor == "slurm":
        _check_writable(Path(args.store), "--store", "the result store")
    outcome = runner.run_grid(spec, store, args.executor, force=args.force, log=log)
    _report_combinations(outcome.failed_combinations, store)
    if args.executor == "slurm":
        if outcome.busy:
            print(f"{len(outcome.busy)} cell(s) are still queued or running; left alone.")
        if outcome.started:
            print(
                f"Submitted {len(outcome.started)} of {len(spec.cells)} cell(s) of grid {spec.name!r}; the manifest is in "
                f"{store.root / 'manifest'}/. Follow them with `reidbench status {args.spec}`."
            )
        else:
            print(
                f"Nothing to submit: the {len(spec.cells)} cell(s) of grid {spec.name!r} are done, queued or running "
                f"(`reidbench status {args.spec}`)."
            )
        return 1 if outcome.failed_combinations else 0
    for held in [*outcome.busy, *outcome.skipped]:
        cell_id = held.cell.id if isinstance(held, CellStatus) else held.cell_id
        print(
            f"cell {cell_id} skipped: {held.detail if isinstance(held, CellStatus) else held.reason}; "
            f"left to that run (`reidbench status {args.spec}` shows who holds what)."
        )
    _show_results(spec, store, args.reports)
    for failure in outcome.failed:
        where = store.cell_dir(failure.cell_id)
        print(
            f"cell {failure.cell_id} failed: {failure.reason} (traceback in {where / 'state.json'}, logs in {where / 'logs'})",
            file=sys.stderr,
        )
    return 1 if outcome.failed or outcome.failed_combinations else 0


def _check_writable(folder: Path, flag: str, what: str) -> None:
    """A folder a run will write: a clear error before anything runs, rather than a traceback after."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UserError(f"{flag} {folder}: {existing} is a file, not a folder; give {what} a folder's path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"{flag} {folder}: {existing} cannot be written by this user (read-only, or its permissions); "
            f"give {what} a folder you can write, or ask its owner for group write access."
        )


def _dry_run(args: argparse.Namespace, spec, store) -> int:
    from harness import runner
    from harness.status import is_done

    print(_cells_table(spec, store, steps=True))
    todo = sum(args.force or not is_done(store, c) for c in spec.cells)
    print(f"\n{len(spec.cells)} cell(s) in grid {spec.name!r}, {todo} to run. Nothing was run (--dry-run).")
    try:
        runner.check_weights(spec.cells)
    except UserError as err:
        print(f"A run would stop here: {err}")
    if args.executor == "slurm":
        from harness.executors.slurm import dry_run

        cells, _ = runner.todo(spec, store, executor="slurm", force=args.force)
        print(dry_run(cells, spec.resources, spec.slurm, store))
    return 0


def _cluster_options(run: argparse.ArgumentParser) -> None:
    slurm = run.add_argument_group(
        "slurm executor", "override the spec's [slurm] table (and [resources] gpus_per_node)"
    )
    for flag, kind, text in (
        ("partition", str, "partition"),
        ("account", str, "account to charge"),
        ("qos", str, "quality of service"),
        ("gres", str, "generic resources, e.g. gpu:a100:4"),
        ("constraint", str, "node features"),
        ("time", int, "minutes per attempt"),
        ("mem", str, "memory per node, e.g. 64G"),
        ("cpus-per-task", int, "CPUs per process"),
        ("array-parallelism", int, "cells of an array running at once"),
        ("gpus-per-node", int, "GPUs per node"),
    ):
        slurm.add_argument(f"--{flag}", type=kind, help=text)
    slurm.add_argument(
        "--sbatch",
        action="append",
        metavar="OPTION",
        help="an extra sbatch option, e.g. --sbatch=--exclude=node7 (repeatable)",
    )
    ray = run.add_argument_group("ray executor")
    ray.add_argument(
        "--ray-address", metavar="ADDR", help="the Ray cluster (default: RAY_ADDRESS, else a local cluster for the run)"
    )


def _with_overrides(args: argparse.Namespace, spec):
    """The spec with the command line's [slurm], [resources] and [ray] overrides."""
    import dataclasses

    names = ("partition", "account", "qos", "gres", "constraint", "time", "mem", "cpus_per_task", "array_parallelism")
    slurm = dataclasses.replace(spec.slurm, **{n: getattr(args, n) for n in names if getattr(args, n) is not None})
    if args.sbatch:
        slurm = dataclasses.replace(slurm, extra=(*slurm.extra, *args.sbatch))
    resources = spec.resources
    if args.gpus_per_node is not None:
        resources = dataclasses.replace(resources, gpus_per_node=args.gpus_per_node)
    ray = dataclasses.replace(spec.ray, address=args.ray_address or os.environ.get("RAY_ADDRESS") or spec.ray.address)
    from harness.spec.values import check_slurm

    problem = check_slurm(slurm)
    if problem:
        key, message = problem
        flag = "--sbatch" if key == "extra" else f"--{key.replace('_', '-')}"
        raise UserError(f"{message} (from {flag} or [slurm] {key} in {spec.path}); fix the value and run again.")
    return dataclasses.replace(spec, slurm=slurm, resources=resources, ray=ray)


def _show_results(spec, store, reports: Path) -> None:
    from harness.report import results_table, write_markdown

    contents = store.read()
    _warn(contents.problems)
    ids = {c.id for c in (*spec.cells, *spec.combinations)}
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


def _cells_table(spec, store, *, steps: bool = False) -> str:
    """One line per cell: the store, the submission manifest and the scheduler's view merged (harness.status),
    with `steps` the steps each will train (reading its training data); then one line per [[combine]] combination.
    Beside a cell that is not done, the older cells of the same experiment (rows of an older id version)."""
    from harness.spec import ID_VERSION
    from harness.status import cell_statuses, older_cells

    lines, problems, training = [], {}, {}
    older = older_cells(spec.cells, store)
    ids = {c.id for c in spec.cells}
    for s in cell_statuses(spec.cells, store):
        cell = s.cell
        trainer = cell.trainer()
        if steps and trainer is not None and trainer.id in ids:  # harness.runner.carry_views
            planned = [f"0 (a view of {trainer.id})"]
        else:
            planned = [_steps_text(cell, problems, training)] if steps else []
        detail = s.detail or ""
        if older[cell.id] and s.state != "done":
            named = ", ".join(f"{old} (id version {version})" for old, version in older[cell.id])
            detail = (detail + "; " if detail else "") + f"older rows of this experiment: cell {named}"
        lines.append(
            [
                cell.id,
                f"{cell.method}:{cell.variant}",
                cell.backbone,
                cell.train_dataset,
                ",".join(cell.test_datasets),
                cell.seed,
                *planned,
                s.state,
                "" if s.attempts is None else s.attempts,
                s.job_id or "",
                detail,
            ]
        )
    headers = [
        "cell",
        "method",
        "backbone",
        "train",
        "test",
        "seed",
        *(["steps"] if steps else []),
        "state",
        "attempts",
        "job",
        "detail",
    ]
    text = tabulate(lines, headers=headers, disable_numparse=True)
    if steps:
        text += (
            "\n\nsteps: per phase, epochs x steps per epoch (epoch_unit images: training images // (P x K); "
            "identities: training identities // P) or iterations."
        )
        text += "".join(f"\nsteps unknown for {n} cell(s): {problem}" for problem, n in problems.items())
    old_ids = {old for found in older.values() for old, _ in found}
    if old_ids:
        text += (
            f"\n\n{len(old_ids)} older cell(s) of this grid in the store have ids of an older id version (this "
            f"reidbench's is {ID_VERSION}): their rows stay in the store and in reports; `run` trains the new ids "
            "(results/README.md, 'Cell ids')."
        )
    if spec.combinations:
        from harness.combine import table_lines

        text += "\n\n" + tabulate(
            table_lines(spec.combinations, store),
            disable_numparse=True,
            headers=["combination", "method", "backbone", "train", "test", "seed", "state", "detail"],
        )
    return text


def _steps_text(cell, problems: dict[str, int], cache: dict | None = None) -> str:
    """What a cell will train, per phase: "120 x 202 = 24,240 (images)" (epochs x steps per epoch), "200,000 + 50,000 = 250,000"."""
    from harness.engine import schedule
    from harness.engine.cell import training_plans

    try:
        plans = training_plans(cell, cache)
    except UserError as err:  # e.g. a dataset root that is not there yet: the run itself would stop on it
        problems[str(err)] = problems.get(str(err), 0) + 1
        return "?"
    phases = schedule.phases(cell.train)
    parts = [f"{ph.epochs:,} x {p.unit:,}" if ph.epochs is not None else f"{p.steps:,}" for ph, p in zip(phases, plans)]
    total = sum(p.steps for p in plans)
    unit = f" ({cell.train.epoch_unit})" if cell.train.counts_epochs else ""
    return f"{' + '.join(parts)} = {total:,}{unit}" if len(plans) > 1 or unit else f"{total:,}"


def _report_combinations(failed, store) -> None:
    for outcome in failed:
        print(
            f"combination {outcome.combination.id} ({outcome.combination.method}:{outcome.combination.name}) failed: "
            f"{outcome.reason} (details in {store.cell_dir(outcome.combination.id) / 'state.json'})",
            file=sys.stderr,
        )


def _combine_command(args: argparse.Namespace) -> int:
    from harness.combine import combination_statuses
    from harness.runner import combine_due
    from harness.spec import load_spec
    from harness.store import Store

    spec, store = load_spec(args.spec), Store(args.store)
    if not spec.combinations:
        raise UserError(
            f"{args.spec} has no [[combine]] table, so there is nothing to combine; see docs/specs.md, '[[combine]]'."
        )
    failed = [o for o in combine_due(spec, store, force=args.force, log=lambda m: print(m, flush=True)) if not o.ok]
    _report_combinations(failed, store)
    current = combination_statuses(spec.combinations, store)
    for s in current:
        if s.state not in ("done", "failed"):  # failures were printed above
            print(
                f"combination {s.combination.id} ({s.combination.method}:{s.combination.name}): {s.state} {s.detail}".rstrip()
            )
    done = sum(s.state == "done" for s in current)
    print(f"{done} of {len(spec.combinations)} combination(s) of grid {spec.name!r} are done in {store.root}/.")
    return 1 if failed else 0


def find_cell(store, prefix: str) -> str:
    from harness.errors import closest

    known = sorted(
        {p.name for d in ("cells", "rows") if (store.root / d).is_dir() for p in (store.root / d).iterdir()}
        | {p.stem for p in (store.root / "manifest").glob("*.json")}
    )
    matches = [c for c in known if c.startswith(prefix)]
    if len(matches) != 1:
        problem = "matches several cells" if matches else "is not a cell of this store"
        raise UserError(
            f"{prefix!r} {problem} ({store.root}/); {closest(prefix, matches or known)}. `reidbench status SPEC` lists the cells."
        )
    return matches[0]


def _logs(args: argparse.Namespace) -> int:
    from harness.status import log_files, tail
    from harness.store import Store

    store = Store(args.store)
    cell_id = find_cell(store, args.cell)
    files = log_files(store, cell_id)
    if not files:
        from harness import manifest

        if (manifest.read(store, cell_id) or {}).get("executor") == "ray":
            print(
                f"cell {cell_id} ran on Ray: its workers log to the console of `reidbench run` and to Ray's session logs "
                f"(/tmp/ray/session_latest/logs/worker-*.out on each node)."
            )
        else:
            print(f"cell {cell_id} has no log files yet (not started, or still queued).")
        return 0
    for path in files:
        print(f"==> {path} <==")
        print(tail(path, args.lines))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from harness import manifest
    from harness.executors.slurm import cancel, check_cluster
    from harness.spec import load_spec
    from harness.status import cell_statuses
    from harness.store import Store

    spec, store = load_spec(args.spec), Store(args.store)
    cells = spec.cells
    if args.cells:
        cells = [c for c in cells if any(c.id.startswith(p) for p in args.cells)]
        if not cells:
            raise UserError(
                f"none of --cells {' '.join(args.cells)} is a cell of {args.spec}; `reidbench status {args.spec}` lists them."
            )
    check_cluster()
    targets = [s for s in cell_statuses(cells, store) if s.active and s.job_id]
    cancel([s.job_id for s in targets])
    for s in targets:
        manifest.update(store, s.cell.id, state="cancelled", cancelled=True)
        print(f"cancelled cell {s.cell.id} (job {s.job_id})")
    print(f"{len(targets)} job(s) cancelled." if targets else "No queued or running job to cancel.")
    return 0


def _report(args: argparse.Namespace) -> int:
    from harness.report.build import FORMATS, write_report
    from harness.report.render import markdown_table

    formats = FORMATS if args.format is None else (args.format,)
    outcome = write_report(Path(args.store), args.out, paper=args.paper, table=args.table, formats=formats)
    _warn(outcome.problems)
    if args.table is not None:
        print(markdown_table(outcome.tables[0]))
    rows = [
        [t.spec.paper, t.spec.number, f"{t.measured}/{t.measurable}", t.published, t.synthetic or ""]
        for t in outcome.tables
    ]
    print(tabulate(rows, headers=["paper", "table", "measured", "published", "synthetic"], disable_numparse=True))
    if not any(t.measured for t in outcome.tables):
        print(f"\nThe store {args.store}/ has no measurements for these tables: they show the published values only.")
    print(f"\nWrote {len(outcome.files)} file(s) under {args.out}/.")
    return 0


def _profile(args: argparse.Namespace) -> int:
    from harness.profile import profile_targets, run_profile
    from harness.report.extras import throughput_table
    from harness.store import Store

    if args.steps < 1 or args.warmup < 0:
        raise UserError(f"--steps must be at least 1 and --warmup not negative (got {args.steps} and {args.warmup}).")
    targets, config, device = profile_targets(
        args.spec,
        methods=args.methods,
        backbones=args.backbones,
        batch=args.batch,
        input_size=args.input,
        precision=args.precision,
        compile=args.compile,
        channels_last=args.channels_last,
        device=args.device,
    )
    store = Store(args.store)
    rows = run_profile(targets, config, device=device, steps=args.steps, warmup=args.warmup)
    for row in rows:
        store.write_profile(row)
    if rows:
        table = throughput_table(rows)  # the report's throughput table, so both show the same columns
        print(tabulate(table.rows, headers=table.headers, tablefmt="github", disable_numparse=True))
        for note in sorted({r["gpu_note"] for r in rows if r["gpu_note"]}):
            print(f"GPU columns empty: {note}")
        print(f"\nWrote {len(rows)} profile row(s) to {store.root / 'profiles'}/")
    return 0


def _warn(problems: list[str]) -> None:
    for problem in problems:
        print(f"reidbench: warning: {problem}", file=sys.stderr)
