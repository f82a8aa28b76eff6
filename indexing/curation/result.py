"""The one shape every curation stage returns: ids kept, ids dropped with their reason, and columns
for the kept ids (group and cluster labels) that `kept.parquet` carries.

Reasons are a fixed vocabulary, so reports and tests can count them:
`exact` (same bytes), `pixel` (same perceptual hash), `near_dup` (cosine ≥ threshold to `of_id`),
`eval_leak` (cosine ≥ threshold to evaluation item `of_id`), `not_retrieved` (no seed reached it),
`sampled_out` (its cluster's share was full).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

DROPPED_SCHEMA = pa.schema(
    [("id", pa.int64()), ("reason", pa.string()), ("of_id", pa.int64()), ("similarity", pa.float32())]
)
REASONS = ("exact", "pixel", "near_dup", "eval_leak", "not_retrieved", "sampled_out")


@dataclass(frozen=True)
class StageResult:
    kept: np.ndarray  # (m,) int64 ids, ascending
    # DROPPED_SCHEMA: id, reason, of_id (the kept item it matches, a seed, an eval id, or -1), similarity
    dropped: pa.Table
    # optional columns about kept ids for kept.parquet: an `id` column plus e.g. `group_size`,
    # `cluster_l1`…; rows for ids not kept are ignored
    annotations: pa.Table | None = None

    def __post_init__(self) -> None:
        kept = np.asarray(self.kept, np.int64)
        object.__setattr__(self, "kept", kept)
        dropped_ids = self.dropped.column("id").to_numpy()
        both = np.intersect1d(kept, dropped_ids)
        if len(both):
            raise ValueError(f"ids both kept and dropped: {both[:5].tolist()}")
        if len(np.unique(dropped_ids)) != len(dropped_ids):
            raise ValueError("an id is dropped twice")
        unknown = set(self.dropped.column("reason").to_pylist()) - set(REASONS)
        if unknown:
            raise ValueError(f"unknown drop reasons {sorted(unknown)}; known: {', '.join(REASONS)}")
        if self.annotations is not None and "id" not in self.annotations.column_names:
            raise ValueError("StageResult.annotations needs an `id` column")

    @property
    def n(self) -> int:
        return len(self.kept) + self.dropped.num_rows


def dropped_table(ids, reason: str, of_ids=None, sims=None) -> pa.Table:
    """DROPPED_SCHEMA rows, one reason for all; of_id -1 and similarity NaN where not given."""
    ids = np.asarray(ids, np.int64)
    n = len(ids)
    of_ids = np.full(n, -1, np.int64) if of_ids is None else np.asarray(of_ids, np.int64)
    sims = np.full(n, np.nan, np.float32) if sims is None else np.asarray(sims, np.float32)
    return pa.table({"id": pa.array(ids), "reason": pa.array([reason] * n, pa.string()),
                     "of_id": pa.array(of_ids), "similarity": pa.array(sims)}, schema=DROPPED_SCHEMA)
