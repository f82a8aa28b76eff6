"""Read a finished curation folder back for people to look at: what the UI's curation page shows.

    stages = list_stages("curated/")                  # a run folder (01-dedup/, 02-cluster/, …) or one stage
    groups = duplicate_groups(stages[0].path)        # kept item + the copies dropped for it, largest first
    by_cluster = clusters(stages[1].path, "cluster_l2")

Only the stage's own files are read (curate.json, kept.parquet, dropped.parquet): no model, no vectors.
Duplicate groups follow `of_id` to the item finally kept, because a stage drops in steps (an exact copy
of an item that a later step drops as a near-duplicate points at that item, not at the one kept).
Tested by tests/test_ui_curation.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from indexing.curation.outputs import DROPPED, KEPT, RECORD, StageRecord
from indexing.curation.pool import POOL_ID

DUPLICATE_REASONS = ("exact", "pixel", "near_dup")  # drops whose of_id is another pool item
LEAK_REASON = "eval_leak"  # of_id is an evaluation item's id, of_image its path
CLUSTER_PREFIX = "cluster_l"  # cluster_l1 (finest), cluster_l2, … from the cluster and sample stages
FLAT_CLUSTER = "cluster"  # the retrieve stage's one level of k-means clusters


@dataclass(frozen=True)
class StageFolder:
    path: Path
    name: str  # the folder's name: `01-dedup` in a run folder
    record: StageRecord  # its curate.json


@dataclass(frozen=True)
class Item:
    pool_id: int | None  # None for an unreadable file (it never got a pool id)
    image: str | None  # the path the stage read it from
    caption: str | None


@dataclass(frozen=True)
class Copy:
    item: Item
    reason: str  # exact, pixel or near_dup
    similarity: float | None  # to `of_id`: the kept item, or the copy it was dropped for on the way
    of_id: int


@dataclass(frozen=True)
class DuplicateGroup:
    kept: Item
    copies: tuple[Copy, ...]  # in the dropped table's order
    # None when `kept` is in kept.parquet; else why it was dropped itself (its copies went first,
    # then it leaked an evaluation set, say)
    kept_dropped_as: str | None = None

    @property
    def size(self) -> int:
        return 1 + len(self.copies)


@dataclass(frozen=True)
class Leak:
    item: Item
    eval_id: int
    eval_image: str | None
    similarity: float | None


@dataclass(frozen=True)
class Cluster:
    id: int
    members: tuple[Item, ...]  # in kept.parquet's order

    @property
    def size(self) -> int:
        return len(self.members)


def _record(stage_dir: Path) -> StageRecord:
    obj = json.loads((stage_dir / RECORD).read_text(encoding="utf-8"))
    return StageRecord(**{k: obj[k] for k in StageRecord.__dataclass_fields__ if k in obj})


def list_stages(folder: str | Path) -> list[StageFolder]:
    """The finished stages in `folder`: itself when it is a stage's --out folder, else its stage
    folders (`01-dedup/`, `02-cluster/`, … of `retr curate run`) in order. ValueError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    if (folder / RECORD).is_file():
        return [StageFolder(folder, folder.name, _record(folder))]
    stages = [StageFolder(d, d.name, _record(d)) for d in sorted(folder.iterdir())
              if d.is_dir() and (d / RECORD).is_file()]
    if not stages:
        raise ValueError(f"{folder} holds no curation output: no {RECORD} in it or in its stage folders "
                         "(run `retr curate STAGE SOURCE --out DIR` or `retr curate run CONFIG` first)")
    return stages


def _column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def _items(table: pa.Table) -> list[Item]:
    return [Item(None if p is None else int(p), image, caption) for p, image, caption in
            zip(_column(table, POOL_ID), _column(table, "image"), _column(table, "caption"), strict=True)]


