"""Hostile data and concurrent writers against a real index: SQL from column names, filters that try
to read the machine, markup in captions and paths, one writer at a time, leftovers of killed writers,
readers that see only committed items, and bounds on k and ids."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from app import cli
from indexing import build as build_mod
from indexing.build import IndexConfig, add_to_index, build_index
from indexing.embed import EmbedConfig
from indexing.lock import IndexBusyError, writer_lock
from indexing.sources import list_items
from retrieval.search import open_index
from tests.conftest import COLOURS, PixelEncoder, colour_image, write_colour_folder

ROOT = Path(__file__).resolve().parent.parent
SMALL = IndexConfig(embed=EmbedConfig(batch_size=8, num_workers=0, chunk_size=16))
runner = CliRunner()


def _index(tmp_path: Path, per_colour: int = 2) -> Path:
    folder = tmp_path / "imgs"
    write_colour_folder(folder, per_colour=per_colour, bad=False)
    out = tmp_path / "idx"
    build_index(list_items(str(folder)), out, PixelEncoder(), SMALL, progress=False)
    return out


def _manifest_with_column(folder: Path, column: str, value: str = "v") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    colour_image(COLOURS["red"], seed=5).save(folder / "x.png")
    path = folder / "m.parquet"
    pq.write_table(pa.table({"image": ["x.png"], "caption": ["a red square"], column: [value]}), path)
    return path


def test_column_name_cannot_inject_sql(tmp_path: Path) -> None:
    out = _index(tmp_path)
    pwned = tmp_path / "pwned.csv"
    name = f"x\" VARCHAR; COPY (SELECT 1) TO '{pwned}'; ALTER TABLE items ADD COLUMN \"y"
    add_to_index(list_items(str(_manifest_with_column(tmp_path / "m", name))), out, PixelEncoder(), SMALL,
                 progress=False)
    assert not pwned.exists()
    idx = open_index(out, encoder_factory=lambda s: PixelEncoder())
    assert name in idx.meta.columns()
    quoted = '"' + name.replace('"', '""') + '"'
    assert len(idx.meta.filter_ids(f"{quoted} = 'v'")) == 1  # the odd column is data, and filterable


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                    min_size=1, max_size=40))
def test_any_column_name_is_stored_as_data(tmp_path_factory, name: str) -> None:
    tmp = tmp_path_factory.mktemp("col")
    out = _index(tmp, per_colour=1)
    add_to_index(list_items(str(_manifest_with_column(tmp / "m", name, "hostile"))), out, PixelEncoder(), SMALL,
                 progress=False)
    idx = open_index(out, encoder_factory=lambda s: PixelEncoder())
    stored = next(c for c in idx.meta.columns() if c == name or c.startswith("source_"))
    assert idx.meta.count() == 11
    assert idx.meta.rows([10], ("id", stored))[10][stored] == "hostile"
    assert sorted(p.name for p in tmp.iterdir()) == ["idx", "imgs", "m"]  # nothing written beside


@pytest.mark.parametrize("where", [
    "id IN (SELECT 1 FROM read_csv('/etc/passwd'))",
    "glob('/root/*') IS NOT NULL",
    "CAST(path AS INTEGER) = 1",
    "caption = 'x'; COPY (SELECT 1) TO '/tmp/retr-pwned.csv'",
    "path = 'a' OR id IN (SELECT * FROM read_text('/etc/hostname'))",
    "caption = (SELECT current_setting('home_directory'))",
    "INSTALL httpfs",
])
def test_filters_cannot_reach_the_machine(tmp_path: Path, where: str) -> None:
    out = _index(tmp_path)
    idx = open_index(out, encoder_factory=lambda s: PixelEncoder())
    with pytest.raises(ValueError, match="bad --where filter") as e:
        idx.search(text="red", k=3, where=where)
    assert "root:" not in str(e.value)  # nothing of /etc/passwd
    assert not Path("/tmp/retr-pwned.csv").exists()
    assert len(idx.search(text="red", k=3).results) == 3  # and the index still answers


def test_cast_errors_echo_nothing_from_disk(tmp_path: Path) -> None:
    out = _index(tmp_path)
    idx = open_index(out, encoder_factory=lambda s: PixelEncoder())
    with pytest.raises(ValueError) as e:
        idx.search(text="red", k=3, where="width = 'contents of /etc/passwd'")
    assert "bad --where filter" in str(e.value)


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    out = _index(tmp_path)
    extra = tmp_path / "extra"
    write_colour_folder(extra, per_colour=1, bad=False)
    with writer_lock(out), pytest.raises(IndexBusyError, match=f"being written by PID {os.getpid()}"):
        add_to_index(list_items(str(extra)), out, PixelEncoder(), SMALL, progress=False)
    report = add_to_index(list_items(str(extra)), out, PixelEncoder(), SMALL, progress=False)
    assert report.manifest.n_items == 30


HOLDER = """
import sys, time
from pathlib import Path
from indexing.lock import writer_lock
with writer_lock(Path(sys.argv[1])):
    Path(sys.argv[2]).write_text("held")
    time.sleep(60)
