"""Running one cell: the callable that every executor starts once per DDP process.

It reads top to bottom: distributed set-up and its pre-flight (harness/engine/preflight.py), the
cell's lease (harness/lease.py: no other live run trains it meanwhile), data (the test splits decoded
and checked before any training), model, optimizer, resume, training (phase by phase, see
harness/engine/schedule.py), a checkpoint of the final weights, the trained model kept in the store
(harness/engine/artefact.py, before any evaluation), then, for each test dataset, features (sharded
over ranks), distances, metrics and its rows (harness/engine/evaluate.py), staged by rank 0 and
published together at the end (harness/store.py). Every row and embeddings file carries the run id
(`attempt`). A cell whose model is kept already is not trained again: the kept model is evaluated
on all of the cell's test datasets (a test set added to its spec), and that run's rows replace the
earlier set, so a cell's published rows always come from one run. A failure on any rank is recorded
in the cell's state with its reason; nothing is published. A rank that waits in a collective for
`[resources] collective_timeout` ends the cell as an "NCCL/collective timeout" naming the rank it
waited for (harness/engine/watch.py).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from harness import data, lease, provenance
from harness.data.cues import check_files, cue_refs
from harness.data.device_batches import DeviceBatches
from harness.data.fingerprint import as_json, fingerprint
from harness.data.loader import train_loader, train_transform
from harness.data.sampler import GlobalBatchSampler, batch_sampler, epoch_steps
from harness.data.union import TrainingData, load_training, members
from harness.engine import artefact, checkpoint, curves, preflight, schedule
from harness.engine import heads as phase_heads
from harness.engine.dist import DistEnv, broadcast_buffers, node_name, shutdown, sync_batchnorm
from harness.engine.evaluate import Evaluation, check_test_cues, dataset_root, evaluate_tests, feature_stride
from harness.engine.gpu import GpuSampler, gather_gpu_figures, peak_memory, reset_peak_memory
from harness.engine.rows import Trained, training_row
from harness.engine.train import (
    NonFiniteLoss,
    build_optimizer,
    build_scheduler,
    combine_results,
    resolve_precision,
    train,
)
from harness.engine.watch import Watchdog
from harness.errors import UserError
from harness.spec import Cell, Resources, TrainConfig
from harness.store import Store
from methods import create_model

__all__ = ["dataset_root", "evaluates_only", "model_source", "retrain_marker", "run_cell"]

_TIMING_WARMUP = 10  # training steps left out of the profile row's throughput (at most half the run)
TIMEOUT = "NCCL/collective timeout"  # the failure class of a collective that never completed (executors.base.classify)
# How the backends word a collective that timed out, when they raise instead of being stopped by the watchdog.
_TIMEOUT_WORDS = (
    "Watchdog caught collective operation timeout",
    "Timed out waiting",
    "timed out waiting",
    "DistBackendError",
)


def epoch_length(config: TrainConfig, training: TrainingData) -> Callable[[str], int]:
    """Steps per epoch of a phase's data (its `on`), in the recipe's epoch_unit (see sampler.epoch_steps)."""

    def steps(on: str) -> int:
        samples = training.sets[on]
        return epoch_steps(
            config.epoch_unit,
            num_images=len(samples),
            num_ids=len({s.pid for s in samples}),
            ids_per_batch=config.ids_per_batch,
            images_per_id=config.images_per_id,
        )

    return steps


def training_plans(cell: Cell, cache: dict | None = None) -> tuple[schedule.PhasePlan, ...]:
    """The cell's phases resolved to steps, from its training data as a run reads it (for --dry-run).

    `cache` keeps the training data read per (datasets, roots) across calls: a grid's cells share a
    few datasets, and reading Market-1501's file list once per cell took 0.9 s (30 min for 2,000 cells)."""
    root_of = lambda name: dataset_root(cell.dataset(name), cell.synthetic)  # noqa: E731
    names = (*members(cell.train_dataset), *((cell.finetune_dataset,) if cell.finetune_dataset else ()))
    key = (cell.train_dataset, cell.finetune_dataset, tuple(str(root_of(name)) for name in names))
    if cache is None or key not in cache:
        training = load_training(cell.train_dataset, cell.finetune_dataset, root_of)
        if cache is None:
            return schedule.plan(cell.train, epoch_length(cell.train, training))
        cache[key] = training
    return schedule.plan(cell.train, epoch_length(cell.train, cache[key]))


