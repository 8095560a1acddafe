"""Every store row a job writes: a cell's result rows, a combination's, and profile rows.

The schemas are harness/store.py's SCHEMA and PROFILE_SCHEMA (documented in results/README.md);
the provenance columns (code, environment, scheduler ids) are filled here, in one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch

from harness import provenance
from harness.engine.gpu import GpuFigures
from harness.engine.train import TrainResult
from harness.spec import ID_VERSION, Cell, Combination, Resources, TrainConfig, part_name
from harness.store import PROFILE_SCHEMA_VERSION, SCHEMA_VERSION

METRIC_COLUMNS = ("mAP", "mAP_official", "mINP", "rank1", "rank5", "rank10", "num_valid_queries", "rerank_distance")


@dataclass(frozen=True)
class Measured:
    train: TrainResult
    infer_images_per_second: float | None
    gpu: GpuFigures
    peak_memory_bytes: int | None
    precision: str
    options: dict[str, Any]


_IDENTITY = (
    "source",
    "cell_id",
    "method",
    "variant",
    "backbone",
    "input_height",
    "input_width",
    "batch_size",
    "world_size",
    "precision",
    "options",
    "device",
)


def profile_row(
    *,
    source: str,
    cell_id: str | None,
    method: str,
    variant: str,
    backbone: str,
    config: TrainConfig,
    measured: Measured,
    world_size: int,
    device: torch.device,
    executor: str,
    started,
    extra_config: dict | None = None,
) -> dict[str, Any]:
    """One row of PROFILE_SCHEMA. Its id hashes the identity columns and the device's name, so a
    rerun on the same kind of device replaces the row and a CPU row never replaces a GPU row."""
    sha, dirty = provenance.git_state()
    result = measured.train
    measured_ips = result.measured_images_per_second
    row = {
        "schema_version": PROFILE_SCHEMA_VERSION,
        "source": source,
        "cell_id": cell_id,
        "method": method,
        "variant": variant,
        "backbone": backbone,
        "input_height": config.input_size[0],
        "input_width": config.input_size[1],
        "batch_size": config.ids_per_batch * config.images_per_id,
        "world_size": world_size,
        "precision": measured.precision,
        "options": json.dumps(measured.options, sort_keys=True),
        "train_steps": result.iterations - result.warmup_steps,
        "warmup_steps": result.warmup_steps,
        "train_images_per_second": measured_ips,
        "train_images_per_second_per_device": measured_ips / world_size if measured_ips else None,
        "infer_images_per_second": measured.infer_images_per_second,
        **measured.gpu.columns(),
        "peak_memory_bytes": measured.peak_memory_bytes,
        "git_sha": sha,
        "git_dirty": dirty,
        **provenance.environment(device),
        "executor": executor,
        "started_at": started,
        "finished_at": provenance.now(),
        "config": json.dumps({"train": dataclasses.asdict(config), **(extra_config or {})}, sort_keys=True),
    }
    identity = json.dumps({k: row[k] for k in _IDENTITY}, sort_keys=True)
    return {"profile_id": hashlib.sha256(identity.encode()).hexdigest()[:12], **row}


def training_row(
    cell,
    result: TrainResult,
    gpu: GpuFigures,
    peak: int | None,
    *,
    precision: str,
    device: torch.device,
    world_size: int,
    executor: str,
    started,
) -> dict[str, Any]:
    """The profile row of a training cell's real training (`cell` a harness.spec.Cell); no inference figure."""
    config = cell.train
    options = {
        "channels_last": config.channels_last,
        "compile": config.compile,
        "data_on_device": config.data_on_device,
    }
    return profile_row(
        source="training",
        cell_id=cell.id,
        method=cell.method,
        variant=cell.variant,
        backbone=cell.backbone,
        config=config,
        measured=Measured(result, None, gpu, peak, precision, options),
        world_size=world_size,
        device=device,
        executor=executor,
        started=started,
        extra_config={"train_dataset": cell.train_dataset},
    )


@dataclass(frozen=True)
class Trained:
    """A model's training figures as its rows report them: from the run that trained it, or from
    model.json when a kept model is evaluated later (zeros for external weights)."""

    iterations: int
    seconds: float
    images_per_second: float | None

    @classmethod
    def of(cls, result: TrainResult) -> Trained:
        return cls(result.iterations, result.seconds, result.images_per_second)