def _similarity(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def read_dropped(stage_dir: str | Path, reasons: tuple[str, ...] | None = None) -> pa.Table:
    """dropped.parquet, only the rows with one of `reasons` when given."""
    table = pq.read_table(Path(stage_dir) / DROPPED)
    if reasons is not None:
        table = table.filter(pc.is_in(table.column("reason"), pa.array(list(reasons), pa.string())))
    return table


def _kept(stage_dir: Path, extra: tuple[str, ...] = ()) -> pa.Table:
    names = set(pq.read_schema(stage_dir / KEPT).names)
    return pq.read_table(stage_dir / KEPT, columns=[c for c in (POOL_ID, "image", "caption", *extra) if c in names])


def _root(start: int, parent: dict[int, int]) -> int:
    """Where a chain of of_id ends (the item finally kept); a loop, which no stage writes, ends where it closes."""
    seen = {start}
    node = start
    while node in parent and parent[node] not in seen:
        node = parent[node]
        seen.add(node)
    return node


def duplicate_groups(stage_dir: str | Path) -> list[DuplicateGroup]:
    """Every kept item that stands for dropped copies, with them; largest group first, then by pool id.
    Each exact / pixel / near_dup row of dropped.parquet is a copy in exactly one group."""
    stage_dir = Path(stage_dir)
    dropped = read_dropped(stage_dir)
    is_copy = pc.and_(pc.is_in(dropped.column("reason"), pa.array(DUPLICATE_REASONS)),
                      pc.is_valid(dropped.column("of_id")))
    copies_table = dropped.filter(is_copy)
    copy_items = _items(copies_table)
    of_ids = copies_table.column("of_id").to_pylist()
    parent = {c.pool_id: int(o) for c, o in zip(copy_items, of_ids, strict=True) if c.pool_id is not None}
    members: dict[int, list[Copy]] = {}
    for item, reason, of_id, sim in zip(copy_items, copies_table.column("reason").to_pylist(), of_ids,
                                        copies_table.column("similarity").to_pylist(), strict=True):
        root = _root(item.pool_id, parent) if item.pool_id is not None else int(of_id)
        members.setdefault(root, []).append(Copy(item, reason, _similarity(sim), int(of_id)))
    kept = {i.pool_id: i for i in _items(_kept(stage_dir)) if i.pool_id in members}
    lost = [root for root in members if root not in kept]  # a chain that ends at an item dropped for another reason
    others = dropped.filter(pc.is_in(dropped.column(POOL_ID), pa.array(lost, pa.int64()))) if lost else dropped[:0]
    why = {i.pool_id: (i, r) for i, r in zip(_items(others), others.column("reason").to_pylist(), strict=True)}
    groups = []
    for root, copies in members.items():
        if root in kept:
            groups.append(DuplicateGroup(kept[root], tuple(copies)))
        else:
            item, reason = why.get(root, (Item(root, None, None), "unknown"))
            groups.append(DuplicateGroup(item, tuple(copies), reason))
    groups.sort(key=lambda g: (-g.size, g.kept.pool_id))
    return groups


def eval_leaks(stage_dir: str | Path) -> list[Leak]:
    """Pool items dropped because they match an evaluation item (`--against`), most similar first."""
    table = read_dropped(stage_dir, (LEAK_REASON,))
    leaks = [Leak(item, int(e), image, _similarity(s)) for item, e, image, s in
             zip(_items(table), table.column("of_id").to_pylist(), _column(table, "of_image"),
                 table.column("similarity").to_pylist(), strict=True)]
    leaks.sort(key=lambda leak: -(leak.similarity if leak.similarity is not None else -math.inf))
    return leaks


def cluster_levels(stage_dir: str | Path) -> list[str]:
    """kept.parquet's cluster columns: cluster_l1, cluster_l2, … (finest first), or `cluster`."""
    names = pq.read_schema(Path(stage_dir) / KEPT).names
    levels = sorted((n for n in names if n.startswith(CLUSTER_PREFIX) and n[len(CLUSTER_PREFIX):].isdigit()),
                    key=lambda n: int(n[len(CLUSTER_PREFIX):]))
    return levels + ([FLAT_CLUSTER] if FLAT_CLUSTER in names else [])


def _labels(stage_dir: Path, level: str) -> tuple[pa.Table, np.ndarray]:
    """kept rows that have a label at `level` (a column of cluster_levels) and their labels."""
    if level not in cluster_levels(stage_dir):
        raise ValueError(f"{stage_dir / KEPT} has no cluster column {level!r}; it has {cluster_levels(stage_dir)}")
    table = _kept(stage_dir, (level,))
    table = table.filter(pc.is_valid(table.column(level)))
    return table, table.column(level).to_numpy().astype(np.int64)


def cluster_sizes(stage_dir: str | Path, level: str) -> list[tuple[int, int]]:
    """(cluster id, kept items in it) at `level`, largest first, then by id. Rows with no label are left out."""
    _, labels = _labels(Path(stage_dir), level)
    ids, counts = np.unique(labels, return_counts=True)
    order = np.lexsort((ids, -counts))
    return [(int(ids[i]), int(counts[i])) for i in order]


def clusters(stage_dir: str | Path, level: str) -> list[Cluster]:
    """The kept items of each cluster at `level`, largest cluster first."""
    table, labels = _labels(Path(stage_dir), level)
    items = _items(table)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    out = [Cluster(int(labels[part[0]]), tuple(items[i] for i in part))
           for part in np.split(order, bounds) if len(part)]
    out.sort(key=lambda c: (-c.size, c.id))
    return out
