"""Build an IVF shard whose inverted lists live in a file next to it, out of core.

An in-RAM IVF index holds every code in memory. Here the codes and ids go to X.ivfdata next to
X.faiss (faiss OnDiskInvertedLists; `faiss_build.read_index` maps it read-only, so a search reads
only the pages of the lists it probes), and the build holds one block of vectors at a time:

    1. add: each block of `block_rows` vectors goes into a copy of the trained, empty index (a
       small in-RAM IVF with the shared quantizer) that is written as a block file;
    2. merge: the block files are mapped (IO_FLAG_MMAP) and their lists concatenated, list by
       list, into X.ivfdata, in the layout `OnDiskInvertedLists.set_all_lists_sizes` describes
       (each list: its codes, then its ids);
    3. X.faiss: the trained index with OnDiskInvertedLists describing that file.

Peak RSS is the quantizer + one block + faiss' add buffers, whatever n (indexing.choose
`estimate_ondisk`). This is faiss contrib/ondisk.py's `merge_ondisk`, written out: that function
keeps every block mapped for the life of the process (it disowns their lists), and
`OnDiskInvertedLists.merge_from_multiple` printf()s to stdout and leaves the whole file marked as
free space in the lists' slot table.

Kill-safety follows the rest of the build. Block files are written atomically into
.X.blocks/ beside the shard, under a job.json naming the trained index, the ids and the block
size: a rerun keeps the blocks of the same job and adds only the missing ones, and starts over
on any mismatch. X.ivfdata, then X.faiss, are written to temp names and renamed; the block
folder is removed last. Nothing is searched until index.json names the shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from indexing.atomic import atomic_path, write_json
from indexing.choose import ONDISK_BLOCK_ROWS
from indexing.faiss_build import add_to_clone, lists_path, read_index, write_index_atomic
from indexing.row_blocks import block_bounds, read_rows

JOB_VERSION = 1  # bump when the block files' meaning changes: older block folders are then rebuilt

# Called after each block file is on disk with (blocks done, blocks in all): progress, and tests.
BlockHook = Callable[[int, int], None]


def build_ondisk(
    trained: faiss.Index,
    xb: np.ndarray,
    ids: np.ndarray,
    path: str | os.PathLike,
    *,
    rows: np.ndarray | None = None,
    block_rows: int = ONDISK_BLOCK_ROWS,
    on_block: BlockHook | None = None,
) -> faiss.Index:
    """Write the shard xb[rows] (all of xb when rows is None) under `ids` to `path` + its lists file.

    `trained` is the empty trained IVF index every shard shares (faiss_build.train_empty); it is not
    modified. xb may be memory-mapped: it is read one block at a time, and each block is added on
    the CPU (faiss_build.add_to_clone). Returns the shard opened for search, as `read_index(path)`.
    """
    path = Path(path)
    n = len(xb) if rows is None else len(rows)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    ivf = faiss.try_extract_index_ivf(trained)
    if ivf is None or not trained.is_trained or trained.ntotal:
        raise ValueError("build_ondisk needs an empty, trained IVF index (see faiss_build.train_empty)")
    if n == 0 or ids.shape != (n,):
        raise ValueError(f"need a non-empty shard and one id per row: {n} rows, ids of shape {ids.shape}")
    if xb.ndim != 2 or xb.shape[1] != trained.d:
        raise ValueError(f"xb must have shape (n, {trained.d}), got {xb.shape}")
    bounds = block_bounds(n, block_rows)
    blocks_dir = path.parent / f".{path.stem}.blocks"
    _start_job(blocks_dir, _job(trained, xb, rows, ids, bounds))
    block_files = []
    for b, (lo, hi) in enumerate(bounds):
        block_file = blocks_dir / f"block-{b:05d}.faiss"
        if not block_file.exists():  # written atomically: present means complete
            block = add_to_clone(trained, read_rows(xb, rows, lo, hi), ids[lo:hi])
            write_index_atomic(block, block_file)
            del block
        block_files.append(block_file)
        if on_block is not None:
            on_block(b + 1, len(bounds))
    sizes = _merge_lists(block_files, ivf.nlist, ivf.code_size, lists_path(path))
    write_index_atomic(_ondisk_index(trained, sizes, lists_path(path).name), path)
    shutil.rmtree(blocks_dir)
    return read_index(path)


def _job(trained: faiss.Index, xb: np.ndarray, rows: np.ndarray | None, ids: np.ndarray, bounds: list) -> dict:
    """What the block files depend on: a rerun reuses them only if every field is equal."""
    probe = np.stack([read_rows(xb, rows, lo, lo + 1)[0] for lo, _ in bounds])  # each block's first row
    return {
        "version": JOB_VERSION,
        "trained_sha256": hashlib.sha256(faiss.serialize_index(trained).tobytes()).hexdigest(),
        "bounds": [list(b) for b in bounds],
        "ids_sha256": hashlib.sha256(ids.tobytes()).hexdigest(),
        "first_rows_sha256": hashlib.sha256(probe.tobytes()).hexdigest(),
    }


def _start_job(blocks_dir: Path, job: dict) -> None:
    job_file = blocks_dir / "job.json"
    if job_file.exists() and json.loads(job_file.read_text()) == job:
        return  # resume: keep the blocks a killed run of this same job finished
    if blocks_dir.exists():
        shutil.rmtree(blocks_dir)
    write_json(job_file, job)


def _merge_lists(block_files: list[Path], nlist: int, code_size: int, out: Path) -> np.ndarray:
    """Concatenate the blocks' lists into `out` (atomically); returns each list's size."""
    blocks = [read_index(f, mmap=True) for f in block_files]  # lists mapped, not read into RAM
    invlists = [faiss.extract_index_ivf(b).invlists for b in blocks]
    sizes = np.array([[il.list_size(j) for j in range(nlist)] for il in invlists], dtype=np.int64)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        for j in range(nlist):
            holders = [(il, int(s)) for il, s in zip(invlists, sizes[:, j], strict=True) if s]
            for il, s in holders:
                f.write(faiss.rev_swig_ptr(il.get_codes(j), s * code_size))
            for il, s in holders:
                f.write(faiss.rev_swig_ptr(il.get_ids(j), s))
    del invlists, blocks  # unmaps the block files
    return sizes.sum(axis=0)


def _ondisk_index(trained: faiss.Index, sizes: np.ndarray, lists_name: str) -> faiss.Index:
    """A copy of `trained` whose lists are `sizes` entries each in the file `lists_name`.

    Only the file's name is stored: read_index looks for it next to the index file."""
    index = faiss.clone_index(trained)
    ivf = faiss.extract_index_ivf(index)
    invlists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, lists_name)
    sizes_t = np.ascontiguousarray(sizes, dtype=np.uint64)  # kept alive: swig_ptr does not hold it
    invlists.set_all_lists_sizes(faiss.swig_ptr(sizes_t))
    invlists.totsize = int(sizes.sum()) * (ivf.code_size + 8)  # codes + int64 ids
    ivf.replace_invlists(invlists, True)
    invlists.this.disown()  # the index owns (and frees) its lists now
    ivf.ntotal = index.ntotal = int(sizes.sum())
    return index
