"""Reranking (retrieval.rerank, issue #27): the score, the re-ordering, every surface, and the BLIP loader.

The index is tests.conftest's colour squares (two per colour; the white ones drawn inside a thin
black frame) plus one flat grey square. Embedded by PixelEncoder (a 4×4 thumbnail), "white" finds
the grey square first: normalised pixels of any flat grey point exactly the way white's do, while
the frame pulls the white squares' cosine down to ~0.7, below the pink ones. The fake
`ColourReranker` matches a colour word against the image's best-matching patch, as an ITM head
attends to the region that matches, and puts the white squares back on top: a known confusable
pair for the reranker to fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from app import cli, search_cli
from app.api import create_app
from indexing.build import IndexConfig, build_index
from indexing.embed import EmbedConfig
from indexing.sources import list_items
from retrieval.encoders.base import ImagePreprocess
from retrieval.evaluate import EvalPlan, evaluate
from retrieval.rerank import Reranker, combine, load_reranker, rerank_hits, retr_itm
from retrieval.search import Hit, open_index
from retrieval.service import IndexService
from tests.conftest import COLOURS, PixelEncoder, colour_image, write_colour_folder

GREY = (190, 190, 190)
SQUASH = ImagePreprocess(size=4, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), mode="squash")


@dataclass(eq=False)
class ColourReranker(Reranker):
    """P(match) = exp(-min over patches |patch - named colour|^2 / 0.1) in normalised pixels; 0.5 with no
    colour word."""

    name: str = "test:colour"
    weight: float = 0.5
    preprocess: ImagePreprocess = SQUASH
    forwards: list[int] = field(default_factory=list)  # batch size of each image_tokens call

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        self.forwards.append(len(pixels))
        return pixels.flatten(2).transpose(1, 2)  # (B, 3, 4, 4) -> (B, 16 patches, 3)

    def match_probability(self, text: str, tokens: torch.Tensor) -> np.ndarray:
        word = next((w for w in text.lower().split() if w in COLOURS), None)
        if word is None:
            return np.full(len(tokens), 0.5, np.float32)
        target = SQUASH(Image.new("RGB", (4, 4), COLOURS[word])).flatten(1).mean(1)  # (3,)
        dist = ((tokens - target) ** 2).sum(2).min(1).values  # (B,): the best patch
        return torch.exp(-dist / 0.1).numpy().astype(np.float32)


def framed_white(seed: int) -> Image.Image:
    """A white square inside a 2 px black frame."""
    image = np.asarray(colour_image(COLOURS["white"], seed)).copy()
    image[:2], image[-2:], image[:, :2], image[:, -2:] = (10, 10, 10), (10, 10, 10), (10, 10, 10), (10, 10, 10)
    return Image.fromarray(image)


@pytest.fixture(scope="module")
def colour_index(tmp_path_factory) -> tuple[Path, dict[int, str]]:
    """(index folder, id -> colour name; 'grey' for the flat grey square)."""
    root = tmp_path_factory.mktemp("rerank")
    paths = write_colour_folder(root / "colours", per_colour=2, bad=False)
    for j, p in enumerate(p for p in paths if p.stem.startswith("white")):
        framed_white(j).save(p)
    grey = root / "colours" / "cool" / "grey-0.png"
    Image.new("RGB", (24, 24), GREY).save(grey)
    paths.append(grey)
    manifest = root / "items.jsonl"
    manifest.write_text("".join(json.dumps({"image": str(p), "caption": f"a {p.stem.split('-')[0]} square"}) + "\n"
                                for p in paths))
    config = IndexConfig(embed=EmbedConfig(batch_size=8, num_workers=0, chunk_size=8))
    build_index(list_items(str(manifest)), root / "idx", PixelEncoder(), config, progress=False)
    return root / "idx", {i: p.stem.split("-")[0] for i, p in enumerate(paths)}


def _open(index_dir: Path, reranker: Reranker | None = None):
    return open_index(index_dir, encoder_factory=lambda spec: PixelEncoder(), reranker=reranker)


# --- the score ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("itc", "itm", "weight", "expected"), [
    (1.0, 1.0, 0.5, 1.0),  # both certain: the top of the scale
    (-1.0, 0.0, 0.5, 0.0),  # both against: the bottom
    (0.3, 0.9, 0.0, 0.65),  # weight 0: the cosine alone, on [0, 1]: same order as ITC
    (0.3, 0.9, 1.0, 0.9),  # weight 1: ITM alone (ALBEF)
    (0.2, 0.8, 0.25, 0.25 * 0.8 + 0.75 * 0.6),
    (0.2, float("nan"), 0.5, 0.3),  # unreadable image: ITM counts as 0
])
def test_combine_table(itc, itm, weight, expected):
    assert combine(np.array([itc]), np.array([itm]), weight)[0] == pytest.approx(expected)


@pytest.mark.parametrize("weight", [-0.1, 1.5, True, "0.5"])
def test_combine_rejects_weights_outside_0_1(weight):
    with pytest.raises(ValueError, match=r"weight must be a number in \[0, 1\]"):
        combine(np.zeros(1), np.zeros(1), weight)


# --- the re-ordering ------------------------------------------------------------------------------

def test_rerank_fixes_the_confusable_pair(colour_index):
    index_dir, colours = colour_index
    reranker = ColourReranker()
    idx = _open(index_dir, reranker)
    plain = idx.search(text="white", k=5)
    assert [colours[h.id] for h in plain.results] == ["grey", "pink", "pink", "white", "white"]  # ITC is fooled
    reranked = idx.search(text="white", k=5, rerank=5)
    assert [colours[h.id] for h in reranked.results] == ["white", "white", "grey", "pink", "pink"]
    assert {h.id for h in reranked.results} == {h.id for h in plain.results}
    assert reranker.forwards == [5]  # the K candidates' images in one forward pass
    top = reranked.results[0]
    assert top.itm > 0.8 and top.score == pytest.approx(combine(np.array([top.itc]), np.array([top.itm]), 0.5)[0])
    assert set(top.to_json()) == {"id", "score", "path", "caption", "itc", "itm"}
    assert set(plain.results[0].to_json()) == {"id", "score", "path", "caption"}  # the contract, unreranked


def test_rerank_shortlists_k_bigger_than_k_and_zero_is_a_no_op(colour_index):
    index_dir, colours = colour_index
    idx = _open(index_dir, ColourReranker())
    # rerank 8 > k 1: eight candidates fetched and reranked, the best one shown
    assert [colours[h.id] for h in idx.search(text="white", k=1, rerank=8).results] == ["white"]
    assert idx.search(text="white", k=4, rerank=0) == idx.search(text="white", k=4)
    everything = idx.search(text="red", k=100, rerank=256)  # more than the index holds: all, reranked
    assert len(everything.results) == len(colours) and all(h.itc is not None for h in everything.results)
    assert [colours[h.id] for h in everything.results[:2]] == ["red", "red"]
    # K < k: the top K re-ordered above the rest, which keep their ITC order and scores
    some = idx.search(text="white", k=7, rerank=5).results
    plain = idx.search(text="white", k=7).results
    assert [colours[h.id] for h in some[:5]] == ["white", "white", "grey", "pink", "pink"] and some[5:] == plain[5:]
    # K = 3 reranks only ITC's top three (grey, pink, pink): the white squares below are not looked at
    assert [colours[h.id] for h in idx.search(text="white", k=3, rerank=3).results] == ["grey", "pink", "pink"]


def test_rerank_with_a_filter_leaving_fewer_than_k(colour_index):
    index_dir, colours = colour_index
    idx = _open(index_dir, ColourReranker())
    res = idx.search(text="white", k=5, rerank=10, where="caption IN ('a white square', 'a grey square')")
    assert [colours[h.id] for h in res.results] == ["white", "white", "grey"]


def test_rerank_refuses_image_queries_and_needs_a_reranker(colour_index):
    index_dir, _ = colour_index
    idx = _open(index_dir, ColourReranker())
    with pytest.raises(ValueError, match="text queries only"):
        idx.search(image_id=0, k=3, rerank=3)
    with pytest.raises(ValueError, match="image→text cannot be reranked"):
        idx.search(text="red", k=3, rerank=3, target="text")
    with pytest.raises(ValueError, match="rerank must be an integer from 0 to 256"):
        idx.search(text="red", k=3, rerank=257)
    with pytest.raises(ValueError, match="rerank needs a reranker"):
        _open(index_dir).search(text="red", k=3, rerank=3)


def _fake_hits(scores: list[float]) -> list[Hit]:
    return [Hit(i, s, f"img-{i}", None) for i, s in enumerate(scores)]


class _HashReranker(ColourReranker):
    """P(match) from the image's first pixel: arbitrary, deterministic, different per candidate."""

    def match_probability(self, text: str, tokens: torch.Tensor) -> np.ndarray:
        return ((tokens[:, 0, 0] + 1) / 2).clamp(0, 1).numpy().astype(np.float32)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(scores=st.lists(st.floats(-1, 1), max_size=12), k=st.integers(0, 15), unreadable=st.sets(st.integers(0, 11)),
       weight=st.floats(0, 1))
