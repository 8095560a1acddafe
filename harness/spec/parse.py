"""Parse a spec: TOML into the frozen dataclasses of harness/spec/schema.py, checked once.

Every problem is a UserError naming the file, the line and what to do. A spec is either a grid
(`[grid]`, `[train]`, `[[train.phases]]`, `[method_options.*]`, `[[combine]]`, ...) or a list of
other specs (`include = [...]`).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import math
import re
import tomllib
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from harness.data import dataset_names, has_test_split
from harness.data.cues import check_names
from harness.data.union import members
from harness.errors import UserError, closest
from harness.spec.schema import (
    BUILDER_ARGUMENTS,
    EPOCH_UNITS,
    LAUNCHER_VARIABLES,
    MOVED_TO_METHOD_OPTIONS,
    NORMALIZE,
    PHASE_CLASSIFIERS,
    PHASE_DATASETS,
    PLACEMENT_STRATEGIES,
    PRECISIONS,
    RERANK_DISTANCES,
    SAMPLERS,
    SCHEDULES,
    Cell,
    Combination,
    DatasetConfig,
    Phase,
    RayConfig,
    Resources,
    SlurmConfig,
    Spec,
    SyntheticConfig,
    TrainConfig,
    part_name,
    split_method,
)
from harness.spec.values import BadValue, check_slurm, coerce_dataclass, freeze, locate, option_type_problem
from harness.splits import SPLITS, split_name, split_names, split_of
from methods import has_new_classifier, method_builder, method_names, method_variants, uses_triplet
from methods.backbones import backbone_names

_COMBINE_KEYS = ("name", "method", "parts", "normalize")
GRID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_SEED = 2**40  # seed * 1000 + rank, and seed + 1_000_003 * phase, stay far inside an int64
# Sizes above these are typos far more often than plans; [resources] allow_large = true allows them.
MAX_ITERATIONS, MAX_EPOCHS, MAX_INPUT_SIDE, MAX_WORLD_SIZE, MAX_SYNTHETIC_IDS = 10_000_000, 100_000, 2048, 4096, 100_000

_GRID_KEYS = (
    "name",
    "methods",
    "backbones",
    "train_datasets",
    "test_datasets",
    "finetune_datasets",
    "seeds",
    "splits",
)
_TOP_TABLES = (
    "grid",
    "train",
    "resources",
    "env",
    "synthetic",
    "datasets",
    "slurm",
    "ray",
    "method_options",
    "combine",
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def load_spec(path: str | Path, *, _including: tuple[Path, ...] = ()) -> Spec:
    """Parse and validate a spec file; every problem is a UserError naming the file and line.

    A spec may instead list other specs, ``include = ["a.toml", "b.toml"]`` (paths relative to it):
    its cells (and [[combine]] combinations) are theirs, each keeping its own grid name and recipe,
    a cell listed twice counted once; the including file's [resources], [slurm] and [ray] apply to all of
    them, and its own [[combine]] tables may combine cells of different included specs.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"Cannot read spec {path}: {err.strerror}.") from None
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise UserError(
            f"{path}, line {line}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
            f"a spec is a TOML file, written in UTF-8."
        ) from None
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
            self._fail(
                "the spec has no [grid] table; it needs at least methods, backbones and train_datasets", table=""
            )
        self._check_keys(grid, _GRID_KEYS, table="grid")
        name = self._grid_name(grid)
        methods = self._names(grid, "methods", required=True)
        backbones = self._names(grid, "backbones", required=True)
        train_sets = self._names(grid, "train_datasets", required=True)
        test_sets = self._names(grid, "test_datasets", required=False)
        finetune_sets = self._names(grid, "finetune_datasets", required=False)
        seeds = self._value(grid, "grid", "seeds", list, default=[0])
        if not seeds or not all(type(s) is int for s in seeds):
            self._fail("seeds must be a non-empty list of integers", table="grid", key="seeds")
        for seed in seeds:  # numpy takes no negative seed; seed * 1000 + rank must fit an int64 (torch)
            if not 0 <= seed <= MAX_SEED:
                self._fail(
                    f"seed {seed} is out of range; seeds are integers from 0 to {MAX_SEED:,}",
                    table="grid",
                    key="seeds",
                    value=str(seed),
                )

        method_variants = [self._method(entry) for entry in methods]
        for backbone in backbones:
            self._check_name(backbone, backbone_names(), "backbone", table="grid", key="backbones")
        known = [*dataset_names(), *split_names()]
        union_members = {name: self._members(name, known) for name in dict.fromkeys(train_sets)}
        for key, names in (("test_datasets", test_sets), ("finetune_datasets", finetune_sets)):
            for dataset in dict.fromkeys(names):
                self._check_name(dataset, known, "dataset", table="grid", key=key)
        for dataset in dict.fromkeys(test_sets):
            if not has_test_split(dataset):
                self._fail(
                    f"{dataset!r} has no test split: it is read whole as training data (docs/data.md); "
                    "train on it (in train_datasets) and test on a dataset with a query and gallery",
                    table="grid",
                    key="test_datasets",
                    value=dataset,
                )

        train = self._train_config()
        self._check_train(train)
        self._check_sizes(train, self._resources())
        self._check_finetune(train, finetune_sets)
        self._check_classifiers(train, [method for method, _ in method_variants])
        options = self._method_options({method for method, _ in method_variants})
        resources = self._resources()
        self._check_split(train, resources)
        synthetic = self._dataclass(SyntheticConfig, "synthetic")
        datasets = self._datasets(known)
        splits = self._splits(grid, [*union_members.values(), finetune_sets, test_sets])

        cells = []
        for (method, variant), backbone, train_set, finetune, seed in itertools.product(
            method_variants, backbones, train_sets, finetune_sets or [None], seeds
        ):
            # A union has no test split: its cells are tested on its members; a fine-tuned cell on its target.
            tests = (
                tuple(test_sets) if test_sets else self._default_tests(train_set, union_members[train_set], finetune)
            )
            used = (*union_members[train_set], *([finetune] if finetune else []), *tests)
            for split in range(splits if any(d in SPLITS for d in used) else 1):
                named = _in_split(split)  # split k of every split dataset of the cell, the others as they are
                cells.append(
                    Cell(
                        grid=name,
                        method=method,
                        variant=variant,
                        backbone=backbone,
                        train_dataset=named(train_set),
                        test_datasets=tuple(map(named, tests)),
                        seed=seed,
                        train=train,
                        datasets=tuple(_dataset_config(datasets, named(d)) for d in dict.fromkeys(used)),
                        synthetic=synthetic,
                        finetune_dataset=named(finetune) if finetune else None,
                        method_options=options.get(method, ()),
                    )
                )
        seen: dict[str, Cell] = {}
        for cell in cells:
            if cell.id in seen:
                self._fail(
                    f"the grid lists the same cell twice ({cell.method}:{cell.variant}, {cell.backbone}, "
                    f"{cell.train_dataset}, seed {cell.seed}); remove the repeated name or seed",
                    table="grid",
                )
            seen[cell.id] = cell
        slurm, ray = self._cluster_configs()
        combinations = self._combinations(cells, name, train)
        return Spec(
            path=self.path,
            name=name,
            cells=tuple(cells),
            resources=resources,
            slurm=slurm,
            ray=ray,
            combinations=combinations,
        )

    def _parse_include(self) -> Spec:
        self._check_keys(self.raw, ("include", "grid", "resources", "env", "slurm", "ray", "combine"), table="")
        files = self.raw["include"]
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            self._fail("include must be a non-empty list of spec files, relative to this one", table="", key="include")
        grid = self.raw.get("grid", {})
        self._check_keys(grid, ("name",), table="grid")
        name = self._grid_name(grid)
        cells: dict[str, Cell] = {}
        combinations: dict[str, Any] = {}
        for file in files:
            included = self.path.parent / file
            if not included.is_file():
                self._fail(
                    f"include: there is no spec {file!r} (looked for {included})", table="", key="include", value=file
                )
            if included.resolve() in self.including:
                self._fail(f"include: {file!r} includes this spec again (a cycle)", table="", key="include", value=file)
            spec = load_spec(included, _including=self.including)
            for cell in spec.cells:
                cells[cell.id] = _merge_tests(cells[cell.id], cell) if cell.id in cells else cell
            for combination in spec.combinations:
                combinations.setdefault(combination.id, combination)
        resources = self._resources()
        for cell in cells.values():
            self._check_split(cell.train, resources, grid=cell.grid)
        slurm, ray = self._cluster_configs()
        if "combine" in self.raw:  # combinations of cells that come from different included specs
            for combination in parse_combinations(
                self.path, self.lines, self.raw["combine"], list(cells.values()), name
            ):
                combinations.setdefault(combination.id, combination)
        return Spec(
            path=self.path,
            name=name,
            cells=tuple(cells.values()),
            resources=resources,
            slurm=slurm,
            ray=ray,
            combinations=tuple(combinations.values()),
        )

    def _first_method(self) -> str:
        methods = self.raw.get("grid", {}).get("methods") or ["baseline"]
        return split_method(str(methods[0]))[0]

    # -- pieces ---------------------------------------------------------------------------------

    def _splits(self, grid: dict, names: list) -> int:
        """[grid] splits = N: N cells for each cell whose datasets are published with several splits
        (harness/splits.py), split 0 to N - 1; 1 (the default): split 0 alone."""
        splits = self._value(grid, "grid", "splits", int, default=1)
        if "splits" not in grid:
            return 1
        used = {d for group in names for d in group}
        split = sorted(d for d in used if d in SPLITS)
        named = sorted(d for d in used if d in split_names())
        if named:
            self._fail(
                f"splits = {splits} runs every split itself; name the dataset ({split_of(named[0])[0]!r}), "
                f"not one of its splits ({named[0]!r})",
                table="grid",
                key="splits",
            )
        if not split:
            self._fail(
                f"splits = {splits}, but no dataset of the grid is published with several splits "
                f"({', '.join(SPLITS)}); remove splits",
                table="grid",
                key="splits",
            )
        most = min(SPLITS[d] for d in split)
        if not 1 <= splits <= most:
            self._fail(
                f"splits must be from 1 to {most} ({split[0]} is published with {SPLITS[split[0]]} splits)",
                table="grid",
                key="splits",
                value=str(splits),
            )
        return splits

    def _default_tests(self, train_set: str, parts: tuple[str, ...], finetune: str | None) -> tuple[str, ...]:
        """Without test_datasets: the fine-tuning target, else the members that have a test split."""
        tests = tuple(d for d in ((finetune,) if finetune else parts) if has_test_split(d))
        if not tests:
            key, name = ("finetune_datasets", finetune) if finetune else ("train_datasets", train_set)
            self._fail(
                f"{name!r} has no dataset with a test split to test on by default; name one in [grid] test_datasets",
                table="grid",
                key=key,
                value=name,
            )
        return tests

    def _members(self, name: str, valid: list[str]) -> tuple[str, ...]:
        """The datasets of a training set: itself, or the members of a union "a+b+c"."""
        parts = members(name)
        for part in parts:
            if not part:
                self._fail(
                    f'{name!r} has an empty member; a union is written "a+b+c"',
                    table="grid",
                    key="train_datasets",
                    value=name,
                )
            if part not in valid:
                self._fail(
                    f"unknown dataset {part!r} in {name!r}; {closest(part, valid)}",
                    table="grid",
                    key="train_datasets",
                    value=name,
                )
        if len(set(parts)) != len(parts):
            self._fail(
                f"{name!r} names a dataset twice; list each member once", table="grid", key="train_datasets", value=name
            )
        return parts

    def _train_config(self) -> TrainConfig:
        """[train] and its [[train.phases]], with each phase's input_size and lr resolved."""
        raw = dict(self.raw.get("train", {}))
        for key in MOVED_TO_METHOD_OPTIONS:
            if key in raw:
                self._fail(
                    f"{key!r} is a model setting, no longer a [train] key (cell id version 2): move it to each "
                    f"method's options, e.g. [method_options.{self._first_method()}] {key} = {_toml(raw[key])} "
                    "(its default comes from the method's builder)",
                    table="train",
                    key=key,
                )
        raw_phases = raw.pop("phases", None)
        sources = self._cue_sources(raw.pop("cue_sources", {}))
        train = dataclasses.replace(self._dataclass(TrainConfig, "train", raw=raw), cue_sources=sources)
        if raw_phases is None or raw_phases == []:  # phases = []: one phase made of [train], as without the key
            return train
        if not isinstance(raw_phases, list) or not raw_phases or not all(isinstance(p, dict) for p in raw_phases):
            self._fail("phases must be tables: one [[train.phases]] per phase", table="train", key="phases")
        for key in ("iterations", "epochs"):
            if key in raw:
                self._fail(
                    f"with [[train.phases]], each phase gives its own iterations or epochs; remove [train] {key}",
                    table="train",
                    key=key,
                )
        names = [f.name for f in fields(Phase)]
        resolved = []
        for index, entry in enumerate(raw_phases):
            for key in entry:
                if key not in names:
                    self._fail(
                        f"unknown key {key!r} in phase {index + 1} ([[train.phases]]); {closest(key, names)}",
                        table="train",
                        line=self._phase_line(index, key),
                    )
            try:
                phase = coerce_dataclass(Phase, entry)
            except BadValue as bad:
                self._fail(f"phase {index + 1}: {bad}", table="train", line=self._phase_line(index, bad.key))
            resolved.append(self._check_phase(index, phase, train))
        return dataclasses.replace(train, epochs=None, phases=tuple(resolved))

    def _cue_sources(self, value: Any) -> tuple[tuple[str, str], ...]:
        """[train] cue_sources = { parsing = "spreid" }: each cue's source, sorted (cues.py, "sources")."""
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            self._fail(
                'cue_sources must be a table of cue = "source", e.g. cue_sources = { parsing = "spreid" }',
                table="train",
                key="cue_sources",
            )
        for cue, source in value.items():
            try:
                check_names([f"{cue}@{source}"], "cue_sources")
            except UserError as err:
                self._fail(str(err), table="train", key="cue_sources")
        return tuple(sorted(value.items()))

    def _check_phase(self, index: int, p: Phase, train: TrainConfig) -> Phase:
        def fail(message: str, key: str | None) -> None:
            self._fail(
                f"phase {index + 1} ([[train.phases]]): {message}", table="train", line=self._phase_line(index, key)
            )

        if (p.iterations is None) == (p.epochs is None):
            fail(
                "give its length as iterations or as epochs (one of them)",
                "iterations" if p.iterations is not None else None,
            )
        length = "iterations" if p.iterations is not None else "epochs"
        if getattr(p, length) < 1:
            fail(f"{length} must be at least 1", length)
        if p.input_size is not None and (len(p.input_size) != 2 or min(p.input_size) < 16):
            fail("input_size must be [height, width], each at least 16 pixels", "input_size")
        if p.lr is not None and not p.lr > 0:
            fail("lr must be positive", "lr")
        if p.on not in PHASE_DATASETS:
            fail(
                f"unknown on = {p.on!r}; {closest(p.on, PHASE_DATASETS)} (train: the cell's training set; "
                "finetune: its [grid] finetune_datasets target)",
                "on",
            )
        if p.classifier not in PHASE_CLASSIFIERS:
            fail(
                f"unknown classifier = {p.classifier!r}; {closest(p.classifier, PHASE_CLASSIFIERS)} (keep: the "
                "model's classifier trains on; new: a new one for the identities of the phase's dataset)",
                "classifier",
            )
        if p.classifier_lr is not None and not p.classifier_lr > 0:
            fail("classifier_lr must be positive", "classifier_lr")
        return dataclasses.replace(
            p, input_size=p.input_size or train.input_size, lr=train.lr if p.lr is None else p.lr
        )

    def _phase_line(self, index: int, key: str | None) -> int | None:
        """The line of `key` in the index-th [[train.phases]] table (or of its header; of [train]
        phases when the phases are written inline)."""
        return locate(self.lines, "train.phases", key, index=index) or locate(self.lines, "train", "phases")

    def _check_finetune(self, t: TrainConfig, finetune_sets: list[str]) -> None:
        tuning = [i for i, p in enumerate(t.phases) if p.on == "finetune"]
        if tuning and not finetune_sets:
            self._fail(
                f"phase {tuning[0] + 1} trains on the fine-tuning dataset, but [grid] has no finetune_datasets; "
                'add finetune_datasets = [...] or set on = "train"',
                table="train",
                line=self._phase_line(tuning[0], "on"),
            )
        if finetune_sets and not tuning:
            self._fail(
                'finetune_datasets needs a [[train.phases]] entry with on = "finetune" to train on them',
                table="grid",
                key="finetune_datasets",
            )

    def _check_classifiers(self, t: TrainConfig, methods: list[str]) -> None:
        """A phase's classifier = "new" or classifier_lr needs models that can replace their identity
        classifier (registered with new_classifier=True): refused here, not when a cell starts."""
        lacking = " and ".join(m for m in dict.fromkeys(methods) if not has_new_classifier(m))
        for index, p in enumerate(t.phases):
            given = (("classifier", p.classifier == "new"), ("classifier_lr", p.classifier_lr is not None))
            keys = [key for key, set_here in given if set_here]
            if keys and lacking:
                able = ", ".join(m for m in method_names() if has_new_classifier(m))
                self._fail(
                    f"phase {index + 1} ([[train.phases]]): {keys[0]} = {_toml(getattr(p, keys[0]))} needs a method "
                    f"whose model has one identity classifier it can replace ({able}); {lacking} "
                    f"{'have' if ' and ' in lacking else 'has'} none. Remove {' and '.join(keys)} from the phase, "
                    f"or move {lacking} to a spec without them",
                    table="train",
                    line=self._phase_line(index, keys[0]),
                )

    def _method_options(self, methods: set[str]) -> dict[str, tuple[tuple[str, Any], ...]]:
        """[method_options.<method>]: keyword arguments of the builder, checked against its signature."""
        out = {}
        for method, table in self.raw.get("method_options", {}).items():
            self._check_name(method, method_names(), "method", table="method_options", key=method)
            where = f"method_options.{method}"
            if not isinstance(table, dict):
                self._fail(
                    f"[{where}] must be a table of the builder's keyword arguments", table="method_options", key=method
                )
            if method not in methods:
                self._fail(
                    f"[grid] methods does not run {method!r}; remove [{where}] or add the method to the grid",
                    table="method_options",
                    key=method,
                )
            parameters = inspect.signature(method_builder(method)).parameters
            open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
            accepted = sorted(
                n
                for n, p in parameters.items()
                if n not in BUILDER_ARGUMENTS
                and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            )
            for key, value in table.items():
                if key in BUILDER_ARGUMENTS:
                    self._fail(f"{key!r} is not a method option: the grid sets it", table=where, key=key)
                if key not in accepted and not open_ended:
                    known = closest(key, accepted) if accepted else f"{method}'s builder takes no options."
                    self._fail(f"{method}'s builder has no option {key!r}; {known}", table=where, key=key)
                problem = option_type_problem(value, parameters[key].default if key in parameters else None)
                if problem:
                    self._fail(f"{key} must be {problem}, not {value!r}", table=where, key=key)
                if key == "label_smoothing" and not 0.0 <= value <= 1.0:
                    self._fail("label_smoothing must be between 0 and 1", table=where, key=key)
                if key == "triplet_margin" and not (math.isfinite(value) and value >= 0):
                    self._fail(f"triplet_margin = {value} must be a number, 0 or more", table=where, key=key)
                if key == "last_stride" and value not in (1, 2):
                    self._fail("last_stride must be 1 or 2", table=where, key=key)
            if table:
                out[method] = tuple(sorted((k, freeze(v)) for k, v in table.items()))
        return out

    def _method(self, entry: str) -> tuple[str, str]:
        method, variant = split_method(entry)
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
        if not train.keep_embeddings:
            self._fail(
                "[[combine]] needs the cells' embeddings: remove keep_embeddings = false",
                table="train",
                key="keep_embeddings",
            )
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
            self._fail(
                "checkpoint_every must not be negative (0: only when the scheduler asks)",
                table="train",
                key="checkpoint_every",
            )
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
            self._fail(
                f"unknown optimizer {t.optimizer!r}; {closest(t.optimizer, ['adam', 'sgd'])}",
                table="train",
                key="optimizer",
            )
        if t.precision not in PRECISIONS:
            self._fail(
                f"unknown precision {t.precision!r}; {closest(t.precision, PRECISIONS)}", table="train", key="precision"
            )
        if list(t.milestones) != sorted(t.milestones):
            self._fail("milestones must be increasing", table="train", key="milestones")
        written = self.raw.get("train", {})
        if t.schedule not in SCHEDULES:
            self._fail(
                f"unknown schedule {t.schedule!r}; {closest(t.schedule, SCHEDULES)}", table="train", key="schedule"
            )
        if "milestones" in written and t.schedule != "step":
            self._fail(
                f'milestones apply to schedule = "step" only, not {t.schedule!r}; remove them',
                table="train",
                key="milestones",
            )
        if t.exp_decays < 1:
            self._fail("exp_decays must be at least 1", table="train", key="exp_decays")
        if not t.grad_clip >= 0:
            self._fail("grad_clip must not be negative (0: no clipping)", table="train", key="grad_clip")
        if t.nesterov and (t.optimizer != "sgd" or t.momentum <= 0):
            self._fail('nesterov needs optimizer = "sgd" and a positive momentum', table="train", key="nesterov")
        if any(p.lr != t.lr for p in t.phases) and not t.lr > 0:
            self._fail(
                "lr must be positive when phases set their own lr (it is the optimizer's base lr)",
                table="train",
                key="lr",
            )
        for key in ("flip", "random_erasing"):
            if not 0.0 <= getattr(t, key) <= 1.0:
                self._fail(f"{key} must be between 0 and 1", table="train", key=key)
        for key, valid in (("epoch_unit", EPOCH_UNITS), ("rerank_distance", RERANK_DISTANCES), ("sampler", SAMPLERS)):
            if getattr(t, key) not in valid:
                self._fail(
                    f"unknown {key} {getattr(t, key)!r}; {closest(getattr(t, key), valid)}", table="train", key=key
                )
        if t.sampler == "uniform" and t.counts_epochs and t.epoch_unit == "identities":
            self._fail(
                'sampler = "uniform" draws images, not identities, so its epoch is a pass over the images: '
                'set epoch_unit = "images" (or leave it out)',
                table="train",
                key="epoch_unit",
            )
        if "epoch_unit" in written and not t.counts_epochs:
            self._fail(
                "epoch_unit applies to recipes counted in epochs, and this one counts iterations only; remove it",
                table="train",
                key="epoch_unit",
            )

        # Values that would train wrongly without an error, or fail late and cryptically.
        ranges = (
            ("lr", t.lr > 0, "a positive number (the optimizer's learning rate)"),
            ("weight_decay", t.weight_decay >= 0, "a number, 0 or more"),
            ("momentum", 0 <= t.momentum < 1, "a number in [0, 1)"),
            ("warmup_factor", 0 < t.warmup_factor <= 1, "in (0, 1]: the warm-up starts at lr * warmup_factor"),
            ("gamma", t.gamma > 0, "a positive number (a negative one makes the learning rate negative)"),
        )
        for key, ok, what in ranges:
            if not (math.isfinite(getattr(t, key)) and ok):
                self._fail(f"{key} = {getattr(t, key)} must be {what}", table="train", key=key)
        triplet = sorted(
            {
                m
                for m in self.raw["grid"].get("methods", [])
                if split_method(m)[0] in method_names() and uses_triplet(split_method(m)[0])
            }
        )
        if t.images_per_id < 2 and triplet:
            self._fail(
                f"images_per_id must be at least 2: the triplet loss of {', '.join(triplet)} needs two images of an "
                f"identity in a batch (with 1 it is silently 0)",
                table="train",
                key="images_per_id",
            )
        if t.padding < 0:
            self._fail(
                "padding must not be negative (pixels added around an image before its random crop)",
                table="train",
                key="padding",
            )

    def _grid_name(self, grid: dict) -> str:
        """The grid's name goes into file names (reports/<name>.md) and job names: letters, digits, . _ - only."""
        name = self._value(grid, "grid", "name", str, default=self.path.stem)
        if not GRID_NAME.fullmatch(name):
            where = "" if "name" in grid else " (the spec file's name, as [grid] sets none)"
            self._fail(
                f"grid name {name!r}{where} may hold only letters, digits, '.', '_' and '-', start with a letter or "
                f'digit, and be at most 100 characters (it names report files and jobs); set [grid] name = "..."',
                table="grid",
                key="name" if "name" in grid else None,
            )
        return name

    def _cluster_configs(self) -> tuple[SlurmConfig, RayConfig]:
        slurm, ray = self._dataclass(SlurmConfig, "slurm"), self._ray()
        problem = check_slurm(slurm)
        if problem:
            key, message = problem
            self._fail(message, table="slurm", key=key)
        if ray.max_failures < 0:
            self._fail("max_failures must not be negative", table="ray", key="max_failures")
        if not (math.isfinite(ray.cpus_per_worker) and ray.cpus_per_worker > 0):
            self._fail("cpus_per_worker must be a positive number", table="ray", key="cpus_per_worker")
        return slurm, ray

    def _check_sizes(self, t: TrainConfig, r: Resources) -> None:
        """Upper bounds on sizes no one means by accident; [resources] allow_large = true lifts them."""
        if r.allow_large:
            return
        lengths = [("iterations", t.iterations, MAX_ITERATIONS), ("epochs", t.epochs, MAX_EPOCHS)]
        for key, value, bound in lengths + [
            ("input_size", max(t.input_size), MAX_INPUT_SIDE),
            ("world_size", r.world_size, MAX_WORLD_SIZE),
        ]:
            if value is not None and value > bound:
                table = "resources" if key == "world_size" else "train"
                self._fail(
                    f"{key} = {value:,} is above {bound:,}, more than any recipe of the papers needs; if you mean it, "
                    f"set [resources] allow_large = true",
                    table=table,
                    key=key,
                )
        synthetic = self.raw.get("synthetic", {}).get("ids")
        if isinstance(synthetic, int) and synthetic > MAX_SYNTHETIC_IDS:
            self._fail(
                f"ids = {synthetic:,} is above {MAX_SYNTHETIC_IDS:,}; if you mean it, set [resources] allow_large = true",
                table="synthetic",
                key="ids",
            )

    def _check_split(self, t: TrainConfig, r: Resources, *, grid: str | None = None) -> None:
        """Each process takes an equal slice of every global P x K batch (harness/data/sampler.py)."""
        batch = t.ids_per_batch * t.images_per_id
        if batch % r.world_size:
            whose = f"grid {grid!r}'s" if grid else "the"
            sizes = ", ".join(str(n) for n in range(1, batch + 1) if batch % n == 0)
            self._fail(
                f"{whose} global batch of P = {t.ids_per_batch} identities x K = {t.images_per_id} images "
                f"({batch} images) cannot be split evenly over world_size = {r.world_size} processes; "
                f"use a world size that divides {batch} ({sizes}) or change ids_per_batch/images_per_id",
                table="resources",
                key="world_size" if "world_size" in self.raw.get("resources", {}) else None,
            )

    def _resources(self) -> Resources:
        """[resources], with the spec's [env] table (variables for every worker process)."""
        resources = self._dataclass(Resources, "resources", extra={"env": ()})
        self._check_resources(resources)
        return dataclasses.replace(resources, env=self._env())

    def _env(self) -> tuple[tuple[str, str], ...]:
        """[env]: NAME = "value" pairs (numbers and booleans become their TOML spelling: 1, 0.5, true)."""
        table = self.raw.get("env", {})
        if not isinstance(table, dict):
            self._fail("'env' must be a table ([env]) of environment variables", table="", key="env")
        out = {}
        for name, value in table.items():
            if not _ENV_NAME.fullmatch(name):
                self._fail(
                    f"{name!r} is not an environment variable name (letters, digits and _, not starting with a digit)",
                    table="env",
                    key=name,
                )
            if name in LAUNCHER_VARIABLES:
                self._fail(
                    f"{name} is set for each rank by the launcher (torchrun, SLURM or Ray); remove it from [env]",
                    table="env",
                    key=name,
                )
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, (int, float)):
                value = str(value)
            if not isinstance(value, str):
                self._fail(f'{name} must be a string or a number, e.g. {name} = "eth0"', table="env", key=name)
            out[name] = value
        return tuple(sorted(out.items()))

    def _ray(self) -> RayConfig:
        ray = self._dataclass(RayConfig, "ray")
        if ray.placement_strategy not in PLACEMENT_STRATEGIES:
            self._fail(
                f"unknown placement_strategy {ray.placement_strategy!r}; "
                f"{closest(ray.placement_strategy, PLACEMENT_STRATEGIES)}",
                table="ray",
                key="placement_strategy",
            )
        return ray

    def _check_resources(self, r: Resources) -> None:
        if not r.collective_timeout > 0:
            self._fail(
                "collective_timeout must be a positive number of minutes (default 30)",
                table="resources",
                key="collective_timeout",
            )
        if r.world_size < 1:
            self._fail("world_size must be at least 1", table="resources", key="world_size")
        if r.device not in ("auto", "cpu", "cuda"):
            self._fail(
                f"unknown device {r.device!r}; {closest(r.device, ['auto', 'cpu', 'cuda'])}",
                table="resources",
                key="device",
            )
        if r.nodes < 1 or r.world_size % r.nodes:
            self._fail(
                f"nodes must be at least 1 and divide world_size ({r.world_size})", table="resources", key="nodes"
            )
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
            return coerce_dataclass(cls, {**raw, **(extra or {})})
        except BadValue as bad:
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

    def _check_name(
        self, name: str, valid: list[str], kind: str, *, table: str, key: str, value: str | None = None
    ) -> None:
        if name not in valid:
            self._fail(f"unknown {kind} {name!r}; {closest(name, valid)}", table=table, key=key, value=value or name)

    def _fail(
        self, message: str, *, table: str, key: str | None = None, value: str | None = None, line: int | None = None
    ) -> None:
        line = line or locate(self.lines, table, key, value)
        where = f"{self.path}, line {line}" if line else str(self.path)
        raise UserError(f"{where}: {message}")


