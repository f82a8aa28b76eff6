"""Dataset curation (`retr curate`, issue #26): stages that take vectors and ids and return the ids
kept and the ids dropped, each with its reason, in the style of DINOv2's LVD-142M pipeline.

Stages built so far: `dedup` (exact duplicates by content hash, near-duplicates by a cosine k-NN
graph, exactly one kept per connected group; pool items too close to an evaluation set). The CLI,
the report and the other stages (seed retrieval, hierarchical k-means, balanced sampling) build on
`StageResult`. Tests: tests/test_curation_dedup.py.
"""

from indexing.curation.dedup import (
    connected_components,
    drop_near,
    exact_duplicates,
    exact_groups,
    keep_one_per_group,
    near_duplicate_pairs,
    near_duplicates,
)
from indexing.curation.result import DROPPED_SCHEMA, REASONS, StageResult, dropped_table

__all__ = [
    "DROPPED_SCHEMA", "REASONS", "StageResult", "connected_components", "drop_near", "dropped_table",
    "exact_duplicates", "exact_groups", "keep_one_per_group", "near_duplicate_pairs", "near_duplicates",
]
