"""`retr search`: one query from the options, or a JSONL file of them answered line by line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from app.console import fail, out_console, say
from retrieval import search as search_mod
from retrieval.distributed_search import ShardUnavailableError
from retrieval.rerank.rerank import MAX_RERANK

RayFlag = Annotated[bool, typer.Option(
    "--ray", help="Hold the index's shards on Ray actors (one per shard) and fan each search out to them; "
    "without --ray-address it starts a local cluster (needs `pip install 'retr[distributed]'`; docs/scale.md).")]
RayAddress = Annotated[str | None, typer.Option(
    help="Ray cluster whose actors hold the shards (implies --ray): auto for `ray start --head` on this "
    "machine, or ray://HOST:10001.")]


RayReplicas = Annotated[int, typer.Option(
    help="With --ray: actors holding each shard; searches take turns among them and step over one that is down.",
    min=1, max=64)]
RayShardsPerActor = Annotated[int, typer.Option(help="With --ray: consecutive shards one actor holds.", min=1)]
RayConcurrency = Annotated[int, typer.Option(
    help="With --ray: searches one actor runs at once (threads).", min=1, max=64)]
SearchDevice = Annotated[str, typer.Option(
    help="cpu, or cuda: the model on the GPU and the shards faiss can search there (IVF, Flat; needs "
    "`pip install 'retr[gpu]'`, docs/scale.md).")]


def shard_opener(ray: bool, ray_address: str | None, device: str = "cpu", *, replicas: int = 1,
                 shards_per_actor: int = 1, concurrency: int = 1):
    """The `shards=` opener --ray / --ray-address (and their --ray-* settings) / --device cuda ask for;
    None: shards in this process."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {device!r}")
    if (replicas, shards_per_actor, concurrency) != (1, 1, 1) and not (ray or ray_address):
        raise ValueError("--ray-replicas, --ray-shards-per-actor and --ray-concurrency set how Ray actors hold "
                         "the shards: add --ray (or --ray-address)")
    if device == "cuda":
        if ray or ray_address:
            raise ValueError("--device cuda holds the shards on this machine's GPU; Ray actors search on their "
                             "CPUs: use one or the other")
        from retrieval.gpu_shards import gpu_shards

        return gpu_shards()
    if not (ray or ray_address):
        return None
    from retrieval.distributed_search import RaySearchConfig, ray_shards

    return ray_shards(RaySearchConfig(address=ray_address, replicas=replicas, shards_per_actor=shards_per_actor,
                                      concurrency=concurrency))


def encoder_on(device: str):
    """The `encoder_factory=` for --device: None (the default, the CPU) or one loading the model there."""
    if device == "cpu":
        return None
    from retrieval.encoders import load_encoder

    return lambda spec: load_encoder(spec, device=device)


@dataclass(frozen=True)
class _QueryLine:
    """One line of a --queries file: a query, or why that line is not one."""

    line: int
    query: search_mod.Query | None = None
    error: str | None = None

    def error_json(self) -> dict:
        return {"line": self.line, "error": self.error}


def _parse_query_line(path: Path, n: int, raw: bytes) -> _QueryLine:
    where = f"{path}:{n}"
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return _QueryLine(n, error=f"{where}: not UTF-8 text")
    except json.JSONDecodeError as e:
        return _QueryLine(n, error=f"{where}: not JSON ({e.msg} at column {e.colno})")
    if not isinstance(obj, dict):
        return _QueryLine(n, error=f'{where}: expected an object like {{"text": ...}}, got {type(obj).__name__}')
    unknown = sorted(set(obj) - {"text", "image", "image_id"})
    if unknown:
        return _QueryLine(n, error=f"{where}: unknown keys {unknown}; a query has one of text, image, image_id")
    try:
        query = search_mod.Query(text=obj.get("text"), image=obj.get("image"), image_id=obj.get("image_id"))
    except ValueError as e:
        return _QueryLine(n, error=f"{where}: {e}")
    return _QueryLine(n, query)


def _read_queries(path: Path) -> list[_QueryLine]:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read queries file {path}: {e.strerror or e}") from e
    return [_parse_query_line(path, n, raw) for n, raw in enumerate(data.splitlines(), 1) if raw.strip()]


def _run_queries(
    idx: search_mod.RetrievalIndex, path: Path, lines: list[_QueryLine], **kw
) -> list[_QueryLine | search_mod.SearchResult]:
    """Results in line order. One batch when every query runs; if one fails (an unreadable query
    image, an unknown id), each runs alone so the others still get their results."""
    good = [q for q in lines if q.query is not None]
    try:
        done = dict(zip((q.line for q in good), idx.search_batch([q.query for q in good], **kw), strict=True))
    except ValueError:
        done = {}
        for q in good:
            try:
                done[q.line] = idx.search_batch([q.query], **kw)[0]
            except ValueError as e:
                done[q.line] = _QueryLine(q.line, error=f"{path}:{q.line}: {e}")
    return [done.get(q.line, q) for q in lines]


