"""Evaluation-time combinations of trained cells: a spec's `[[combine]]` tables.

SPReID's Table 6 rows marked "*" are not a model of their own: two trained models' test-time
embeddings are each l2-normalised and concatenated ("l2-normalization + concatenation"), and
the result is scored like any cell. A combination names cells of its grid as its parts; for each
(training dataset, seed, ...) group of the grid there is one combination (harness.spec.Combination,
parsed with the spec), with its own id (a hash of its settings and its parts' cell ids) and its own
rows, written like a cell's.

Cells keep their query and gallery embeddings in the store (store.write_embeddings); a
combination is computed from them once every part is done, with the cells' own scoring
(harness.eval.score: plain and re-ranked, under the dataset's protocol). It is done when its rows
are in the store and newer than its parts' embeddings: a part that ran again makes it due again.
"""

from __future__ import annotations

import json
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from harness import data, provenance
from harness.engine.rows import combination_row
from harness.eval.score import score
from harness.spec import Combination, Resources, part_name
from harness.status import is_done
from harness.store import Embeddings, Store

# -- state -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CombinationStatus:
    combination: Combination
    state: str  # done | ready | waiting | failed | missing embeddings
    detail: str = ""


def combination_statuses(combinations: Sequence[Combination], store: Store) -> list[CombinationStatus]:
    """Where each combination stands, from the store alone (nothing is computed)."""
    out = []
    for combo in combinations:
        waiting = [f"{part_name(c)} (cell {c.id})" for c in combo.parts if not is_done(store, c)]
        if waiting:
            out.append(CombinationStatus(combo, "waiting", "for part(s) " + ", ".join(waiting)))
            continue
        missing = [
            (c, t) for c in combo.parts for t in combo.test_datasets if not store.embeddings_path(c.id, t).is_file()
        ]
        if missing:
            cell, test = missing[0]
            out.append(
                CombinationStatus(
                    combo,
                    "missing embeddings",
                    (
                        f"cell {cell.id} ({part_name(cell)}) is done but kept no {test} embeddings (it ran with keep_embeddings "
                        f"= false, before cells kept them, or its method compares embeddings with its own distance, which "
                        f"cannot be combined); remove {store.root / 'rows' / cell.id}/ and run the spec again (once compaction "
                        f"has moved its rows into {store.root / 'rows' / 'segments'}/, `reidbench run SPEC --force` reruns it)"
                    ),
                )
            )
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
    """Every row is published and readable, computed from the parts' runs that are published now,
    and newer than every part's embeddings."""
    found = store.cell_rows(combo.id)
    if not found.complete([(t, r) for t in combo.test_datasets for r in (False, True)]):
        return False
    for row in found.rows.values():
        used = {
            p["cell_id"]: p.get("run_id")
            for p in json.loads(row["config"] or "{}").get("combination", {}).get("parts", [])
        }
        if any(c.id in used and used[c.id] != store.published_run(c.id) for c in combo.parts):
            return False
    rows = [store.row_path(combo.id, t, r, found.run_id) for t in combo.test_datasets for r in (False, True)]
    inputs = [store.embeddings_path(c.id, t) for c in combo.parts for t in combo.test_datasets]
    newest_input = max((p.stat().st_mtime_ns for p in inputs if p.is_file()), default=0)
    return min(p.stat().st_mtime_ns for p in rows) >= newest_input


def table_lines(combinations: Sequence[Combination], store: Store) -> list[list]:
    """Rows for the status table of combinations."""
    return [
        [
            s.combination.id,
            f"{s.combination.method}:{s.combination.name}",
            s.combination.backbone,
            s.combination.train_dataset,
            ",".join(s.combination.test_datasets),
            s.combination.seed,
            s.state,
            s.detail,
        ]
        for s in combination_statuses(combinations, store)
    ]


# -- computing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CombinationOutcome:
    combination: Combination
    ok: bool
    reason: str = ""


