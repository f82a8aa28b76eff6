"""The CLI as translation: arguments reach the library as typed config; errors exit 2 with a message."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from app import cli
from indexing.build import IndexConfig

runner = CliRunner()


def test_index_build_translates_options(monkeypatch, colour_folder, tmp_path):
    seen = {}

    def fake_build(items, out, encoder, config, *, source, progress):
        seen.update(items=items, out=out, encoder=encoder, config=config, source=source)
        raise ValueError("stop here")

    monkeypatch.setattr(cli.build_mod, "build_index", fake_build)
    monkeypatch.setattr(cli, "_load_encoder", lambda spec, device: f"encoder:{spec}:{device}")
    res = runner.invoke(cli.app, ["index", "build", str(colour_folder), "--out", str(tmp_path / "o"), "--shards", "3",
                                  "--max-memory", "512MB", "--target-recall", "0.9", "--model", "hf:/m",
                                  "--batch-size", "16", "--workers", "0", "--quiet"])
    assert res.exit_code == 2 and "stop here" in res.output
    cfg: IndexConfig = seen["config"]
    assert (cfg.shards, cfg.max_memory_bytes, cfg.target_recall) == (3, 512 * 2**20, 0.9)
    assert (cfg.embed.batch_size, cfg.embed.num_workers) == (16, 0)
    assert seen["encoder"] == "encoder:hf:/m:cpu"
    assert len(seen["items"]) == 42 and seen["out"] == tmp_path / "o"


def test_bad_memory_budget_is_a_clear_error(colour_folder, tmp_path):
    res = runner.invoke(cli.app, ["index", "build", str(colour_folder), "--out", str(tmp_path / "o"),
                                  "--max-memory", "lots"])
    assert res.exit_code == 2 and "lots" in res.output


def test_unknown_source_lists_corpora(tmp_path):
    res = runner.invoke(cli.app, ["index", "build", "no-such-corpus", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "neither an existing path nor a known corpus" in res.output


def test_search_json_and_batch_queries(monkeypatch, tmp_path):
    calls = []

    class FakeIndex:
        def search_batch(self, queries, *, k, where, target):
            calls.append((queries, k, where, target))
            return [cli.search_mod.SearchResult(q, [cli.search_mod.Hit(7, 0.5, "/a.png", "a cap")]) for q in queries]

        def close(self):
            pass

    monkeypatch.setattr(cli.search_mod, "open_index", lambda path: FakeIndex())
    res = runner.invoke(cli.app, ["search", str(tmp_path), "--text", "a cat", "-k", "3", "--where", "split='test'",
                                  "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"query": {"text": "a cat"},
                                      "results": [{"id": 7, "score": 0.5, "path": "/a.png", "caption": "a cap"}]}
    assert calls[-1][1:] == (3, "split='test'", "image")
    qfile = tmp_path / "q.jsonl"
    qfile.write_text('{"text": "a"}\n\n{"image_id": 4}\n')
    res = runner.invoke(cli.app, ["search", str(tmp_path), "--queries", str(qfile), "--target", "text"])
    lines = [json.loads(x) for x in res.output.strip().splitlines()]
    assert [x["query"] for x in lines] == [{"text": "a"}, {"image_id": 4}]
    assert calls[-1][3] == "text"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "image_id": 3}\n')
    res = runner.invoke(cli.app, ["search", str(tmp_path), "--queries", str(bad)])
    assert res.exit_code == 1 and "bad.jsonl:1" in json.loads(res.stdout.splitlines()[0])["error"]
    assert "1 of 1 queries failed" in res.output


def test_search_missing_index_is_clear(tmp_path: Path):
    res = runner.invoke(cli.app, ["search", str(tmp_path / "none"), "--text", "x"])
    assert res.exit_code == 2 and "not a retr index" in res.output


def test_index_build_replace_stale_keeps_a_current_index_and_rebuilds_a_stale_one(monkeypatch, colour_folder, tmp_path):
    from tests.conftest import PixelEncoder

    encoders = {"old": PixelEncoder(), "new": PixelEncoder()}
    encoders["old"].weights_id, encoders["new"].weights_id = "sha256:old", "sha256:new"
    monkeypatch.setattr(cli, "_load_encoder", lambda spec, device: encoders[spec])
    out = tmp_path / "idx"

    def build(weights: str) -> str:
        res = runner.invoke(cli.app, ["index", "build", str(colour_folder), "--out", str(out), "--model", weights,
                                      "--workers", "0", "--replace-stale", "--quiet"])
        assert res.exit_code == 0, res.output
        return res.output

    build("old")
    first = (out / "index.json").stat().st_mtime_ns
    assert "up to date" in build("old") and (out / "index.json").stat().st_mtime_ns == first
    assert "rebuilding" in build("new")
    assert json.loads((out / "index.json").read_text())["model_weights"] == "sha256:new"
    plain = runner.invoke(cli.app, ["index", "build", str(colour_folder), "--out", str(out), "--model", "new"])
    assert plain.exit_code == 2 and "already holds an index" in plain.output
