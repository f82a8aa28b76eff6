"""Query expansion from the training set: a text query borrows the look of the training concepts it names.

A trained run keeps a *support set*: one instance vector per training key (the mean of member 0's
instance vectors of the key's clean training images, normalised) and every caption of that key.
At query time the text is matched against those captions (text tower cosine; a key scores its best
caption), and the `neighbours` best keys, softmax-weighted at `temperature`, give

    expansion(query) = Σ_k softmax(s_k / τ) · instance_k

which goes into the text vector's instance block (zero otherwise; retr_models.AlignedEncoder). One
inner product then adds weight · c · expansion · instance(image) to the usual text→image score: an
image that looks like the training images of the concepts the query names ranks higher. Support
sets of labelled images scored by image similarity are Tip-Adapter's and SuS-X's idea; here the
caption match picks the support concepts, so any query can use them.

Files, next to head.safetensors: support.safetensors (instance vectors float16, caption→key
indices) and support.json (settings, keys and captions). Written atomically; a run without them
(or with weight 0) has no expansion.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from indexing.atomic import atomic_path, write_json
from retrieval.training.config import ExpansionConfig

SUPPORT_WEIGHTS, SUPPORT_META = "support.safetensors", "support.json"


@dataclass(frozen=True)
class SupportSet:
    config: ExpansionConfig
    keys: tuple[str, ...]
    captions: tuple[str, ...]  # unique (key, caption) strings; a caption shared by two keys appears twice
    caption_key: np.ndarray  # (C,) int32: the key of each caption
    instance: np.ndarray  # (K, d) float32 unit rows, one per key

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.caption_key) or len(self.keys) != len(self.instance):
            raise ValueError("support set: captions / caption_key or keys / instance lengths differ")
        if len(self.keys) == 0:
            raise ValueError("support set: no keys")


def build_support(
    keys: Sequence[str], captions: Sequence[Sequence[str]], instance: np.ndarray, config: ExpansionConfig
) -> SupportSet:
    """One entry per distinct key: its items' instance vectors averaged, and the union of their captions."""
    names, key_ids = np.unique(np.asarray(keys), return_inverse=True)
    mean = np.zeros((len(names), instance.shape[1]), np.float64)
    np.add.at(mean, key_ids, instance)
    mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    seen: set[tuple[int, str]] = set()
    caps, owner = [], []
    for k, item_captions in zip(key_ids, captions, strict=True):
        for c in item_captions:
            if (int(k), c) not in seen:
                seen.add((int(k), c))
                caps.append(c)
                owner.append(int(k))
    return SupportSet(config, tuple(str(n) for n in names), tuple(caps), np.asarray(owner, np.int32),
                      mean.astype(np.float32))


def save_support(folder: Path, support: SupportSet) -> None:
    arrays = {"instance": support.instance.astype(np.float16), "caption_key": support.caption_key}
    with atomic_path(Path(folder) / SUPPORT_WEIGHTS) as tmp:
        save_file(arrays, str(tmp))
    write_json(Path(folder) / SUPPORT_META, {**asdict(support.config), "keys": list(support.keys),
                                            "captions": list(support.captions)})


def load_support(folder: Path) -> SupportSet | None:
    """The run's support set, or None when it has none (older runs, or expansion off)."""
    folder = Path(folder)
    if not (folder / SUPPORT_META).is_file():
        return None
    if not (folder / SUPPORT_WEIGHTS).is_file():
        raise ValueError(f"{folder / SUPPORT_META} is there but {SUPPORT_WEIGHTS} is missing")
    meta = json.loads((folder / SUPPORT_META).read_text())
    arrays = load_file(str(folder / SUPPORT_WEIGHTS))
    config = ExpansionConfig(**{k: meta[k] for k in ("weight", "neighbours", "temperature")})
    return SupportSet(config, tuple(meta["keys"]), tuple(meta["captions"]), arrays["caption_key"].astype(np.int32),
                      arrays["instance"].astype(np.float32))


def expansion(queries: torch.Tensor, caption_vectors: torch.Tensor, support: SupportSet) -> torch.Tensor:
    """Text tower query vectors (Q, D) -> (Q, d): the softmax-weighted mean instance vector of their nearest keys.

    `caption_vectors` (C, D) are the same tower's vectors of `support.captions`, unit rows.
    """
    sims = queries.float() @ caption_vectors.float().T  # (Q, C)
    owner = torch.as_tensor(support.caption_key, dtype=torch.long, device=sims.device)
    per_key = sims.new_full((len(sims), len(support.keys)), -2.0)  # below any cosine
    per_key.scatter_reduce_(1, owner.expand_as(sims), sims, reduce="amax")
    top = per_key.topk(min(support.config.neighbours, len(support.keys)), dim=1)
    weights = ((top.values - top.values[:, :1]) / support.config.temperature).softmax(dim=1)
    instance = torch.as_tensor(support.instance, device=sims.device)
    return torch.einsum("qm,qmd->qd", weights, instance[top.indices])
