"""Evaluation-time combinations of trained cells: a spec's `[[combine]]` tables.

SPReID's Table 6 rows marked "*" are not a model of their own: two trained models' test-time
embeddings are each l2-normalised and concatenated ("l2-normalization + concatenation"), and
the result is scored like any cell. A combination names cells of its grid as its parts; for each
(training dataset, seed, ...) group of the grid there is one combination, with its own id (a hash
of its settings and its parts' cell ids) and its own rows, written like a cell's.

Cells keep their query and gallery embeddings in the store (store.write_embeddings); a
combination is computed from them once every part is done, with the cells' own scoring
(harness.cell.score: plain and re-ranked, under the dataset's protocol). It is done when its rows
are in the store and newer than its parts' embeddings: a part that ran again makes it due again.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import data, provenance
from harness.errors import UserError, closest
from harness.spec import Cell, Resources
from harness.store import SCHEMA_VERSION, Embeddings, Store

ID_VERSION = 1
NORMALIZE = ("l2", "none")
_KEYS = ("name", "method", "parts", "normalize")


@dataclass(frozen=True)
class Combination:
    """One combination of the grid's cells: same training dataset, test datasets and seed in every part."""

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
        identity = {"id_version": ID_VERSION, "combine": self.name, "method": self.method,
                    "normalize": self.normalize, "parts": [c.id for c in self.parts]}
        return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def part_name(cell: Cell) -> str:
    """How `parts` names a cell: method:variant/backbone."""
    return f"{cell.method}:{cell.variant}/{cell.backbone}"


# -- parsing ([[combine]] in a spec) -----------------------------------------------------------


def parse_combinations(path: Path, lines: list[str], entries: Any, cells: Sequence[Cell], grid: str) -> tuple[Combination, ...]:
    """The spec's [[combine]] tables expanded over the grid; a UserError names the file and line."""

    def fail(message: str, index: int | None = None, key: str | None = None, value: str | None = None):
        line = _locate(lines, index, key, value)
        raise UserError(f"{path}{f', line {line}' if line else ''}: {message}")

    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        fail("combinations are an array of tables: write each one as [[combine]] with name, method and parts")
    from methods import method_names, method_variants

    combinations: dict[str, Combination] = {}
    identities: dict[tuple, int] = {}
    for index, entry in enumerate(entries):
        for key in entry:
            if key not in _KEYS:
                fail(f"unknown key {key!r} in [[combine]]; {closest(key, _KEYS)}", index, key)
        for key in ("name", "method", "parts"):
            if key not in entry:
                fail(f"[[combine]] needs {key} (e.g. name = \"combined-ft\", method = \"spreid\", "
                     f"parts = [\"spreid:combined-ft/inception_v3\", \"baseline:bnneck/resnet152\"])", index)
        name, method, normalize = entry["name"], entry["method"], entry.get("normalize", "l2")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
            fail(f"name must be a variant name such as \"combined-ft\" (letters, digits, . _ + -), not {name!r}", index, "name")
        if not isinstance(method, str) or method not in method_names():
            fail(f"unknown method {method!r} for the combination's rows; {closest(str(method), method_names())}", index, "method", str(method))
        if normalize not in NORMALIZE:
            fail(f"unknown normalize {normalize!r}; {closest(str(normalize), NORMALIZE)}", index, "normalize", str(normalize))
        parts = entry["parts"]
        if not isinstance(parts, list) or len(parts) < 2 or not all(isinstance(p, str) for p in parts):
            fail("parts must list at least two cells of the grid as \"method:variant/backbone\"", index, "parts")
        by_name: dict[str, list[Cell]] = {}
        for cell in cells:
            by_name.setdefault(part_name(cell), []).append(cell)
        chosen: list[list[Cell]] = []
        for part in parts:
            spelled, _, backbone = part.partition("/")
            part_method, _, variant = spelled.partition(":")
            if not variant and part_method in method_names():
                variant = method_variants(part_method)[0]
            full = f"{part_method}:{variant}/{backbone}"
            if not backbone or full not in by_name:
                fail(f"part {part!r} is not a cell of the grid (parts are written method:variant/backbone); "
                     f"{closest(part, by_name)}", index, "parts", part)
            if any(part_name(group[0]) == full for group in chosen):
                fail(f"part {part!r} is listed twice", index, "parts", part)
            chosen.append(by_name[full])
        groups = [{_group_key(c): c for c in group} for group in chosen]
        for key, first in groups[0].items():
            members = [g.get(key) for g in groups]
            if any(m is None for m in members):
                missing = parts[members.index(None)]
                fail(f"part {missing!r} has no cell trained on {first.train_dataset} with seed {first.seed} "
                     f"to match {parts[0]!r}", index, "parts", missing)
            combination = Combination(grid, name, method, normalize, tuple(members))
            if combination.id in combinations:
                fail("the same combination is listed twice; remove the repeated [[combine]] table", index)
            row = (method, name, combination.backbone, _group_key(first))
            if row in identities:
                fail(f"two combinations would write rows of the same identity ({method}:{name}, {combination.backbone}); "
                     f"give them different names", index, "name", name)
            combinations[combination.id], identities[row] = combination, index
    return tuple(combinations.values())


