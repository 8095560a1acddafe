"""Run a grid: decide what to run, check everything it needs first, start it, then combine.

`run_grid` is what `reidbench run` does, as a function that returns what happened: the cells it
started (or submitted to SLURM), those it left alone, their outcomes and the `[[combine]]`
combinations it computed. Every executor is called the same way (harness.executors.Executor).
Before anything starts, `preflight` makes and reads every dataset once, checks cue folders and
cached weights, and checks that the batch fits, so bad input fails fast and once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness import data
from harness.combine import CombinationOutcome, run_combinations
from harness.compact import Compaction, auto_after, compact, loose_sets
from harness.data.cues import cue_refs, files_of
from harness.data.union import members
from harness.engine.cell import dataset_root, evaluates_only, retrain_marker
from harness.errors import UserError
from harness.executors import Outcome, get_executor
from harness.executors.slurm import check_cluster
from harness.spec import Cell, Spec
from harness.status import CellStatus, cell_statuses, holder, is_done
from harness.store import Store
from methods import method_cues
from methods.backbones import MissingWeights, check_cached

Log = Callable[[str], None]


@dataclass
class GridRun:
    """What one `run_grid` did."""

    started: list[Cell] = field(default_factory=list)  # run, or submitted to SLURM
    busy: list[CellStatus] = field(
        default_factory=list
    )  # queued or running on SLURM, or held by another live run: left alone
    outcomes: list[Outcome] = field(default_factory=list)
    combinations: list[CombinationOutcome] = field(default_factory=list)
    compaction: Compaction | None = None  # when the run compacted the store (compact_if_due)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def skipped(self) -> list[Outcome]:
        """Cells another live run took meanwhile (their lease)."""
        return [o for o in self.outcomes if o.skipped]

    @property
    def failed_combinations(self) -> list[CombinationOutcome]:
        return [o for o in self.combinations if not o.ok]


def todo(spec: Spec, store: Store, *, executor: str, force: bool = False) -> tuple[list[Cell], list[CellStatus]]:
    """The cells to run, and the cells left alone: queued or running on SLURM, or held by another
    live run (its lease in the store; a forced run leaves those alone too)."""
    if executor != "slurm":
        due = _retrained_views(spec.cells, [c for c in spec.cells if force or not is_done(store, c)], store)
        held = {c.id: holder(store, c) for c in due}
        busy = [CellStatus(c, "running", f"held by {held[c.id].describe()}") for c in due if held[c.id] is not None]
        return carry_views([c for c in due if held[c.id] is None], busy)
    current = cell_statuses(spec.cells, store)
    busy = [s for s in current if s.active]
    idle = [s.cell for s in current if not s.active]
    due = [s.cell for s in current if not s.active and (force or s.state != "done")]
    return carry_views(_retrained_views(idle, due, store), busy)


def _retrained_views(listed: Sequence[Cell], due: list[Cell], store: Store) -> list[Cell]:
    """``due`` and the listed views whose training cell is due to train: a view's rows must come from
    the model its training cell has, so when that cell trains again (its rows and kept model lost, or
    ``--force``) the view is evaluated again, even if it was done. A training cell that only
    evaluates its kept model (a new test set) leaves its done views alone: their model is unchanged."""
    retrained = {c.id for c in due if not evaluates_only(store, c)}
    due_ids = {c.id for c in due}
    return due + [c for c in listed if c.id not in due_ids and (t := c.trainer()) is not None and t.id in retrained]


def carry_views(due: list[Cell], busy: list[CellStatus]) -> tuple[list[Cell], list[CellStatus]]:
    """A view cell (Cell.trainer) rides with its training cell, so a grid that lists both trains once:
    when the training cell is due, its run evaluates the view after its own rows (Cell.views); when
    it is busy, the view waits for it (left alone now, evaluated from the kept model by a later run).
    Any other view runs on its own: it evaluates its training cell's kept model if there is one,
    and trains that model itself if not (harness/engine/cell.py)."""
    trainers = {c.id: c for c in due}
    active = {s.cell.id: s for s in busy}
    views: dict[str, list[Cell]] = {}
    alone, waiting = [], []
    for cell in due:
        trainer = cell.trainer()
        if trainer is not None and trainer.id in trainers:
            views.setdefault(trainer.id, []).append(cell)
        elif trainer is not None and trainer.id in active:
            waiting.append(
                CellStatus(
                    cell,
                    active[trainer.id].state,
                    f"a view of cell {trainer.id}, which is busy: run again once it is done",
                    job_id=active[trainer.id].job_id,
                )
            )
        else:
            alone.append(cell)
    carried = [dataclasses.replace(c, views=tuple(views[c.id])) if c.id in views else c for c in alone]
    return carried, busy + waiting


def view_outcome(store: Store, view: Cell) -> Outcome:
    """How a view that its training cell's run evaluated ended: done, or why not."""
    if is_done(store, view):
        return Outcome(view.id, True)
    state = store.read_state(view.id) or {}
    trainer = view.trainer()
    reason = state.get("reason") if state.get("state") == "failed" else None
    return Outcome(
        view.id, False, reason or f"not evaluated: its training cell {trainer and trainer.id} did not finish"
    )


