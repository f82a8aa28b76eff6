"""A build killed with SIGKILL at any point, then rerun with the same command, holds every item exactly once.

The build runs in a real child process (the same `build_index` a CLI run calls) with an encoder
slowed down per batch, so the parent can kill it mid-chunk, mid-write or between chunks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from indexing.build import IndexConfig, build_index
from indexing.embed import EmbedConfig
from indexing.sources import list_items
from retrieval.search import open_index
from tests.conftest import PixelEncoder, sigkill_when, write_colour_folder

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import sys, time
from indexing.build import IndexConfig, build_index
from indexing.embed import EmbedConfig
from indexing.sources import list_items
from tests.conftest import PixelEncoder

class Slow(PixelEncoder):
    def encode_pixels(self, pixels):
        time.sleep(0.05)
        return super().encode_pixels(pixels)

folder, out = sys.argv[1], sys.argv[2]
config = IndexConfig(embed=EmbedConfig(batch_size=4, num_workers=0, chunk_size=8))
build_index(list_items(folder), out, Slow(), config, progress=False)
"""


def _committed_chunks(out: Path) -> int:
    return len(list((out / "embeddings" / "seg-000").glob("chunk-?????.parquet")))


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_chunks", [1, 4])
def test_sigkill_then_rerun_has_every_item_once(tmp_path: Path, kill_after_chunks: int) -> None:
    folder = tmp_path / "imgs"
    write_colour_folder(folder, per_colour=6)  # 60 good + 2 bad items -> 8 chunks of 8
    out = tmp_path / "idx"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder), str(out)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    sigkill_when(child, lambda: _committed_chunks(out) >= kill_after_chunks)
    done_before = _committed_chunks(out)
    assert kill_after_chunks <= done_before < 8
    assert not (out / "index.json").exists()

    encoder = PixelEncoder()
    config = IndexConfig(embed=EmbedConfig(batch_size=4, num_workers=0, chunk_size=8))
    report = build_index(list_items(str(folder)), out, encoder, config, progress=False)
    assert report.embed.n_chunks_resumed == done_before
    assert report.manifest.n_items == 60 and report.manifest.n_rejected == 2
    assert not list(out.rglob("*.tmp")), "temp files of the killed writer must be cleaned up"

    idx = open_index(out, encoder_factory=lambda spec: encoder)
    ids = idx.meta.all_ids()
    paths = [r["path"] for r in idx.meta.rows(ids.tolist()).values()]
    assert len(ids) == len(set(ids.tolist())) == 60
    assert len(paths) == len(set(paths)) == 60
    assert sum(s.n for s in idx.manifest.image.shards) == 60
    # every item is findable by its own stored vector (no lost or misaligned rows). Same-colour
    # images (6 per colour) are near-duplicates under this encoder: look among the top 6, all same-coloured.
    for i in ids[::7]:
        hits = idx.search(image_id=int(i), k=6).results
        assert int(i) in [h.id for h in hits] and hits[0].score > 0.999
        assert len({h.caption for h in hits}) == 1
