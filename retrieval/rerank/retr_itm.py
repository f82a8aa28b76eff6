"""`retr:itm` — our own fusion reranker over the default model's locked towers (issue #27).

Its checkpoint folder is retrieval/checkpoints/itm/ (weights, the config, and the ITM weight chosen
on validation splits). Until that is committed, loading says so; the loader that reads it is
written together with the model.
"""

from __future__ import annotations

from pathlib import Path

from retrieval.rerank.base import Reranker

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
NAMES = ("itm",)  # retr:NAME -> retrieval/checkpoints/NAME/


def load(rest: str, device: str) -> Reranker:
    if rest not in NAMES:
        raise ValueError(f"unknown retr reranker {rest!r}; known: {', '.join(f'retr:{n}' for n in NAMES)}")
    folder = CHECKPOINTS / rest
    if not folder.is_dir():
        raise ValueError(
            f"retr:{rest}: no ITM checkpoint committed yet ({folder} does not exist); "
            "use a BLIP ITM checkpoint meanwhile: --reranker hf:DIR"
        )
    raise ValueError(f"retr:{rest}: {folder} exists, but its loader is not written yet (retrieval/rerank/retr_itm.py)")