def with_views(cells: Sequence[Cell]) -> list[Cell]:
    """The cells and the views they carry, each once (what a run checks and reports on)."""
    return [c for cell in cells for c in (cell.bare(), *cell.views)]


def run_grid(spec: Spec, store: Store, executor: str, *, force: bool = False, log: Log = print) -> GridRun:
    """Run (local, ray) or submit (slurm) every cell of the spec that is not done, then compute the
    combinations whose cells are done. Blocks for local and ray; returns at once for slurm."""
    run = get_executor(executor)
    if executor == "slurm":
        check_cluster()
    cells, busy = todo(spec, store, executor=executor, force=force)
    outcome = GridRun(started=cells, busy=busy)
    if cells:
        preflight(with_views(cells), spec.resources.world_size, log=log, store=store)
        for cell in cells:
            if force and store.has_model(cell.id):  # train again, although the model is kept
                marker = retrain_marker(store, cell.id)
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
            elif not evaluates_only(store, cell) and store.cell_rows(cell.id).rows:
                log(
                    f"cell {cell.id} has rows but no kept model to test on the new test set(s): it trains again, "
                    f"and all its rows are replaced"
                )
        evaluating = [c for c in cells if evaluates_only(store, c)]
        if evaluating:
            log(
                f"{len(evaluating)} cell(s) have a kept model: evaluated on all their test sets (their rows are replaced as one set), no training."
            )
        for cell in cells:
            if cell.views:
                log(
                    f"cell {cell.id} ({cell.method}:{cell.variant}) also evaluates its view(s) "
                    f"{', '.join(f'{v.id} ({v.variant})' for v in cell.views)}: one training for all."
                )
            elif (trainer := cell.trainer()) is not None and evaluates_only(store, trainer):
                log(f"cell {cell.id} ({cell.variant}) is a view of cell {trainer.id}: evaluates its kept model.")
        if executor != "slurm":
            log(
                f"Running {len(cells)} of {len(spec.cells)} cell(s) of grid {spec.name!r} with the {executor} executor."
            )
        else:  # before the jobs exist: a compaction holds cells' leases, which a starting job would find taken
            outcome.compaction = compact_if_due(store, log)
        outcome.outcomes = run(cells, spec.resources, store, slurm=spec.slurm, ray=spec.ray)
        if executor != "slurm":  # the views evaluated by their training cells' runs, as outcomes of their own
            outcome.outcomes += [view_outcome(store, view) for cell in cells for view in cell.views]
    outcome.combinations = combine_due(spec, store, log=log)
    if executor != "slurm":  # every cell of the run has published (or failed) by now
        outcome.compaction = compact_if_due(store, log)
    return outcome


def compact_if_due(store: Store, log: Log = print) -> Compaction | None:
    """Compact the store once REIDBENCH_COMPACT_AFTER published sets (64; 0: never) lie in row
    files: a few small runs leave their row files, a lab's months of runs end up in segments."""
    due = auto_after()
    if due <= 0 or loose_sets(store) < due:
        return None
    done = compact(store)
    log(f"Result store: {done.summary()}.")
    return done