"""


def test_a_killed_writer_leaves_no_stale_lock(tmp_path: Path) -> None:
    out = _index(tmp_path)
    flag = tmp_path / "held"
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), str(flag)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 30
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        extra = tmp_path / "extra"
        write_colour_folder(extra, per_colour=1, bad=False)
        res = runner.invoke(cli.app, ["index", "add", str(out), str(extra), "--workers", "0", "--quiet"])
        assert res.exit_code == 2 and f"being written by PID {child.pid}" in res.output
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert add_to_index(list_items(str(extra)), out, PixelEncoder(), SMALL, progress=False).manifest.n_items == 30
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_leftover_temp_files_are_cleared_by_the_next_writer(tmp_path: Path) -> None:
    out = _index(tmp_path)
    leftovers = [out / ".index.json.a1b2.tmp", out / "shards" / ".image-001.faiss.x.tmp",
                 out / ".metadata.duckdb.q.tmp.wal", out / "embeddings" / "seg-000" / ".chunk-00001.parquet.z.tmp"]
    for p in leftovers:
        p.write_bytes(b"half")
    extra = tmp_path / "extra"
    write_colour_folder(extra, per_colour=1, bad=False)
    add_to_index(list_items(str(extra)), out, PixelEncoder(), SMALL, progress=False)
    assert not [p for p in leftovers if p.exists()]
    assert not list(out.rglob("*.tmp"))


def test_readers_see_only_committed_items(tmp_path: Path, monkeypatch) -> None:
    out = _index(tmp_path)
    extra = tmp_path / "extra"
    write_colour_folder(extra, per_colour=1, bad=False)
    for p in extra.rglob("*.txt"):
        p.write_text("a late square")

    def killed(*a, **kw):
        raise KeyboardInterrupt("killed between the metadata and index.json")

    monkeypatch.setattr(build_mod, "write_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        add_to_index(list_items(str(extra)), out, PixelEncoder(), SMALL, progress=False)
    idx = open_index(out, encoder_factory=lambda s: PixelEncoder())
    assert idx.meta.count() == 20
    assert idx.search(text="red", k=50, where="caption LIKE '%late%'").results == []
    with pytest.raises(ValueError, match="no indexed item"):
        idx.search(image_id=25, k=1)
    idx.close()
    monkeypatch.undo()
    report = add_to_index(list_items(str(extra)), out, PixelEncoder(), SMALL, progress=False)
    assert report.manifest.n_items == 30
    idx = open_index(out, encoder_factory=lambda s: PixelEncoder())
    assert len(idx.search(text="red", k=50, where="caption LIKE '%late%'").results) == 10


def test_k_and_ids_are_bounded(tmp_path: Path) -> None:
    out = _index(tmp_path)
    idx = open_index(out, encoder_factory=lambda s: PixelEncoder())
    assert len(idx.search(text="red", k=100_000_000_000).results) == 20
    assert len(idx.search(text="red", k=100_000_000_000, where="caption LIKE '%red%'").results) == 2
    with pytest.raises(ValueError, match="no indexed item"):
        idx.search(image_id=99999999999999999999, k=1)
    with pytest.raises(ValueError, match="k must be"):
        idx.search(text="red", k=0)
    res = runner.invoke(cli.app, ["search", str(out), "--image-id", "99999999999999999999", "-k", "100000000000"])
    assert res.exit_code == 2 and "no indexed item" in res.output


def test_batch_queries_report_bad_lines_and_answer_the_rest(tmp_path: Path, monkeypatch) -> None:
    import retrieval.encoders

    monkeypatch.setattr(retrieval.encoders, "load_encoder", lambda spec, **kw: PixelEncoder())
    out = _index(tmp_path)
    q = tmp_path / "q.jsonl"
    q.write_bytes(b'{"image_id": 0}\nnot json\n{"image_id": 99999}\n{"image": "/no/such.png"}\n'
                  b'\xff\xfe\n{"image_id": 1, "text": "x"}\n{"image_id": 3}\n')
    res = runner.invoke(cli.app, ["search", str(out), "--queries", str(q), "-k", "2"])
    assert res.exit_code == 1
    lines = [json.loads(x) for x in res.stdout.strip().splitlines()]
    assert len(lines) == 7
    assert [x["results"][0]["id"] for x in (lines[0], lines[6])] == [0, 3]
    errors = {x["line"]: x["error"] for x in lines if "error" in x}
    assert sorted(errors) == [2, 3, 4, 5, 6]
    assert f"{q}:2" in errors[2] and "no indexed item" in errors[3] and "/no/such.png" in errors[4]
    assert errors[3].startswith(f"{q}:3: ")
    assert "UTF-8" in errors[5] and "exactly one" in errors[6]


PRINTABLE = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"))
CAPTION = st.text(alphabet=st.sampled_from(list("[]/:ib ")) | PRINTABLE, min_size=1, max_size=30).filter(
    lambda s: s.strip() and s.strip() == s)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(caption=CAPTION)
def test_table_prints_captions_and_paths_literally(tmp_path_factory, caption: str) -> None:
    tmp = tmp_path_factory.mktemp("markup")
    folder = tmp / "imgs"
    folder.mkdir()
    colour_image(COLOURS["red"], seed=1).save(folder / "[x] :smile: [bold]y[i].png")
    (folder / "[x] :smile: [bold]y[i].txt").write_text(caption)
    build_index(list_items(str(folder)), tmp / "idx", PixelEncoder(), SMALL, progress=False)
    res = runner.invoke(cli.app, ["search", str(tmp / "idx"), "--image-id", "0", "-k", "1"],
                        env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    assert caption in res.stdout
    assert "[x] :smile: [bold]y[i].png" in res.stdout


def test_error_messages_keep_brackets_and_colons(tmp_path: Path) -> None:
    res = runner.invoke(cli.app, ["search", str(tmp_path / "[bold]:smile:[/i]"), "--text", "x"],
                        env={"COLUMNS": "400"})
    assert res.exit_code == 2
    assert "[bold]:smile:[/i]" in res.output and "😄" not in res.output
