"""Grid specs: a TOML file parsed once into frozen dataclasses and expanded into cells.

A spec names lists of methods, backbones, training datasets and seeds; their product is the
grid, one cell per combination. A cell's id is a short hash of its resolved configuration, so the
same experiment has the same id in every spec that contains it, whatever the key order or whether
defaults are spelled out. How a cell is run (executor, world size, device) is not part of its id.
A training dataset may be a union "a+b+c" and a grid may add fine-tuning targets; `[train]` may
split training into `[[train.phases]]` (see harness/schedule.py and harness/data/union.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import json
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_type_hints

from harness.errors import UserError, closest

if TYPE_CHECKING:
    from harness.combine import Combination

ID_VERSION = 1  # bump when the meaning of a resolved configuration changes
# Settings that change how fast a cell runs or how much it logs, not what it computes.
_NOT_IDENTITY = frozenset({
    "num_workers", "eval_batch_size", "log_every", "in_memory",
    "precision", "channels_last", "compile", "data_on_device", "check_every", "checkpoint_every",
    "keep_embeddings",
})
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("step", "cosine", "exponential")  # see harness/schedule.py
PHASE_DATASETS = ("train", "finetune")  # what a [[train.phases]] entry trains on (`on`)
# [train] keys added after ID_VERSION 1: left out of a cell's identity while at these defaults, so
# the ids of cells that do not use them stay as they were.
_LATER_TRAIN_KEYS = {"schedule": "step", "exp_decays": 10, "nesterov": False, "grad_clip": 0.0, "phases": ()}
# Builder arguments that the grid and [train] set; [method_options.<method>] cannot.
_BUILDER_ARGUMENTS = ("variant", "backbone", "num_classes", "pretrained", "last_stride", "label_smoothing", "triplet_margin")


@dataclass(frozen=True)
class Phase:
    """One of a cell's consecutive training phases (`[[train.phases]]`, see harness/schedule.py).

    It trains for `iterations` or `epochs` on `on` (the cell's training set, or its fine-tuning
    target) at `input_size` with the schedule restarted at `lr`. The parser fills input_size and lr
    from [train] when a phase leaves them out, so a cell's id holds the resolved values.
    """

    iterations: int | None = None
    epochs: int | None = None
    input_size: tuple[int, int] | None = None
    lr: float | None = None
    on: str = "train"


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
    gamma: float = 0.1  # step: the factor at each milestone; exponential: the factor of each decay
    schedule: str = "step"  # step | cosine (to 0 after the warm-up) | exponential (see harness/schedule.py)
    exp_decays: int = 10  # exponential: lr * gamma ** floor(exp_decays * t / T) over a phase of T steps
    nesterov: bool = False  # sgd: Nesterov momentum
    grad_clip: float = 0.0  # clip the global L2 norm of the gradients to this before each step (0: off)
    phases: tuple[Phase, ...] = ()  # consecutive training phases; none: one phase made of this table
    label_smoothing: float = 0.1
    triplet_margin: float = 0.3
    pretrained: bool = True
    last_stride: int = 1
    flip: float = 0.5
    padding: int = 10
    random_erasing: float = 0.5
    num_workers: int = 4
    in_memory: bool = False  # decode the training images once and keep them in memory as uint8
    eval_batch_size: int = 128
    log_every: int = 20
    # speed only (not part of a cell's id): see harness/train.py
    precision: str = "auto"  # auto: bf16 on GPUs that support it, else fp16; fp32 on the CPU
    channels_last: bool = True
    compile: bool = False  # torch.compile the model
    data_on_device: bool = False  # decode the training set once, keep it on the device as uint8, augment there
    check_every: int = 10  # steps between non-finite loss checks (each costs one host sync)
    checkpoint_every: int = 500  # steps between checkpoints (0: only when the scheduler asks to stop)
    keep_embeddings: bool = True  # write the test-time embeddings to the store (needed by [[combine]])

    def __post_init__(self) -> None:
        if self.iterations is None and self.epochs is None and not self.phases:
            object.__setattr__(self, "epochs", 120)


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

    def dataset(self, name: str) -> DatasetConfig:
        return next(d for d in self.datasets if d.name == name)

    def identity(self) -> dict[str, Any]:
        """The resolved configuration that defines the experiment (and so its id)."""
        uses_synthetic = any(d.synthetic for d in self.datasets)
        train = {k: v for k, v in dataclasses.asdict(self.train).items()
                 if k not in _NOT_IDENTITY and not (k in _LATER_TRAIN_KEYS and v == _LATER_TRAIN_KEYS[k])}
        later = {"finetune_dataset": self.finetune_dataset, "method_options": dict(self.method_options)}
        return {
            "id_version": ID_VERSION,
            "method": self.method,
            "variant": self.variant,
            "backbone": self.backbone,
            "train_dataset": self.train_dataset,
            "test_datasets": sorted(self.test_datasets),
            "seed": self.seed,
            "train": train,
            # Where a real dataset lies is not part of the experiment; whether it is synthetic is.
            "synthetic_datasets": sorted(d.name for d in self.datasets if d.synthetic),
            "synthetic": dataclasses.asdict(self.synthetic) if uses_synthetic else None,
            **{k: v for k, v in later.items() if v},  # only when set, so older ids are unchanged
        }

    @property
    def id(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Cell:
        raw = json.loads(text)
        return cls(
            **{
                **raw,
                "test_datasets": tuple(raw["test_datasets"]),
                "train": _coerce_dataclass(TrainConfig, raw["train"]),
                "datasets": tuple(DatasetConfig(**d) for d in raw["datasets"]),
                "synthetic": SyntheticConfig(**raw["synthetic"]),
                "method_options": tuple((k, _freeze(v)) for k, v in raw.get("method_options", ())),
            }
        )


@dataclass(frozen=True)
class Spec:
    path: Path
    name: str
    cells: tuple[Cell, ...]
    resources: Resources = field(default_factory=Resources)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    combinations: tuple[Combination, ...] = ()  # [[combine]]: evaluation-time combinations of cells (harness.combine)


_GRID_KEYS = ("name", "methods", "backbones", "train_datasets", "test_datasets", "finetune_datasets", "seeds")
_TOP_TABLES = ("grid", "train", "resources", "synthetic", "datasets", "slurm", "ray", "method_options", "combine")


def load_spec(path: str | Path, *, _including: tuple[Path, ...] = ()) -> Spec:
    """Parse and validate a spec file; every problem is a UserError naming the file and line.

    A spec may instead list other specs, ``include = ["a.toml", "b.toml"]`` (paths relative to it):
    its cells (and [[combine]] combinations) are theirs, each keeping its own grid name and recipe,
    a cell listed twice counted once; the including file's [resources], [slurm] and [ray] apply to all of
    them, and its own [[combine]] tables may combine cells of different included specs.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(f"Cannot read spec {path}: {err.strerror}.") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path} is not valid TOML: {err}.") from None
    return _SpecParser(path, text, raw, (*_including, path.resolve())).parse()