def combine_due(spec: Spec, store: Store, *, force: bool = False, log: Log = print) -> list[CombinationOutcome]:
    """Compute the spec's combinations whose cells are done (all of them again with `force`)."""
    if not spec.combinations:
        return []
    return run_combinations(spec.combinations, store, spec.resources, force=force, log=log)


def preflight(cells: Sequence[Cell], world_size: int, *, log: Log = print, store: Store | None = None) -> None:
    """Make and check every dataset (and pretrained weights) before anything starts, so bad input fails fast and once.
    Cells that only evaluate a kept model need no pretrained weights."""
    check_weights([c for c in cells if store is None or not evaluates_only(store, c)])
    loaded: dict[tuple[str, Path], data.ReidData] = {}
    for cell in cells:
        roots = {config.name: dataset_root(config, cell.synthetic) for config in cell.datasets}
        for config in cell.datasets:
            if (config.name, roots[config.name]) not in loaded:
                try:
                    loaded[config.name, roots[config.name]] = data.load_dataset(config.name, roots[config.name])
                except PermissionError as err:
                    raise UserError(
                        f"dataset {config.name}: cannot read {err.filename or roots[config.name]} ({err.strerror}); "
                        f"give this user read access to the folder (and its sub-folders)."
                    ) from None
                kind = "synthetic" if config.synthetic else "real"
                log(f"dataset {config.name} ({kind}): {roots[config.name]}")
        ids = {cell.train_dataset: sum(loaded[m, roots[m]].num_train_ids for m in members(cell.train_dataset))}
        if cell.finetune_dataset:  # [grid] finetune_datasets: phases with on = "finetune" train on it
            ids[cell.finetune_dataset] = loaded[cell.finetune_dataset, roots[cell.finetune_dataset]].num_train_ids
        fewest = min(ids, key=ids.get)
        check_cues(cell, roots)
        p, k = cell.train.ids_per_batch, cell.train.images_per_id
        if p > ids[fewest]:
            raise UserError(
                f"[train] ids_per_batch = {p} must be at most the {ids[fewest]} training identities of {fewest}."
            )
        if (p * k) % world_size:  # the spec parser refuses this already; command-line overrides could change it
            raise UserError(
                f"the global batch of P = {p} x K = {k} images cannot be split evenly over "
                f"[resources] world_size = {world_size} processes."
            )


def check_cues(cell: Cell, roots: dict[str, Path]) -> None:
    """The cue maps the cell's method declares for its variant: kept off the device by data_on_device, and present on disk."""
    cues = method_cues(cell.method, cell.variant)
    if cell.train.data_on_device and cues.train:
        raise UserError(
            f"[train] data_on_device keeps images only, but {cell.method}:{cell.variant} trains with cue maps "
            f"({', '.join(cues.train)}); set data_on_device = false for this grid."
        )
    trained_on = [*members(cell.train_dataset), *([cell.finetune_dataset] if cell.finetune_dataset else [])]
    sources = cell.cue_sources()
    needs = [(d, cue) for d in trained_on for cue in cue_refs(cues.train, sources)] + [
        (d, cue) for d in cell.test_datasets for cue in cue_refs(cues.test, sources)
    ]
    for dataset, cue in dict.fromkeys((d, files_of(cue)) for d, cue in needs):
        folder = roots[dataset] / "cues" / cue
        if not folder.is_dir():
            raise UserError(
                f"{cell.method}:{cell.variant} needs {cue} cue maps of {dataset}, but {folder} does not exist. "
                f"Compute them with the off-the-shelf model the method's paper names (formats: docs/data.md, "
                f"'Cue maps') and check them with `reidbench data check {dataset} {roots[dataset]} --cues {cue}`."
            )


def check_weights(cells: Sequence[Cell]) -> None:
    """Pretrained weights are read from the cache, never downloaded by a cell: check them all first, in one message."""
    try:
        check_cached([cell.backbone for cell in cells if cell.model_kwargs().get("pretrained")])
    except MissingWeights as err:
        raise UserError(str(err)) from None