def run_combinations(
    combinations: Sequence[Combination],
    store: Store,
    resources: Resources,
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> list[CombinationOutcome]:
    """Compute every combination whose parts are done and that is not done yet (all of those with
    `force`); waiting ones are left for later. A failure is recorded in the combination's state."""
    device = torch.device("cuda" if resources.device != "cpu" and torch.cuda.is_available() else "cpu")
    outcomes = []
    for status in combination_statuses(combinations, store):
        combo = status.combination
        if status.state not in ("ready", "failed") and not (force and status.state == "done"):
            continue
        try:
            compute(combo, store, device, log=log)
        except Exception as err:  # noqa: BLE001 - recorded and reported; the other combinations go on
            reason = f"{type(err).__name__}: {err}"
            store.write_state(
                combo.id,
                "failed",
                reason=reason,
                failed_at=provenance.now(),
                traceback="".join(traceback.format_exception(err))[-4000:],
            )
            outcomes.append(CombinationOutcome(combo, False, reason))
        else:
            outcomes.append(CombinationOutcome(combo, True))
    return outcomes


def combined_embeddings(parts: Sequence[Embeddings], normalize: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and gallery embeddings of the combination: the parts' (each l2-normalised with
    normalize = "l2") concatenated along the feature axis, in the order of `parts`."""

    def prepare(array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.asarray(array, dtype=np.float32))
        return torch.nn.functional.normalize(tensor, dim=1) if normalize == "l2" else tensor

    return (torch.cat([prepare(p.query) for p in parts], dim=1), torch.cat([prepare(p.gallery) for p in parts], dim=1))


def compute(combo: Combination, store: Store, device: torch.device, *, log: Callable[[str], None] = print) -> None:
    """Score the combination on each test dataset from its parts' embeddings; publish its rows
    together, stamped with a run id of their own."""
    started, code = provenance.now(), provenance.git_state()
    run_id = f"combine-{uuid.uuid4().hex[:12]}"
    for test in combo.test_datasets:
        begin = time.perf_counter()
        parts = [store.read_embeddings(c.id, test) for c in combo.parts]
        _check_compatible(combo, test, parts)
        query, gallery = combined_embeddings(parts, combo.normalize)
        first = parts[0]
        labels = (first.query_pids, first.gallery_pids, first.query_camids, first.gallery_camids)
        results = score(
            query,
            gallery,
            labels,
            protocol=data.protocol(test),
            device=device,
            extracted=time.perf_counter() - begin,
            rerank_distance=combo.parts[0].train.rerank_distance,
        )
        part_rows = [store.read_row(c.id, test, False) for c in combo.parts]
        for rerank, (metrics, seconds) in results.items():
            log(
                f"[{combo.id}] {combo.method}:{combo.name} ({combo.backbone}) on {test}{' +RR' if rerank else ''}: "
                f"rank-1 {metrics['rank1']:.1%} mAP {metrics['mAP']:.1%} ({seconds:.1f} s)"
            )
            store.stage_row(
                combination_row(
                    combo,
                    test_dataset=test,
                    protocol=data.protocol(test),
                    metrics=metrics,
                    rerank=rerank,
                    num_query=len(first.query),
                    num_gallery=len(first.gallery),
                    part_rows=part_rows,
                    eval_seconds=seconds,
                    device=device,
                    started=started,
                    code=code,
                    run_id=run_id,
                )
            )
    store.publish(combo.id, run_id)
    store.write_state(combo.id, "done", finished_at=provenance.now(), parts=[c.id for c in combo.parts])


def _check_compatible(combo: Combination, test: str, parts: Sequence[Embeddings]) -> None:
    for cell, part in zip(combo.parts, parts):
        if part.metric != "euclidean":
            raise ValueError(
                f"part {part_name(cell)} (cell {cell.id}) compares its embeddings with its method's own "
                f"distance, so they cannot be concatenated; combine methods with plain vector embeddings"
            )
        if part.query.ndim != 2 or part.gallery.ndim != 2:
            raise ValueError(
                f"part {part_name(cell)} (cell {cell.id}) kept embeddings of shape {part.query.shape}, not (N, D)"
            )
    first = parts[0]
    for cell, part in zip(combo.parts[1:], parts[1:]):
        for key in ("query_pids", "gallery_pids", "query_camids", "gallery_camids"):
            if not np.array_equal(getattr(part, key), getattr(first, key)):
                raise ValueError(
                    f"the {test} {key.split('_')[0]} images of cell {cell.id} ({part_name(cell)}) are not those "
                    f"of cell {combo.parts[0].id} ({part_name(combo.parts[0])}) in the same order ({key} differ); "
                    f"were they tested on different copies of {test}?"
                )