def _print_table(result: search_mod.SearchResult) -> None:
    table = Table(title=Text(json.dumps(result.query.to_json(), ensure_ascii=False)))
    reranked = any(h.itc is not None for h in result.results)
    for col in ("rank", "id", "score", *(("itc", "itm") if reranked else ()), "caption", "path"):
        table.add_column(col)
    for rank, h in enumerate(result.results, 1):
        pair = (_cell(h.itc), _cell(h.itm)) if reranked else ()
        table.add_row(str(rank), str(h.id), f"{h.score:.3f}", *pair, Text(h.caption or ""), Text(h.path))
    out_console().print(table)


def _cell(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def search(
    index: Annotated[Path, typer.Argument(help="Index folder.")],
    text: Annotated[str | None, typer.Option(help="Text query (text→image).")] = None,
    image: Annotated[Path | None, typer.Option(help="Query image file (image→image).")] = None,
    image_id: Annotated[int | None, typer.Option(help="Id of an indexed image (image→image).")] = None,
    queries: Annotated[Path | None, typer.Option(
        help="JSONL file of queries; one JSON result line each, or {\"line\", \"error\"} for a bad line "
             "(exit 1 if any).")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Results per query (more than the index holds: all).")] = 10,
    where: Annotated[str | None, typer.Option(
        help="Metadata filter, e.g. \"split = 'test' AND caption LIKE '%cat%'\" (docs/filters.md).")] = None,
    target: Annotated[str, typer.Option(help="image (find images) or text (image→text: find captions).")] = "image",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    rerank: Annotated[int, typer.Option(
        help="Re-score the top K text→image hits with --reranker (ITM); fetches max(k, K), shows k.",
        min=0, max=MAX_RERANK)] = 0,
    reranker: Annotated[str | None, typer.Option(
        help="Reranker spec for --rerank: hf:DIR (a BLIP ITM checkpoint) or retr:itm.")] = None,
    ray: RayFlag = False,
    ray_address: RayAddress = None,
    ray_replicas: RayReplicas = 1,
    ray_shards_per_actor: RayShardsPerActor = 1,
    ray_concurrency: RayConcurrency = 1,
    device: SearchDevice = "cpu",
) -> None:
    """Search INDEX by text, image or indexed image id."""
    try:
        if queries is not None:
            if any(x is not None for x in (text, image, image_id)):
                raise ValueError("--queries cannot be combined with --text/--image/--image-id")
            lines = _read_queries(queries)
        else:
            query = search_mod.Query(text=text, image=str(image) if image else None, image_id=image_id)
            lines = [_QueryLine(1, query)]
        if rerank and reranker is None:
            raise ValueError("--rerank needs --reranker SPEC (hf:DIR holding a BLIP ITM checkpoint, or retr:itm)")
        # reranking, Ray and GPU options reach the library only when given: a plain search is the call it always was
        shards = shard_opener(ray, ray_address, device, replicas=ray_replicas, shards_per_actor=ray_shards_per_actor,
                              concurrency=ray_concurrency)
        on_device = encoder_on(device)
        idx = search_mod.open_index(index, *([on_device] if on_device else []),
                                    **({"reranker": reranker} if reranker else {}),
                                    **({"shards": shards} if shards else {}))
        try:
            kw = {"k": k, "where": where, "target": target, **({"rerank": rerank} if rerank else {})}
            if rerank:
                _ = idx.reranker  # a spec that does not load fails the command, not each query line
            if queries is None:
                results = idx.search_batch([lines[0].query], **kw)
            else:
                results = _run_queries(idx, queries, lines, **kw)
        finally:
            idx.close()
    except (ValueError, FileNotFoundError, ShardUnavailableError) as e:  # the last: a Ray shard down for good
        raise fail(str(e)) from e
    failed = 0
    for r in results:
        if isinstance(r, _QueryLine):
            failed += 1
            typer.echo(json.dumps(r.error_json(), ensure_ascii=False))
        elif as_json or queries is not None:
            typer.echo(json.dumps(r.to_json(), ensure_ascii=False))
        else:
            _print_table(r)
    if failed:
        say(("error:", "red"), f" {failed} of {len(results)} queries failed (their lines say why)")
        raise typer.Exit(code=1)
