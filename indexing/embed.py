"""Embed: items → unit-norm image (and caption) vectors in resumable chunk files.

The runner is handed the items, an encoder and a writer-side folder, and processes chunks of
`chunk_size` items. A chunk is the unit of resumption: its files are written atomically and its
metadata Parquet is written last, so a chunk either exists completely or is redone. Item i of
the source always lands in chunk i // chunk_size with id start_id + i, so a killed job rerun
with the same command ends with every item exactly once.

Every caption of an image gets a vector and a caption id (cid): the j-th caption of item i is
cid start_cid + (captions of items before i) + j, as stable across reruns as the ids. An image-only
encoder (`has_text` False) gets none: its chunks hold image vectors, and captions only as item metadata.

Decoding and preprocessing run in DataLoader workers, overlapping the model in the main process.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from indexing.atomic import remove_stale_temps, write_json, write_npy, write_parquet
from indexing.decode import DecodeError, DecodeLimits, decode_image
from indexing.download import DownloadLimits
from indexing.phash import phash
from indexing.sources import Item, read_item_bytes, source_fingerprint
from indexing.store import REJECT_SCHEMA, caption_table, chunk_paths, item_table, read_job
from retrieval.encoders.base import Encoder, ImagePreprocess
from retrieval.encoders.precision import check_embed_precision, embedding_autocast


@dataclass(frozen=True)
class EmbedConfig:
    batch_size: int = 64
    num_workers: int = 2  # decode/preprocess processes; 0 decodes in the main process
    chunk_size: int = 2048  # items per chunk file = the unit of resumption
    storage_dtype: str = "float16"  # float16 halves disk and RAM; cosine error ~1e-3
    precision: str = "fp32"  # fp16 autocast on CUDA only; bf16 on CUDA or CPU
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    download: DownloadLimits = field(default_factory=DownloadLimits)  # URL items: deadline, byte cap, retries

    def __post_init__(self) -> None:
        if self.storage_dtype not in ("float16", "float32"):
            raise ValueError(f"storage dtype must be float16 or float32, got {self.storage_dtype!r}")
        check_embed_precision(self.precision)
        if self.batch_size < 1 or self.chunk_size < 1 or self.num_workers < 0:
            raise ValueError("batch_size and chunk_size must be >= 1 and num_workers >= 0")


@dataclass(frozen=True)
class EmbedSummary:
    n_items: int
    n_embedded: int  # images embedded by this run (resumed chunks not counted)
    n_rejected: int  # rejects written by this run
    n_chunks: int
    n_chunks_resumed: int  # chunks found complete on disk and skipped
    seconds: float


@dataclass
class _Loaded:
    index: int
    pixels: torch.Tensor | None
    sha256: str = ""
    width: int = 0
    height: int = 0
    format: str = ""
    phash: int = 0  # perceptual hash of the decoded pixels (indexing.phash), for pixel-level dedup
    reason: str = ""
    message: str = ""


@dataclass
class _Batch:
    indices: list[int]  # positions in the item list, in order
    ok: list[_Loaded]
    rejected: list[_Loaded]
    pixels: torch.Tensor | None  # (B_ok, 3, H, W) uint8

    def pin_memory(self) -> _Batch:  # DataLoader(pin_memory=True) calls this on custom batch types
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


class _DecodeDataset(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[Item], preprocess: ImagePreprocess, config: EmbedConfig) -> None:
        self.items, self.preprocess, self.limits, self.download = items, preprocess, config.limits, config.download

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> _Loaded:
        item = self.items[i]
        try:
            data = read_item_bytes(item, download=self.download)
        except OSError as e:
            return _Loaded(i, None, reason=getattr(e, "reject_reason", "unreadable"), message=_os_message(item, e))
        sha = hashlib.sha256(data).hexdigest()
        try:
            dec = decode_image(data, name=item.path, limits=self.limits)
            pixels = self.preprocess.to_uint8(dec.image)  # normalised in the main process, see _embed_chunk
        except DecodeError as e:
            return _Loaded(i, None, sha256=sha, reason=e.reason, message=str(e))
        return _Loaded(i, pixels, sha256=sha, width=dec.width, height=dec.height, format=dec.format,
                       phash=phash(dec.image))


def _os_message(item: Item, e: OSError) -> str:
    """The error with the item it is about (a bare "[Errno 2] No such file" names nothing)."""
    text = str(e)
    if e.strerror and e.filename is None:
        return f"{item.path}: {e.strerror}"
    return text if item.path in text else f"{item.path}: {text}"


def _worker_init(_: int) -> None:
    # Decode workers do PIL/numpy work; one torch thread each leaves the cores to the model.
    torch.set_num_threads(1)


def _collate(loaded: list[_Loaded]) -> _Batch:
    ok = [x for x in loaded if x.pixels is not None]
    rejected = [x for x in loaded if x.pixels is None]
    pixels = torch.stack([x.pixels for x in ok]) if ok else None
    for x in ok:
        x.pixels = None  # the stacked tensor carries them; keep the rest light to pickle
    return _Batch([x.index for x in loaded], ok, rejected, pixels)


def _batches(pending_chunks: Sequence[int], n: int, chunk_size: int, batch_size: int) -> list[list[int]]:
    """Batches of item positions that never cross a chunk boundary."""
    out = []
    for c in pending_chunks:
        lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
        out.extend(list(range(s, min(hi, s + batch_size))) for s in range(lo, hi, batch_size))
    return out


def caption_offsets(items: Sequence[Item]) -> np.ndarray:
    """(n + 1,) cumulative caption counts: item i's captions are cids offsets[i]..offsets[i+1]-1 after start."""
    return np.concatenate([[0], np.cumsum([len(it.captions) for it in items], dtype=np.int64)]).astype(np.int64)


