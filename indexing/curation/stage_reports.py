"""What each stage's report shows, drawn from its pool and result (the page itself: report.py)."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from indexing.curation.dedup import near_duplicate_pairs
from indexing.curation.report import Chart, Report, Tile

if TYPE_CHECKING:
    from indexing.curation.dedup_stage import DedupConfig, DedupOutcome
    from indexing.curation.pool import Pool
    from indexing.curation.stages import StageSpec

MAX_GROUPS = 12  # duplicate groups shown, largest first
MAX_TILES = 10  # images per row


def _facts(spec: StageSpec, pool: Pool, **more: object) -> dict[str, str]:
    facts = {"source": spec.source, "model": pool.model, "pool": f"{len(pool):,} items"}
    facts.update({k: str(v) for k, v in {**spec.params, **spec.inputs, **more}.items()})
    return facts


def _label(pool_paths: dict[int, str], pid: int, extra: str = "") -> Tile:
    return Tile(pool_paths[pid], f"#{pid} {extra}".strip())


def dedup_report(spec: StageSpec, pool: Pool, outcome: DedupOutcome, config: DedupConfig) -> Report:
    result = outcome.result
    report = Report(f"retr curate dedup · {spec.source}", {},
                    _facts(spec, pool, threshold=outcome.threshold, keep=config.keep))
    paths = dict(zip(pool.ids.tolist(), pool.meta.column("path").to_pylist(), strict=True))
    d = result.dropped
    members: dict[int, list[tuple[int, str, float]]] = defaultdict(list)
    for pid, reason, of, sim in zip(d.column("id").to_pylist(), d.column("reason").to_pylist(),
                                    d.column("of_id").to_pylist(), d.column("similarity").to_pylist(), strict=True):
        if reason != "eval_leak":
            members[of].append((pid, reason, sim))
    groups = sorted(members.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:MAX_GROUPS]
    rows = []
    for kept_id, copies in groups:
        tiles = [Tile(paths[kept_id], f"kept #{kept_id}", kept=True)]
        tiles += [_label(paths, pid, f"{reason} {sim:.2f}") for pid, reason, sim in copies[:MAX_TILES - 1]]
        rows.append(tiles)
    report.add_rows(f"Largest duplicate groups ({len(members):,} groups; kept item first, green)", rows)
    leaks = [(pid, sim) for pid, reason, sim in zip(d.column("id").to_pylist(), d.column("reason").to_pylist(),
                                                    d.column("similarity").to_pylist(), strict=True)
             if reason == "eval_leak"]
    leak_rows = [[_label(paths, pid, f"pool {sim:.2f}"), Tile(outcome.leak_images[pid], "evaluation item", kept=True)]
                 for pid, sim in leaks[:MAX_GROUPS]]
    report.add_rows(f"Evaluation leaks ({len(leaks):,}; pool item, then the evaluation item it matches)", leak_rows)
    if spec.truth:
        report.charts.append(truth_curve(pool, spec.truth, config.k))
    return report


def truth_curve(pool: Pool, column: str, k: int) -> Chart:
    """Pairwise precision and recall of 'cosine ≥ t' against ground-truth groups (items sharing a value of
    `column`), for t from 0.5 to 1; candidate pairs from the same k-NN graph the stage uses."""
    if column not in pool.meta.column_names:
        raise ValueError(f"--truth {column!r}: the pool has no such column; columns: {pool.meta.column_names}")
    values = pool.meta.column(column).to_pylist()
    truth = np.asarray([str(v) if v is not None else f"\0{i}" for i, v in enumerate(values)])  # null: alone
    _, labels = np.unique(truth, return_inverse=True)
    sizes = np.bincount(labels)
    n_true = int((sizes * (sizes - 1) // 2).sum())
    q, b, s = near_duplicate_pairs(pool.xb, 0.5, k=k)
    once = q < b
    q, b, s = q[once], b[once], s[once]
    same = labels[q] == labels[b]
    ts = np.round(np.linspace(0.5, 1.0, 26), 3)
    precision = [float(same[s >= t].mean()) if (s >= t).any() else 1.0 for t in ts]
    recall = [float(same[s >= t].sum() / n_true) if n_true else 1.0 for t in ts]
    return Chart(f"Near-duplicate pairs against --truth {column} ({n_true:,} true pairs)", "curve", ts.tolist(),
                 {"precision": precision, "recall": recall}, x_label="cosine threshold")