def test_rerank_hits_never_drops_or_duplicates(scores, k, unreadable, weight):
    scores = sorted(scores, reverse=True)  # as the index hands them over
    hits = _fake_hits(scores)

    def load(path: str) -> Image.Image | None:
        i = int(path.split("-")[1])
        return None if i in unreadable else Image.new("RGB", (4, 4), (i * 20 % 256, 0, 0))

    out = rerank_hits(hits, "anything", _HashReranker(), k, weight=weight, image_loader=load)
    n = min(k, len(hits))
    assert sorted(h.id for h in out) == list(range(len(hits)))  # a permutation: nothing dropped or doubled
    assert {h.id for h in out[:n]} == set(range(n)) and out[n:] == hits[n:]  # the rest untouched, in order
    assert [h.score for h in out[:n]] == sorted((h.score for h in out[:n]), reverse=True)
    assert all((h.itm is None) == (h.id in unreadable) for h in out[:n])


# --- the registry ---------------------------------------------------------------------------------

def test_registry_explains_missing_and_unknown_rerankers(tmp_path, monkeypatch):
    monkeypatch.setattr(retr_itm, "CHECKPOINTS", tmp_path)
    with pytest.raises(ValueError, match="retr:itm: no ITM checkpoint in"):
        load_reranker("retr:itm")
    with pytest.raises(ValueError, match="unknown retr reranker 'nope'"):
        load_reranker("retr:nope")
    with pytest.raises(ValueError, match="unknown reranker family 'clip'"):
        load_reranker("clip:x")
    with pytest.raises(ValueError, match="must look like FAMILY:NAME"):
        load_reranker("itm")