def _group_key(cell: Cell) -> str:
    """What the parts of one combination share: everything but what was trained (method, variant,
    backbone and its recipe), i.e. training dataset, test datasets, seed and data settings."""
    identity = {k: v for k, v in cell.identity().items() if k not in ("method", "variant", "backbone", "train", "method_options")}
    return json.dumps(identity, sort_keys=True)


def _locate(lines: list[str], index: int | None, key: str | None, value: str | None) -> int | None:
    """The line of the index-th [[combine]] table (the first without index), of its key, or of
    value inside that key's array."""
    header, combine = re.compile(r"^\s*\["), re.compile(r"^\s*\[\[?\s*combine\s*\]")
    seen, table_line, key_line = -1, None, None
    for number, line in enumerate(lines, start=1):
        if header.match(line):
            if table_line is not None:
                break
            seen += bool(combine.match(line))
            if combine.match(line) and seen == (index or 0):
                table_line = number
            continue
        if table_line is None or key is None:
            continue
        if key_line is None and re.match(rf"^\s*{re.escape(key)}\s*=", line):
            key_line = number
        if key_line is not None and value is not None and (f'"{value}"' in line or f"'{value}'" in line):
            return number
    return key_line or table_line


# -- state -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CombinationStatus:
    combination: Combination
    state: str  # done | ready | waiting | failed | missing embeddings
    detail: str = ""


def statuses(combinations: Sequence[Combination], store: Store) -> list[CombinationStatus]:
    """Where each combination stands, from the store alone (nothing is computed)."""
    from harness.cell import is_done

    out = []
    for combo in combinations:
        waiting = [f"{part_name(c)} (cell {c.id})" for c in combo.parts if not is_done(store, c)]
        if waiting:
            out.append(CombinationStatus(combo, "waiting", "for part(s) " + ", ".join(waiting)))
            continue
        missing = [(c, t) for c in combo.parts for t in combo.test_datasets if not store.embeddings_path(c.id, t).is_file()]
        if missing:
            cell, test = missing[0]
            out.append(CombinationStatus(combo, "missing embeddings", (
                f"cell {cell.id} ({part_name(cell)}) is done but kept no {test} embeddings (it ran with keep_embeddings "
                f"= false, before cells kept them, or its method compares embeddings with its own distance, which "
                f"cannot be combined); remove {store.root / 'rows' / cell.id}/ and run the spec again")))
            continue
        if _is_done(store, combo):
            out.append(CombinationStatus(combo, "done"))
            continue
        recorded = store.read_state(combo.id) or {}
        if recorded.get("state") == "failed":
            out.append(CombinationStatus(combo, "failed", recorded.get("reason", "")))
        else:
            stale = any(store.has_row(combo.id, t, r) for t in combo.test_datasets for r in (False, True))
            out.append(CombinationStatus(combo, "ready", "its parts ran again since it was computed" if stale else ""))
    return out


def _is_done(store: Store, combo: Combination) -> bool:
    """Every row is there and newer than every part's embeddings."""
    rows = [store.row_path(combo.id, t, r) for t in combo.test_datasets for r in (False, True)]
    if not all(p.is_file() for p in rows):
        return False
    inputs = [store.embeddings_path(c.id, t) for c in combo.parts for t in combo.test_datasets]
    newest_input = max((p.stat().st_mtime_ns for p in inputs if p.is_file()), default=0)
    return min(p.stat().st_mtime_ns for p in rows) >= newest_input


def table_lines(combinations: Sequence[Combination], store: Store) -> list[list]:
    """Rows for the status table of combinations."""
    return [[s.combination.id, f"{s.combination.method}:{s.combination.name}", s.combination.backbone,
             s.combination.train_dataset, ",".join(s.combination.test_datasets), s.combination.seed, s.state, s.detail]
            for s in statuses(combinations, store)]


# -- computing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    combination: Combination
    ok: bool
    reason: str = ""


def run_combinations(combinations: Sequence[Combination], store: Store, resources: Resources, *, force: bool = False,
                     log: Callable[[str], None] = print) -> list[Outcome]:
    """Compute every combination whose parts are done and that is not done yet (all of those with
    `force`); waiting ones are left for later. A failure is recorded in the combination's state."""
    device = torch.device("cuda" if resources.device != "cpu" and torch.cuda.is_available() else "cpu")
    outcomes = []
    for status in statuses(combinations, store):
        combo = status.combination
        if status.state not in ("ready", "failed") and not (force and status.state == "done"):
            continue
        try:
            compute(combo, store, device, log=log)
        except Exception as err:  # noqa: BLE001 - recorded and reported; the other combinations go on
            reason = f"{type(err).__name__}: {err}"
            store.write_state(combo.id, "failed", reason=reason, failed_at=provenance.now(),
                              traceback="".join(traceback.format_exception(err))[-4000:])
            outcomes.append(Outcome(combo, False, reason))
        else:
            outcomes.append(Outcome(combo, True))
    return outcomes


