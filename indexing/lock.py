"""One writer per index folder: `retr index build` and `retr index add` hold an exclusive lock.

Two adds with different sources would each copy metadata.duckdb, append their own rows and replace
the file: both report success and the first one's rows are gone. The lock makes the second writer
fail at once with the holder's PID instead. It is an advisory `flock` on DIR/.writer.lock, which the
kernel drops when the holding process dies (kill -9 included), so a crashed writer never leaves a
stale lock behind. Readers never take it: they read the committed index.json and the files it names.

Taking the lock is also when a writer clears what a killed writer left: temp files from
`indexing.atomic` that never reached their rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".writer.lock"


class IndexBusyError(ValueError):
    """Another process is writing this index."""


def _holder(lock_file: Path) -> str:
    try:
        text = lock_file.read_text().strip()
    except OSError:
        return "another process"
    return f"PID {text}" if text.isdigit() else "another process"


@contextlib.contextmanager
def writer_lock(index_dir: Path, *, action: str = "write") -> Iterator[None]:
    """Hold the index's writer lock; IndexBusyError at once if another process holds it."""
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    path = index_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexBusyError(
                f"cannot {action} {index_dir}: the index is being written by {_holder(path)}; "
                "wait for that build or add to finish (readers can keep searching meanwhile)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        remove_leftovers(index_dir)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def check_unlocked(index_dir: Path, *, action: str = "write") -> None:
    """Fail fast, before minutes of model loading, when a writer is busy; the real guard is writer_lock."""
    if (Path(index_dir) / LOCK_NAME).exists():
        with writer_lock(index_dir, action=action):
            pass


def remove_leftovers(index_dir: Path) -> int:
    """Delete temp files (`.NAME.XXXX.tmp`, and DuckDB's `.wal` beside one) a killed writer left in
    the index folder and its sub-folders. Only call with the writer lock held."""
    n = 0
    for p in Path(index_dir).rglob(".*.tmp*"):
        if p.is_file() and (p.name.endswith(".tmp") or p.name.endswith(".tmp.wal")):
            p.unlink(missing_ok=True)
            n += 1
    return n