def retrain_marker(store: Store, cell_id: str) -> Path:
    """Present while a cell must train again although its model is kept (`reidbench run --force`)."""
    return store.cell_dir(cell_id) / "retrain"


def evaluates_only(store: Store, cell: Cell) -> bool:
    """A kept model and no --force: the cell evaluates it on its test sets, and trains nothing. The
    model is the cell's own, or, for a view (Cell.trainer), its training cell's."""
    return model_source(store, cell) is not None


def model_source(store: Store, cell: Cell) -> Cell | None:
    """Whose kept model the cell evaluates instead of training: its own (no --force), else, for a
    view, its training cell's (trained once for both); None when the cell trains."""
    for source in (cell, cell.trainer()):
        if source is not None and store.has_model(source.id) and not retrain_marker(store, source.id).exists():
            return source
    return None


@dataclasses.dataclass
class _Model:
    """The model a run trained or loaded, with what its view cells' rows record of it."""

    cell: Cell  # the cell whose model it is
    model: torch.nn.Module
    num_classes: int
    trained: Trained
    train_fingerprint: str | None
    input_size: tuple[int, int]
    started: object
    point: int  # the watchdog's next point after the run's own evaluation


@dataclasses.dataclass(frozen=True)
class _Job:
    """Where and how this process's run evaluates: what every evaluation of it passes along."""

    resources: Resources
    store: Store
    env: DistEnv
    executor: str
    run_id: str
    watch: Watchdog
    hosts: list[str]


class CellHeld(Exception):
    """Another live run holds the cell's lease: this run leaves the cell alone."""


def run_cell(
    cell: Cell,
    resources: Resources,
    store_root: str,
    executor: str,
    attempt: str,
    sink: checkpoint.Sink | None = None,
    owner: str | None = None,
    on_failure: Callable[[str], None] | None = None,
) -> None:
    """Entry point of each DDP process of a cell (spawned by elastic_launch, submitit or Ray, which
    pickle the frozen Cell and Resources to it).

    `attempt` is the run id stamped into the rows; `owner` (default: the attempt) is who may take
    the cell's lease over while it looks alive: a requeued SLURM job passes its job id. Training
    resumes from the cell's last usable checkpoint, if any: by default a file in the cell's folder
    of the store; Ray passes its own checkpoint storage as `sink`. `on_failure(reason)` is called
    when the watchdog ends this process (no exception reaches the caller then): the SLURM executor
    records the reason in its manifest.
    """
    store = Store(store_root)
    views, cell = cell.views, cell.bare()  # the views are evaluated after the cell's own rows
    sink = sink or checkpoint.FileSink(store.cell_dir(cell.id) / "checkpoint.pt")
    os.environ.update(dict(resources.env))  # the launcher forwarded them already; this covers a bare torchrun
    rank = int(os.environ.get("RANK", 0))
    folder = store.cell_dir(cell.id) / "preflight" / attempt
    parent, held = os.getppid(), None
    try:
        env = preflight.join(resources.device, resources.collective_timeout, folder)
        timed_out = lambda line: _timed_out(store, cell, resources, rank, attempt, line, on_failure)  # noqa: E731
        with Watchdog(
            rank=env.rank,
            world_size=env.world_size,
            host=node_name(),
            timeout_s=resources.collective_timeout * 60,
            on_timeout=timed_out,
        ) as watch:
            hosts = preflight.check(env, folder, watch)
            held = _claim(store, cell, env, attempt, owner or attempt, executor)
            done = _run(cell, resources, store, env, executor, sink, attempt, watch, hosts)
            job = _Job(resources, store, env, executor, attempt, watch, hosts)
            for view in views:
                _evaluate_view(view, done, job, owner or attempt)
    except (checkpoint.StopRequested, CellHeld):
        raise
    except BaseException as err:
        state, reason = "failed", _reason(err)
        if isinstance(err, KeyboardInterrupt):
            gone = os.getppid() != parent
            state = "interrupted"
            reason = (
                f"interrupted: its launcher (pid {parent}) was stopped or killed" if gone else "interrupted (Ctrl-C)"
            ) + "; a rerun resumes from the last checkpoint"
        _record_failure(store, cell, rank, attempt, reason, "".join(traceback.format_exception(err)), state)
        raise
    finally:
        if held is not None:
            held.release()
        shutdown()


