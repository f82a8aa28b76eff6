"""Rerankers: fusion encoders that re-score a search's top K (issue #27).

    reranker = load_reranker("hf:/models/blip-itm-base-coco")     # transformers BlipForImageTextRetrieval
    reranker = load_reranker("retr:itm")                          # ours, once retrieval/checkpoints/itm/ exists
    result = rerank_result(result, reranker, rerank=32, k=10)

A spec is `FAMILY:REST`, as for encoders; each family is a module with `load(rest, device)`,
imported only when used. `base.py` holds the interface (`Reranker`) and the score (`combine`),
`rerank.py` applies one to hits. Tested in tests/test_rerank.py.
"""

from __future__ import annotations

import importlib

from retrieval.rerank.base import DEFAULT_WEIGHT, Reranker, combine
from retrieval.rerank.rerank import MAX_RERANK, rerank_hits, rerank_result

__all__ = ["DEFAULT_WEIGHT", "MAX_RERANK", "Reranker", "combine", "load_reranker", "rerank_hits", "rerank_result"]

# family -> module implementing `load(rest: str, device: str) -> Reranker`
FAMILIES = {
    "hf": "retrieval.rerank.hf_itm",
    "retr": "retrieval.rerank.retr_itm",
}


def load_reranker(spec: str, device: str = "cpu") -> Reranker:
    """Load the reranker a spec names (`hf:DIR`, `retr:itm`) on `device` ('auto', 'cpu' or 'cuda')."""
    from retrieval.encoders import resolve_device

    family, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"reranker spec {spec!r} must look like FAMILY:NAME, e.g. hf:/models/blip-itm or retr:itm")
    if family not in FAMILIES:
        raise ValueError(f"unknown reranker family {family!r} in {spec!r}; known: {', '.join(sorted(FAMILIES))}")
    reranker = importlib.import_module(FAMILIES[family]).load(rest, resolve_device(device))
    if reranker.name != spec:
        raise RuntimeError(f"reranker loaded for {spec!r} calls itself {reranker.name!r}")  # registry bug
    return reranker
