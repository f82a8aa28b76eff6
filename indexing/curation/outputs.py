"""What every curation stage leaves in its --out folder, and how a finished stage is recognised.

OUT/kept.parquet     the kept items as a manifest (`image`, `caption`, the source's metadata, `pool_id`,
                     the stage's labels): a SOURCE for `retr index build` and for the next stage, whose
                     schema metadata names the stored vectors so the next stage does not embed again
OUT/dropped.parquet  every other input item with its reason, the kept or evaluation item it matched
                     (`of_id`, `of_image`) and their similarity; unreadable items too (reason `unreadable`)
OUT/curate.json      stage, parameters, model, counts, time, provenance: written last (the commit point)

Every file is written atomically, so a killed stage leaves either nothing or a finished stage.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indexing.atomic import write_json, write_parquet
from indexing.curation.pool import CURATE_KEY, LOCATION_COLUMNS, POOL_ID, Pool
from indexing.curation.result import StageResult
from indexing.manifest import git_sha
from indexing.store import BASE_COLUMNS

RECORD = "curate.json"
KEPT = "kept.parquet"
DROPPED = "dropped.parquet"


@dataclass(frozen=True)
class StageRecord:
    """curate.json: enough to tell a finished stage from one asked with other parameters."""

    stage: str
    source: str
    params: dict  # the stage's configuration, as given (JSON types)
    model: str
    counts: dict  # input, kept, dropped by reason
    seconds: float = 0.0
    provenance: dict = field(default_factory=dict)  # git sha, finished at
    inputs_digest: str = ""  # source_digest of SOURCE and the other inputs when the stage ran

    def to_json(self) -> dict:
        return asdict(self)


def finished_stage(out: Path, stage: str, source: str, params: dict, digest: str = "") -> StageRecord | None:
    """The record of a finished stage in OUT asked with the same stage, source and parameters; None when
    OUT holds no finished stage; ValueError when it holds one asked differently or its inputs changed
    since (DIGEST, `source_digest.inputs_digest`, differs from the one recorded)."""
    path = Path(out) / RECORD
    if not path.is_file():
        return None
    obj = json.loads(path.read_text())
    asked = json.loads(json.dumps({"stage": stage, "source": source, "params": params}))
    differs = [k for k, v in asked.items() if obj.get(k) != v]
    if differs:
        desc = "; ".join(f"{k}: on disk {obj.get(k)!r}, now {asked[k]!r}" for k in differs)
        raise ValueError(f"{out} holds a finished curate stage asked differently ({desc}). "
                         "Use another --out, or delete it to start over.")
    if digest and obj.get("inputs_digest") and obj["inputs_digest"] != digest:
        raise ValueError(f"{out} holds a finished curate stage whose SOURCE (or --against / --seeds) has "
                         "changed on disk since it ran. Use another --out, or delete it to start over.")
    return StageRecord(**{k: obj[k] for k in StageRecord.__dataclass_fields__ if k in obj})


def kept_table(pool: Pool, result: StageResult) -> pa.Table:
    """The kept rows as a manifest: image, caption, pool_id, the source's metadata, the stage's labels."""
    ids = pool.ids
    mask = np.isin(ids, result.kept)
    meta = pool.meta.filter(pa.array(mask))
    internal = set(BASE_COLUMNS) | set(LOCATION_COLUMNS)
    cols = {"image": meta.column("path"), "caption": meta.column("caption"), POOL_ID: meta.column("id")}
    labels = result.annotations
    new = set(labels.column_names) - {"id"} if labels is not None else set()
    for name in meta.column_names:
        if name not in internal and name not in new:
            cols[name] = meta.column(name)
    table = pa.table(cols)
    if labels is not None and new:
        order = np.argsort(labels.column("id").to_numpy(), kind="stable")
        labels = labels.take(pa.array(order))
        at = np.searchsorted(labels.column("id").to_numpy(), ids[mask])
        at = np.minimum(at, max(labels.num_rows - 1, 0))
        hit = labels.column("id").to_numpy()[at] == ids[mask] if labels.num_rows else np.zeros(len(at), bool)
        for name in sorted(new):
            col = labels.column(name).take(pa.array(at)) if labels.num_rows else pa.nulls(len(at))
            table = table.append_column(name, pc.if_else(pa.array(hit), col, pa.nulls(len(at), col.type)))
    return table.replace_schema_metadata({CURATE_KEY: pool.vectors.to_json().encode()})


def dropped_rows(pool: Pool, result: StageResult, stage: str, of_images: dict[int, str] | None = None) -> pa.Table:
    """Dropped items with their paths, captions and the path of what they matched (`of_images` for
    matches outside the pool: dropped id → path of the evaluation item); then unreadable ones."""
    d = result.dropped
    ids = pool.ids
    order = np.argsort(ids, kind="stable")
    path = pool.meta.column("path").to_numpy(zero_copy_only=False)
    caption = pool.meta.column("caption").to_numpy(zero_copy_only=False)

    def lookup(values: np.ndarray, wanted: np.ndarray) -> list:
        pos = np.minimum(np.searchsorted(ids, wanted, sorter=order), max(len(ids) - 1, 0))
        found = ids[order[pos]] == wanted if len(ids) else np.zeros(len(wanted), bool)
        return [values[order[p]] if f else None for p, f in zip(pos, found, strict=True)]

    dropped_ids = d.column("id").to_numpy()
    of_ids = d.column("of_id").to_numpy()
    of_image = lookup(path, of_ids)
    for i, pid in enumerate(dropped_ids.tolist()):
        if of_images and pid in of_images:
            of_image[i] = of_images[pid]
    rows = pa.table({
        POOL_ID: d.column("id"), "image": pa.array(lookup(path, dropped_ids), pa.string()),
        "caption": pa.array(lookup(caption, dropped_ids), pa.string()), "reason": d.column("reason"),
        "of_id": d.column("of_id"), "of_image": pa.array(of_image, pa.string()),
        "similarity": d.column("similarity"), "stage": pa.array([stage] * d.num_rows, pa.string()),
        "message": pa.nulls(d.num_rows, pa.string()),
    })
    r = pool.rejects
    unreadable = pa.table({
        POOL_ID: pa.nulls(r.num_rows, pa.int64()), "image": r.column("path"),
        "caption": pa.nulls(r.num_rows, pa.string()),
        "reason": pa.array(["unreadable"] * r.num_rows, pa.string()), "of_id": pa.nulls(r.num_rows, pa.int64()),
        "of_image": pa.nulls(r.num_rows, pa.string()), "similarity": pa.nulls(r.num_rows, pa.float32()),
        "stage": pa.array([stage] * r.num_rows, pa.string()),
        "message": pc.binary_join_element_wise(r.column("reason"), r.column("message"), ": "),
    })
    return pa.concat_tables([rows, unreadable.cast(rows.schema)])


def stage_counts(pool: Pool, result: StageResult) -> dict:
    reasons = result.dropped.column("reason").to_pylist()
    by_reason = {r: reasons.count(r) for r in sorted(set(reasons))}
    if pool.rejects.num_rows:
        by_reason["unreadable"] = pool.rejects.num_rows
    return {"input": len(pool) + pool.rejects.num_rows, "kept": len(result.kept), "dropped": by_reason}


def write_stage(
    out: Path, pool: Pool, result: StageResult, record: StageRecord, of_images: dict[int, str] | None = None
) -> StageRecord:
    """kept.parquet, dropped.parquet, then curate.json (last: the stage is finished when it exists)."""
    if result.n != len(pool):
        raise RuntimeError(f"stage {record.stage} accounted for {result.n} of {len(pool)} items")  # a stage bug
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(out / KEPT, kept_table(pool, result))
    write_parquet(out / DROPPED, dropped_rows(pool, result, record.stage, of_images))
    record = StageRecord(record.stage, record.source, record.params, pool.model, stage_counts(pool, result),
                         record.seconds, {"git": git_sha(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                         record.inputs_digest)
    write_json(out / RECORD, record.to_json())
    return record