# -- [[combine]] -------------------------------------------------------------------------------


def parse_combinations(
    path: Path, lines: list[str], entries: Any, cells: Sequence[Cell], grid: str
) -> tuple[Combination, ...]:
    """The spec's [[combine]] tables expanded over the grid; a UserError names the file and line."""

    def fail(message: str, index: int | None = None, key: str | None = None, value: str | None = None):
        line = locate(lines, "combine", key, value, index=0 if index is None else index)
        raise UserError(f"{path}{f', line {line}' if line else ''}: {message}")

    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        fail("combinations are an array of tables: write each one as [[combine]] with name, method and parts")
    combinations: dict[str, Combination] = {}
    identities: dict[tuple, int] = {}
    for index, entry in enumerate(entries):
        for key in entry:
            if key not in _COMBINE_KEYS:
                fail(f"unknown key {key!r} in [[combine]]; {closest(key, _COMBINE_KEYS)}", index, key)
        for key in ("name", "method", "parts"):
            if key not in entry:
                fail(
                    f'[[combine]] needs {key} (e.g. name = "combined-ft", method = "spreid", '
                    f'parts = ["spreid:wfg-ft/inception_v3", "spreid:wofg-ft/inception_v3"])',
                    index,
                )
        name, method, normalize = entry["name"], entry["method"], entry.get("normalize", "l2")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
            fail(
                f'name must be a variant name such as "combined-ft" (letters, digits, . _ + -), not {name!r}',
                index,
                "name",
            )
        if not isinstance(method, str) or method not in method_names():
            fail(
                f"unknown method {method!r} for the combination's rows; {closest(str(method), method_names())}",
                index,
                "method",
                str(method),
            )
        if normalize not in NORMALIZE:
            fail(
                f"unknown normalize {normalize!r}; {closest(str(normalize), NORMALIZE)}",
                index,
                "normalize",
                str(normalize),
            )
        parts = entry["parts"]
        if not isinstance(parts, list) or len(parts) < 2 or not all(isinstance(p, str) for p in parts):
            fail('parts must list at least two cells of the grid as "method:variant/backbone"', index, "parts")
        by_name: dict[str, list[Cell]] = {}
        for cell in cells:
            by_name.setdefault(part_name(cell), []).append(cell)
        chosen: list[list[Cell]] = []
        for part in parts:
            spelled, _, backbone = part.partition("/")
            part_method, variant = split_method(spelled)
            if not variant and part_method in method_names():
                variant = method_variants(part_method)[0]
            full = f"{part_method}:{variant}/{backbone}"
            if not backbone or full not in by_name:
                fail(
                    f"part {part!r} is not a cell of the grid (parts are written method:variant/backbone); "
                    f"{closest(part, by_name)}",
                    index,
                    "parts",
                    part,
                )
            if any(part_name(group[0]) == full for group in chosen):
                fail(f"part {part!r} is listed twice", index, "parts", part)
            chosen.append(by_name[full])
        groups = [{_group_key(c): c for c in group} for group in chosen]
        for key, first in groups[0].items():
            matched = [g.get(key) for g in groups]
            if any(m is None for m in matched):
                missing = parts[matched.index(None)]
                fail(
                    f"part {missing!r} has no cell trained on {first.train_dataset} with seed {first.seed} "
                    f"to match {parts[0]!r}",
                    index,
                    "parts",
                    missing,
                )
            combination = Combination(grid, name, method, normalize, tuple(matched))
            if combination.id in combinations:
                fail("the same combination is listed twice; remove the repeated [[combine]] table", index)
            row = (method, name, combination.backbone, _group_key(first))
            if row in identities:
                fail(
                    f"two combinations would write rows of the same identity ({method}:{name}, {combination.backbone}); "
                    f"give them different names",
                    index,
                    "name",
                    name,
                )
            combinations[combination.id], identities[row] = combination, index
    return tuple(combinations.values())


