"""Every input item ends up indexed or in rejects.parquet with a reason: cut shards, looping links,
names that are not UTF-8, reserved column names, hostile file names. Built with the PixelEncoder."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from indexing.build import IndexConfig, build_index
from indexing.embed import EmbedConfig
from indexing.sources import list_items, read_source
from retrieval.search import open_index
from tests.conftest import COLOURS, PixelEncoder, colour_image

SMALL = IndexConfig(embed=EmbedConfig(batch_size=8, num_workers=0, chunk_size=16))


def _png(rgb: tuple[int, int, int], seed: int) -> bytes:
    buf = io.BytesIO()
    colour_image(rgb, seed).save(buf, format="PNG")
    return buf.getvalue()


def _build(items, out: Path):
    report = build_index(items, out, PixelEncoder(), SMALL, progress=False)
    return report, pq.read_table(out / "rejects.parquet").to_pylist()


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _shard(path: Path, n: int, *, meta: bool = False) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(n):
            rgb = list(COLOURS.values())[i % len(COLOURS)]
            _add_bytes(tf, f"{i:09d}.png", _png(rgb, i))
            _add_bytes(tf, f"{i:09d}.txt", f"sample {i}".encode())
            if meta:
                fields = {"url": f"https://example.org/{i}.png", "key": f"{i:09d}", "status": "success",
                          "width": 24, "similarity": 0.1 * i, "exif": {"Make": "x"}, "licence": ["cc-by", "4.0"]}
                _add_bytes(tf, f"{i:09d}.json", json.dumps(fields).encode())


def test_truncated_shard_is_reported_not_dropped(tmp_path: Path) -> None:
    whole = tmp_path / "whole.tar"
    _shard(whole, 6)
    data = whole.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])  # a download killed half-way
    items = list_items(str(tmp_path / "cut.tar"))
    report, rejects = _build(items, tmp_path / "idx")
    reasons = {r["reason"] for r in rejects}
    assert "truncated_shard" in reasons, rejects
    shard_reject = next(r for r in rejects if r["reason"] == "truncated_shard")
    assert "cut.tar" in shard_reject["message"] and "lost" in shard_reject["message"]
    assert report.manifest.n_items + report.manifest.n_rejected == len(items)
    # a whole shard has no such reject
    assert not any(it.problem for it in list_items(str(whole)))


def test_shard_that_is_not_a_tar_is_a_reject(tmp_path: Path) -> None:
    _shard(tmp_path / "a.tar", 3)
    (tmp_path / "b.tar").write_bytes(b"this is not a tar file at all" * 3)
    items = list_items(str(tmp_path / "*.tar"))
    report, rejects = _build(items, tmp_path / "idx")
    assert report.manifest.n_items == 3
    assert [r["reason"] for r in rejects] == ["unreadable_shard"]


def test_looping_and_dangling_links_and_bad_names_are_rejects(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "ok.png").write_bytes(_png((200, 10, 10), 1))
    os.symlink("loop-b.png", folder / "loop-a.png")
    os.symlink("loop-a.png", folder / "loop-b.png")
    os.symlink("missing.png", folder / "dangling.png")
    bad = os.fsencode(folder) + b"/caf\xe9.png"  # Latin-1 bytes: not a UTF-8 name
    with open(bad, "wb") as f:
        f.write(_png((10, 200, 10), 2))
    items = list_items(str(folder))
    assert len(items) == 5
    report, rejects = _build(items, tmp_path / "idx")
    assert report.manifest.n_items == 1
    by_reason = sorted((r["reason"], Path(r["path"]).name) for r in rejects)
    assert by_reason == [("bad_name", "caf\\xe9.png"), ("unreadable", "dangling.png"),
                         ("unreadable", "loop-a.png"), ("unreadable", "loop-b.png")]
    assert any("symbolic links" in r["message"] for r in rejects)
    assert "rename it" in next(r["message"] for r in rejects if r["reason"] == "bad_name")


def test_reserved_manifest_columns_are_renamed_with_a_note(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png((200, 10, 10), 1))
    rows = [{"image": "a.png", "caption": "red", "id": "src-7", "path": "/orig/a.png", "segment": "s1",
             "source_id": "taken"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    listing = read_source(str(tmp_path / "m.parquet"))
    assert listing.items[0].extra == {"source_id_2": "src-7", "source_path": "/orig/a.png",
                                      "source_segment": "s1", "source_id": "taken"}
    assert any("'id' is stored as 'source_id_2'" in n for n in listing.notes)
    _build(listing.items, tmp_path / "idx")
    idx = open_index(tmp_path / "idx", encoder_factory=lambda s: PixelEncoder())
    row = idx.meta.rows([0], ("id", "path", "source_id_2", "source_path", "segment"))[0]
    assert row["source_id_2"] == "src-7" and row["source_path"] == "/orig/a.png" and row["segment"] == "seg-000"
    assert row["path"] == str((tmp_path / "a.png").resolve())


def test_empty_image_cell_is_a_reject(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png((200, 10, 10), 1))
    (tmp_path / "m.jsonl").write_text('{"image": "a.png", "caption": "x"}\n{"image": "", "caption": "y"}\n')
    _, rejects = _build(list_items(str(tmp_path / "m.jsonl")), tmp_path / "idx")
    assert [(r["reason"], r["path"].endswith("m.jsonl:row 2")) for r in rejects] == [("no_image", True)]


def test_webdataset_json_fields_become_filterable_metadata(tmp_path: Path) -> None:
    _shard(tmp_path / "00000.tar", 5, meta=True)
    listing = read_source(str(tmp_path / "*.tar"))
    assert any("'width' is stored as 'source_width'" in n for n in listing.notes)
    _build(listing.items, tmp_path / "idx")
    idx = open_index(tmp_path / "idx", encoder_factory=lambda s: PixelEncoder())
    cols = set(idx.meta.columns())
    assert {"url", "key", "status", "similarity", "source_width", "exif", "licence"} <= cols
    assert idx.meta.filter_ids("similarity > 0.25 AND status = 'success'").tolist() == [3, 4]
    hit = idx.search(image_id=2, k=1).results[0]
    assert hit.url == "https://example.org/2.png" and hit.to_json()["url"] == hit.url
    assert hit.caption == "sample 2"
    assert json.loads(idx.meta.rows([2], ("id", "exif"))[2]["exif"]) == {"Make": "x"}


AWKWARD = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=24
).filter(lambda s: s not in (".", "..") and len(s.encode()) < 200)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(AWKWARD, min_size=1, max_size=6, unique=True))
def test_folder_of_hostile_names_accounts_for_every_file(tmp_path_factory, names: list[str]) -> None:
    folder = tmp_path_factory.mktemp("hostile")
    for i, name in enumerate(names):
        (folder / f"{name}.png").write_bytes(_png(list(COLOURS.values())[i % len(COLOURS)], i))
        (folder / f"{name}.txt").write_text(f"[/i] :smile: {name}", encoding="utf-8")
    items = list_items(str(folder))
    assert len(items) == len(names)
    report, rejects = _build(items, folder.parent / (folder.name + "-idx"))
    assert report.manifest.n_items + len(rejects) == len(names)
    assert report.manifest.n_items == len(names)  # every name here is valid UTF-8: all indexed
    idx = open_index(folder.parent / (folder.name + "-idx"), encoder_factory=lambda s: PixelEncoder())
    got = sorted(Path(r["path"]).name for r in idx.meta.rows(idx.meta.all_ids().tolist()).values())
    assert got == sorted(f"{n}.png" for n in names)


@pytest.mark.parametrize("reserved", ["id", "path", "caption", "segment", "chunk", "row"])
def test_every_reserved_name_is_kept(tmp_path: Path, reserved: str) -> None:
    (tmp_path / "a.png").write_bytes(_png((200, 10, 10), 1))
    col = "caption_text" if reserved == "caption" else "caption"
    rows = [{"image": "a.png", col: "red", reserved: "mine"}]
    (tmp_path / "m.jsonl").write_text(json.dumps(rows[0]) + "\n")
    listing = read_source(str(tmp_path / "m.jsonl"))
    if reserved == "caption":  # the caption column is `caption` itself: not metadata
        assert listing.items[0].caption == "mine"
        return
    assert listing.items[0].extra[f"source_{reserved}"] == "mine"


def test_url_failures_are_rejects_with_their_reason(tmp_path: Path) -> None:
    """A manifest of URLs on a local server: a good image, an oversized body, a 404, a refused port."""
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    good = _png((200, 10, 10), 3)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/missing.png":
                self.send_error(404)
                return
            body = good if self.path == "/good.png" else b"\0" * (2 << 20)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    base = f"http://127.0.0.1:{server.server_address[1]}"
    rows = [f"{base}/good.png", f"{base}/huge.png", f"{base}/missing.png", f"http://127.0.0.1:{closed}/x.png"]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"image": u, "caption": "c"}) + "\n" for u in rows))
    from dataclasses import replace

    from indexing.download import DownloadLimits

    config = replace(SMALL, embed=replace(SMALL.embed, download=DownloadLimits(max_bytes=1 << 20, deadline_s=5,
                                                                                backoff_s=0.05)))
    try:
        report = build_index(list_items(str(tmp_path / "m.jsonl")), tmp_path / "idx", PixelEncoder(), config,
                             progress=False)
    finally:
        server.shutdown()
    rejects = {r["path"].rsplit("/", 1)[-1]: r for r in pq.read_table(tmp_path / "idx" / "rejects.parquet").to_pylist()}
    assert report.manifest.n_items == 1
    assert {k: r["reason"] for k, r in rejects.items()} == {
        "huge.png": "download_too_large", "missing.png": "download_http_error", "x.png": "download_failed"}
    assert "404" in rejects["missing.png"]["message"]
