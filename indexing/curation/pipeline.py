"""`retr curate run CONFIG`: stages chained from one TOML file, resumable stage by stage.

    out = "curated"                  # the run folder, relative to the config file
    source = "photos/"               # the first stage's SOURCE
    [defaults]                       # settings every stage gets unless it says otherwise
    batch_size = 32
    [[stage]]
    name = "dedup"
    model = "retr:sscd"
    against = ["eval-photos/"]       # other SOURCEs, relative to the config file
    [[stage]]
    name = "sample"
    model = "retr:default"
    n = 1000
    levels = [50, 5]

Stage i writes RUN/NN-NAME/ and its kept.parquet is stage i+1's SOURCE. A stage whose curate.json is
there with the same settings is skipped, so rerunning a killed run redoes only the unfinished stage
(and that stage's embedding resumes chunk by chunk). RUN/report.html lists every stage's counts.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from indexing.atomic import atomic_path
from indexing.choose import parse_memory
from indexing.curation.outputs import KEPT, StageRecord, finished_stage
from indexing.curation.pool import RunnerFor
from indexing.curation.stages import REPORT, STAGES, StageSpec, run_stage
from indexing.embed import EmbedConfig
from retrieval.encoders.base import Encoder

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

INPUT_KEYS = ("against", "seeds")  # settings that name other SOURCEs
EMBED_KEYS = ("batch_size", "workers")
SPEC_KEYS = ("model", "truth")


@dataclass(frozen=True)
class Pipeline:
    out: Path
    stages: tuple[StageSpec, ...]


def _source(value: str, base: Path) -> str:
    """A SOURCE relative to the config file when it names something there; corpus names stay as they are."""
    candidate = base / value
    return str(candidate.resolve()) if candidate.exists() or "/" in value else value


def _stage_spec(i: int, raw: dict, source: str, run: Path, base: Path, progress: bool) -> StageSpec:
    name = raw.get("name")
    if name not in STAGES:
        raise ValueError(f"stage {i + 1}: name must be one of {', '.join(STAGES)}, got {name!r}")
    params = {k: v for k, v in raw.items() if k not in ("name", *INPUT_KEYS, *EMBED_KEYS, *SPEC_KEYS)}
    if isinstance(params.get("max_memory"), str):
        params["max_memory"] = parse_memory(params["max_memory"])
    inputs = {}
    if "against" in raw:
        inputs["against"] = [_source(s, base) for s in raw["against"]]
    if "seeds" in raw:
        inputs["seeds"] = _source(raw["seeds"], base)
    embed = EmbedConfig(batch_size=int(raw.get("batch_size", 64)), num_workers=int(raw.get("workers", 2)))
    return StageSpec(name, source, run / f"{i + 1:02d}-{name}", raw.get("model"), params, inputs, embed,
                     truth=raw.get("truth"), progress=progress)


def read_pipeline(config: Path, *, out: Path | None = None, progress: bool = True) -> Pipeline:
    """The stages a config file asks for; ValueError naming the first thing wrong with it."""
    config = Path(config)
    try:
        doc = tomllib.loads(config.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{config}: not valid TOML: {e}") from None
    base = config.resolve().parent
    unknown = sorted(set(doc) - {"out", "source", "defaults", "stage"})
    if unknown:
        raise ValueError(f"{config}: unknown keys {unknown}; a config has out, source, [defaults] and [[stage]]")
    if "source" not in doc or not doc.get("stage"):
        raise ValueError(f"{config}: needs `source` and at least one [[stage]]")
    run = Path(out) if out is not None else base / doc.get("out", "curated")
    defaults = doc.get("defaults", {})
    source = _source(str(doc["source"]), base)
    specs = []
    for i, raw in enumerate(doc["stage"]):
        spec = _stage_spec(i, {**defaults, **raw}, source, run, base, progress)
        specs.append(spec)
        source = str(spec.out / KEPT)
    return Pipeline(run, tuple(specs))


def run_pipeline(
    pipeline: Pipeline, load_encoder: Callable[[str], Encoder], runner_for: RunnerFor | None = None
) -> Iterator[tuple[StageSpec, StageRecord, bool]]:
    """Run each stage in turn; yields (spec, its record, whether it was computed now rather than found)."""
    records = []
    for spec in pipeline.stages:
        fresh = finished_stage(spec.out, spec.stage, spec.source, spec.record_params()) is None
        record = run_stage(spec, load_encoder, runner_for)
        records.append((spec, record))
        write_run_report(pipeline.out, records)
        yield spec, record, fresh


def write_run_report(run: Path, records: list[tuple[StageSpec, StageRecord]]) -> Path:
    """RUN/report.html: one row per finished stage with its counts and a link to its own report."""
    rows = []
    for spec, r in records:
        dropped = ", ".join(f"{n:,} {k}" for k, n in r.counts["dropped"].items()) or "none"
        link = f"{spec.out.name}/{REPORT}"
        rows.append(f"<tr><td><a href='{html.escape(link)}'>{html.escape(spec.out.name)}</a></td>"
                    f"<td>{html.escape(r.model)}</td><td>{r.counts['input']:,}</td><td>{r.counts['kept']:,}</td>"
                    f"<td>{html.escape(dropped)}</td><td>{r.seconds:.1f}s</td></tr>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>retr curate run</title><style>"
            "body{font-family:system-ui,sans-serif;margin:24px}td,th{border:1px solid #ddd;padding:3px 8px}"
            "table{border-collapse:collapse}</style></head><body><h1>retr curate run</h1><table><tr><th>stage</th>"
            "<th>model</th><th>in</th><th>kept</th><th>dropped</th><th>time</th></tr>"
            + "".join(rows) + "</table></body></html>\n")
    path = Path(run) / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
