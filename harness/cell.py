"""Running one cell: the callable that every executor starts once per DDP process.

It reads top to bottom: distributed set-up, data, model, optimizer, training (phase by phase,
see harness/schedule.py), then, for each
test dataset, features (sharded over ranks), distances, metrics and one result row written by
rank 0. A failure on any rank is recorded in the cell's state with its reason; no row is written.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from harness import checkpoint, data, provenance, schedule
from harness.data.device import DeviceBatches
from harness.data.loader import shard_loader, test_transform, train_loader, train_transform
from harness.data.sampler import PKBatchSampler, steps_per_epoch
from harness.data.union import load_training
from harness.dist import DistEnv, gather_shards, init_distributed, shutdown
from harness.errors import UserError
from harness.evaluate import evaluate, pairwise_distance
from harness.profile import GpuSampler, gather_gpu_figures, peak_memory, reset_peak_memory, training_row
from harness.rerank import rerank_features
from harness.spec import Cell, DatasetConfig, Resources, SyntheticConfig, TrainConfig
from harness.store import SCHEMA_VERSION, Embeddings, Store
from harness.train import (NonFiniteLoss, TrainResult, build_optimizer, build_scheduler, combine_results,
                           extract_features, resolve_precision, train)
from methods import create_model

_TIMING_WARMUP = 10  # training steps left out of the profile row's throughput (at most half the run)


def expected_rows(cell: Cell) -> list[tuple[str, bool]]:
    """The (test dataset, re-ranked) rows a finished cell has in the store."""
    return [(test, rerank) for test in cell.test_datasets for rerank in (False, True)]


def is_done(store: Store, cell: Cell) -> bool:
    return all(store.has_row(cell.id, test, rerank) for test, rerank in expected_rows(cell))


def dataset_root(config: DatasetConfig, synthetic: SyntheticConfig) -> Path:
    """The folder holding the dataset: the spec's root, or the synthetic copy (made once)."""
    if config.root is not None:
        return Path(config.root)
    return data.synthetic_root(config.name, ids=synthetic.ids, seed=synthetic.seed)


def run_cell(cell_json: str, resources_json: str, store_root: str, executor: str, attempt: str,
             sink: checkpoint.Sink | None = None) -> None:
    """Entry point of each DDP process of a cell (spawned by elastic_launch, submitit or Ray).

    Training resumes from the cell's last checkpoint, if any: by default a file in the cell's
    folder of the store; Ray passes its own checkpoint storage as `sink`.
    """
    cell, resources, store = Cell.from_json(cell_json), Resources(**json.loads(resources_json)), Store(store_root)
    sink = sink or checkpoint.FileSink(store.cell_dir(cell.id) / "checkpoint.pt")
    try:
        _run(cell, resources, store, init_distributed(resources.device), executor, sink)
    except checkpoint.StopRequested:
        raise
    except BaseException as err:
        _record_failure(store, cell, int(os.environ.get("RANK", 0)), attempt, err)
        raise
    finally:
        shutdown()