# --- the surfaces ---------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_passes_rerank_and_reranker_through(monkeypatch, tmp_path):
    opened, calls = [], []

    class FakeIndex:
        reranker = "loaded"

        def search_batch(self, queries, **kw):
            calls.append(kw)
            return [search_cli.search_mod.SearchResult(q, [Hit(7, 0.9, "/a.png", "c", itc=0.3, itm=0.95)])
                    for q in queries]

        def close(self):
            pass

    monkeypatch.setattr(search_cli.search_mod, "open_index", lambda path, **kw: opened.append(kw) or FakeIndex())
    res = runner.invoke(cli.app, ["search", str(tmp_path), "--text", "a cat", "-k", "3", "--rerank", "16",
                                  "--reranker", "hf:/models/blip", "--json"])
    assert res.exit_code == 0, res.output
    assert opened[-1] == {"reranker": "hf:/models/blip"}
    assert calls[-1] == {"k": 3, "where": None, "target": "image", "rerank": 16}
    assert json.loads(res.output)["results"][0] == {"id": 7, "score": 0.9, "path": "/a.png", "caption": "c",
                                                    "itc": 0.3, "itm": 0.95}
    qfile = tmp_path / "q.jsonl"
    qfile.write_text('{"text": "a"}\n{"text": "b"}\n')
    res = runner.invoke(cli.app, ["search", str(tmp_path), "--queries", str(qfile), "--rerank", "4",
                                  "--reranker", "retr:itm"])
    assert res.exit_code == 0 and calls[-1]["rerank"] == 4
    res = runner.invoke(cli.app, ["search", str(tmp_path), "--text", "a", "--rerank", "4"])
    assert res.exit_code == 2 and "--rerank needs --reranker SPEC" in res.output
    res = runner.invoke(cli.app, ["search", str(tmp_path), "--text", "a", "--rerank", "257", "--reranker", "x:y"])
    assert res.exit_code == 2 and "less than or equal to 256" in res.output


def test_cli_search_reranks_for_real_and_refuses_an_image_query(colour_index, monkeypatch):
    index_dir, colours = colour_index
    monkeypatch.setattr("retrieval.rerank.load_reranker", lambda spec, device="cpu": ColourReranker())
    monkeypatch.setattr("retrieval.encoders.load_encoder", lambda spec, device="cpu": PixelEncoder())
    args = ["search", str(index_dir), "-k", "3", "--rerank", "5", "--reranker", "test:colour"]
    res = runner.invoke(cli.app, [*args, "--text", "white", "--json"])
    assert res.exit_code == 0, res.output
    assert [colours[h["id"]] for h in json.loads(res.output)["results"]] == ["white", "white", "grey"]
    res = runner.invoke(cli.app, [*args, "--image-id", "0"])
    assert res.exit_code == 2 and "text queries only" in res.output


