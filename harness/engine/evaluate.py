"""Evaluating a model on test datasets and writing its rows: after training, or a kept model later.

The same code scores a cell right after it trained (harness.engine.cell), a kept model on a test
set added to its spec (run_cell finds the model and only evaluates), and `reidbench eval` (a done
cell, or external weights). Features are extracted in shards over the ranks; rank 0 computes the
plain and the k-reciprocal re-ranked metrics and stages one row each in the run's folder of the
store; the caller publishes the run's rows together (store.publish) once every test set is scored.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from harness import data
from harness.data.cues import cue_refs, files_of
from harness.data.fingerprint import as_json, fingerprint
from harness.data.loader import shard_loader, test_transform
from harness.data.synthetic import synthetic_root
from harness.data.transforms import CueTransform
from harness.engine.dist import DistEnv, gather_shards
from harness.engine.rows import Trained, result_row
from harness.engine.train import cues_on, extract_features
from harness.errors import UserError
from harness.eval.metrics import evaluate as evaluate_distances
from harness.eval.rerank import rerank_features
from harness.eval.score import score
from harness.spec import Cell, DatasetConfig, Resources, SyntheticConfig
from harness.store import Embeddings, Store
from methods.gasm_matching import SpatialFile


def dataset_root(config: DatasetConfig, synthetic: SyntheticConfig) -> Path:
    """The folder holding the dataset: the spec's root, or the synthetic copy (made once)."""
    if config.root is not None:
        return Path(config.root)
    return synthetic_root(config.name, ids=synthetic.ids, seed=synthetic.seed)


def feature_stride(model_options: dict) -> int:
    """The backbone's output stride, so pose heatmaps come at the feature map's size."""
    return 16 if model_options.get("last_stride", 1) == 1 else 32


def check_test_cues(
    model: torch.nn.Module, roots: dict[str, Path], what: str, sources: dict[str, str] | None = None
) -> None:
    """Every cue map the model needs at test time is on disk for every test set, before anything runs
    (from the cue sources a cell reads, `Cell.cue_sources`)."""
    for name, root in roots.items():
        for cue in dict.fromkeys(files_of(c) for c in cue_refs(model.test_cues, sources or {})):
            folder = root / "cues" / cue
            if not folder.is_dir():
                raise UserError(
                    f"{what} needs {cue} cue maps at test time, but test dataset {name} has none: {folder} "
                    f"does not exist. Compute them (docs/data.md, 'Cue maps') and check them with "
                    f"`reidbench data check {name} {root} --cues {cue}`; nothing was written to the store."
                )


@dataclass(frozen=True)
class Evaluation:
    """What rows of one model need besides its metrics."""

    cell: Cell
    resources: Resources
    trained: Trained
    train_fingerprint: str | None
    executor: str
    started: object
    run_id: str  # the run (attempt) whose rows these are; the caller publishes them
    resumed_from: int = 0  # the checkpoint's step training resumed at
    weights: str | None = None  # external weights' origin; None for a model the cell trained
    keep_embeddings: bool = True
    extra_config: dict | None = None
    hosts: tuple[str, ...] = ()  # the node each rank ran on, in rank order (default: this host)


class Marks:
    """Where a rank is in one test set's evaluation, for a watchdog (harness/engine/watch.py):
    extracting its shard (its own work), gathering (a collective), scoring (rank 0). No-ops here."""

    def extracting(self, part: int) -> None:
        pass

    def gathering(self, part: int) -> None:
        pass

    def scoring(self) -> None:
        pass