def _captions_fingerprint(items: Sequence[Item]) -> str:
    h = hashlib.sha256()
    for it in items:
        for c in it.captions:
            h.update(c.encode("utf-8", "surrogateescape") + b"\0")
        h.update(b"\1")
    return h.hexdigest()


def job_params(encoder: Encoder, items: Sequence[Item], config: EmbedConfig, start_id: int, start_cid: int) -> dict:
    return {
        "model": encoder.name,
        "dim": encoder.dim,
        "n_items": len(items),
        "fingerprint": source_fingerprint(items),
        "captions": _captions_fingerprint(items),  # a caption per vector: edited captions mean other vectors
        "start_id": start_id,
        "start_cid": start_cid,
        "chunk_size": config.chunk_size,
        "storage_dtype": config.storage_dtype,
        "limits": asdict(config.limits),
        **({"weights": encoder.weights_id} if encoder.weights_id else {}),
    }


def _check_or_write_job(folder: Path, params: dict) -> None:
    params = json.loads(json.dumps(params))  # compare as stored: tuples come back from JSON as lists
    existing = read_job(folder)
    if existing is None:
        write_json(folder / "job.json", params)
        return
    diff = {k: (existing.get(k), v) for k, v in params.items() if existing.get(k) != v}
    if diff:
        desc = "; ".join(f"{k}: on disk {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"{folder} holds an embedding job with different parameters ({desc}). "
            "Use another --out folder, or delete this one to start over."
        )


def embed_items(
    items: Sequence[Item],
    folder: Path,
    encoder: Encoder,
    config: EmbedConfig = EmbedConfig(),
    *,
    start_id: int = 0,
    start_cid: int = 0,
    progress: bool = True,
    embed_chunks: Callable[..., tuple[int, int]] | None = None,
) -> EmbedSummary:
    """Embed `items` into chunk files under `folder`, resuming whatever a previous run finished.

    `embed_chunks` (default `embed_chunk_files`, in this process) is who embeds the pending chunks: a
    distributor such as indexing.distributed.ray_embed hands the same calls to remote workers."""
    t0 = time.perf_counter()
    pending = prepare_embed_job(items, folder, encoder, config, start_id=start_id, start_cid=start_cid)
    n, cs = len(items), config.chunk_size
    n_chunks = (n + cs - 1) // cs
    bar = tqdm(total=pending_items(n, cs, pending), unit="img", desc="embed", disable=not progress, smoothing=0.1)
    with bar:
        n_embedded, n_rejected = (embed_chunks or embed_chunk_files)(
            items, folder, pending, encoder, config, start_id=start_id, start_cid=start_cid, on_batch=bar.update
        )
    return EmbedSummary(n, n_embedded, n_rejected, n_chunks, n_chunks - len(pending), time.perf_counter() - t0)


