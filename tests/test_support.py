"""The query-expansion support set: built per key, saved and loaded, and what a query borrows from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval.training.config import ExpansionConfig, parse_config
from retrieval.training.support import SUPPORT_WEIGHTS, build_support, expansion, load_support, save_support


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_support_is_one_entry_per_key_with_the_union_of_its_captions(tmp_path) -> None:
    inst = np.eye(3, dtype=np.float32)
    support = build_support(["cat", "dog", "cat"], [("cat", "kitty"), ("dog",), ("cat", "feline")], inst,
                            ExpansionConfig(weight=0.5))
    assert support.keys == ("cat", "dog")
    assert sorted(zip(support.captions, support.caption_key.tolist(), strict=True)) == [
        ("cat", 0), ("dog", 1), ("feline", 0), ("kitty", 0)]
    assert np.allclose(support.instance[0], _unit(np.array([1, 0, 1]))) and np.allclose(support.instance[1], [0, 1, 0])
    save_support(tmp_path, support)
    back = load_support(tmp_path)
    assert back.keys == support.keys and back.captions == support.captions and back.config == support.config
    assert np.allclose(back.instance, support.instance, atol=1e-3)  # float16 on disk
    assert load_support(tmp_path / "elsewhere") is None  # runs without a support set have no expansion
    (tmp_path / SUPPORT_WEIGHTS).unlink()
    with pytest.raises(ValueError, match="support.safetensors is missing"):
        load_support(tmp_path)


def test_a_query_borrows_the_look_of_the_keys_its_words_match() -> None:
    rng = np.random.default_rng(0)
    inst = _unit(rng.normal(size=(3, 8))).astype(np.float32)
    captions = _unit(rng.normal(size=(4, 384))).astype(np.float32)  # key 0 has two captions
    support = build_support(["a", "a", "b", "c"], [("a1",), ("a2",), ("b",), ("c",)],
                            np.stack([inst[0], inst[0], inst[1], inst[2]]), ExpansionConfig(1.0, 2, 0.01))
    # the query is caption "a2" itself, a little blurred: key a is its best match by far
    query = torch.from_numpy(_unit(captions[1] + 0.1 * captions[2]))[None]
    got = expansion(query, torch.from_numpy(captions), support).numpy()[0]
    assert np.allclose(got, inst[0], atol=1e-3)
    # a hot temperature and all three keys: the mean of their looks, weighted towards the best match
    warm = build_support(["a", "a", "b", "c"], [("a1",), ("a2",), ("b",), ("c",)],
                         np.stack([inst[0], inst[0], inst[1], inst[2]]), ExpansionConfig(1.0, 3, 100.0))
    mean = expansion(query, torch.from_numpy(captions), warm).numpy()[0]
    assert np.allclose(mean, inst.mean(0), atol=0.01)


def test_config_checks_the_expansion_settings() -> None:
    base = {"corpora": ["emoji-google"], "i2i_weight": 1.0, "instance_score_weight": 0.5, "head": {"instance_dim": 8}}
    assert parse_config({**base, "query_expansion": {"weight": 0.5}}).query_expansion.neighbours == 50
    with pytest.raises(ValueError, match="needs an instance head"):
        parse_config({"corpora": ["emoji-google"], "query_expansion": {"weight": 0.5}})
    with pytest.raises(ValueError, match="temperature > 0"):
        parse_config({**base, "query_expansion": {"weight": 0.5, "temperature": 0}})
    with pytest.raises(ValueError, match="unknown keys in config.query_expansion"):
        parse_config({**base, "query_expansion": {"beta": 0.5}})