@pytest.fixture(scope="module")
def api(colour_index):
    def client(reranker: Reranker | None) -> TestClient:
        service = IndexService(colour_index[0], encoder_factory=lambda spec: PixelEncoder())
        return TestClient(create_app([service], reranker=reranker))

    return client


def test_api_rerank_field(api, colour_index):
    colours = colour_index[1]
    with api(ColourReranker()) as c:
        r = c.post("/search", json={"text": "white", "k": 3, "rerank": 5})
        assert r.status_code == 200, r.text
        assert [colours[h["id"]] for h in r.json()["results"]] == ["white", "white", "grey"]
        assert {"itc", "itm"} <= set(r.json()["results"][0])
        r = c.post("/search/batch", json={"queries": [{"text": "white", "k": 1, "rerank": 8}, {"text": "white"}]})
        first, second = r.json()["results"]
        assert colours[first["results"][0]["id"]] == "white" and colours[second["results"][0]["id"]] == "grey"
        for bad in (-1, 257, "many"):
            r = c.post("/search", json={"text": "white", "rerank": bad})
            assert r.status_code == 422 and r.json()["message"].startswith("rerank:"), r.text
        for body in ({"image_id": 0, "rerank": 3}, {"text": "red", "target": "text", "rerank": 3}):
            r = c.post("/search", json=body)
            assert r.status_code == 422 and "text→image queries only" in r.json()["message"]
        r = c.post("/search", files={"image": ("q.png", b"\x89PNG", "image/png")}, data={"rerank": "3"})
        assert r.status_code == 422 and "text→image queries only" in r.json()["message"]
    with api(None) as c:
        r = c.post("/search", json={"text": "white", "rerank": 3})
        assert r.status_code == 400 and "no reranker" in r.json()["message"] and "--reranker" in r.json()["message"]
        assert c.post("/search", json={"text": "white", "rerank": 0}).status_code == 200


def test_ui_rerank_control_only_with_a_reranker(colour_index, monkeypatch):
    from streamlit.testing.v1 import AppTest

    script = str(Path(__file__).resolve().parents[1] / "app" / "ui" / "streamlit_app.py")
    monkeypatch.setenv("RETR_UI_INDEX", str(colour_index[0]))
    monkeypatch.setenv("RETR_UI_ENCODER", "tests.conftest:PixelEncoder")
    at = AppTest.from_file(script, default_timeout=30).run()
    assert not at.exception and not [s for s in at.slider if s.key == "rerank"]
    monkeypatch.setenv("RETR_UI_RERANKER", "tests.test_rerank:ColourReranker")
    at = AppTest.from_file(script, default_timeout=30).run()
    assert not at.exception
    at.slider(key="k").set_value(3)
    at.slider(key="rerank").set_value(5).run()
    at.text_input(key="q_text").input("white")
    next(b for b in at.button if b.label == "Search").click().run()
    lines = [c.value for c in at.caption if c.value.startswith("score ")]
    ids = [int(line.split("#")[1].split(" ")[0]) for line in lines]
    assert [colour_index[1][i] for i in ids] == ["white", "white", "grey"] and "itm" in lines[0]


# --- retr eval --rerank ----------------------------------------------------------------------------