def _run(cell: Cell, resources: Resources, store: Store, env: DistEnv, executor: str, sink: checkpoint.Sink) -> None:
    started = provenance.now()
    log = (lambda message: print(f"[{cell.id}] {message}", flush=True)) if env.is_main else (lambda message: None)
    config = cell.train
    training = load_training(cell.train_dataset, cell.finetune_dataset,
                             lambda name: dataset_root(cell.dataset(name), cell.synthetic))

    torch.manual_seed(cell.seed)  # identical initial weights on every rank
    model = create_model(
        cell.method,
        variant=cell.variant,
        backbone=cell.backbone,
        num_classes=training.num_classes,
        pretrained=config.pretrained,
        last_stride=config.last_stride,
        label_smoothing=config.label_smoothing,
        triplet_margin=config.triplet_margin,
        **dict(cell.method_options),
    ).to(env.device, memory_format=torch.channels_last if config.channels_last else torch.preserve_format)
    torch.manual_seed(cell.seed * 1000 + env.rank)  # distinct augmentations per rank

    ids = {on: len({s.pid for s in samples}) for on, samples in training.sets.items()}
    epoch_steps = lambda on: steps_per_epoch(ids[on], config.ids_per_batch)  # noqa: E731
    plans = schedule.plan(config, epoch_steps)
    total = schedule.total(plans)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, epoch_steps)
    state, start_step = sink.load(), 0
    if state is not None:
        start_step = checkpoint.restore(state, model, optimizer, scheduler, env.rank, env.world_size)
        phase = schedule.phase_at(plans, start_step)
        if state.get("phase", phase.index) != phase.index:
            raise UserError(f"the checkpoint at step {start_step} was taken in phase {state['phase'] + 1}, but this "
                            f"cell's phases put that step in phase {phase.index + 1}; did its datasets change? "
                            f"Delete {store.cell_dir(cell.id) / 'checkpoint.pt'} to train it again from the start.")
        log(f"resumed from the checkpoint at step {start_step} (phase {phase.index + 1} of {len(plans)})")
    assert not (config.data_on_device and model.train_cues), "refused before the run (cli._check_cues)"
    trained = DistributedDataParallel(model) if env.world_size > 1 else model
    trained = torch.compile(trained) if config.compile else trained
    precision = resolve_precision(config.precision, env.device)

    def after_step(step: int, check) -> None:
        stop = checkpoint.stop_requested()
        if stop or (config.checkpoint_every and step % config.checkpoint_every == 0 and step < total):
            check()  # never checkpoint weights trained on a non-finite loss
            state = checkpoint.capture(model, optimizer, scheduler, step, env.rank)
            if state is not None:
                state["phase"] = schedule.phase_at(plans, step).index  # the phase a resumed run continues in
            sink.save(state, step)
            log(f"checkpoint at step {step}")
            if stop:
                raise checkpoint.StopRequested(step)

    log(
        f"training {cell.method}:{cell.variant} on {cell.backbone} for {total} steps, "
        f"{training.num_classes} ids, {len(training.sets['train'])} images, world size {env.world_size}, {env.device}"
    )
    reset_peak_memory(env.device)
    results = []
    with GpuSampler([env.device]) as gpu_sampler:
        for plan in plans:
            if plan.steps and start_step >= plan.end:
                continue  # done before the checkpoint
            begin = max(start_step, plan.start)
            samples = training.sets[plan.on]
            sampler = PKBatchSampler(
                [s.pid for s in samples],
                ids_per_batch=config.ids_per_batch,
                images_per_id=config.images_per_id,
                steps=plan.steps,
                seed=cell.seed + 1_000_003 * plan.index,  # phase 1 draws as a one-phase recipe always did
                rank=env.rank,
                world_size=env.world_size,
                start_step=begin - plan.start,
            )
            if len(plans) > 1:
                name = cell.finetune_dataset if plan.on == "finetune" else cell.train_dataset
                log(f"phase {plan.index + 1} of {len(plans)}: steps {begin + 1}-{plan.end} on {name} ({ids[plan.on]} ids, "
                    f"{len(samples)} images) at {plan.input_size[0]}x{plan.input_size[1]}, lr {plan.lr:g}")
            results.append(train(
                trained, model.losses, _batches(cell, config, plan, samples, sampler, model, env), optimizer, scheduler,
                device=env.device, world_size=env.world_size, log_every=config.log_every, log=log,
                precision=precision, channels_last=config.channels_last, check_every=config.check_every,
                warmup_steps=min(_TIMING_WARMUP, (plan.end - begin) // 2), start_step=begin, after_step=after_step,
                grad_clip=config.grad_clip,
            ))
    result = combine_results(results, start_step)
    log(f"trained {result.iterations} steps in {result.seconds:.1f} s ({precision})")
    gpu, peak = gather_gpu_figures(gpu_sampler.figures(since=result.measured_from), peak_memory(env.device))

    for test_name in cell.test_datasets:
        test_root = dataset_root(cell.dataset(test_name), cell.synthetic)
        test_set = training.loaded.get(test_name) or data.load_dataset(test_name, test_root)
        keep = (lambda embeddings: store.write_embeddings(cell.id, test_name, embeddings)) if config.keep_embeddings else None
        for rerank, (metrics, seconds) in _evaluate(model, test_set, config, env, test_name, test_root, keep,
                                                    size=plans[-1].input_size).items():
            log(f"{test_name}{' +RR' if rerank else ''}: rank-1 {metrics['rank1']:.1%} mAP {metrics['mAP']:.1%} ({seconds:.1f} s)")
            store.write_row(_result_row(cell, resources, test_set, metrics, rerank, result, seconds, env, executor, started))
    if env.is_main:
        store.write_profile(training_row(cell, result, gpu, peak, precision=precision, device=env.device,
                                         world_size=env.world_size, executor=executor, started=started))
        phases = [{"on": p.on, "steps": p.steps, "input_size": list(p.input_size), "lr": p.lr} for p in plans]
        store.write_state(cell.id, "done", finished_at=provenance.now(), iterations=result.iterations, phases=phases)
        sink.clear()


def _result_row(cell: Cell, resources: Resources, test_set: data.ReidData, metrics: dict, rerank: bool, result: TrainResult,
                eval_seconds: float, env: DistEnv, executor: str, started) -> dict:
    """One store row (see results/README.md): identity, metrics, figures, provenance."""
    sha, dirty = provenance.git_state()
    return {
        "schema_version": SCHEMA_VERSION,
        "grid": cell.grid,
        "cell_id": cell.id,
        "method": cell.method,
        "variant": cell.variant,
        "backbone": cell.backbone,
        "train_dataset": cell.train_dataset,
        "test_dataset": test_set.name,
        "synthetic": cell.dataset(test_set.name).synthetic,
        "seed": cell.seed,
        "rerank": rerank,
        "protocol": data.protocol(test_set.name),
        **{k: metrics[k] for k in ("mAP", "mINP", "rank1", "rank5", "rank10", "num_valid_queries")},
        "cmc": metrics["cmc"].tolist(),
        "num_query": len(test_set.query),
        "num_gallery": len(test_set.gallery),
        "iterations": result.iterations,
        "train_seconds": result.seconds,
        "train_images_per_second": result.images_per_second,
        "eval_seconds": eval_seconds,
        "git_sha": sha,
        "git_dirty": dirty,
        **provenance.environment(env.device),
        "world_size": env.world_size,
        "executor": executor,
        "started_at": started,
        "finished_at": provenance.now(),
        "config": json.dumps({"cell": json.loads(cell.to_json()), "resources": asdict(resources), "scheduler": _scheduler_ids()}, sort_keys=True),
    }


def _scheduler_ids() -> dict[str, str]:
    """The cluster's names for this run (SLURM job and array ids, restart count), for provenance."""
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_CLUSTER_NAME")
    return {k.lower(): os.environ[k] for k in keys if k in os.environ}


def _batches(cell: Cell, config: TrainConfig, plan: schedule.PhasePlan, samples: list[data.Sample], sampler: PKBatchSampler,
             model: torch.nn.Module, env: DistEnv):
    """A phase's training batches at its input size; the samples' pids are labels already (data.union)."""
    augmentation = {"flip": config.flip, "padding": config.padding, "random_erasing": config.random_erasing}
    if config.data_on_device:
        return DeviceBatches(samples, sampler, size=plan.input_size, **augmentation, device=env.device,
                             seed=cell.seed * 1000 + env.rank, num_workers=config.num_workers, relabel=False)
    transform = train_transform(plan.input_size, **augmentation, heatmap_stride=_feature_stride(config))
    return train_loader(samples, sampler, transform, num_workers=config.num_workers, pin_memory=env.device.type == "cuda",
                        cues=model.train_cues, in_memory=config.in_memory, relabel=False)


def _evaluate(model: torch.nn.Module, test_set: data.ReidData, config: TrainConfig, env: DistEnv, name: str,
              root: Path, keep=None, *, size: tuple[int, int]) -> dict[bool, tuple[dict, float]]:
    """Query and gallery features extracted in shards over ranks, then on rank 0 the metrics
    of the plain and of the k-reciprocal re-ranked distances: {rerank: (metrics, seconds)}.

    A model may bring its own batched distance as ``model.distance(query, gallery)``
    (see harness.distance); otherwise the Euclidean distance is used. Each row's seconds
    count feature extraction plus its own distances and metrics. Images are resized to `size`,
    the last training phase's input size. Rank 0 hands the features to ``keep`` (a
    store.Embeddings) afterwards, when given and when they are plain Euclidean embeddings (those
    that [[combine]] can concatenate; GASM's packed rows would be 2 GB per Market test set).
    """
    start = time.perf_counter()
    transform = test_transform(size, heatmap_stride=_feature_stride(config))
    features = []
    for samples in (test_set.query, test_set.gallery):
        loader = shard_loader(
            samples, transform, rank=env.rank, world_size=env.world_size,
            batch_size=config.eval_batch_size, num_workers=min(config.num_workers, 2), pin_memory=env.device.type == "cuda",
            cues=model.test_cues, cue_root=root,
        )
        features.append(gather_shards(extract_features(model, loader, env.device), len(samples)))
    if not env.is_main:
        return {}
    extracted = time.perf_counter() - start
    metric = getattr(model, "distance", "euclidean")
    ids = lambda samples, key: np.asarray([getattr(s, key) for s in samples], dtype=np.int64)  # noqa: E731
    labels = (ids(test_set.query, "pid"), ids(test_set.gallery, "pid"), ids(test_set.query, "camid"), ids(test_set.gallery, "camid"))
    results = score(*features, labels, protocol=data.protocol(name), metric=metric, device=env.device, extracted=extracted)
    if keep is not None and metric == "euclidean":  # a method's own distance (GASM) packs what cannot be concatenated
        keep(Embeddings(*(f.float().cpu().numpy() for f in features), *labels, metric="euclidean"))
    return results


def score(query: torch.Tensor, gallery: torch.Tensor, labels: tuple, *, protocol: str, metric="euclidean",
          device: torch.device, extracted: float = 0.0) -> dict[bool, tuple[dict, float]]:
    """The metrics of the plain and of the k-reciprocal re-ranked distances between query and
    gallery features, {rerank: (metrics, seconds)}; `labels` are query/gallery pids, then camids.
    Each row's seconds add its own distances and metrics to `extracted`."""
    results = {}
    for rerank, distances in ((False, pairwise_distance), (True, rerank_features)):
        begin = time.perf_counter()
        distmat = distances(query.to(device), gallery.to(device), metric=metric)
        metrics = evaluate(distmat, *labels, protocol=protocol)
        results[rerank] = (metrics, extracted + time.perf_counter() - begin)
    return results


def _feature_stride(config: TrainConfig) -> int:
    """The backbone's output stride, so pose heatmaps come at the feature map's size."""
    return 16 if config.last_stride == 1 else 32


def _record_failure(store: Store, cell: Cell, rank: int, attempt: str, err: BaseException) -> None:
    """The first rank to fail in an attempt records why; later ranks usually fail as a consequence."""
    current = store.read_state(cell.id) or {}
    if current.get("state") == "failed" and current.get("attempt") == attempt:
        return
    reason = str(err) if isinstance(err, NonFiniteLoss) else f"{type(err).__name__}: {err}"
    store.write_state(
        cell.id, "failed",
        reason=reason,
        rank=rank, attempt=attempt, failed_at=provenance.now(),
        traceback="".join(traceback.format_exception(err))[-4000:],
    )