def result_row(
    cell: Cell,
    resources: Resources,
    *,
    test_dataset: str,
    protocol: str,
    synthetic: bool,
    metrics: dict,
    rerank: bool,
    num_query: int,
    num_gallery: int,
    result: TrainResult | Trained,
    eval_seconds: float,
    device: torch.device,
    world_size: int,
    executor: str,
    started,
    run_id: str,
    hosts: list[str],
    resumed_from: int = 0,
    train_fingerprint: str | None = None,
    test_fingerprint: str | None = None,
    weights: str | None = None,
    extra_config: dict | None = None,
) -> dict[str, Any]:
    """One result row of a cell (see results/README.md): identity, metrics, figures, provenance.
    `run_id` is the run (attempt) that wrote it; `resumed_from` the checkpoint's step training
    resumed at; `hosts`: the node each rank ran on, in rank order (harness.engine.dist.node_name);
    `weights` is null for a model this cell trained, else where external weights came from."""
    config = {
        "cell": cell.as_dict(),
        "resources": dataclasses.asdict(resources),
        "scheduler": scheduler_ids(),
        "id_version": ID_VERSION,
        "resumed_from_step": resumed_from,
        **(extra_config or {}),
    }
    row = _row(
        identity=cell,
        test_dataset=test_dataset,
        protocol=protocol,
        synthetic=synthetic,
        metrics=metrics,
        rerank=rerank,
        num_query=num_query,
        num_gallery=num_gallery,
        iterations=result.iterations,
        train_seconds=result.seconds,
        train_images_per_second=result.images_per_second,
        eval_seconds=eval_seconds,
        code=provenance.git_state(),
        device=device,
        world_size=world_size,
        executor=executor,
        started=started,
        config=config,
        run_id=run_id,
        hosts=hosts,
    )
    return {**row, "train_fingerprint": train_fingerprint, "test_fingerprint": test_fingerprint, "weights": weights}


def combination_row(
    combo: Combination,
    *,
    test_dataset: str,
    protocol: str,
    metrics: dict,
    rerank: bool,
    num_query: int,
    num_gallery: int,
    part_rows: list[dict],
    eval_seconds: float,
    device: torch.device,
    started,
    code: tuple,
    run_id: str,
) -> dict[str, Any]:
    """A combination's row, laid out like a cell's: the parts' training figures are summed."""
    parts = [
        {
            "part": part_name(c),
            "cell_id": c.id,
            "run_id": r.get("run_id"),
            "git_sha": r["git_sha"],
            "finished_at": str(r["finished_at"]),
        }
        for c, r in zip(combo.parts, part_rows)
    ]
    settings = {"name": combo.name, "method": combo.method, "normalize": combo.normalize, "parts": parts}
    config = {
        "combination": settings,
        "parts": [c.as_dict() for c in combo.parts],
        "resources": {"device": str(device)},
        "scheduler": {},
    }
    return _row(
        identity=combo,
        test_dataset=test_dataset,
        protocol=protocol,
        synthetic=combo.parts[0].dataset(test_dataset).synthetic,
        metrics=metrics,
        rerank=rerank,
        num_query=num_query,
        num_gallery=num_gallery,
        iterations=sum(r["iterations"] for r in part_rows),
        train_seconds=sum(r["train_seconds"] for r in part_rows),
        train_images_per_second=None,
        eval_seconds=eval_seconds,
        code=code,
        device=device,
        world_size=1,
        executor="local",
        started=started,
        config=config,
        run_id=run_id,
        hosts=[socket.gethostname()],
    )


def _row(
    *,
    identity: Cell | Combination,
    test_dataset: str,
    protocol: str,
    synthetic: bool,
    metrics: dict,
    rerank: bool,
    num_query: int,
    num_gallery: int,
    iterations: int,
    train_seconds: float,
    train_images_per_second: float | None,
    eval_seconds: float,
    code: tuple,
    device: torch.device,
    world_size: int,
    executor: str,
    started,
    config: dict,
    run_id: str,
    hosts: list[str],
) -> dict[str, Any]:
    sha, dirty = code
    return {
        "schema_version": SCHEMA_VERSION,
        "grid": identity.grid,
        "cell_id": identity.id,
        "method": identity.method,
        "variant": identity.variant,
        "backbone": identity.backbone,
        "train_dataset": identity.train_dataset,
        "test_dataset": test_dataset,
        "synthetic": synthetic,
        "seed": identity.seed,
        "rerank": rerank,
        "protocol": protocol,
        **{k: metrics[k] for k in METRIC_COLUMNS},
        "cmc": metrics["cmc"].tolist(),
        "num_query": num_query,
        "num_gallery": num_gallery,
        "iterations": iterations,
        "train_seconds": train_seconds,
        "train_images_per_second": train_images_per_second,
        "eval_seconds": eval_seconds,
        "git_sha": sha,
        "git_dirty": dirty,
        **provenance.environment(device),
        "world_size": world_size,
        "nodes": len(set(hosts)),
        "hosts": list(hosts),
        "executor": executor,
        "started_at": started,
        "finished_at": provenance.now(),
        "config": json.dumps(config, sort_keys=True),
        "id_version": ID_VERSION,
        "train_fingerprint": None,
        "test_fingerprint": None,
        "weights": None,
        "run_id": run_id,
    }


def scheduler_ids() -> dict[str, str]:
    """The cluster's names for this run (SLURM job and array ids, restart count), for provenance."""
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_CLUSTER_NAME")
    return {k.lower(): os.environ[k] for k in keys if k in os.environ}