def combined_embeddings(parts: Sequence[Embeddings], normalize: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and gallery embeddings of the combination: the parts' (each l2-normalised with
    normalize = "l2") concatenated along the feature axis, in the order of `parts`."""
    def prepare(array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.asarray(array, dtype=np.float32))
        return torch.nn.functional.normalize(tensor, dim=1) if normalize == "l2" else tensor

    return (torch.cat([prepare(p.query) for p in parts], dim=1), torch.cat([prepare(p.gallery) for p in parts], dim=1))


def compute(combo: Combination, store: Store, device: torch.device, *, log: Callable[[str], None] = print) -> None:
    """Score the combination on each test dataset from its parts' embeddings; write its rows."""
    from harness.cell import score

    started, code = provenance.now(), provenance.git_state()
    for test in combo.test_datasets:
        begin = time.perf_counter()
        parts = [store.read_embeddings(c.id, test) for c in combo.parts]
        _check_compatible(combo, test, parts)
        query, gallery = combined_embeddings(parts, combo.normalize)
        first = parts[0]
        labels = (first.query_pids, first.gallery_pids, first.query_camids, first.gallery_camids)
        results = score(query, gallery, labels, protocol=data.protocol(test), device=device,
                        extracted=time.perf_counter() - begin)
        part_rows = [store.read_row(c.id, test, False) for c in combo.parts]
        for rerank, (metrics, seconds) in results.items():
            log(f"[{combo.id}] {combo.method}:{combo.name} ({combo.backbone}) on {test}{' +RR' if rerank else ''}: "
                f"rank-1 {metrics['rank1']:.1%} mAP {metrics['mAP']:.1%} ({seconds:.1f} s)")
            store.write_row(_row(combo, test, rerank, metrics, seconds, len(first.query), len(first.gallery),
                                 part_rows, device, started, code))
    store.write_state(combo.id, "done", finished_at=provenance.now(), parts=[c.id for c in combo.parts])


def _check_compatible(combo: Combination, test: str, parts: Sequence[Embeddings]) -> None:
    for cell, part in zip(combo.parts, parts):
        if part.metric != "euclidean":
            raise ValueError(f"part {part_name(cell)} (cell {cell.id}) compares its embeddings with its method's own "
                             f"distance, so they cannot be concatenated; combine methods with plain vector embeddings")
        if part.query.ndim != 2 or part.gallery.ndim != 2:
            raise ValueError(f"part {part_name(cell)} (cell {cell.id}) kept embeddings of shape {part.query.shape}, not (N, D)")
    first = parts[0]
    for cell, part in zip(combo.parts[1:], parts[1:]):
        for key in ("query_pids", "gallery_pids", "query_camids", "gallery_camids"):
            if not np.array_equal(getattr(part, key), getattr(first, key)):
                raise ValueError(f"the {test} {key.split('_')[0]} images of cell {cell.id} ({part_name(cell)}) are not those "
                                 f"of cell {combo.parts[0].id} ({part_name(combo.parts[0])}) in the same order ({key} differ); "
                                 f"were they tested on different copies of {test}?")


def _row(combo: Combination, test: str, rerank: bool, metrics: dict, seconds: float, num_query: int, num_gallery: int,
         part_rows: list[dict], device: torch.device, started, code: tuple) -> dict:
    """A store row like a cell's (see results/README.md): the parts' training figures are summed."""
    sha, dirty = code
    parts = [{"part": part_name(c), "cell_id": c.id, "git_sha": r["git_sha"], "finished_at": str(r["finished_at"])}
             for c, r in zip(combo.parts, part_rows)]
    settings = {"name": combo.name, "method": combo.method, "normalize": combo.normalize, "parts": parts}
    return {
        "schema_version": SCHEMA_VERSION,
        "grid": combo.grid,
        "cell_id": combo.id,
        "method": combo.method,
        "variant": combo.variant,
        "backbone": combo.backbone,
        "train_dataset": combo.train_dataset,
        "test_dataset": test,
        "synthetic": combo.parts[0].dataset(test).synthetic,
        "seed": combo.seed,
        "rerank": rerank,
        "protocol": data.protocol(test),
        **{k: metrics[k] for k in ("mAP", "mINP", "rank1", "rank5", "rank10", "num_valid_queries")},
        "cmc": metrics["cmc"].tolist(),
        "num_query": num_query,
        "num_gallery": num_gallery,
        "iterations": sum(r["iterations"] for r in part_rows),
        "train_seconds": sum(r["train_seconds"] for r in part_rows),
        "train_images_per_second": None,
        "eval_seconds": seconds,
        "git_sha": sha,
        "git_dirty": dirty,
        **provenance.environment(device),
        "world_size": 1,
        "executor": "local",
        "started_at": started,
        "finished_at": provenance.now(),
        "config": json.dumps({"combination": settings, "parts": [json.loads(c.to_json()) for c in combo.parts],
                              "resources": {"device": str(device)}, "scheduler": {}}, sort_keys=True),
    }