def _merge_tests(first: Cell, again: Cell) -> Cell:
    """One trained cell listed by two included specs: tested on the test datasets of both (the
    test datasets are not part of a cell's id), each dataset's settings as the first spec gives them."""
    tests = tuple(dict.fromkeys((*first.test_datasets, *again.test_datasets)))
    known = {d.name for d in first.datasets}
    datasets = (*first.datasets, *(d for d in again.datasets if d.name not in known))
    return dataclasses.replace(first, test_datasets=tests, datasets=datasets)


def _toml(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def _group_key(cell: Cell) -> str:
    """What the parts of one combination share: everything but what was trained (method, variant,
    backbone and its recipe), i.e. training dataset, test datasets, seed and data settings."""
    identity = {
        k: v for k, v in cell.identity().items() if k not in ("method", "variant", "backbone", "train", "model")
    }
    return json.dumps({**identity, "test_datasets": sorted(cell.test_datasets)}, sort_keys=True)


def _in_split(split: int):
    """A dataset name or union with each split dataset replaced by its split `split`'s name."""

    def named(name: str) -> str:
        return "+".join(split_name(part, split) if part in SPLITS else part for part in name.split("+"))

    return named if split else (lambda name: name)


def _dataset_config(datasets: dict[str, DatasetConfig], name: str) -> DatasetConfig:
    """A dataset's [datasets] table; a split's is its dataset's (the same files), under the split's name."""
    if name in datasets:
        return datasets[name]
    base = split_of(name)[0]
    return dataclasses.replace(datasets[base], name=name) if base in datasets else DatasetConfig(name)
