"""The spec's frozen dataclasses: a cell, its recipe, its resources, and combinations of cells.

A spec names lists of methods, backbones, training datasets and seeds; their product is the
grid, one cell per combination. A cell's id is a short hash of its resolved configuration, so the
same experiment has the same id in every spec that contains it, whatever the key order or whether
defaults are spelled out. How a cell is run (executor, world size, device) is not part of its id.
A training dataset may be a union "a+b+c" and a grid may add fine-tuning targets; `[train]` may
split training into `[[train.phases]]` (see harness/engine/schedule.py and harness/data/union.py).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.spec.values import coerce_dataclass, freeze
from methods import method_builder, method_revision, trained_variant

# Bump when the meaning of a resolved configuration changes. Version 2: the test datasets left the
# id (a kept model is evaluated on a new test set under the same id), and the model settings
# (label_smoothing, triplet_margin, pretrained, last_stride) moved from [train] into the method's
# resolved builder options. Rows of version 1 stay readable; `reidbench status` names them.
ID_VERSION = 2
# Settings that change how fast a cell runs or how much it logs, not what it computes.
_NOT_IDENTITY = frozenset(
    {
        "num_workers",
        "eval_batch_size",
        "log_every",
        "in_memory",
        "precision",
        "channels_last",
        "compile",
        "data_on_device",
        "check_every",
        "checkpoint_every",
        "keep_embeddings",
        "keep_model",
        "rerank_distance",
    }
)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("step", "cosine", "exponential", "poly")  # see harness/engine/schedule.py
PHASE_DATASETS = ("train", "finetune")  # what a [[train.phases]] entry trains on (`on`)
PHASE_CLASSIFIERS = ("keep", "new")  # a [[train.phases]] entry's identity classifier (harness/engine/heads.py)
EPOCH_UNITS = ("images", "identities")  # what an epoch passes over (harness/data/sampler.py, epoch_steps)
SAMPLERS = ("pk", "uniform")  # how a global batch is drawn: P identities x K images, or P·K images uniformly
RERANK_DISTANCES = ("squared", "euclidean")  # what k-reciprocal re-ranking is given (harness/eval/score.py)
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # [ray] placement_strategy
# Variables the launcher (torchrun, SLURM through submitit, Ray Train) sets for each rank: [env] cannot.
LAUNCHER_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "GROUP_RANK",
    "NODE_RANK",
)
# [train] keys added after ID_VERSION 1: left out of a cell's identity while at these defaults, so
# the ids of cells that do not use them stay as they were.
_LATER_PHASE_KEYS = {"classifier": "keep", "classifier_lr": None}  # [[train.phases]] keys added later
_LATER_TRAIN_KEYS = {
    "schedule": "step",
    "exp_decays": 10,
    "nesterov": False,
    "grad_clip": 0.0,
    "phases": (),
    "sync_bn": True,
    "sampler": "pk",
    "cue_sources": (),
}
# Recipes counted in epochs meant epochs of identities before epoch_unit existed: that value keeps their
# ids, the default (images) gives them new ones. Recipes counted in iterations have no epoch to mean.
_ID_EPOCH_UNIT = "identities"
# Builder arguments that the grid sets; [method_options.<method>] cannot.
BUILDER_ARGUMENTS = ("variant", "backbone", "num_classes")
# The model settings that [train] held before ID_VERSION 2; now each method's options (defaults in its builder).
MOVED_TO_METHOD_OPTIONS = ("label_smoothing", "triplet_margin", "pretrained", "last_stride")


@dataclass(frozen=True)
class Phase:
    """One of a cell's consecutive training phases (`[[train.phases]]`, see harness/engine/schedule.py).

    It trains for `iterations` or `epochs` on `on` (the cell's training set, or its fine-tuning
    target) at `input_size` with the schedule restarted at `lr`. The parser fills input_size and lr
    from [train] when a phase leaves them out, so a cell's id holds the resolved values.
    `classifier = "new"` trains a freshly initialised identity classifier sized to the phase's
    dataset from this phase on, and `classifier_lr` is the classifier's own lr in the phase
    (harness/engine/heads.py); a cell's id holds them only when set.
    """

    iterations: int | None = None
    epochs: int | None = None
    input_size: tuple[int, int] | None = None
    lr: float | None = None
    on: str = "train"
    classifier: str = "keep"  # keep: the model's classifier trains on | new: a new one for this phase's identities
    classifier_lr: float | None = None  # the classifier's lr in this phase (None: the phase's lr)


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe of a cell. Schedule lengths are in `iterations` or in `epochs`."""

    input_size: tuple[int, int] = (256, 128)  # height, width
    iterations: int | None = None
    epochs: int | None = None
    ids_per_batch: int = 16  # P identities ...
    images_per_id: int = 4  # ... times K images make one global batch
    optimizer: str = "adam"
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup: int = 10  # linear warm-up length, in the schedule's unit
    warmup_factor: float = 0.01  # the warm-up starts at lr * warmup_factor
    milestones: tuple[int, ...] = (40, 70)  # lr *= gamma at each, in the schedule's unit
    gamma: float = 0.1  # step: the factor at each milestone; exponential: the factor of each decay; poly: the power
    schedule: str = "step"  # step | cosine (to 0 after the warm-up) | exponential (see harness/engine/schedule.py)
    cue_sources: tuple[tuple[str, str], ...] = ()  # (cue, source): read cues/<cue>@<source>/ (harness/data/cues.py)
    exp_decays: int = (
        10  # exponential: lr * gamma ** floor(exp_decays * t / T) over a phase of T steps; poly: its steps
    )
    nesterov: bool = False  # sgd: Nesterov momentum
    grad_clip: float = 0.0  # clip the global L2 norm of the gradients to this before each step (0: off)
    epoch_unit: str = "images"  # an epoch is a pass over the training images, or over its identities (see sampler.py)
    sampler: str = "pk"  # pk: P identities x K images per batch; uniform: P·K images drawn uniformly (sampler.py)
    sync_bn: bool = True  # BatchNorm statistics over the global batch when the world size is above 1
    phases: tuple[Phase, ...] = ()  # consecutive training phases; none: one phase made of this table
    flip: float = 0.5
    padding: int = 10
    random_erasing: float = 0.5
    num_workers: int = 4
    in_memory: bool = False  # decode the training images once and keep them in memory as uint8
    eval_batch_size: int = 128
    log_every: int = 20
    # speed only (not part of a cell's id): see harness/engine/train.py
    precision: str = "auto"  # auto: bf16 on GPUs that support it, else fp16; fp32 on the CPU
    channels_last: bool = True
    compile: bool = False  # torch.compile the model
    data_on_device: bool = False  # decode the training set once, keep it on the device as uint8, augment there
    check_every: int = 10  # steps between non-finite loss checks (each costs one host sync)
    checkpoint_every: int = 500  # steps between checkpoints (0: only when the scheduler asks to stop)
    keep_embeddings: bool = True  # write the test-time embeddings to the store (needed by [[combine]])
    keep_model: bool = True  # leave cells/<id>/model.safetensors + model.json (evaluate it later on new test sets)
    rerank_distance: str = "squared"  # re-rank Euclidean features on squared or plain distances (see eval/score.py)

    def __post_init__(self) -> None:
        if self.iterations is None and self.epochs is None and not self.phases:
            object.__setattr__(self, "epochs", 120)

    @property
    def counts_epochs(self) -> bool:
        """Whether any phase of the recipe is given in epochs (and so depends on its epoch_unit)."""
        return self.epochs is not None or any(p.epochs is not None for p in self.phases)