def test_eval_reports_recall_with_and_without_reranking(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "corpus"
    folder.mkdir()
    rows = []
    for ci, (name, rgb) in enumerate([*COLOURS.items(), ("grey", GREY)]):
        path = folder / f"{name}.png"
        image = Image.new("RGB", (24, 24), rgb) if name == "grey" else colour_image(rgb, seed=ci)
        (framed_white(ci) if name == "white" else image).save(path)
        rows.append({"image": str(path), "caption": f"a {name} square", "key": name, "split": "test"})
    pq.write_table(pa.Table.from_pylist(rows), folder / "manifest.parquet")
    corpus = str(folder / "manifest.parquet")
    result = evaluate(PixelEncoder(), EvalPlan((corpus,), rerank=4), reranker=ColourReranker())
    # "a white square" ranks grey first by ITC and the reranker fixes it; no other query changes ("a grey
    # square" names no colour either model knows, so the reranker leaves its ITC order alone)
    plain, reranked = result.metrics[corpus], result.reranked[corpus]
    assert set(result.reranked) == {corpus} and set(reranked) == {"t2i_R@1", "t2i_R@5", "t2i_R@10"}
    assert reranked["t2i_R@1"] == pytest.approx(plain["t2i_R@1"] + 1 / 11)
    assert reranked["t2i_R@5"] == plain["t2i_R@5"] and reranked["t2i_R@10"] == plain["t2i_R@10"]
    with pytest.raises(ValueError, match="needs a reranker"):
        evaluate(PixelEncoder(), EvalPlan((corpus,), rerank=4))

    from app import models_cli

    monkeypatch.setattr(models_cli, "_load_encoder", lambda spec, device: PixelEncoder())
    monkeypatch.setattr("retrieval.rerank.load_reranker", lambda spec, device="cpu": ColourReranker())
    res = runner.invoke(cli.app, ["eval", "test:pixels", "--manifest", corpus, "--rerank", "4", "--reranker", "x:y",
                                  "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["test:pixels +rerank 4"] == result.reranked and out["test:pixels"] == result.metrics
    res = runner.invoke(cli.app, ["eval", "test:pixels", "--manifest", corpus, "--rerank", "4"])
    assert res.exit_code == 2 and "--rerank needs --reranker" in res.output
    res = runner.invoke(cli.app, ["eval", "test:pixels", "--manifest", corpus, "--rerank", "4", "--reranker", "x:y"])
    assert res.exit_code == 0 and "reranker x:y" in res.output  # the table, with its reranked column


# --- hf: BLIP ITM checkpoints ---------------------------------------------------------------------

BLIP_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "cat", "square", "photo", "of", "dog"]
TINY_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


def _save_blip(folder: Path, tmp_path: Path):
    from retrieval.encoders.torchvision_compat import allow_torchvision_without_ops

    allow_torchvision_without_ops()
    import transformers as t

    vocab = tmp_path / "blip-vocab"
    vocab.mkdir()
    (vocab / "vocab.txt").write_text("\n".join(BLIP_WORDS) + "\n")  # a real WordPiece tokenizer, offline
    tokenizer = t.BertTokenizer.from_pretrained(vocab, model_max_length=16)
    ids = dict(pad_token_id=0, bos_token_id=2, sep_token_id=3, eos_token_id=3)
    text = dict(TINY_TOWER, vocab_size=len(tokenizer), max_position_embeddings=16, **ids)
    config = t.BlipConfig(text_config=text, vision_config=dict(TINY_TOWER, image_size=32, patch_size=8),
                          image_text_hidden_size=16)
    model = t.BlipForImageTextRetrieval(config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # BLIP's own init leaves a tiny model's ITM output almost image-blind: spread it
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    image_processor = t.BlipImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD)
    t.BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    model.save_pretrained(folder)
    return model, tokenizer


def test_hf_blip_itm_matches_transformers_forward(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    folder = tmp_path / "blip-itm"
    model, tokenizer = _save_blip(folder, tmp_path)
    spec = f"hf:{folder}"

    reranker = load_reranker(spec)

    assert reranker.name == spec and reranker.weight == 0.5
    assert reranker.preprocess == ImagePreprocess(size=32, mean=MEAN, std=STD, mode="squash")
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for text in ("a red cat", "a photo of a blue dog on a red square with a cat a dog"):  # the second truncates
        with torch.no_grad():
            ours = reranker.match_probability(text, reranker.image_tokens(pixels))
            batch = tokenizer([text] * 4, truncation=True, return_tensors="pt")
            out = model(input_ids=batch["input_ids"], pixel_values=pixels, attention_mask=batch["attention_mask"],
                        use_itm_head=True)
            ref = torch.softmax(out.itm_score, dim=-1)[:, 1].numpy()
        assert ours.dtype == np.float32 and ours.shape == (4,)
        assert np.abs(ours - ref).max() < 1e-5  # same weights, same inputs: observed ~1e-7
        assert np.ptp(ref) > 1e-3  # the images matter: a parity that could not miss a swapped input
    (folder / "rerank.json").write_text('{"weight": 0.8}')
    assert load_reranker(spec).weight == 0.8
    # a token cache is keyed to the weight files: the same folder with other weights has another key
    key = reranker.cache_key()
    assert key.startswith(f"{spec}@") and len(key) > len(spec) + 8
    model.save_pretrained(folder)  # the same architecture, rewritten: the key holds while the bytes do
    assert load_reranker(spec).cache_key() == key
    with torch.no_grad():
        model.itm_head.bias += 1.0
    model.save_pretrained(folder)
    assert load_reranker(spec).cache_key() != key


def test_hf_reranker_refuses_other_checkpoints(tmp_path):
    from retrieval.encoders.torchvision_compat import allow_torchvision_without_ops

    allow_torchvision_without_ops()
    import transformers as t

    t.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="'bert' checkpoint; a reranker needs a BLIP ITM checkpoint"):
        load_reranker(f"hf:{tmp_path / 'bert'}")