class _SpecParser:
    def __init__(self, path: Path, text: str, raw: dict[str, Any], including: tuple[Path, ...] = ()):
        self.path, self.lines, self.raw, self.including = path, text.splitlines(), raw, including

    def parse(self) -> Spec:
        if "include" in self.raw:
            return self._parse_include()
        self._check_keys(self.raw, _TOP_TABLES, table="")
        for name in _TOP_TABLES:
            if name in self.raw and name != "combine" and not isinstance(self.raw[name], dict):
                self._fail(f"'{name}' must be a table ([{name}])", table="", key=name)
        grid = self.raw.get("grid")
        if grid is None:
            self._fail("the spec has no [grid] table; it needs at least methods, backbones and train_datasets", table="")
        self._check_keys(grid, _GRID_KEYS, table="grid")
        name = self._value(grid, "grid", "name", str, default=self.path.stem)
        methods = self._names(grid, "methods", required=True)
        backbones = self._names(grid, "backbones", required=True)
        train_sets = self._names(grid, "train_datasets", required=True)
        test_sets = self._names(grid, "test_datasets", required=False)
        finetune_sets = self._names(grid, "finetune_datasets", required=False)
        seeds = self._value(grid, "grid", "seeds", list, default=[0])
        if not seeds or not all(type(s) is int for s in seeds):
            self._fail("seeds must be a non-empty list of integers", table="grid", key="seeds")

        method_variants = [self._method(entry) for entry in methods]
        for backbone in backbones:
            self._check_name(backbone, _backbone_names(), "backbone", table="grid", key="backbones")
        dataset_names = _dataset_names()
        members = {name: self._members(name, dataset_names) for name in dict.fromkeys(train_sets)}
        for key, names in (("test_datasets", test_sets), ("finetune_datasets", finetune_sets)):
            for dataset in dict.fromkeys(names):
                self._check_name(dataset, dataset_names, "dataset", table="grid", key=key)

        train = self._train_config()
        self._check_train(train)
        self._check_finetune(train, finetune_sets)
        options = self._method_options({method for method, _ in method_variants})
        resources = self._dataclass(Resources, "resources")
        self._check_resources(resources)
        synthetic = self._dataclass(SyntheticConfig, "synthetic")
        datasets = self._datasets(dataset_names)

        cells = []
        for (method, variant), backbone, train_set, finetune, seed in itertools.product(
            method_variants, backbones, train_sets, finetune_sets or [None], seeds
        ):
            # A union has no test split: its cells are tested on its members; a fine-tuned cell on its target.
            tests = tuple(test_sets) if test_sets else (finetune,) if finetune else members[train_set]
            used = dict.fromkeys((*members[train_set], *([finetune] if finetune else []), *tests))
            cells.append(
                Cell(
                    grid=name,
                    method=method,
                    variant=variant,
                    backbone=backbone,
                    train_dataset=train_set,
                    test_datasets=tests,
                    seed=seed,
                    train=train,
                    datasets=tuple(datasets.get(d, DatasetConfig(d)) for d in used),
                    synthetic=synthetic,
                    finetune_dataset=finetune,
                    method_options=options.get(method, ()),
                )
            )
        seen: dict[str, Cell] = {}
        for cell in cells:
            if cell.id in seen:
                self._fail(f"the grid lists the same cell twice ({cell.method}:{cell.variant}, {cell.backbone}, "
                           f"{cell.train_dataset}, seed {cell.seed}); remove the repeated name or seed", table="grid")
            seen[cell.id] = cell
        slurm, ray = self._dataclass(SlurmConfig, "slurm"), self._dataclass(RayConfig, "ray")
        combinations = self._combinations(cells, name, train)
        return Spec(path=self.path, name=name, cells=tuple(cells), resources=resources, slurm=slurm, ray=ray,
                    combinations=combinations)

    def _parse_include(self) -> Spec:
        self._check_keys(self.raw, ("include", "grid", "resources", "slurm", "ray", "combine"), table="")
        files = self.raw["include"]
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            self._fail("include must be a non-empty list of spec files, relative to this one", table="", key="include")
        grid = self.raw.get("grid", {})
        self._check_keys(grid, ("name",), table="grid")
        name = self._value(grid, "grid", "name", str, default=self.path.stem)
        cells: dict[str, Cell] = {}
        combinations: dict[str, Any] = {}
        for file in files:
            included = self.path.parent / file
            if not included.is_file():
                self._fail(f"include: there is no spec {file!r} (looked for {included})", table="", key="include", value=file)
            if included.resolve() in self.including:
                self._fail(f"include: {file!r} includes this spec again (a cycle)", table="", key="include", value=file)
            spec = load_spec(included, _including=self.including)
            for cell in spec.cells:
                cells.setdefault(cell.id, cell)
            for combination in spec.combinations:
                combinations.setdefault(combination.id, combination)
        resources = self._dataclass(Resources, "resources")
        self._check_resources(resources)
        slurm, ray = self._dataclass(SlurmConfig, "slurm"), self._dataclass(RayConfig, "ray")
        if "combine" in self.raw:  # combinations of cells that come from different included specs
            from harness.combine import parse_combinations

            for combination in parse_combinations(self.path, self.lines, self.raw["combine"], list(cells.values()), name):
                combinations.setdefault(combination.id, combination)
        return Spec(path=self.path, name=name, cells=tuple(cells.values()), resources=resources, slurm=slurm, ray=ray,
                    combinations=tuple(combinations.values()))

    # -- pieces ---------------------------------------------------------------------------------

    def _members(self, name: str, valid: list[str]) -> tuple[str, ...]:
        """The datasets of a training set: itself, or the members of a union "a+b+c"."""
        from harness.data.union import members

        parts = members(name)
        for part in parts:
            if not part:
                self._fail(f"{name!r} has an empty member; a union is written \"a+b+c\"", table="grid", key="train_datasets", value=name)
            if part not in valid:
                self._fail(f"unknown dataset {part!r} in {name!r}; {closest(part, valid)}", table="grid", key="train_datasets", value=name)
        if len(set(parts)) != len(parts):
            self._fail(f"{name!r} names a dataset twice; list each member once", table="grid", key="train_datasets", value=name)
        return parts

    def _train_config(self) -> TrainConfig:
        """[train] and its [[train.phases]], with each phase's input_size and lr resolved."""
        raw = dict(self.raw.get("train", {}))
        raw_phases = raw.pop("phases", None)
        train = self._dataclass(TrainConfig, "train", raw=raw)
        if raw_phases is None or raw_phases == []:  # phases = []: one phase made of [train], as without the key
            return train
        if not isinstance(raw_phases, list) or not raw_phases or not all(isinstance(p, dict) for p in raw_phases):
            self._fail("phases must be tables: one [[train.phases]] per phase", table="train", key="phases")
        for key in ("iterations", "epochs"):
            if key in raw:
                self._fail(f"with [[train.phases]], each phase gives its own iterations or epochs; remove [train] {key}",
                           table="train", key=key)
        names = [f.name for f in fields(Phase)]
        resolved = []
        for index, entry in enumerate(raw_phases):
            for key in entry:
                if key not in names:
                    self._fail(f"unknown key {key!r} in phase {index + 1} ([[train.phases]]); {closest(key, names)}",
                               table="train", line=self._phase_line(index, key))
            try:
                phase = _coerce_dataclass(Phase, entry)
            except _BadValue as bad:
                self._fail(f"phase {index + 1}: {bad}", table="train", line=self._phase_line(index, bad.key))
            resolved.append(self._check_phase(index, phase, train))
        return dataclasses.replace(train, epochs=None, phases=tuple(resolved))

    def _check_phase(self, index: int, p: Phase, train: TrainConfig) -> Phase:
        def fail(message: str, key: str | None) -> None:
            self._fail(f"phase {index + 1} ([[train.phases]]): {message}", table="train", line=self._phase_line(index, key))

        if (p.iterations is None) == (p.epochs is None):
            fail("give its length as iterations or as epochs (one of them)", "iterations" if p.iterations is not None else None)
        length = "iterations" if p.iterations is not None else "epochs"
        if getattr(p, length) < 1:
            fail(f"{length} must be at least 1", length)
        if p.input_size is not None and (len(p.input_size) != 2 or min(p.input_size) < 16):
            fail("input_size must be [height, width], each at least 16 pixels", "input_size")
        if p.lr is not None and not p.lr > 0:
            fail("lr must be positive", "lr")
        if p.on not in PHASE_DATASETS:
            fail(f"unknown on = {p.on!r}; {closest(p.on, PHASE_DATASETS)} (train: the cell's training set; "
                 "finetune: its [grid] finetune_datasets target)", "on")
        return dataclasses.replace(p, input_size=p.input_size or train.input_size, lr=train.lr if p.lr is None else p.lr)

    def _phase_line(self, index: int, key: str | None) -> int | None:
        """The line of `key` in the index-th [[train.phases]] table (or of its header)."""
        headers = [n for n, line in enumerate(self.lines, 1) if re.match(r"^\s*\[\[\s*train\.phases\s*\]\]", line)]
        if index >= len(headers):
            return _locate(self.lines, "train", "phases", None)
        for number in range(headers[index] + 1, len(self.lines) + 1):
            line = self.lines[number - 1]
            if re.match(r"^\s*\[", line):
                break
            if key is not None and re.match(rf'^\s*"?{re.escape(key)}"?\s*=', line):
                return number
        return headers[index]

    def _check_finetune(self, t: TrainConfig, finetune_sets: list[str]) -> None:
        tuning = [i for i, p in enumerate(t.phases) if p.on == "finetune"]
        if tuning and not finetune_sets:
            self._fail(f"phase {tuning[0] + 1} trains on the fine-tuning dataset, but [grid] has no finetune_datasets; "
                       "add finetune_datasets = [...] or set on = \"train\"", table="train",
                       line=self._phase_line(tuning[0], "on"))
        if finetune_sets and not tuning:
            self._fail("finetune_datasets needs a [[train.phases]] entry with on = \"finetune\" to train on them",
                       table="grid", key="finetune_datasets")

    def _method_options(self, methods: set[str]) -> dict[str, tuple[tuple[str, Any], ...]]:
        """[method_options.<method>]: keyword arguments of the builder, checked against its signature."""
        from methods import method_builder, method_names

        out = {}
        for method, table in self.raw.get("method_options", {}).items():
            self._check_name(method, method_names(), "method", table="method_options", key=method)
            where = f"method_options.{method}"
            if not isinstance(table, dict):
                self._fail(f"[{where}] must be a table of the builder's keyword arguments", table="method_options", key=method)
            if method not in methods:
                self._fail(f"[grid] methods does not run {method!r}; remove [{where}] or add the method to the grid",
                           table="method_options", key=method)
            parameters = inspect.signature(method_builder(method)).parameters
            open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
            accepted = sorted(n for n, p in parameters.items() if n not in _BUILDER_ARGUMENTS
                              and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD))
            for key, value in table.items():
                if key in _BUILDER_ARGUMENTS:
                    self._fail(f"{key!r} is not a method option: the grid or [train] sets it", table=where, key=key)
                if key not in accepted and not open_ended:
                    known = closest(key, accepted) if accepted else f"{method}'s builder takes no options."
                    self._fail(f"{method}'s builder has no option {key!r}; {known}", table=where, key=key)
                problem = _option_type_problem(value, parameters[key].default if key in parameters else None)
                if problem:
                    self._fail(f"{key} must be {problem}, not {value!r}", table=where, key=key)
            if table:
                out[method] = tuple(sorted((k, _freeze(v)) for k, v in table.items()))
        return out

    def _method(self, entry: str) -> tuple[str, str]:
        from methods import method_names, method_variants

        method, _, variant = entry.partition(":")
        self._check_name(method, method_names(), "method", table="grid", key="methods", value=entry)
        variants = method_variants(method)
        if not variant:
            return method, variants[0]
        if variant not in variants:
            self._fail(
                f"method {method!r} has no variant {variant!r}; {closest(variant, variants)}",
                table="grid",
                key="methods",
                value=entry,
            )
        return method, variant

    def _combinations(self, cells: list[Cell], grid: str, train: TrainConfig) -> tuple[Combination, ...]:
        if "combine" not in self.raw:
            return ()
        from harness.combine import parse_combinations

        if not train.keep_embeddings:
            self._fail("[[combine]] needs the cells' embeddings: remove keep_embeddings = false", table="train", key="keep_embeddings")
        return parse_combinations(self.path, self.lines, self.raw["combine"], cells, grid)

    def _datasets(self, valid: list[str]) -> dict[str, DatasetConfig]:
        out = {}
        for name, table in self.raw.get("datasets", {}).items():
            self._check_name(name, valid, "dataset", table="datasets", key=name)
            if not isinstance(table, dict):
                self._fail(f"[datasets.{name}] must be a table", table="datasets", key=name)
            config = self._dataclass(DatasetConfig, f"datasets.{name}", extra={"name": name}, raw=table)
            if config.root is not None:
                root = Path(config.root).expanduser()
                if not root.is_absolute():
                    root = (self.path.parent / root).resolve()
                config = dataclasses.replace(config, root=str(root))
            out[name] = config
        return out

    def _check_train(self, t: TrainConfig) -> None:
        if t.iterations is not None and "epochs" in self.raw.get("train", {}):
            self._fail("give either iterations or epochs, not both", table="train", key="epochs")
        positive = ["ids_per_batch", "images_per_id", "eval_batch_size", "log_every", "check_every"]
        if t.checkpoint_every < 0:
            self._fail("checkpoint_every must not be negative (0: only when the scheduler asks)", table="train", key="checkpoint_every")
        for key in positive:
            if getattr(t, key) < 1:
                self._fail(f"{key} must be at least 1", table="train", key=key)
        for key in ("iterations", "epochs", "warmup", "num_workers"):
            value = getattr(t, key)
            if value is not None and value < 0:
                self._fail(f"{key} must not be negative", table="train", key=key)
        if len(t.input_size) != 2 or min(t.input_size) < 16:
            self._fail("input_size must be [height, width], each at least 16 pixels", table="train", key="input_size")
        if t.optimizer not in ("adam", "sgd"):
            self._fail(f"unknown optimizer {t.optimizer!r}; {closest(t.optimizer, ['adam', 'sgd'])}", table="train", key="optimizer")
        if t.precision not in PRECISIONS:
            self._fail(f"unknown precision {t.precision!r}; {closest(t.precision, PRECISIONS)}", table="train", key="precision")
        if list(t.milestones) != sorted(t.milestones):
            self._fail("milestones must be increasing", table="train", key="milestones")
        written = self.raw.get("train", {})
        if t.schedule not in SCHEDULES:
            self._fail(f"unknown schedule {t.schedule!r}; {closest(t.schedule, SCHEDULES)}", table="train", key="schedule")
        if "milestones" in written and t.schedule != "step":
            self._fail(f"milestones apply to schedule = \"step\" only, not {t.schedule!r}; remove them", table="train", key="milestones")
        if t.exp_decays < 1:
            self._fail("exp_decays must be at least 1", table="train", key="exp_decays")
        if not t.grad_clip >= 0:
            self._fail("grad_clip must not be negative (0: no clipping)", table="train", key="grad_clip")
        if t.nesterov and (t.optimizer != "sgd" or t.momentum <= 0):
            self._fail("nesterov needs optimizer = \"sgd\" and a positive momentum", table="train", key="nesterov")
        if any(p.lr != t.lr for p in t.phases) and not t.lr > 0:
            self._fail("lr must be positive when phases set their own lr (it is the optimizer's base lr)", table="train", key="lr")
        for key in ("flip", "random_erasing", "label_smoothing"):
            if not 0.0 <= getattr(t, key) <= 1.0:
                self._fail(f"{key} must be between 0 and 1", table="train", key=key)

    def _check_resources(self, r: Resources) -> None:
        if r.world_size < 1:
            self._fail("world_size must be at least 1", table="resources", key="world_size")
        if r.device not in ("auto", "cpu", "cuda"):
            self._fail(f"unknown device {r.device!r}; {closest(r.device, ['auto', 'cpu', 'cuda'])}", table="resources", key="device")
        if r.nodes < 1 or r.world_size % r.nodes:
            self._fail(f"nodes must be at least 1 and divide world_size ({r.world_size})", table="resources", key="nodes")
        if r.gpus_per_node < 0:
            self._fail("gpus_per_node must not be negative", table="resources", key="gpus_per_node")

    def _names(self, table: dict, key: str, *, required: bool) -> list[str]:
        if key not in table:
            if required:
                self._fail(f"[grid] needs {key} = [...]", table="grid")
            return []
        value = table[key]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            self._fail(f"{key} must be a non-empty list of names", table="grid", key=key)
        return value

    def _dataclass(self, cls: type, table: str, *, extra: dict | None = None, raw: dict | None = None) -> Any:
        raw = self.raw.get(table, {}) if raw is None else raw
        names = [f.name for f in fields(cls) if f.name not in (extra or {})]
        self._check_keys(raw, names, table=table)
        try:
            return _coerce_dataclass(cls, {**raw, **(extra or {})})
        except _BadValue as bad:
            self._fail(str(bad), table=table, key=bad.key)

    def _value(self, table: dict, table_name: str, key: str, kind: type, default: Any) -> Any:
        if key not in table:
            return default
        if not isinstance(table[key], kind):
            self._fail(f"{key} must be a {kind.__name__}", table=table_name, key=key)
        return table[key]

    def _check_keys(self, raw: dict, valid: tuple[str, ...] | list[str], *, table: str) -> None:
        for key in raw:
            if key not in valid:
                where = f"[{table}]" if table else "the top level"
                self._fail(f"unknown key {key!r} in {where}; {closest(key, valid)}", table=table, key=key)

    def _check_name(self, name: str, valid: list[str], kind: str, *, table: str, key: str, value: str | None = None) -> None:
        if name not in valid:
            self._fail(f"unknown {kind} {name!r}; {closest(name, valid)}", table=table, key=key, value=value or name)

    def _fail(self, message: str, *, table: str, key: str | None = None, value: str | None = None, line: int | None = None) -> None:
        line = line or _locate(self.lines, table, key, value)
        where = f"{self.path}, line {line}" if line else str(self.path)
        raise UserError(f"{where}: {message}")