@dataclass(frozen=True)
class DatasetConfig:
    """Where a dataset is. No root means the synthetic stand-in in the same layout."""

    name: str
    root: str | None = None

    @property
    def synthetic(self) -> bool:
        return self.root is None


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and seed of the generated stand-in datasets."""

    ids: int = 48
    seed: int = 0


@dataclass(frozen=True)
class Resources:
    """How each cell runs; not part of a cell's identity."""

    world_size: int = 1  # DDP processes per cell: nodes x processes per node
    device: str = "auto"  # auto | cpu | cuda
    nodes: int = 1  # cluster executors: the cell's processes spread over this many nodes
    gpus_per_node: int = 0  # cluster executors: GPUs requested per node (one process per GPU)
    # Minutes a rank may wait in one collective (or to join) before the cell fails as
    # "NCCL/collective timeout" (harness/engine/watch.py); init_process_group's and Ray's timeout.
    collective_timeout: float = 30.0
    env: tuple[tuple[str, str], ...] = ()  # the spec's [env]: set in every worker process (sorted pairs)
    allow_large: bool = False  # lift the spec's upper bounds on sizes (iterations, input_size, world_size, ...)

    @property
    def tasks_per_node(self) -> int:
        return self.world_size // self.nodes


@dataclass(frozen=True)
class SlurmConfig:
    """sbatch settings for `--executor slurm`; each can be overridden on the command line."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gres: str | None = None  # e.g. "gpu:a100:4"; or [resources] gpus_per_node
    constraint: str | None = None
    time: int = 240  # minutes per attempt; a cell that needs longer is checkpointed and requeued
    mem: str | None = None  # per node, e.g. "64G"
    cpus_per_task: int | None = None
    extra: tuple[str, ...] = ()  # more sbatch options, e.g. ["--exclude=node7"]
    setup: tuple[str, ...] = ()  # shell lines run before the cell (module load, conda activate)
    array_parallelism: int = 256  # cells of one array running at once
    max_requeues: int = 3  # time-limit requeues per cell (preemptions are not counted)
    signal_delay_s: int = 90  # the checkpoint signal comes this long before the time limit


@dataclass(frozen=True)
class RayConfig:
    """Settings for `--executor ray`."""

    address: str | None = None  # or RAY_ADDRESS; none starts a local Ray cluster for the run
    max_failures: int = 3  # worker failures a cell survives by restoring its last checkpoint
    cpus_per_worker: float = 1.0
    storage_path: str | None = None  # shared by every node; default: <store>/ray
    # How a cell's workers are placed on the nodes (Ray's placement strategies): PACK fills a node
    # first; STRICT_SPREAD puts every worker on a node of its own (a cell across nodes).
    placement_strategy: str = "PACK"


@dataclass(frozen=True)
class Cell:
    """One (method, variant, backbone, training dataset, seed) experiment and what it is tested on.

    `train_dataset` may be a union of datasets, "a+b+c" (harness/data/union.py); `finetune_dataset`
    is what phases with `on = "finetune"` train on; `method_options` are keyword arguments of the
    method's builder, as sorted (name, value) pairs.
    """

    grid: str
    method: str
    variant: str
    backbone: str
    train_dataset: str
    test_datasets: tuple[str, ...]
    seed: int
    train: TrainConfig
    datasets: tuple[DatasetConfig, ...]
    synthetic: SyntheticConfig
    finetune_dataset: str | None = None
    method_options: tuple[tuple[str, Any], ...] = ()
    # View cells this cell's run evaluates with the model it trains (harness/runner.py `todo` sets
    # them); not part of the identity, and dropped from rows and JSON.
    views: tuple[Cell, ...] = ()

    def dataset(self, name: str) -> DatasetConfig:
        return next(d for d in self.datasets if d.name == name)

    def cue_sources(self) -> dict[str, str]:
        """The cue sources the cell reads ([train] cue_sources); none on synthetic data, whose one
        exact map per cue (cues/<cue>/) stands for every source."""
        return {} if any(d.synthetic for d in self.datasets) else dict(self.train.cue_sources)

    def trainer(self) -> Cell | None:
        """The cell whose trained model this one infers with, when the cell's variant is a view of
        another (methods.register_method's `views`): the same cell with the trained variant, whose
        id is what that cell has in any grid (the test sets are not part of an id). None otherwise."""
        trained = trained_variant(self.method, self.variant)
        return None if trained is None else dataclasses.replace(self, variant=trained, views=())

    def bare(self) -> Cell:
        """The cell without the views the runner gave it."""
        return dataclasses.replace(self, views=()) if self.views else self

    @property
    def trained_on(self) -> tuple[str, ...]:
        """The datasets whose images train the model: the training set's members, then the fine-tuning target."""
        return (*self.train_dataset.split("+"), *([self.finetune_dataset] if self.finetune_dataset else []))

    def identity(self) -> dict[str, Any]:
        """The resolved configuration that defines the trained model (and so its id).

        The test datasets are not part of it: testing a kept model on another set adds rows under
        the same id. The builder's options are resolved with its defaults, so spelling a default
        out or leaving it to the builder gives the same id.
        """
        trained_on = set(self.trained_on)
        synthetic = sorted(d.name for d in self.datasets if d.synthetic and d.name in trained_on)
        train = {
            k: v
            for k, v in dataclasses.asdict(self.train).items()
            if k not in _NOT_IDENTITY and not (k in _LATER_TRAIN_KEYS and v == _LATER_TRAIN_KEYS[k])
        }
        if not self.train.counts_epochs or train["epoch_unit"] == _ID_EPOCH_UNIT:
            del train["epoch_unit"]
        for phase in train.get(
            "phases", ()
        ):  # the per-phase classifier keys came later: unset, they leave ids as they were
            for key, unset in _LATER_PHASE_KEYS.items():
                if phase[key] == unset:
                    del phase[key]
        return {
            "id_version": ID_VERSION,
            "method": self.method,
            "variant": self.variant,
            "backbone": self.backbone,
            "train_dataset": self.train_dataset,
            "finetune_dataset": self.finetune_dataset,
            "seed": self.seed,
            "train": train,
            "model": {k: v for k, v in self.model_kwargs().items() if k not in ("variant", "backbone")},
            # Where a real dataset lies is not part of the experiment; whether it is synthetic is.
            "synthetic_datasets": synthetic,
            "synthetic": dataclasses.asdict(self.synthetic) if synthetic else None,
            # methods.register_method's `revision`: only when raised, so other methods' ids stay as they were
            **({"method_revision": revision} if (revision := method_revision(self.method)) else {}),
        }

    @functools.cached_property
    def id(self) -> str:
        """Computed once per cell (the cell is frozen): a grid of thousands of cells asks for every
        id many times (status, pre-flight, submission), and each is a JSON dump and a hash."""
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"), default=list)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def as_dict(self) -> dict[str, Any]:
        """The cell's fields as plain data (what rows and model.json record), without its views."""
        out = dataclasses.asdict(self.bare())
        del out["views"]
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Cell:
        raw = json.loads(text)
        raw.pop("views", None)
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        return cls(
            **{
                **raw,
                "test_datasets": tuple(raw["test_datasets"]),
                "train": coerce_dataclass(TrainConfig, {k: v for k, v in raw["train"].items() if k in known}),
                "datasets": tuple(DatasetConfig(**d) for d in raw["datasets"]),
                "synthetic": SyntheticConfig(**raw["synthetic"]),
                "method_options": tuple((k, freeze(v)) for k, v in raw.get("method_options", ())),
            }
        )

    def model_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the method's builder for this cell (without num_classes)."""
        return model_kwargs(self.method, self.variant, self.backbone, self.method_options)


@dataclass(frozen=True)
class Spec:
    path: Path
    name: str
    cells: tuple[Cell, ...]
    resources: Resources = field(default_factory=Resources)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    combinations: tuple[Combination, ...] = ()  # [[combine]]: evaluation-time combinations of cells


def model_kwargs(
    method: str, variant: str, backbone: str, method_options: tuple[tuple[str, Any], ...] | dict[str, Any] = ()
) -> dict[str, Any]:
    """A builder's keyword arguments: the grid's variant and backbone, and every option of the
    builder, its default overlaid by [method_options.<method>]. The one place that maps a spec onto
    a builder, and what a cell's id and a kept model's model.json record."""
    parameters = inspect.signature(method_builder(method)).parameters
    defaults = {
        name: p.default
        for name, p in parameters.items()
        if name not in BUILDER_ARGUMENTS
        and p.default is not inspect.Parameter.empty
        and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }
    return {
        "variant": variant,
        "backbone": backbone,
        **{k: freeze(v) for k, v in defaults.items()},
        **dict(method_options),
    }


def split_method(entry: str) -> tuple[str, str]:
    """ "method:variant" -> (method, variant); a bare "method" gives an empty variant (its first)."""
    method, _, variant = entry.partition(":")
    return method, variant


COMBINATION_ID_VERSION = 1
NORMALIZE = ("l2", "none")  # how [[combine]] prepares each part's embeddings before concatenating them


@dataclass(frozen=True)
class Combination:
    """One `[[combine]]` combination of the grid's cells (see harness/combine.py): the parts'
    test-time embeddings, each l2-normalised, concatenated and scored like a cell. Every part has
    the same training dataset, test datasets and seed."""

    grid: str
    name: str  # the rows' variant, e.g. "combined-ft"
    method: str  # the rows' method, e.g. "spreid"
    normalize: str  # "l2": each part's embeddings l2-normalised before concatenation; "none"
    parts: tuple[Cell, ...]

    @property
    def variant(self) -> str:
        return self.name

    @property
    def backbone(self) -> str:
        return "+".join(c.backbone for c in self.parts)

    @property
    def train_dataset(self) -> str:
        return self.parts[0].train_dataset

    @property
    def test_datasets(self) -> tuple[str, ...]:
        return self.parts[0].test_datasets

    @property
    def seed(self) -> int:
        return self.parts[0].seed

    @property
    def part_names(self) -> tuple[str, ...]:
        return tuple(part_name(c) for c in self.parts)

    @property
    def id(self) -> str:
        identity = {
            "id_version": COMBINATION_ID_VERSION,
            "combine": self.name,
            "method": self.method,
            "normalize": self.normalize,
            "parts": [c.id for c in self.parts],
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def part_name(cell: Cell) -> str:
    """How `parts` names a cell: method:variant/backbone."""
    return f"{cell.method}:{cell.variant}/{cell.backbone}"
