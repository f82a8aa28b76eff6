"""Read the rows of a (possibly memory-mapped) vector matrix in blocks of bounded size.

Out-of-core steps (on-disk index build, exact ground truth) walk `xb` block by block: each block is
copied into RAM, used, and dropped. When xb is a numpy memmap, the pages just copied would stay
mapped in this process: they are page cache the kernel can drop at any time, but they count in
the process' RSS (and in ru_maxrss), so a 20 GB input would look like a 20 GB process. After each
copy we therefore tell the kernel we are done with those pages (madvise MADV_DONTNEED): they leave
the process, stay in the page cache, and a later read maps them again. Arrays in RAM are untouched.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np


def block_bounds(n: int, block_rows: int) -> list[tuple[int, int]]:
    """[(lo, hi), ...] covering 0..n in blocks of at most block_rows."""
    if block_rows <= 0:
        raise ValueError(f"block_rows must be positive, got {block_rows}")
    return [(lo, min(lo + block_rows, n)) for lo in range(0, n, block_rows)]


def read_rows(xb: np.ndarray, rows: np.ndarray | None, lo: int, hi: int) -> np.ndarray:
    """A float32 C-contiguous copy of xb[rows[lo:hi]] (of xb[lo:hi] when rows is None).

    Mapped pages of xb that were read are released from this process afterwards (module docstring).
    """
    if rows is None:
        first, last = lo, hi - 1
        block = np.array(xb[lo:hi], dtype=np.float32, order="C")
    else:
        picked = np.asarray(rows[lo:hi])
        first, last = int(picked[0]), int(picked[-1])
        if last - first == len(picked) - 1 and np.all(np.diff(picked) == 1):  # contiguous: one slice
            block = np.array(xb[first : last + 1], dtype=np.float32, order="C")
        else:
            block = np.ascontiguousarray(xb[picked], dtype=np.float32)
            first, last = int(picked.min()), int(picked.max())
    release_mapped_rows(xb, first, last + 1)
    return block


def iter_blocks(xb: np.ndarray, rows: np.ndarray | None, block_rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(lo, hi, block) for consecutive blocks of xb[rows] (of xb when rows is None)."""
    n = len(xb) if rows is None else len(rows)
    for lo, hi in block_bounds(n, block_rows):
        yield lo, hi, read_rows(xb, rows, lo, hi)


def is_mapped(x: np.ndarray) -> bool:
    """Whether x's memory is a file mapping (np.memmap, np.load(mmap_mode=...), or a view of one)."""
    return _file_mapping(x)[0] is not None


def release_mapped_rows(x: np.ndarray, lo: int, hi: int) -> None:
    """Drop x[lo:hi]'s pages from this process if x is a shared file mapping; otherwise do nothing."""
    mm, mode = _file_mapping(x)
    # "c" (copy-on-write) mappings hold private edits that MADV_DONTNEED would throw away.
    if mm is None or mode == "c" or hi <= lo or x.ndim != 2 or not x.flags.c_contiguous:
        return
    start_addr = np.frombuffer(mm, np.uint8, count=1).ctypes.data  # where the mapping begins
    start = x.ctypes.data + lo * x.strides[0] - start_addr
    end = x.ctypes.data + hi * x.strides[0] - start_addr
    start -= start % mmap.PAGESIZE  # madvise wants a page-aligned start; the page is ours too
    mm.madvise(mmap.MADV_DONTNEED, start, end - start)


def _file_mapping(x: np.ndarray) -> tuple[mmap.mmap | None, str | None]:
    """(the mmap object under x, the np.memmap mode) by walking x's base chain; (None, None) if none."""
    mode = None
    obj: object = x
    while obj is not None:
        if isinstance(obj, np.memmap) and mode is None:
            mode = obj.mode
        if isinstance(obj, mmap.mmap):
            return obj, mode
        obj = getattr(obj, "base", None)
    return None, None