def evaluate_tests(
    model: torch.nn.Module,
    tests: Sequence[str],
    ev: Evaluation,
    *,
    store: Store,
    env: DistEnv,
    size: tuple[int, int],
    root_of: Callable[[str], Path],
    loaded: dict[str, data.ReidData] | None = None,
    log: Callable[[str], None] = print,
    marks: Callable[[int, str], Marks] | None = None,
) -> None:
    """Score `model` on each test dataset and stage its plain and re-ranked rows (rank 0) under
    `ev.run_id`. `marks(index, name)` tells a watchdog where each rank is in test set `index`."""
    model.eval()
    stride = feature_stride(ev.cell.model_kwargs())
    hosts = list(ev.hosts) or [socket.gethostname()] * env.world_size
    for index, test_name in enumerate(tests):
        test_root = Path(root_of(test_name))
        test_set = (loaded or {}).get(test_name) or data.load_dataset(test_name, test_root)
        keep = None
        if ev.keep_embeddings:
            keep = lambda embeddings, name=test_name: store.write_embeddings(ev.cell.id, name, embeddings, ev.run_id)  # noqa: E731
        results = evaluate(
            model,
            test_set,
            env,
            test_name,
            test_root,
            keep,
            size=size,
            stride=stride,
            batch_size=ev.cell.train.eval_batch_size,
            num_workers=ev.cell.train.num_workers,
            rerank_distance=ev.cell.train.rerank_distance,
            marks=marks(index, test_name) if marks else None,
            cues=cue_refs(model.test_cues, ev.cell.cue_sources()),
            scratch=store.cell_dir(ev.cell.id) / "spatial" / ev.run_id,
        )
        if not env.is_main:
            continue
        test_fp = as_json(fingerprint(test_set, test_root, ("query", "gallery")))
        for rerank, (metrics, seconds) in results.items():
            log(
                f"{test_name}{' +RR' if rerank else ''}: rank-1 {metrics['rank1']:.1%} mAP {metrics['mAP']:.1%} ({seconds:.1f} s)"
            )
            store.stage_row(
                result_row(
                    ev.cell,
                    ev.resources,
                    test_dataset=test_name,
                    protocol=data.protocol(test_name),
                    synthetic=ev.cell.dataset(test_name).synthetic if _has(ev.cell, test_name) else True,
                    metrics=metrics,
                    rerank=rerank,
                    num_query=len(test_set.query),
                    num_gallery=len(test_set.gallery),
                    result=ev.trained,
                    eval_seconds=seconds,
                    device=env.device,
                    world_size=env.world_size,
                    executor=ev.executor,
                    started=ev.started,
                    run_id=ev.run_id,
                    hosts=hosts,
                    resumed_from=ev.resumed_from,
                    train_fingerprint=ev.train_fingerprint,
                    test_fingerprint=test_fp,
                    weights=ev.weights,
                    extra_config=ev.extra_config,
                )
            )


def _has(cell: Cell, name: str) -> bool:
    return any(d.name == name for d in cell.datasets)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    test_set: data.ReidData,
    env: DistEnv,
    name: str,
    root: Path,
    keep=None,
    *,
    size: tuple[int, int],
    stride: int,
    batch_size: int,
    num_workers: int,
    rerank_distance: str = "squared",
    marks: Marks | None = None,
    cues: tuple[str, ...] | None = None,
    scratch: Path | None = None,
) -> dict[bool, tuple[dict, float]]:
    """Query and gallery features extracted in shards over ranks, then on rank 0 the metrics
    of the plain and of the k-reciprocal re-ranked distances: {rerank: (metrics, seconds)}.
    A model with `spatial` set (GASM matching at its paper's resolution) goes through
    evaluate_spatial instead, its local features in files under `scratch`.

    A model may bring its own batched distance as ``model.distance(query, gallery)``
    (see harness.eval.distance); otherwise the Euclidean distance is used. Each row's seconds
    count feature extraction plus its own distances and metrics. Images are resized to `size`,
    the last training phase's input size. Rank 0 hands the features to ``keep`` (a
    store.Embeddings) afterwards, when given and when they are plain Euclidean embeddings (those
    that [[combine]] can concatenate; GASM's packed rows would be 2 GB per Market test set).
    """
    start, marks = time.perf_counter(), marks or Marks()
    if getattr(model, "spatial", False):
        if scratch is None:
            raise ValueError(f"{type(model).__name__} keeps its local features on disk: evaluate() needs `scratch`")
        loader = dict(size=size, stride=stride, batch_size=batch_size, num_workers=num_workers, cues=cues)
        return evaluate_spatial(model, test_set, env, name, root, scratch, marks=marks, **loader)
    features = extract(
        model,
        test_set,
        env,
        root,
        size=size,
        stride=stride,
        batch_size=batch_size,
        num_workers=num_workers,
        marks=marks,
        cues=cues,
    )
    if not env.is_main:
        return {}
    marks.scoring()
    extracted = time.perf_counter() - start
    metric = getattr(model, "distance", "euclidean")
    labels = labels_of(test_set)
    results = score(
        *features,
        labels,
        protocol=data.protocol(name),
        metric=metric,
        device=env.device,
        extracted=extracted,
        rerank_distance=rerank_distance,
    )
    if keep is not None and metric == "euclidean":  # a method's own distance (GASM) packs what cannot be concatenated
        keep(Embeddings(*(f.float().cpu().numpy() for f in features), *labels, metric="euclidean"))
    return results


