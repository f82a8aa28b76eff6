"""`retr:itm` — our own fusion reranker over the default model's locked towers (issue #27).

Its checkpoint folder is retrieval/checkpoints/itm/: itm.safetensors, and itm.json with the fusion
config, the base dual encoder and the ITM weight chosen on validation splits
(retrieval.rerank.fusion). Written by `retr train --config retrieval/training/configs/itm.json`.
"""

from __future__ import annotations

from pathlib import Path

from retrieval.rerank.base import Reranker

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
NAMES = ("itm",)  # retr:NAME -> retrieval/checkpoints/NAME/


def load(rest: str, device: str) -> Reranker:
    from retrieval.rerank import fusion

    if rest not in NAMES:
        raise ValueError(f"unknown retr reranker {rest!r}; known: {', '.join(f'retr:{n}' for n in NAMES)}")
    folder = CHECKPOINTS / rest
    if not (folder / fusion.WEIGHTS).is_file():
        raise ValueError(
            f"retr:{rest}: no ITM checkpoint in {folder}; train one with "
            "`retr train --config retrieval/training/configs/itm.json`, or use a BLIP ITM checkpoint: --reranker hf:DIR"
        )
    return fusion.load(folder, f"retr:{rest}", device)