def _claim(store: Store, cell: Cell, env: DistEnv, run_id: str, owner: str, executor: str) -> lease.Lease | None:
    """Rank 0 takes the cell's lease (and clears what dead runs left there); every rank learns
    whether it did. CellHeld on every rank when another live run holds it."""
    mine, refused = None, ""
    if env.is_main:
        mine = lease.Lease(store.cell_dir(cell.id), run_id, owner, executor=executor, grid=cell.grid)
        holder = mine.try_acquire()
        if holder is None:
            mine.heartbeat()
            store.clean_cell(cell.id)
        else:
            mine, refused = None, holder.describe()
    if env.world_size > 1:
        shared = [refused]
        dist.broadcast_object_list(shared, src=0)
        refused = shared[0]
    if refused:
        raise CellHeld(f"cell {cell.id} is held by {refused}; left to it")
    return mine


def _run(
    cell: Cell,
    resources: Resources,
    store: Store,
    env: DistEnv,
    executor: str,
    sink: checkpoint.Sink,
    run_id: str,
    watch: Watchdog,
    hosts: list[str],
) -> _Model:
    started = provenance.now()
    log = (lambda message: print(f"[{cell.id}] {message}", flush=True)) if env.is_main else (lambda message: None)
    source = model_source(store, cell)
    if source is not None:
        return _evaluate_kept(cell, source, _Job(resources, store, env, executor, run_id, watch, hosts), started, log)
    config = cell.train
    training = load_training(
        cell.train_dataset, cell.finetune_dataset, lambda name: dataset_root(cell.dataset(name), cell.synthetic)
    )

    if torch.distributed.is_initialized():
        log(
            f"pre-flight passed: {torch.distributed.get_backend()} process group of {env.world_size} rank(s) on "
            f"{', '.join(dict.fromkeys(hosts))}"
        )
    torch.manual_seed(cell.seed)  # identical initial weights on every rank
    model = create_model(cell.method, num_classes=training.num_classes, **cell.model_kwargs()).to(
        env.device, memory_format=torch.channels_last if config.channels_last else torch.preserve_format
    )
    if env.world_size > 1 and config.sync_bn:  # statistics of the global batch, as one process sees them
        model = sync_batchnorm(model, env.device)

    ids = {on: len({s.pid for s in samples}) for on, samples in training.sets.items()}
    per_epoch = epoch_length(config, training)
    plans = schedule.plan(config, per_epoch)
    total = schedule.total(plans)
    tests = {name: _test_set(cell, training, name) for name in cell.test_datasets}
    _check_test_data(tests, cue_refs(model.test_cues, cell.cue_sources()), env)
    heads = (
        phase_heads.PhaseHeads(model, plans, lambda on: [s.pid for s in training.sets[on]], seed=cell.seed)
        if phase_heads.used(config)
        else None
    )
    optimizer = build_optimizer(model, config, heads.param_groups() if heads else None)
    scheduler = build_scheduler(optimizer, config, per_epoch)
    start_step = checkpoint.resume(
        sink,
        model,
        optimizer,
        scheduler,
        rank=env.rank,
        world_size=env.world_size,
        phase_of=lambda step: schedule.phase_at(plans, step).index,
        log=log,
    )
    if start_step:
        log(
            f"resumed from the checkpoint at step {start_step} (phase {schedule.phase_at(plans, start_step).index + 1} "
            f"of {len(plans)})"
        )
    assert not (config.data_on_device and model.train_cues), "refused before the run (runner.check_cues)"
    # A phase's own classifier leaves the others without gradients in it: DDP must not wait for them.
    unused = heads is not None and len(heads.heads) > 1
    trained = DistributedDataParallel(model, find_unused_parameters=unused) if env.world_size > 1 else model
    trained = torch.compile(trained) if config.compile else trained
    precision = resolve_precision(config.precision, env.device)

    def after_step(step: int, check) -> None:
        stop = checkpoint.stop_requested()
        # The last step's weights too, before evaluation: an evaluation failure then costs no retraining.
        if stop or step == total or (config.checkpoint_every and step % config.checkpoint_every == 0):
            check()  # never checkpoint weights trained on a non-finite loss
            state = checkpoint.capture(model, optimizer, scheduler, step, env.rank)
            if state is not None:
                state["phase"] = schedule.phase_at(plans, step).index  # the phase a resumed run continues in
            try:
                sink.save(state, step)
                log(f"checkpoint at step {step}")
            except checkpoint.NotWritten as err:  # a full disk costs this checkpoint, not the run
                print(f"[{cell.id}] warning: {err}; training goes on without the checkpoint at step {step}", flush=True)
            if stop:
                raise checkpoint.StopRequested(step)

    log(
        f"training {cell.method}:{cell.variant} on {cell.backbone} for {total} steps, "
        f"{training.num_classes} ids, {len(training.sets['train'])} images, world size {env.world_size}, {env.device}"
    )
    reset_peak_memory(env.device)
    results = []
    board = None
    if env.is_main:
        store.trim_metrics(cell.id, start_step)
        board = curves.tensorboard_writer(store.cell_dir(cell.id) / "tensorboard")
    with GpuSampler([env.device]) as gpu_sampler:
        for plan in plans:
            if plan.steps and start_step >= plan.end:
                continue  # done before the checkpoint
            begin = max(start_step, plan.start)
            samples = training.sets[plan.on]
            sampler = batch_sampler(
                config.sampler,
                [s.pid for s in samples],
                ids_per_batch=config.ids_per_batch,
                images_per_id=config.images_per_id,
                steps=plan.steps,
                seed=cell.seed + 1_000_003 * plan.index,  # phase 1 draws as a one-phase recipe always did
                rank=env.rank,
                world_size=env.world_size,
                start_step=begin - plan.start,
            )
            if plan is plans[0] or len(plans) > 1:
                log(f"batches: {sampler.description}")
            if len(plans) > 1:
                name = cell.finetune_dataset if plan.on == "finetune" else cell.train_dataset
                log(
                    f"phase {plan.index + 1} of {len(plans)}: steps {begin + 1}-{plan.end} on {name} ({ids[plan.on]} ids, "
                    f"{len(samples)} images) at {plan.input_size[0]}x{plan.input_size[1]}, lr {plan.lr:g}"
                )
            batches = _marked(_batches(cell, config, plan, samples, sampler, model, env), watch, begin)
            losses = phase_heads.relabelled(model.losses, heads.enter(plan) if heads else None, env.device)
            results.append(
                train(
                    trained,
                    losses,
                    batches,
                    optimizer,
                    scheduler,
                    device=env.device,
                    world_size=env.world_size,
                    log_every=config.log_every,
                    log=log,
                    precision=precision,
                    channels_last=config.channels_last,
                    check_every=config.check_every,
                    warmup_steps=min(_TIMING_WARMUP, (plan.end - begin) // 2),
                    start_step=begin,
                    after_step=after_step,
                    grad_clip=config.grad_clip,
                    record=_recorder(store, cell.id, plan.index + 1, board) if env.is_main else None,
                )
            )
    if board is not None:
        board.close()
    result = combine_results(results, start_step)
    num_classes = heads.finish() if heads else training.num_classes  # the kept model's classifier
    log(f"trained {result.iterations} steps in {result.seconds:.1f} s ({precision})")
    watch.at(2 * total + 2, "gathering the GPU figures")
    gpu, peak = gather_gpu_figures(gpu_sampler.figures(since=result.measured_from), peak_memory(env.device))
    broadcast_buffers(model)  # every rank evaluates the model that rank 0 keeps
    trained_figures = Trained.of(result)
    roots = {name: dataset_root(cell.dataset(name), cell.synthetic) for name in cell.trained_on}
    train_fp = as_json({name: fingerprint(training.loaded[name], roots[name], ("train",)) for name in cell.trained_on})
    size = plans[-1].input_size
    kept = config.keep_model
    if env.is_main and config.keep_model:  # kept before it is evaluated: an evaluation failure loses no training
        info = artefact.describe(
            cell,
            model,
            num_classes=num_classes,
            input_size=size,
            trained=dataclasses.asdict(trained_figures),
            train_fingerprint=train_fp,
            run_id=run_id,
        )
        try:
            log(f"model kept: {artefact.save(store, cell.id, model, info)}")
        except OSError as err:  # a full disk or quota, as for checkpoints: the rows matter more than the artefact
            kept = False
            artefact.discard(store, cell.id)
            log(
                f"warning: the model is not kept ({err}); the rows are written, but a test set added later "
                "makes `reidbench run` train the cell again (free space first to keep the model then)"
            )
    evaluation = Evaluation(
        cell,
        resources,
        trained_figures,
        train_fp,
        executor,
        started,
        run_id=run_id,
        resumed_from=start_step,
        keep_embeddings=config.keep_embeddings,
        hosts=tuple(hosts),
    )
    evaluate_tests(
        model,
        list(tests),
        evaluation,
        store=store,
        env=env,
        size=size,
        root_of=lambda name: tests[name][0],
        loaded={name: test_set for name, (_, test_set) in tests.items()},
        log=log,
        marks=lambda index, name: _EvalMarks(watch, 2 * total + 3 + 5 * index, name),
    )
    if env.is_main:
        store.publish(cell.id, run_id)  # every row of the cell at once, all of this run
        store.write_profile(
            training_row(
                cell,
                result,
                gpu,
                peak,
                precision=precision,
                device=env.device,
                world_size=env.world_size,
                executor=executor,
                started=started,
            )
        )
        phases = [{"on": p.on, "steps": p.steps, "input_size": list(p.input_size), "lr": p.lr} for p in plans]
        store.write_state(
            cell.id,
            "done",
            finished_at=provenance.now(),
            iterations=result.iterations,
            phases=phases,
            model_kept=kept,
        )
        sink.clear()
        retrain_marker(store, cell.id).unlink(missing_ok=True)
    return _Model(cell, model, num_classes, trained_figures, train_fp, size, started, 2 * total + 3 + 5 * len(tests))


def _recorder(store: Store, cell_id: str, phase: int, board):
    """The curve's line for a logged step: loss terms (averaged over ranks), lr, phase, images per second."""

    def record(step: int, terms: dict[str, float], lr: float, rate: float) -> None:
        store.append_metrics(cell_id, {"step": step, "lr": lr, "phase": phase, "images_per_second": rate, **terms})
        if board is not None:
            for key, value in {
                **{f"loss/{k}": v for k, v in terms.items()},
                "lr": lr,
                "images_per_second": rate,
            }.items():
                board.add_scalar(key, value, step)

    return record


def _evaluate_kept(cell: Cell, source: Cell, job: _Job, started, log) -> _Model:
    """The kept model of the cell, or of its training cell `source` for a view, on all the cell's
    test datasets: extraction and scoring, no training. All of them, not only a test set added since:
    the run publishes the cell's whole set of rows, one run's."""
    model, info = artefact.load(job.store, source.id, variant=cell.variant)
    whose = "" if source.id == cell.id else f" of its training cell {source.id} ({source.variant})"
    log(
        f"evaluating the kept model {job.store.model_path(source.id)}{whose} on {', '.join(cell.test_datasets)}; no training"
    )
    kept = _Model(
        source,
        model,
        int(info["num_classes"]),
        Trained(**info["trained"]),
        info.get("train_fingerprint"),
        tuple(info["input_size"]),
        started,
        3,
    )
    return _evaluate_as(cell, kept, job, log)


def _evaluate_view(view: Cell, done: _Model, job: _Job, owner: str) -> None:
    """A view of the cell that `done` trained (or loaded): the same weights in the view's model,
    evaluated on the view's test sets, its rows published under its own id in this run. Its lease
    is taken as any cell's; a view that another live run holds is left to it. A failure is recorded
    as the view's, and the run goes on: the training cell's rows are published by then, and the
    next run evaluates the view from the kept model (harness/runner.py reports it as failed)."""
    log = (lambda message: print(f"[{view.id}] {message}", flush=True)) if job.env.is_main else (lambda message: None)
    try:
        held = _claim(job.store, view, job.env, job.run_id, owner, job.executor)
    except CellHeld as err:
        log(f"{err}: not evaluated by cell {done.cell.id}'s run")
        return
    try:
        model = create_model(view.method, num_classes=done.num_classes, **{**view.model_kwargs(), "pretrained": False})
        artefact.load_into(
            model, done.model.state_dict(), f"the model of cell {done.cell.id}", f"{view.method}:{view.variant}"
        )
        log(f"a view of cell {done.cell.id} ({done.cell.variant}): its trained model, inferred as {view.variant}")
        _evaluate_as(view, dataclasses.replace(done, model=model.eval()), job, log, logs_of=done.cell.id)
    except Exception as err:
        trace = "".join(traceback.format_exception(err))
        _record_failure(job.store, view, job.env.rank, job.run_id, _reason(err), trace, logs_of=done.cell.id)
        log(f"failed: {_reason(err)}; cell {done.cell.id}'s own rows are published")
    finally:
        if held is not None:
            held.release()


def _evaluate_as(cell: Cell, done: _Model, job: _Job, log, logs_of: str | None = None) -> _Model:
    """`done`'s model evaluated as `cell` (itself, or a view of its cell) on the cell's test sets;
    its rows published. A view's rows name the cell that trained the model (`trained_by`); a view
    carried by that cell's run names it as the cell whose logs hold its own (`logs_of`)."""
    store, env = job.store, job.env
    model = done.model.to(env.device)
    roots = {name: dataset_root(cell.dataset(name), cell.synthetic) for name in cell.test_datasets}
    check_test_cues(model, roots, f"{cell.method}:{cell.variant}", cell.cue_sources())
    view = done.cell.id != cell.id
    evaluation = Evaluation(
        cell,
        job.resources,
        done.trained,
        done.train_fingerprint,
        job.executor,
        done.started,
        run_id=job.run_id,
        keep_embeddings=cell.train.keep_embeddings,
        extra_config={"trained_by": done.cell.id} if view else None,
        hosts=tuple(job.hosts),
    )
    evaluate_tests(
        model,
        cell.test_datasets,
        evaluation,
        store=store,
        env=env,
        size=done.input_size,
        root_of=roots.__getitem__,
        log=log,
        marks=lambda index, name: _EvalMarks(job.watch, done.point + 5 * index, name),
    )
    if env.is_main:
        store.publish(cell.id, job.run_id)
        store.write_state(
            cell.id,
            "done",
            finished_at=provenance.now(),
            iterations=done.trained.iterations,
            model_kept=not view,
            evaluated=list(cell.test_datasets),
            **({"trained_by": done.cell.id} if view else {}),
            **({"logs_of": logs_of} if logs_of else {}),
        )
    return dataclasses.replace(done, point=done.point + 5 * len(cell.test_datasets))


def _test_set(cell: Cell, training, name: str) -> tuple[Path, data.ReidData]:
    root = dataset_root(cell.dataset(name), cell.synthetic)
    return root, training.loaded.get(name) or data.load_dataset(name, root)


def _check_test_data(tests: dict[str, tuple[Path, data.ReidData]], cues: tuple[str, ...], env: DistEnv) -> None:
    """Decode every test image and read every test cue before training (each rank a share), so a
    broken file fails the cell now rather than after hours of training."""
    problems = []
    for name, (root, test_set) in tests.items():
        samples = list({s.path: s for s in test_set.query + test_set.gallery}.values())[env.rank :: env.world_size]
        problems += [(name, root, message) for _, message in check_files(samples, root, tuple(cues))]
    if env.world_size > 1:
        everyone: list = [None] * env.world_size
        dist.all_gather_object(everyone, problems)
        problems = [p for part in everyone for p in part]
    if problems:
        name, root, _ = problems[0]
        shown = "; ".join(message for _, _, message in problems[:3])
        raise UserError(
            f"{len(problems)} broken test file(s), found before training: {shown}"
            f"{' ...' if len(problems) > 3 else ''}. Replace or remove them; `reidbench data check {name} {root}` "
            f"lists every one."
        )


def _batches(
    cell: Cell,
    config: TrainConfig,
    plan: schedule.PhasePlan,
    samples: list[data.Sample],
    sampler: GlobalBatchSampler,
    model: torch.nn.Module,
    env: DistEnv,
):
    """A phase's training batches at its input size; the samples' pids are labels already (data.union)."""
    augmentation = {"flip": config.flip, "padding": config.padding, "random_erasing": config.random_erasing}
    if config.data_on_device:
        return DeviceBatches(
            samples,
            sampler,
            size=plan.input_size,
            **augmentation,
            device=env.device,
            num_workers=config.num_workers,
            relabel=False,
        )
    transform = train_transform(plan.input_size, **augmentation, heatmap_stride=feature_stride(cell.model_kwargs()))
    return train_loader(
        samples,
        sampler,
        transform,
        num_workers=config.num_workers,
        pin_memory=env.device.type == "cuda",
        cues=cue_refs(model.train_cues, cell.cue_sources()),
        in_memory=config.in_memory,
        relabel=False,
    )


def _marked(batches: Iterable, watch: Watchdog, start: int) -> Iterator:
    """The batches, telling the watchdog whether this rank is loading one (its own work) or in
    a training step (DDP's all-reduce: a collective). Points 2 s and 2 s + 1 for step s."""
    iterator, step = iter(batches), start
    while True:
        watch.at(2 * step, f"loading the batch of training step {step + 1}", waiting=False)
        try:
            batch = next(iterator)
        except StopIteration:
            return
        watch.at(2 * step + 1, f"training step {step + 1}")
        yield batch
        step += 1


class _EvalMarks:
    """Where a rank is in one test set's evaluation: extracting its shard, gathering, scoring (rank 0)."""

    def __init__(self, watch: Watchdog, point: int, name: str):
        self.watch, self.point, self.name = watch, point, name

    def extracting(self, part: int) -> None:
        self.watch.at(
            self.point + 2 * part, f"extracting the {self.name} {('query', 'gallery')[part]} features", waiting=False
        )

    def gathering(self, part: int) -> None:
        self.watch.at(self.point + 2 * part + 1, f"gathering the {self.name} {('query', 'gallery')[part]} features")

    def scoring(self) -> None:
        self.watch.at(self.point + 4, f"scoring {self.name}", waiting=False)


def _reason(err: BaseException) -> str:
    """A failure's one-line reason, in its class where the class is known here."""
    if isinstance(err, (NonFiniteLoss, UserError)):
        return str(err)
    if isinstance(err, preflight.PreflightError):
        return f"pre-flight: {err}"
    text = f"{type(err).__name__}: {err}"
    if any(words in text for words in _TIMEOUT_WORDS):
        return f"{TIMEOUT}: {text.strip().splitlines()[0][:500]}"
    return text


def _timed_out(
    store: Store,
    cell: Cell,
    resources: Resources,
    rank: int,
    attempt: str,
    line: str,
    on_failure: Callable[[str], None] | None,
) -> None:
    """The watchdog's verdict (called from its thread while the main thread hangs in a collective):
    say it in this rank's log, record it, and end the process, since the collective never returns."""
    reason = f"{TIMEOUT}: {line} ([resources] collective_timeout = {resources.collective_timeout:g} min)"
    print(f"[{cell.id}] {reason}", flush=True)
    print(f"[{cell.id}] {reason}", file=sys.stderr, flush=True)
    main = sys._current_frames().get(threading.main_thread().ident)
    stack = "".join(traceback.format_stack(main)) if main is not None else ""
    try:
        _record_failure(store, cell, rank, attempt, reason, f"where rank {rank}'s main thread waited:\n{stack}")
        if on_failure is not None:
            on_failure(reason)
    finally:
        os._exit(1)


def _record_failure(
    store: Store,
    cell: Cell,
    rank: int,
    attempt: str,
    reason: str,
    trace: str,
    state: str = "failed",
    logs_of: str | None = None,
) -> None:
    """The first rank to fail in an attempt records why; later ranks usually fail as a consequence.
    An interrupt is recorded as such (state "interrupted"): Ctrl-C, or the launcher gone (killed),
    whose workers then get SIGINT. ``logs_of``: the cell whose run (and logs) this was, for a view
    that its training cell's run evaluated."""
    current = store.read_state(cell.id) or {}
    if current.get("state") in ("failed", "interrupted") and current.get("attempt") == attempt:
        return
    store.write_state(
        cell.id,
        state,
        reason=reason,
        rank=rank,
        attempt=attempt,
        failed_at=provenance.now(),
        traceback=_shortened(trace),
        **({"logs_of": logs_of} if logs_of else {}),
    )


def _shortened(trace: str, limit: int = 4000) -> str:
    """A trace cut to `limit` characters: its first line (what it is: an exception's header, or where
    the watchdog found the main thread) and its end (where it happened), the middle elided."""
    if len(trace) <= limit:
        return trace
    head, _, rest = trace.partition("\n")
    head = head[:200]
    return f"{head}\n...\n{rest[-(limit - len(head) - 5) :]}"