def evaluate_spatial(
    model: torch.nn.Module,
    test_set: data.ReidData,
    env: DistEnv,
    name: str,
    root: Path,
    scratch: Path,
    *,
    size: tuple[int, int],
    stride: int,
    batch_size: int,
    num_workers: int,
    marks: Marks | None = None,
    cues: tuple[str, ...] | None = None,
) -> dict[bool, tuple[dict, float]]:
    """GASM's matching at the feature map's resolution in bounded memory (methods/gasm_matching.py).

    Every rank writes the local features of its shard (model.split_rows) into two float16 files
    under `scratch` (on the store, so ranks on other nodes write the same files), at its shard's
    rows; the global features and heatmaps, small, are gathered as other embeddings are. Rank 0
    then re-scores each query's top k gallery images (model.spatial_distance) and removes the files.
    The re-ranked row re-ranks the global distance (k-reciprocal, cosine) and re-scores the top k of
    that: GASM publishes no re-ranked number, and all-pairs spatial distances among the gallery
    images, which re-ranking the spatial distance itself needs, are the cost the top k avoids.
    """
    start, marks = time.perf_counter(), marks or Marks()
    dim, locations = model.dim, model.locations
    transform, files, small = test_transform(size, heatmap_stride=stride), [], []
    if env.is_main:
        scratch.mkdir(parents=True, exist_ok=True)
    model.eval()
    for part, samples in enumerate((test_set.query, test_set.gallery)):
        marks.extracting(part)
        path = scratch / f"{name}.{('query', 'gallery')[part]}.f16"
        if env.is_main:
            SpatialFile(path, len(samples), locations, dim)  # sized once; every rank writes its rows
        if env.world_size > 1:
            torch.distributed.barrier()
        file = SpatialFile(path, len(samples), locations, dim, create=False)
        position = env.rank * -(-len(samples) // env.world_size)  # the first row of this rank's shard
        loader = _shard(model, samples, transform, env, root, batch_size=batch_size, num_workers=num_workers, cues=cues)
        kept = []
        with torch.no_grad():
            for inputs, _, _, *cue in loader:
                glob, local, heat = model.split_rows(
                    model(inputs.to(env.device, non_blocking=True), *cues_on(env.device, cue))
                )
                file.write(position, local)
                position += len(inputs)
                kept.append(torch.cat([glob, heat], dim=1).float().cpu())
        shard = torch.cat(kept) if kept else torch.empty(0, dim + locations)
        marks.gathering(part)
        small.append(gather_shards(shard, len(samples)))  # every rank has written its rows by now
        files.append(file)
    if not env.is_main:
        return {}
    marks.scoring()
    extracted = time.perf_counter() - start
    labels = labels_of(test_set)
    (q, g), results = [t.to(env.device) for t in small], {}
    try:
        for rerank in (False, True):
            begin = time.perf_counter()
            base = None
            if rerank:  # the global features are unit rows: cosine distances, re-ranked
                base = torch.from_numpy(rerank_features(q[:, :dim], g[:, :dim], metric="cosine"))
            distmat = model.spatial_distance(q[:, :dim], g[:, :dim], q[:, dim:], files[0], files[1], base=base)
            metrics = evaluate_distances(distmat, *labels, protocol=data.protocol(name))
            results[rerank] = (
                {**metrics, "rerank_distance": "own" if rerank else None},
                extracted + time.perf_counter() - begin,
            )
    finally:
        for file in files:
            file.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            scratch.rmdir()
    return results


def extract(
    model: torch.nn.Module,
    test_set: data.ReidData,
    env: DistEnv,
    root: Path,
    *,
    size: tuple[int, int],
    stride: int,
    batch_size: int,
    num_workers: int,
    marks: Marks | None = None,
    cues: tuple[str, ...] | None = None,
) -> list[torch.Tensor]:
    """[query features, gallery features], gathered on every rank in the dataset's order; `cues`:
    the cue references to load (cues.cue_refs), default the model's test cues from the default source."""
    transform, marks = test_transform(size, heatmap_stride=stride), marks or Marks()
    features = []
    for part, samples in enumerate((test_set.query, test_set.gallery)):
        marks.extracting(part)
        loader = _shard(model, samples, transform, env, root, batch_size=batch_size, num_workers=num_workers, cues=cues)
        shard = extract_features(model, loader, env.device)
        marks.gathering(part)
        features.append(gather_shards(shard, len(samples)))
    return features


def _shard(
    model: torch.nn.Module,
    samples: Sequence[data.Sample],
    transform: CueTransform,
    env: DistEnv,
    root: Path,
    *,
    batch_size: int,
    num_workers: int,
    cues: tuple[str, ...] | None,
) -> DataLoader:
    """This rank's shard of `samples`, in order (extract and evaluate_spatial): at most 2 workers,
    `cues` (default the model's test cues) read under `root`."""
    return shard_loader(
        samples,
        transform,
        rank=env.rank,
        world_size=env.world_size,
        batch_size=batch_size,
        num_workers=min(num_workers, 2),
        pin_memory=env.device.type == "cuda",
        cues=model.test_cues if cues is None else cues,
        cue_root=root,
    )


def labels_of(test_set: data.ReidData) -> tuple[np.ndarray, ...]:
    """(query pids, gallery pids, query camids, gallery camids) as int64 arrays."""
    ids = lambda samples, key: np.asarray([getattr(s, key) for s in samples], dtype=np.int64)  # noqa: E731
    return (
        ids(test_set.query, "pid"),
        ids(test_set.gallery, "pid"),
        ids(test_set.query, "camid"),
        ids(test_set.gallery, "camid"),
    )