def prepare_embed_job(
    items: Sequence[Item], folder: Path, encoder: Encoder, config: EmbedConfig, *, start_id: int, start_cid: int
) -> list[int]:
    """Create or check `folder`'s job (refusing other parameters) and return the chunks not yet committed.

    Every runner (local, Ray) starts here, so both resume the same way. Only call while no worker writes."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    _check_or_write_job(folder, job_params(encoder, items, config, start_id, start_cid))
    n_chunks = (len(items) + config.chunk_size - 1) // config.chunk_size
    return [c for c in range(n_chunks) if not chunk_paths(folder, c).meta.exists()]


def pending_items(n: int, chunk_size: int, chunks: Sequence[int]) -> int:
    return sum(min(n, (c + 1) * chunk_size) - c * chunk_size for c in chunks)


def embed_chunk_files(
    items: Sequence[Item],
    folder: Path,
    chunks: Sequence[int],
    encoder: Encoder,
    config: EmbedConfig,
    *,
    start_id: int,
    start_cid: int,
    first_chunk: int = 0,
    on_batch: Callable[[int], object] = lambda n: None,
) -> tuple[int, int]:
    """Decode, embed and write `chunks` (each committed by its metadata file, written last).

    `items` start at chunk `first_chunk` of the job: the whole job's items (first_chunk 0) for the local
    runner, one chunk's slice for a remote worker; `start_id` / `start_cid` are the ids of items[0] and of
    its first caption. Returns (images embedded, items rejected)."""
    cs = config.chunk_size
    local = [c - first_chunk for c in chunks]
    loader = torch.utils.data.DataLoader(
        _DecodeDataset(items, encoder.preprocess, config),
        batch_sampler=_batches(local, len(items), cs, config.batch_size),
        num_workers=config.num_workers,
        collate_fn=_collate,
        worker_init_fn=_worker_init,
        persistent_workers=False,
        pin_memory=encoder.device.startswith("cuda"),  # page-locked batches: async host-to-device copies
    )
    n_embedded = n_rejected = 0
    ids = _Ids(start_id, start_cid, caption_offsets(items))
    for chunk, batches in _group_by_chunk(loader, cs):
        rows = _embed_chunk(batches, items, encoder, config, ids, on_batch=on_batch)
        _write_chunk(folder, first_chunk + chunk, rows, items, start_id, config)
        n_embedded += len(rows.ok)
        n_rejected += len(rows.rejected)
    return n_embedded, n_rejected


def _group_by_chunk(loader: Iterator[_Batch], chunk_size: int) -> Iterator[tuple[int, list[_Batch]]]:
    current, buf = None, []
    for batch in loader:
        c = batch.indices[0] // chunk_size
        if current is not None and c != current:
            yield current, buf
            buf = []
        current = c
        buf.append(batch)
    if current is not None:
        yield current, buf


@dataclass(frozen=True)
class _Ids:
    start_id: int
    start_cid: int
    offsets: np.ndarray  # caption_offsets(items)


@dataclass
class _ChunkRows:
    ok: list[_Loaded]
    rejected: list[_Loaded]
    image_vectors: np.ndarray
    text_vectors: np.ndarray  # one row per caption of the ok items, in order
    captions: pa.Table  # caption_table rows for text_vectors


def _embed_chunk(
    batches: list[_Batch],
    items: Sequence[Item],
    encoder: Encoder,
    config: EmbedConfig,
    ids: _Ids,
    on_batch: Callable[[int], object] = lambda n: None,
) -> _ChunkRows:
    """Vectors for one chunk's batches; `on_batch(n)` after each batch drives the progress bar."""
    ok, rejected, img, txt = [], [], [], []
    cids, owners, texts = [], [], []
    device = encoder.device
    for b in batches:
        rejected.extend(b.rejected)
        if not b.ok:
            on_batch(len(b.rejected))
            continue
        ok.extend(b.ok)
        batch_texts = []
        captioned = b.ok if encoder.has_text else []  # image-only models: no caption vectors, no caption rows
        for x in captioned:
            caps = items[x.index].captions
            cids.extend(range(ids.start_cid + int(ids.offsets[x.index]), ids.start_cid + int(ids.offsets[x.index + 1])))
            owners.extend([ids.start_id + x.index] * len(caps))
            batch_texts.extend(caps)
        with torch.inference_mode(), embedding_autocast(device, config.precision):
            pixels = encoder.preprocess.normalize(b.pixels.to(device, non_blocking=True))
            img.append(encoder.encode_pixels(pixels))
            if batch_texts:
                txt.append(np.asarray(encoder.encode_texts(batch_texts), np.float32))
        texts.extend(batch_texts)
        on_batch(len(b.ok) + len(b.rejected))
    dim = encoder.dim
    image_vectors = np.concatenate(img) if img else np.zeros((0, dim), np.float32)
    text_vectors = np.concatenate(txt) if txt else np.zeros((0, dim), np.float32)
    return _ChunkRows(ok, rejected, image_vectors, text_vectors, caption_table(cids, owners, texts))


def _write_chunk(
    folder: Path, chunk: int, rows: _ChunkRows, items: Sequence[Item], start_id: int, config: EmbedConfig
) -> None:
    paths = chunk_paths(folder, chunk)
    dtype = np.float16 if config.storage_dtype == "float16" else np.float32
    write_npy(paths.image, rows.image_vectors.astype(dtype))
    write_npy(paths.text, rows.text_vectors.astype(dtype))
    write_parquet(paths.captions, rows.captions)
    rejects = pa.table(
        {
            "path": [items[x.index].path for x in rows.rejected],
            "reason": [x.reason for x in rows.rejected],
            "message": [x.message for x in rows.rejected],
            "sha256": [x.sha256 for x in rows.rejected],
        },
        schema=REJECT_SCHEMA,
    )
    write_parquet(paths.rejects, rejects)
    # The metadata file is the chunk's commit marker: written last.
    write_parquet(paths.meta, item_table(rows.ok, items, start_id, chunk))
