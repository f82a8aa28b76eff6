"""One curation stage from SOURCE to its --out folder: the pool, the stage, the files, the report.

    record = run_stage(StageSpec("dedup", "photos/", Path("out/dedup"), params={"threshold": 0.6}), load_encoder)

A stage is a `StageSpec` (configuration as data: the same fields a `run` config file holds). Its folder
is finished when curate.json exists: asked again with the same spec it is returned as it is; asked with
another spec it is an error. A killed stage resumes: the embedding job picks up its finished chunks,
and the stage itself (deterministic, seeded) is computed again and written atomically.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from indexing.curation import concept_stages, stage_reports
from indexing.curation.dedup_stage import DedupConfig, dedup_pool
from indexing.curation.outputs import StageRecord, finished_stage, write_stage
from indexing.curation.pool import Pool, PoolRequest, RunnerFor, load_pool
from indexing.curation.report import write_report
from indexing.curation.source_digest import inputs_digest
from indexing.embed import EmbedConfig
from retrieval.encoders.base import Encoder

STAGES = ("dedup", "retrieve", "cluster", "sample")
# The model a stage embeds with when neither --model nor the SOURCE's stored vectors say:
# copy detection for duplicates, concepts for retrieval and clustering (docs/benchmarks.md).
DEFAULT_MODELS = {"dedup": "retr:effnet-lite0", "retrieve": "retr:default", "cluster": "retr:default",
                  "sample": "retr:default"}
REPORT = "report.html"


@dataclass(frozen=True)
class StageSpec:
    stage: str  # one of STAGES
    source: str  # anything `retr index build` takes, an index folder, or an earlier stage's kept.parquet
    out: Path
    model: str | None = None  # None: the SOURCE's stored vectors' model, else DEFAULT_MODELS[stage]
    params: dict = field(default_factory=dict)  # the stage's own settings (its config dataclass' fields)
    inputs: dict = field(default_factory=dict)  # other SOURCEs: {"against": [...]} for dedup, {"seeds": "..."}
    embed: EmbedConfig = EmbedConfig()
    embeddings: Path | None = None  # where SOURCEs are embedded; None: OUT/embeddings
    truth: str | None = None  # a metadata column naming true duplicate groups, for the report's P/R curve
    progress: bool = True

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown curate stage {self.stage!r}; stages: {', '.join(STAGES)}")

    def record_params(self) -> dict:
        """What curate.json keeps to recognise this stage: its settings, other inputs, the model asked."""
        return {**self.params, **self.inputs, "model": self.model, "truth": self.truth}

    def sources(self) -> list[str]:
        """SOURCE and every other input SOURCE, in a fixed order."""
        others = [s for _, v in sorted(self.inputs.items()) for s in ([v] if isinstance(v, str) else v)]
        return [self.source, *others]


def _config(cls: type, params: dict):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown settings {unknown}; this stage takes {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})


# (spec, source, segment, model) -> the pool: how a stage loads SOURCE and its other inputs
PoolLoader = Callable[[StageSpec, str, str, "str | None"], Pool]


def _pool_loader(load_encoder: Callable[[str], Encoder], runner_for: RunnerFor | None) -> PoolLoader:
    def pool(spec: StageSpec, source: str, segment: str, model: str | None) -> Pool:
        embeddings = spec.embeddings or spec.out / "embeddings"
        request = PoolRequest(source, embeddings, segment, model, DEFAULT_MODELS[spec.stage], spec.embed,
                              progress=spec.progress)
        return load_pool(request, load_encoder, runner_for)

    return pool


def run_stage(
    spec: StageSpec, load_encoder: Callable[[str], Encoder], runner_for: RunnerFor | None = None
) -> StageRecord:
    """Run (or find finished) the stage `spec` names; returns its curate.json record. A SOURCE that has
    to be embedded is embedded here, or by `runner_for(model spec)` (Ray actors: `retr curate --ray`)."""
    _config(_CONFIGS[spec.stage], spec.params)  # bad settings fail before anything is embedded
    digest = inputs_digest(spec.sources())
    done = finished_stage(spec.out, spec.stage, spec.source, spec.record_params(), digest)
    if done is not None:
        return done
    t0 = time.perf_counter()
    load = _pool_loader(load_encoder, runner_for)
    pool = load(spec, spec.source, "pool", spec.model)
    if len(pool) == 0:
        raise ValueError(f"{spec.source}: none of its items could be read; the pool is empty")
    runner = _RUNNERS[spec.stage]
    result, of_images, report = runner(spec, pool, load)
    report.facts = {"source": spec.source, **report.facts}
    record = StageRecord(spec.stage, spec.source, spec.record_params(), pool.model, {},
                         round(time.perf_counter() - t0, 2), inputs_digest=digest)
    record = write_stage(spec.out, pool, result, record, of_images)
    report.counts = record.counts
    write_report(report, spec.out / REPORT)
    return record


def _dedup(spec: StageSpec, pool: Pool, load: PoolLoader):
    config = _config(DedupConfig, spec.params)
    evals = [load(spec, s, f"against-{i}", pool.model)
             for i, s in enumerate(spec.inputs.get("against", ()))]
    outcome = dedup_pool(pool, config, evals)
    report = stage_reports.dedup_report(spec, pool, outcome, config)
    return outcome.result, outcome.leak_images, report


def _title(spec: StageSpec) -> str:
    return f"retr curate {spec.stage} · {spec.source}"


def _retrieve(spec: StageSpec, pool: Pool, load: PoolLoader):
    config = _config(concept_stages.RetrieveConfig, spec.params)
    if "seeds" not in spec.inputs:
        raise ValueError("retrieve needs --seeds: a SOURCE of curated seed images")
    seeds = load(spec, spec.inputs["seeds"], "seeds", pool.model)
    result, report = concept_stages.retrieve(pool, seeds, config, _title(spec))
    return result, None, report


def _cluster(spec: StageSpec, pool: Pool, load: PoolLoader):
    result, report = concept_stages.cluster(pool, _config(concept_stages.ClusterConfig, spec.params), _title(spec))
    return result, None, report


def _sample(spec: StageSpec, pool: Pool, load: PoolLoader):
    result, report = concept_stages.sample(pool, _config(concept_stages.SampleConfig, spec.params), _title(spec))
    return result, None, report


_CONFIGS = {"dedup": DedupConfig, "retrieve": concept_stages.RetrieveConfig, "cluster": concept_stages.ClusterConfig,
            "sample": concept_stages.SampleConfig}
_RUNNERS = {"dedup": _dedup, "retrieve": _retrieve, "cluster": _cluster, "sample": _sample}