class _BadValue(ValueError):
    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _coerce_dataclass(cls: type, raw: dict[str, Any]) -> Any:
    """Build a config dataclass from TOML values, checking each value against its field's type."""
    hints = get_type_hints(cls)
    return cls(**{key: _phases(value) if key == "phases" else _coerce(key, value, hints[key]) for key, value in raw.items()})


def _phases(value: Any) -> tuple[Phase, ...]:
    return tuple(p if isinstance(p, Phase) else _coerce_dataclass(Phase, p) for p in value)


def _freeze(value: Any) -> Any:
    """A TOML (or JSON) value with its lists as tuples, so that a Cell stays hashable."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def _option_type_problem(value: Any, default: Any) -> str | None:
    """What a method option should be, judged by its default's type; None when it fits."""
    kinds = ((bool, "true or false"), (int, "an integer"), (float, "a number"), (str, "a string"), ((list, tuple), "a list"))
    for kind, words in kinds:
        if isinstance(default, kind):
            fits = type(value) in (int, float) if kind is float else type(value) is bool if kind is bool else (
                isinstance(value, kind) and not isinstance(value, bool))
            return None if fits else words
    return None


def _coerce(key: str, value: Any, hint: Any) -> Any:
    text = str(hint)
    if value is None and "None" in text:
        return None
    if text.startswith("tuple"):
        inner = float if "float" in text else str if "str" in text else int
        if not isinstance(value, (list, tuple)):
            raise _BadValue(key, f"{key} must be a list of {inner.__name__}s")
        return tuple(_coerce(key, v, inner) for v in value)
    if hint is bool:
        if type(value) is not bool:
            raise _BadValue(key, f"{key} must be true or false")
        return value
    if "float" in text and type(value) in (int, float):
        return float(value)
    if "int" in text and type(value) is int:
        return value
    if "str" in text and isinstance(value, str):
        return value
    wanted = {"float": "a number", "int": "an integer", "str": "a string"}
    kind = next((v for k, v in wanted.items() if k in text), text)
    raise _BadValue(key, f"{key} must be {kind}, not {value!r}")


def _locate(lines: list[str], table: str, key: str | None, value: str | None) -> int | None:
    """The 1-based line of `key` (or of `value` inside key's array) in `table`, for error messages.

    tomllib reports no positions for valid TOML, so this scans the text: enough for the flat
    tables a spec uses.
    """
    header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    current, table_line, key_line = "", None, None
    for number, line in enumerate(lines, start=1):
        match = header.match(line)
        if match:
            current = match.group(1).replace('"', "").replace(" ", "")
            if current == table and key is None:
                return number
            if key_line is not None:
                break
            if table and current == f"{table}.{key}":
                return number
            continue
        if current != table:
            continue
        table_line = table_line or number
        if key is not None and key_line is None and re.match(rf'^\s*"?{re.escape(key)}"?\s*=', line):
            key_line = number
        if key_line is not None and value is not None and (f'"{value}"' in line or f"'{value}'" in line):
            return number
    return key_line or table_line


def _backbone_names() -> list[str]:
    from methods.backbones import backbone_names

    return backbone_names()


def _dataset_names() -> list[str]:
    from harness.data import dataset_names

    return dataset_names()
